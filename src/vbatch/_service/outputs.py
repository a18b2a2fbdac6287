"""A finished batch's output and error files become files of the API (purpose
``batch_output``), each only when it holds a line, as OpenAI's do."""

from __future__ import annotations

import os

from .filestore import FileStore
from .ids import new_id
from .store import FileRow, Store

__all__ = ["register_outputs"]


def register_outputs(
    store: Store, files: FileStore, owner: str, batch_id: str, now: int
) -> dict[str, str | None]:
    """``output_file_id`` and ``error_file_id`` for the batch's files (call it inside the
    transaction that ends the batch); they expire as its ``output_expires_after`` says."""
    ttl = store.output_ttl(batch_id)
    expires_at = None if ttl is None else now + ttl
    ids: dict[str, str | None] = {}
    for kind, key in (("output", "output_file_id"), ("errors", "error_file_id")):
        location = files.output_location(batch_id, kind)
        path = files.path(location)
        size = os.path.getsize(path) if os.path.exists(path) else 0
        if size == 0:
            ids[key] = None
            continue
        file_id = new_id("file")
        store.add_file(FileRow(file_id, owner, size, now, expires_at,
                               f"{batch_id}_{kind}.jsonl", "batch_output", location))  # fmt: skip
        ids[key] = file_id
    return ids
