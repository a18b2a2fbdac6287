"""What one attempt's reply means, decided in one place (the tenacity shape: this part decides,
the sender's small loop acts). ``classify`` is pure: a reply (or the transport's failure) in,
an ``Outcome`` out.
"""

from __future__ import annotations

from collections.abc import Container
from dataclasses import dataclass
from typing import Any

import orjson

from .._errors import TransportError
from .._models import ErrorInfo
from .overflow import Overflow, parse_overflow
from .retry import parse_retry_after
from .transport import Response

__all__ = ["Outcome", "classify"]


# Not frozen: one is made per attempt, and a frozen dataclass costs more to make.
@dataclass(slots=True)
class Outcome:
    """``error`` None: a usable completion (or embeddings) in ``body``. Otherwise ``body`` is
    the server's error reply (when there was one), ``retryable`` says whether another attempt
    may succeed, and ``overflow`` is set when the request did not fit the model's context."""

    status: int | None
    body: dict[str, Any] | None
    error: ErrorInfo | None = None
    retryable: bool = False
    retry_after_s: float | None = None
    overflow: Overflow | None = None
    shortened_to: int | None = None  # the max_tokens the server applied when it cut the request's


REPLY_LISTS = ("choices", "data", "results", "output")


def classify(
    reply: Response | TransportError,
    sent: dict[str, Any],
    max_model_len: int | None,
    retry_statuses: Container[int],
) -> Outcome:
    """The outcome of sending ``sent`` (the request body) and getting ``reply``."""
    if isinstance(reply, TransportError):
        return Outcome(None, None, ErrorInfo(reply.code, reply.message), retryable=True)
    if reply.status == 200:
        try:
            parsed = orjson.loads(reply.content)
        except orjson.JSONDecodeError:
            parsed = None
        # A completion has choices; an embedding or score reply (``"object": "list"``) data;
        # a rerank results; a response (``"object": "response"``) output.
        if isinstance(parsed, dict) and any(
            isinstance(parsed.get(key), list) for key in REPLY_LISTS
        ):
            shortened = None if max_model_len is None else _shortened(sent, parsed, max_model_len)
            return Outcome(200, parsed, shortened_to=shortened)
        message = f"HTTP 200 with an unreadable body: {reply.content[:200]!r}"
        return Outcome(200, None, ErrorInfo("malformed_response", message, 200), retryable=True)
    error, body = _error_from_response(reply)
    overflow = parse_overflow(error.message) if reply.status == 400 else None
    if overflow is not None:
        error = ErrorInfo("context_length_exceeded", error.message, 400)
    return Outcome(
        reply.status,
        body,
        error,
        retryable=reply.status in retry_statuses,
        retry_after_s=parse_retry_after(reply.headers),
        overflow=overflow,
    )


def _shortened(body: dict[str, Any], reply: dict[str, Any], max_model_len: int) -> int | None:
    """The max_tokens the server really applied, when it cut the request's to fit the context."""
    wanted = body.get("max_tokens") or body.get("max_completion_tokens")
    usage = reply.get("usage")
    prompt = usage.get("prompt_tokens") if isinstance(usage, dict) else None
    if isinstance(wanted, int) and isinstance(prompt, int) and prompt + wanted > max_model_len:
        return max_model_len - prompt
    return None


def _error_from_response(response: Response) -> tuple[ErrorInfo, dict[str, Any] | None]:
    """Read vLLM's error body: ``{"error": {"message", "type", "code"}}`` in current versions,
    ``{"object": "error", "message", "type", "code"}`` in older ones; anything else verbatim."""
    status = response.status
    try:
        parsed = orjson.loads(response.content)
    except orjson.JSONDecodeError:
        text = response.content[:500].decode("utf-8", "replace").strip()
        return ErrorInfo(f"http_{status}", text or f"HTTP {status}", status), None
    if not isinstance(parsed, dict):
        return ErrorInfo(f"http_{status}", str(parsed)[:500], status), None
    inner = parsed["error"] if isinstance(parsed.get("error"), dict) else parsed
    message = inner.get("message")
    kind = inner.get("type")
    return (
        ErrorInfo(
            kind if isinstance(kind, str) and kind else f"http_{status}",
            message if isinstance(message, str) else orjson.dumps(parsed).decode()[:500],
            status,
        ),
        parsed,
    )
