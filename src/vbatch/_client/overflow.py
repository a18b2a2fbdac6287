"""Recognise vLLM's "request does not fit the context" 400s and work out a max_tokens that fits.

vLLM words these differently across versions, e.g. (0.32, checked against the real server)
  "This model's maximum context length is 2048 tokens. However, your prompt contains at least
   2049 input tokens, which exceeds this limit even without any output tokens. ..."
  "max_tokens=4000 cannot be greater than max_model_len=2048. Please request fewer output
   tokens. (parameter=max_tokens, value=4000)"
and in older versions
  "This model's maximum context length is 2048 tokens. However, you requested 4100 tokens
   (100 in the messages, 4000 in the completion). ..."
  "'max_tokens' or 'max_completion_tokens' is too large: 4000. This model's maximum context
   length is 2048 tokens and your request has 100 input tokens (4000 > 2048 - 100)."
so each number is looked for on its own. (vLLM 0.32 no longer rejects prompt + max_tokens >
max_model_len when each fits alone: it shortens the output itself; the dispatcher notices that
from the usage and marks the row as clamped.)

Where the message does not tell both numbers, ``room_for_output`` asks the server: its context
size from ``/v1/models`` (``ServerInfo``), the prompt's length from ``POST /tokenize``.
"""

from __future__ import annotations

import contextlib
import re
from dataclasses import dataclass
from typing import Any

import orjson

from .._errors import TransportError
from .._models import CHAT, COMPLETIONS, PreparedRequest
from .server_info import ServerInfo
from .transport import Transport

__all__ = ["Overflow", "parse_overflow", "room_for_output"]

_MAX_LEN = re.compile(r"maximum context length is (\d+)|max_model_len=(\d+)")
_INPUT = re.compile(
    r"(\d+) input tokens|\((\d+) in the messages|(\d+) tokens in the (?:messages|prompt)"
)
_TOO_LARGE = re.compile(
    r"max_(?:completion_)?tokens'? (?:or '?max_completion_tokens'? )?is too large"
    r"|cannot be greater than max_model_len"
)


@dataclass(frozen=True)
class Overflow:
    """What an overflow message told: the context size and the prompt's length, when stated."""

    max_model_len: int | None
    prompt_tokens: int | None

    def fitting_max_tokens(self) -> int | None:
        """The largest max_tokens that fits, or None if unknown or if the prompt alone overflows."""
        if self.max_model_len is None or self.prompt_tokens is None:
            return None
        room = self.max_model_len - self.prompt_tokens
        return room if room > 0 else None


def parse_overflow(message: str) -> Overflow | None:
    """An ``Overflow`` if ``message`` is a context-length error, else None."""
    max_len = _MAX_LEN.search(message)
    if max_len is None and _TOO_LARGE.search(message) is None:
        return None
    inp = _INPUT.search(message)
    prompt_tokens = next((int(g) for g in inp.groups() if g), None) if inp else None
    max_model_len = next((int(g) for g in max_len.groups() if g), None) if max_len else None
    return Overflow(max_model_len, prompt_tokens)


async def room_for_output(
    request: PreparedRequest, overflow: Overflow, server: ServerInfo, transport: Transport
) -> int | None:
    """The largest max_tokens that fits: from the error message, else asked of the server;
    None when it cannot be told or the prompt alone overflows, and for an embedding (it
    generates nothing, so there is no output to shorten)."""
    if request.endpoint not in (CHAT, COMPLETIONS):  # nothing to shorten (or not by max_tokens)
        return None
    fit = overflow.fitting_max_tokens()
    if fit is not None:
        return fit
    max_len = overflow.max_model_len or await server.context_size()
    prompt_tokens = overflow.prompt_tokens or await _count_prompt_tokens(request, transport)
    if max_len is None or prompt_tokens is None or max_len - prompt_tokens <= 0:
        return None
    return max_len - prompt_tokens


async def _count_prompt_tokens(request: PreparedRequest, transport: Transport) -> int | None:
    body = request.body
    key = "messages" if request.endpoint == CHAT else "prompt"
    query: dict[str, Any] = {"model": body.get("model"), key: body[key]}
    with contextlib.suppress(TransportError, orjson.JSONDecodeError, KeyError, TypeError):
        response = await transport.request("POST", "/tokenize", orjson.dumps(query))
        if response.status == 200:
            return int(orjson.loads(response.content)["count"])
    return None
