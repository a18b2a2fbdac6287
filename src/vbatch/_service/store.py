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

__all__ = ["UNFINISHED", "FileRow", "ShownBatch", "Store"]

# A batch in one of these has not ended: the runner drives it (or will, at its next start).
UNFINISHED = ("validating", "in_progress", "finalizing", "cancelling")


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


@dataclass(frozen=True)
class ShownBatch:
    """What the API's view of a batch is made of (views.py): its stored object, when a cancel
    of it was accepted (None: never) and the runner's live facts while it runs (None: none)."""

    doc: dict[str, Any]
    cancel_at: int | None
    live: dict[str, Any] | None


# One query for the three: a poll is one statement.
_SHOWN = (
    "SELECT b.doc, c.requested_at, l.doc FROM batches b "
    "LEFT JOIN batch_cancels c ON c.batch_id = b.id "
    "LEFT JOIN live_batches l ON l.batch_id = b.id"
)


def _shown(row: tuple[str, int | None, str | None]) -> ShownBatch:
    doc, cancel_at, live = row
    return ShownBatch(orjson.loads(doc), cancel_at, orjson.loads(live) if live else None)


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
        if self.db.in_transaction:  # inside an outer one: its statements land with it
            return contextlib.nullcontext()
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

    def shown_batch(self, owner: str, batch_id: str) -> ShownBatch | None:
        found = self.db.execute(
            f"{_SHOWN} WHERE b.id = ? AND b.owner = ?", (batch_id, owner)
        ).fetchone()
        return _shown(found) if found else None

    def shown_batches(
        self, owner: str, after: str | None, limit: int
    ) -> tuple[list[ShownBatch], bool]:
        """A page of the owner's batches, newest first."""
        where, args = ["b.owner = ?"], [owner]
        if after is not None:  # the cursor too must be the owner's
            where.append("b.seq < (SELECT seq FROM batches WHERE id = ? AND owner = ?)")
            args += [after, owner]
        rows = self.db.execute(
            f"{_SHOWN} WHERE {' AND '.join(where)} ORDER BY b.seq DESC LIMIT ?",
            (*args, limit + 1),
        ).fetchall()
        return [_shown(r) for r in rows[:limit]], len(rows) > limit

    def unfinished_ids(self) -> list[str]:
        """Every batch not ended yet, oldest first (the runner looks for new ones each tick)."""
        marks = ", ".join("?" * len(UNFINISHED))
        rows = self.db.execute(
            f"SELECT id FROM batches WHERE status IN ({marks}) ORDER BY seq", UNFINISHED
        ).fetchall()
        return [r[0] for r in rows]

    def owned_batch(self, batch_id: str) -> tuple[str, dict[str, Any]] | None:
        """(owner, batch) by id alone: for the runner, which serves every owner."""
        found = self.db.execute(
            "SELECT owner, doc FROM batches WHERE id = ?", (batch_id,)
        ).fetchone()
        return (found[0], orjson.loads(found[1])) if found else None

    def batches_in(self, statuses: tuple[str, ...]) -> list[tuple[str, dict[str, Any]]]:
        """(owner, batch) of every batch in one of ``statuses``, oldest first."""
        marks = ", ".join("?" * len(statuses))
        rows = self.db.execute(
            f"SELECT owner, doc FROM batches WHERE status IN ({marks}) ORDER BY seq", statuses
        ).fetchall()
        return [(owner, orjson.loads(doc)) for owner, doc in rows]

    # -- cancels the API accepted, from the request to the batch's end --------------------------

    def request_cancel(self, batch_id: str, at: int) -> None:
        """Only the API writes here (and the batch's end removes it): see m007."""
        self.db.execute("INSERT OR IGNORE INTO batch_cancels VALUES (?, ?)", (batch_id, at))

    def cancels(self) -> dict[str, int]:
        """batch id -> when its cancel was asked for, of every batch not ended since."""
        return dict(self.db.execute("SELECT batch_id, requested_at FROM batch_cancels"))

    def cancel_requested(self, batch_id: str) -> int | None:
        found = self.db.execute(
            "SELECT requested_at FROM batch_cancels WHERE batch_id = ?", (batch_id,)
        ).fetchone()
        return found[0] if found else None

    def drop_cancel(self, batch_id: str) -> None:
        self.db.execute("DELETE FROM batch_cancels WHERE batch_id = ?", (batch_id,))

    # -- what the runner knows live, published for the API ---------------------------------------

    def publish_live(self, batches: dict[str, dict[str, Any]], fleet: dict[str, Any]) -> None:
        """Every live row at once, the old ones gone (one transaction: the API never reads
        half a tick)."""
        with self.transaction():
            self.db.execute("DELETE FROM live_batches")
            self.db.executemany(
                "INSERT INTO live_batches VALUES (?, ?)",
                [(batch_id, orjson.dumps(doc).decode()) for batch_id, doc in batches.items()],
            )
            self.db.execute(
                "INSERT OR REPLACE INTO live_fleet VALUES (1, ?)", (orjson.dumps(fleet).decode(),)
            )

    def clear_live(self) -> None:
        """What a runner that stopped left: nothing runs until this one publishes."""
        with self.transaction():
            self.db.execute("DELETE FROM live_batches")
            self.db.execute("DELETE FROM live_fleet")

    def live_fleet(self) -> dict[str, Any] | None:
        found = self.db.execute("SELECT doc FROM live_fleet WHERE id = 1").fetchone()
        return orjson.loads(found[0]) if found else None

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
