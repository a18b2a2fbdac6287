"""The service's metadata in SQLite (WAL): files, batches, each batch's job state and, while it
runs, its custom_ids and where its input's bytes are. File bytes live on disk beside the
database (``FileStore``); a batch is its Batch object as JSON.

Every read and write of a file or batch names its owner, so one key's requests can never see
another's objects (a lookup by another owner finds nothing: 404)."""

from __future__ import annotations

import contextlib
import os
import sqlite3
from dataclasses import dataclass
from typing import Any

import orjson

from .migrations import migrate, transaction

__all__ = ["FileRow", "Store"]


@dataclass(frozen=True)
class FileRow:
    id: str
    owner: str
    bytes: int
    created_at: int
    expires_at: int | None
    filename: str
    purpose: str
    location: str  # relative to the data folder


_FILE_COLUMNS = "id, owner, bytes, created_at, expires_at, filename, purpose, location"


class Store:
    def __init__(self, path: str) -> None:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        self.path = path
        # The service uses it from its event loop only (what a worker thread needs opens its
        # own: ``connect``); isolation_level=None: autocommit, and ``with store.transaction()``
        # where several statements must land together.
        self.db = self.connect()
        self.db.execute("PRAGMA journal_mode=WAL")
        migrate(self.db)

    def connect(self) -> sqlite3.Connection:
        """A connection of its own to the same database (WAL: several may read and write)."""
        db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        db.execute("PRAGMA synchronous=FULL")  # a batch's state must survive a power cut
        return db

    def close(self) -> None:
        self.db.close()

    def transaction(self) -> contextlib.AbstractContextManager[None]:
        return transaction(self.db)

    # -- files ---------------------------------------------------------------------------------

    def add_file(self, row: FileRow) -> None:
        self.db.execute(
            f"INSERT INTO files ({_FILE_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (row.id, row.owner, row.bytes, row.created_at, row.expires_at, row.filename,
             row.purpose, row.location),
        )  # fmt: skip

    def file(self, owner: str, file_id: str) -> FileRow | None:
        found = self.db.execute(
            f"SELECT {_FILE_COLUMNS} FROM files WHERE id = ? AND owner = ?", (file_id, owner)
        ).fetchone()
        return FileRow(*found) if found else None

    def files(
        self, owner: str, purpose: str | None, after: str | None, limit: int, descending: bool
    ) -> tuple[list[FileRow], bool]:
        """A page of the owner's files and whether more follow."""
        where, args = ["owner = ?"], [owner]
        if purpose is not None:
            where.append("purpose = ?")
            args.append(purpose)
        if after is not None:
            where.append(f"seq {'<' if descending else '>'} "
                         "(SELECT seq FROM files WHERE id = ? AND owner = ?)")  # fmt: skip
            args += [after, owner]
        rows = self.db.execute(
            f"SELECT {_FILE_COLUMNS} FROM files WHERE {' AND '.join(where)} "
            f"ORDER BY seq {'DESC' if descending else 'ASC'} LIMIT ?",
            (*args, limit + 1),
        ).fetchall()
        return [FileRow(*r) for r in rows[:limit]], len(rows) > limit

    def delete_file(self, owner: str, file_id: str) -> None:
        self.db.execute("DELETE FROM files WHERE id = ? AND owner = ?", (file_id, owner))

    def expired_files(self, now: int) -> list[FileRow]:
        rows = self.db.execute(
            f"SELECT {_FILE_COLUMNS} FROM files WHERE expires_at IS NOT NULL AND expires_at <= ?",
            (now,),
        ).fetchall()
        return [FileRow(*r) for r in rows]

    # -- batches -------------------------------------------------------------------------------

    def add_batch(
        self,
        owner: str,
        doc: dict[str, Any],
        input_location: str,
        output_ttl_s: int | None = None,
    ) -> None:
        with self.transaction():
            self.db.execute(
                "INSERT INTO batches (id, owner, status, doc, output_ttl_s) VALUES (?, ?, ?, ?, ?)",
                (doc["id"], owner, doc["status"], orjson.dumps(doc).decode(), output_ttl_s),
            )
            self.db.execute("INSERT INTO batch_inputs VALUES (?, ?)", (doc["id"], input_location))

    def output_ttl(self, batch_id: str) -> int | None:
        found = self.db.execute(
            "SELECT output_ttl_s FROM batches WHERE id = ?", (batch_id,)
        ).fetchone()
        return found[0] if found else None

    def save_batch(self, doc: dict[str, Any]) -> None:
        self.db.execute(
            "UPDATE batches SET status = ?, doc = ? WHERE id = ?",
            (doc["status"], orjson.dumps(doc).decode(), doc["id"]),
        )

    def batch(self, owner: str, batch_id: str) -> dict[str, Any] | None:
        found = self.db.execute(
            "SELECT doc FROM batches WHERE id = ? AND owner = ?", (batch_id, owner)
        ).fetchone()
        return orjson.loads(found[0]) if found else None

    def batches(
        self, owner: str, after: str | None, limit: int
    ) -> tuple[list[dict[str, Any]], bool]:
        """A page of the owner's batches, newest first."""
        where, args = ["owner = ?"], [owner]
        if after is not None:  # the cursor too must be the owner's
            where.append("seq < (SELECT seq FROM batches WHERE id = ? AND owner = ?)")
            args += [after, owner]
        rows = self.db.execute(
            f"SELECT doc FROM batches WHERE {' AND '.join(where)} ORDER BY seq DESC LIMIT ?",
            (*args, limit + 1),
        ).fetchall()
        return [orjson.loads(r[0]) for r in rows[:limit]], len(rows) > limit

    def batches_in(self, statuses: tuple[str, ...]) -> list[tuple[str, dict[str, Any]]]:
        """(owner, batch) of every batch in one of ``statuses``, oldest first."""
        marks = ", ".join("?" * len(statuses))
        rows = self.db.execute(
            f"SELECT owner, doc FROM batches WHERE status IN ({marks}) ORDER BY seq", statuses
        ).fetchall()
        return [(owner, orjson.loads(doc)) for owner, doc in rows]

    # -- a batch's custom_ids, from validation to its end ----------------------------------------

    def save_custom_ids(self, batch_id: str, custom_ids: list[str]) -> None:
        self.db.execute(
            "INSERT OR REPLACE INTO batch_custom_ids VALUES (?, ?)",
            (batch_id, orjson.dumps(custom_ids).decode()),
        )

    def custom_ids(self, batch_id: str) -> list[str] | None:
        """None for a batch validated before the service kept them (or not validated)."""
        found = self.db.execute(
            "SELECT custom_ids FROM batch_custom_ids WHERE batch_id = ?", (batch_id,)
        ).fetchone()
        return orjson.loads(found[0]) if found else None

    def drop_custom_ids(self, batch_id: str) -> None:
        self.db.execute("DELETE FROM batch_custom_ids WHERE batch_id = ?", (batch_id,))

    # -- a batch's input bytes, from its creation to its end -------------------------------------

    def batch_input(self, batch_id: str) -> str | None:
        """Where the input of an unfinished batch is (None once it ended)."""
        found = self.db.execute(
            "SELECT location FROM batch_inputs WHERE batch_id = ?", (batch_id,)
        ).fetchone()
        return found[0] if found else None

    def drop_batch_input(self, batch_id: str) -> None:
        self.db.execute("DELETE FROM batch_inputs WHERE batch_id = ?", (batch_id,))

    def location_used(self, location: str) -> bool:
        """Whether a file object or an unfinished batch still needs the bytes at ``location``."""
        return (
            self.db.execute(
                "SELECT 1 FROM files WHERE location = ? UNION ALL "
                "SELECT 1 FROM batch_inputs WHERE location = ? LIMIT 1",
                (location, location),
            ).fetchone()
            is not None
        )
