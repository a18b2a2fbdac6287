"""Output records: a ``Result`` as one JSON line, in vbatch's own shape or as an OpenAI Batch
output line, and the reverse reading that resume needs (which id, did it fail?)."""

from __future__ import annotations

import os
from typing import Any

import orjson

from ._models import CHAT, Result

__all__ = ["format_batch_line", "format_record", "read_record_status", "result_texts"]


def result_texts(result: Result) -> tuple[list[Any], list[Any]]:
    """(texts, finish_reasons) of a successful result, ordered by choice index."""
    assert result.body is not None
    choices = sorted(result.body.get("choices") or (), key=lambda c: c.get("index", 0))
    if result.endpoint == CHAT:
        texts = [(c.get("message") or {}).get("content") for c in choices]
    else:
        texts = [c.get("text") for c in choices]
    return texts, [c.get("finish_reason") for c in choices]


def format_record(result: Result, include_response: bool = False) -> bytes:
    """vbatch's line: id, text (a list when n > 1), finish_reason, usage, error, attempts,
    latency_s, clamped_max_tokens (the lowered max_tokens when --on-overflow clamp acted)."""
    if result.error is None:
        texts, reasons = result_texts(result)
        assert result.body is not None
        record: dict[str, Any] = {
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
    record["attempts"] = result.attempts
    record["latency_s"] = round(result.latency_s, 4)
    record["clamped_max_tokens"] = result.clamped_max_tokens
    if include_response:
        record["response"] = result.body
    return orjson.dumps(record) + b"\n"


def format_batch_line(result: Result) -> bytes:
    """An OpenAI Batch output line, as the Batch API and vLLM's run_batch write them.

    A reply from the server (success or HTTP error) goes under ``response`` with its status and
    body; ``error`` ({code, message}) is set whenever the row failed, as vLLM's run_batch does,
    and is the only account of it when no reply came (connection lost, timeout)."""
    response: dict[str, Any] | None = None
    if result.status is not None and result.body is not None:
        response = {"status_code": result.status, "request_id": result.request_id,
                    "body": result.body}  # fmt: skip
    error = None
    if result.error is not None:
        error = {"code": result.error.code, "message": result.error.message}
    line = {
        "id": f"vbatch-{os.urandom(12).hex()}",
        "custom_id": result.id,
        "response": response,
        "error": error,
    }
    return orjson.dumps(line) + b"\n"


def read_record_status(record: dict[str, Any]) -> tuple[Any, bool]:
    """(id, ok) of a line written by either formatter."""
    if "custom_id" in record:
        response = record.get("response")
        ok = (
            record.get("error") is None
            and isinstance(response, dict)
            and response.get("status_code") == 200
        )
        return record["custom_id"], ok
    return record["id"], record.get("error") is None
