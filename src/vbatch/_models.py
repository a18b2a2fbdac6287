"""Plain values that flow through the pipeline: request defaults, prepared requests, results."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ._schema import Checked, Schema

__all__ = [
    "ErrorInfo",
    "PreparedRequest",
    "RequestDefaults",
    "Result",
    "body_texts",
    "usage_tokens",
]

COMPLETIONS = "/completions"
CHAT = "/chat/completions"
EMBEDDINGS = "/embeddings"  # no output tokens: no max_tokens, overflow clamp or texts
SCORE = "/score"  # pooling too (a score per pair), OpenAI Batch lines only
RERANK = "/rerank"  # pooling too (documents ranked against a query), Batch lines only
RESPONSES = "/responses"  # OpenAI's Responses API (max_output_tokens), Batch lines only
# Endpoints whose requests generate no tokens: nothing to clamp, no output to size.
POOLING = frozenset({EMBEDDINGS, SCORE, RERANK})


@dataclass(frozen=True)
class RequestDefaults:
    """Body fields every request gets unless its row overrides them.

    ``None`` means "leave it to the server". ``extra_body`` is merged into the body untouched,
    so any vLLM sampling or structured-output parameter can be set without vbatch knowing it.
    """

    model: str | None = None
    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    n: int | None = None
    seed: int | None = None
    stop: tuple[str, ...] | None = None
    system: str | None = None
    extra_body: dict[str, Any] = field(default_factory=dict)
    # What every reply must be (``_schema.py``): sent as ``response_format``, each reply parsed
    # and checked against it. A JSON schema, or a pydantic model class (Python only).
    schema: Any = None
    # A reply with a schema (the job's or a row's own) that max_tokens cut off is sent again
    # with max_tokens doubled, up to this many (None: kept, its ``schema_error`` saying so).
    resend_cut_off: int | None = None

    def body_fields(self) -> dict[str, Any]:
        """The defaults as request-body fields (``system`` is not one: it becomes a message)."""
        body: dict[str, Any] = {}
        for key in ("model", "max_tokens", "temperature", "top_p", "n", "seed"):
            value = getattr(self, key)
            if value is not None:
                body[key] = value
        if self.stop is not None:
            body["stop"] = list(self.stop)
        schema = self.compiled_schema()
        if schema is not None:
            body["response_format"] = schema.response_format()
        body.update(self.extra_body)
        return body

    def compiled_schema(self) -> Schema | None:
        """``schema`` made ready to check replies (once per defaults: they are frozen)."""
        if self.schema is None:
            return None
        compiled: Schema | None = self.__dict__.get("_compiled")
        if compiled is None:
            from ._schema import Schema

            compiled = Schema.given(self.schema, self.resend_cut_off)
            object.__setattr__(self, "_compiled", compiled)
        return compiled


@dataclass(slots=True)
class PreparedRequest:
    """One row, ready to send: which endpoint, which body, and where it came from."""

    index: int  # 0-based position among the input's rows
    id: str | int  # the row's id as given (an int stays an int in the output)
    endpoint: str  # COMPLETIONS, CHAT or EMBEDDINGS, relative to the base URL
    body: dict[str, Any]
    # A row found bad as it was read (an input read once has no validating pass): not sent, its
    # result is this error.
    refused: ErrorInfo | None = None
    # What its reply must be (``_schema.py``), when the body asks for structured output.
    schema: Schema | None = None


@dataclass(frozen=True, slots=True)
class ErrorInfo:
    """Why a row failed: a short machine-readable code, the message, and the HTTP status if any."""

    code: str
    message: str
    status: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"code": self.code, "message": self.message, "status": self.status}


@dataclass(slots=True)
class Result:
    """The outcome of one row: the server's parsed reply or an error, never both missing."""

    index: int
    id: str | int
    endpoint: str
    status: int | None  # HTTP status of the last attempt; None when no reply came
    body: dict[str, Any] | None  # parsed reply (the error body on failure, when there was one)
    error: ErrorInfo | None
    attempts: int
    latency_s: float
    request_id: str | None = None
    clamped_max_tokens: int | None = None
    # A reply checked against its request's schema: the parsed values or why not (None: the
    # request had no schema, or it failed).
    checked: Checked | None = None

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def completion_tokens(self) -> int:
        return usage_tokens(self.body if self.error is None else None)[1]

    @property
    def prompt_tokens(self) -> int:
        return usage_tokens(self.body if self.error is None else None)[0]


def body_texts(body: dict[str, Any], chat: bool) -> tuple[list[Any], list[Any]]:
    """(texts, finish_reasons) of a successful reply's body, ordered by choice index."""
    choices = body.get("choices") or ()
    if len(choices) > 1:
        choices = sorted(choices, key=lambda c: c.get("index", 0))
    if chat:
        texts = [(c.get("message") or {}).get("content") for c in choices]
    else:
        texts = [c.get("text") for c in choices]
    return texts, [c.get("finish_reason") for c in choices]


def usage_tokens(body: dict[str, Any] | None) -> tuple[int, int]:
    """(prompt, completion) tokens of a reply's ``usage`` (a response's input/output tokens)."""
    usage = body.get("usage") if body else None
    if not isinstance(usage, dict):
        return 0, 0
    prompt = usage.get("prompt_tokens") or usage.get("input_tokens") or 0
    return int(prompt), int(usage.get("completion_tokens") or usage.get("output_tokens") or 0)
