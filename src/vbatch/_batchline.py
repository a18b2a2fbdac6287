"""The OpenAI Batch file format, defined once (as vLLM's ``run_batch.py`` defines it): the input
line the request builder reads, the output line the records write, and how resume and the
Parquet writer tell the two kinds of output apart.

  input:  {"custom_id": str, "method": "POST", "url": "/v1/chat/completions", "body": {...}}
          (url also "/v1/completions" with a "prompt", "/v1/embeddings" with an "input",
          "/v1/responses" with an "input", "/v1/score" with "queries" and "documents" (or
          vLLM's other pairs), "/v1/rerank" with a "query" and "documents": run_batch's urls)
  output: {"id": str, "custom_id": str,
           "response": {"status_code": int, "request_id": str, "body": {...}} | None,
           "error": {"code": str, "message": str} | None}

Output lines come in two styles that differ for a row the server answered with an HTTP error:
vLLM's run_batch sets ``error`` whenever a row failed (``vbatch run`` writes these), OpenAI's
Batch API sets it only for a failure with no reply, an HTTP error line carrying ``error: null``
and the reply with its status and body, line ids ``batch_req_...`` (the service writes these).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Literal

from ._models import CHAT, COMPLETIONS, EMBEDDINGS, RERANK, RESPONSES, SCORE, ErrorInfo

__all__ = [
    "BATCH_URLS",
    "BODY_NEEDS",
    "INPUT_KEYS",
    "PAYLOAD_KEYS",
    "BatchInput",
    "LineStyle",
    "is_output_line",
    "output_line",
    "output_line_status",
    "parse_input_line",
]

# The endpoints a Batch line may name, and the path each is sent to below the API prefix.
BATCH_URLS = {
    "/v1/completions": COMPLETIONS,
    "/v1/chat/completions": CHAT,
    "/v1/embeddings": EMBEDDINGS,
    "/v1/score": SCORE,
    "/v1/rerank": RERANK,
    "/v1/responses": RESPONSES,
}
# The body key each endpoint cannot do without (vLLM's run_batch validates the body by url),
# whose value vbatch checks itself; the other endpoints' bodies are the server's to judge.
PAYLOAD_KEYS = {COMPLETIONS: "prompt", CHAT: "messages", EMBEDDINGS: "input"}
# The keys a body needs, by endpoint: one of these sets, whole (vLLM 0.32's request models).
BODY_NEEDS: dict[str, tuple[tuple[str, ...], ...]] = {
    **{endpoint: ((key,),) for endpoint, key in PAYLOAD_KEYS.items()},
    SCORE: (("queries", "documents"), ("queries", "items"), ("data_1", "data_2"),
            ("text_1", "text_2")),
    RERANK: (("query", "documents"),),
    RESPONSES: (("input",),),
}  # fmt: skip


@dataclass(frozen=True, slots=True)
class BatchInput:
    custom_id: str
    endpoint: str  # a value of BATCH_URLS
    body: dict[str, Any]


LineStyle = Literal["vllm", "openai"]

# The keys that make a row an input line (a subset test is one C call: it runs for every row).
INPUT_KEYS = frozenset(("custom_id", "body"))


def parse_input_line(data: dict[str, Any]) -> BatchInput:
    """The line's parts; ``ValueError`` with what is wrong (the caller names the line)."""
    missing = [key for key in ("custom_id", "body") if key not in data]
    if missing:
        raise ValueError(f"missing {' and '.join(map(repr, missing))}")
    custom_id = data["custom_id"]
    if not isinstance(custom_id, str) or not custom_id:
        raise ValueError("'custom_id' must be a non-empty string")
    method = data.get("method", "POST")
    if method != "POST":
        raise ValueError(f"'method' must be \"POST\", got {method!r}")
    url = data.get("url")
    endpoint = BATCH_URLS.get(url) if isinstance(url, str) else None
    if endpoint is None:
        raise ValueError(f"'url' must be one of {', '.join(BATCH_URLS)}, got {url!r}")
    body = data["body"]
    if not isinstance(body, dict):
        raise ValueError("'body' must be a JSON object")
    needs = BODY_NEEDS[endpoint]
    if not any(all(key in body for key in keys) for keys in needs):
        said = " or ".join(" and ".join(map(repr, keys)) for keys in needs)
        raise ValueError(f"'body' of a {url} request needs {said}")
    return BatchInput(custom_id, endpoint, body)


def output_line(
    custom_id: str | int,
    status: int | None,
    request_id: str | None,
    body: dict[str, Any] | None,
    error: ErrorInfo | None,
    style: LineStyle = "vllm",
) -> dict[str, Any]:
    """An output line. A reply from the server (success or HTTP error) goes under ``response``
    with its status and body; ``error`` is the account of a failure, set whenever the row
    failed (``style`` "vllm", as run_batch does) or only when no reply came ("openai": a
    connection lost, a timeout)."""
    response = None
    if status is not None and body is not None:
        request_id = request_id or f"req_{os.urandom(12).hex()}"
        response = {"status_code": status, "request_id": request_id, "body": body}
    if style == "openai":
        line_id = f"batch_req_{os.urandom(12).hex()}"
        error = None if response is not None else error
    else:
        line_id = f"vbatch-{os.urandom(12).hex()}"
    return {
        "id": line_id,
        "custom_id": custom_id,
        "response": response,
        "error": None if error is None else {"code": error.code, "message": error.message},
    }


def is_output_line(record: dict[str, Any]) -> bool:
    return "custom_id" in record


def output_line_status(record: dict[str, Any]) -> tuple[Any, bool]:
    """(custom_id, ok) of an output line: ok only for an HTTP 200 reply without an error."""
    response = record.get("response")
    ok = (
        record.get("error") is None
        and isinstance(response, dict)
        and response.get("status_code") == 200
    )
    return record["custom_id"], ok
