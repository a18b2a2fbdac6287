"""Output records: a ``Result`` as one JSON line, in vbatch's own shape or as an OpenAI Batch
output line, and the reverse reading that resume needs (which id, did it fail?)."""

from __future__ import annotations

from typing import Any

import orjson

from .._batchline import LineStyle, is_output_line, output_line, output_line_status
from .._models import CHAT, EMBEDDINGS, Result, body_texts

__all__ = [
    "body_embeddings",
    "body_texts",
    "format_batch_line",
    "format_record",
    "read_record_status",
    "result_embeddings",
    "result_texts",
]


def result_texts(result: Result) -> tuple[list[Any], list[Any]]:
    """(texts, finish_reasons) of a successful result, ordered by choice index."""
    assert result.body is not None
    return body_texts(result.body, result.endpoint == CHAT)


def body_embeddings(body: dict[str, Any]) -> list[Any]:
    """The vectors of a successful embeddings reply's body, in input order (one per input)."""
    data = sorted(body.get("data") or (), key=lambda d: d.get("index", 0))
    return [d.get("embedding") for d in data]


def result_embeddings(result: Result) -> list[Any]:
    """The vectors of a successful embeddings result, in input order (one per input)."""
    assert result.body is not None
    return body_embeddings(result.body)


def format_record(result: Result, include_response: bool = False) -> bytes:
    """vbatch's line: id, text (a list when n > 1), finish_reason, usage, error, attempts,
    latency_s, clamped_max_tokens (the lowered max_tokens when --on-overflow clamp acted);
    a reply checked against a schema adds ``parsed`` (a list when n > 1) and ``schema_error``
    (``{code, message}`` of the first choice that did not fit, else null).
    An embeddings row has ``embedding`` (a list of them when its input was a list of several)
    in place of text and finish_reason."""
    if result.endpoint == EMBEDDINGS:
        vectors = result_embeddings(result) if result.error is None else None
        record: dict[str, Any] = {
            "id": result.id,
            "embedding": vectors[0] if vectors is not None and len(vectors) == 1 else vectors,
            "usage": result.body.get("usage") if result.error is None and result.body else None,
            "error": None if result.error is None else result.error.to_dict(),
        }
    elif result.error is None:
        texts, reasons = result_texts(result)
        assert result.body is not None
        record = {
            "id": result.id,
            "text": texts[0] if len(texts) == 1 else texts,
            "finish_reason": reasons[0] if len(reasons) == 1 else reasons,
            "usage": result.body.get("usage"),
            "error": None,
        }
    else:
        record = {
            "id": result.id,
            "text": None,
            "finish_reason": None,
            "usage": None,
            "error": result.error.to_dict(),
        }
    if result.checked is not None:  # a schema job's row: its parsed value, or why none
        record["parsed"] = result.checked.parsed
        error = result.checked.error
        record["schema_error"] = (
            None if error is None else {"code": error.code, "message": error.message}
        )
    record["attempts"] = result.attempts
    record["latency_s"] = round(result.latency_s, 4)
    record["clamped_max_tokens"] = result.clamped_max_tokens
    if include_response:
        record["response"] = result.body
    return orjson.dumps(record) + b"\n"


def format_batch_line(result: Result, style: LineStyle = "vllm") -> bytes:
    """An OpenAI Batch output line (``_batchline``), in vLLM's run_batch style or OpenAI's."""
    line = output_line(result.id, result.status, result.request_id, result.body, result.error,
                       style)  # fmt: skip
    return orjson.dumps(line) + b"\n"


def read_record_status(record: dict[str, Any]) -> tuple[Any, bool]:
    """(id, ok) of a line written by either formatter; a reply that did not fit its schema is
    not ok (``--retry-failed`` sends it again)."""
    if is_output_line(record):
        return output_line_status(record)
    return record["id"], record.get("error") is None and record.get("schema_error") is None
