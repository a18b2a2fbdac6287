"""The API's objects as the ``openai`` package's types define them (``FileObject``, ``Batch``,
``BatchError``, list pages and the error body), and the metadata key that weights a batch's
share of the window (read by the API's process and the runner's alike)."""

from __future__ import annotations

from typing import Any

from .store import FileRow

__all__ = [
    "BATCH_STATUSES",
    "CANCELLABLE",
    "PRIORITY_KEY",
    "TERMINAL",
    "batch_error",
    "error_body",
    "file_object",
    "new_batch",
    "page",
    "share_weight",
]

BATCH_STATUSES = ("validating", "failed", "in_progress", "finalizing", "completed", "expired",
                  "cancelling", "cancelled")  # fmt: skip
TERMINAL = frozenset({"failed", "completed", "expired", "cancelled"})
# A cancel of a batch in one of these is taken; later (finalizing, cancelling) it changes nothing.
CANCELLABLE = ("validating", "in_progress")


def file_object(row: FileRow) -> dict[str, Any]:
    return {
        "id": row.id,
        "object": "file",
        "bytes": row.bytes,
        "created_at": row.created_at,
        "expires_at": row.expires_at,
        "filename": row.filename,
        "purpose": row.purpose,
        "status": "processed",  # deprecated by OpenAI; a stored file is whole
        "status_details": None,
    }


def new_batch(
    batch_id: str,
    input_file_id: str,
    endpoint: str,
    completion_window: str,
    metadata: dict[str, str] | None,
    created_at: int,
    expires_at: int,
) -> dict[str, Any]:
    return {
        "id": batch_id,
        "object": "batch",
        "endpoint": endpoint,
        "model": None,
        "errors": None,
        "input_file_id": input_file_id,
        "completion_window": completion_window,
        "status": "validating",
        "output_file_id": None,
        "error_file_id": None,
        "created_at": created_at,
        "in_progress_at": None,
        "expires_at": expires_at,
        "finalizing_at": None,
        "completed_at": None,
        "failed_at": None,
        "expired_at": None,
        "cancelling_at": None,
        "cancelled_at": None,
        "request_counts": {"total": 0, "completed": 0, "failed": 0},
        "usage": None,
        "metadata": metadata,
    }


def batch_error(
    code: str, message: str, line: int | None = None, param: str | None = None
) -> dict[str, Any]:
    return {"code": code, "message": message, "line": line, "param": param}


def page(data: list[dict[str, Any]], has_more: bool) -> dict[str, Any]:
    return {
        "object": "list",
        "data": data,
        "first_id": data[0]["id"] if data else None,
        "last_id": data[-1]["id"] if data else None,
        "has_more": has_more,
    }


def error_body(message: str, type_: str, param: str | None = None,
               code: str | None = None) -> dict[str, Any]:  # fmt: skip
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


# The metadata key that weights a batch's share of the window. Metadata is the user's free text
# in OpenAI's API (``{"priority": "high"}`` is fine there), so vbatch reads a key of its own.
PRIORITY_KEY = "vbatch_priority"


def share_weight(metadata: dict[str, Any] | None) -> tuple[float, str | None]:
    """A batch's share of the window: ``metadata["vbatch_priority"]`` (a number, 0.1-100),
    else 1; and why the key was ignored, when it was (the batch still runs, at weight 1)."""
    value = (metadata or {}).get(PRIORITY_KEY)
    if value is None:
        return 1.0, None
    try:
        weight = float(value)
    except ValueError:
        weight = 0.0
    if not 0.1 <= weight <= 100:
        return 1.0, f"metadata[{PRIORITY_KEY!r}] {value!r} is not a number from 0.1 to 100: ignored"
    return weight, None
