"""A batch's job state in the service's database: the core's ``JobStateStore`` seam, kept in
SQLite instead of files beside the output, so a restarted service resumes each batch's job
without validating its input again. The job reads and writes it from a worker thread (the
input's pass runs there), so each call uses a connection of its own."""

from __future__ import annotations

import contextlib
from typing import Any

import numpy as np
import orjson

from .._errors import ResumeError
from .._input.validate import InputIndex
from .._output.state import StoredJob, fingerprint
from .store import Store

__all__ = ["DbStateStore"]


class DbStateStore:
    def __init__(self, store: Store, batch_id: str) -> None:
        self.store = store
        self.batch_id = batch_id

    def save(self, parts: dict[str, Any], index: InputIndex) -> None:
        with contextlib.closing(self.store.connect()) as db:
            db.execute(
                "INSERT OR REPLACE INTO job_state VALUES (?, ?, ?, ?, ?, ?)",
                (self.batch_id, fingerprint(parts), orjson.dumps(parts).decode(), index.rows,
                 int(index.batch_lines), index.digests.astype("<u8").tobytes()),
            )  # fmt: skip

    def load(self) -> StoredJob:
        with contextlib.closing(self.store.connect()) as db:
            found = db.execute(
                "SELECT fingerprint, parts, rows, batch_lines, digests FROM job_state "
                "WHERE batch_id = ?",
                (self.batch_id,),
            ).fetchone()
        if found is None:
            raise ResumeError(f"batch {self.batch_id} has output but no job state")
        print_, parts, rows, batch_lines, digests = found
        index = None
        if len(digests) == 8 * rows:
            array = np.frombuffer(digests, dtype="<u8").astype(np.uint64)
            index = InputIndex(rows, bool(batch_lines), array)
        return StoredJob(print_, orjson.loads(parts), index)
