"""The service's SQLite schema, as an ordered list of migrations (simonw/llm's way): each runs
once, in order, in its own transaction, and ``_migrations`` records which ran. A new column or
table is a new function at the end; a released one is never edited."""

from __future__ import annotations

import contextlib
import sqlite3
import time
from collections.abc import Callable, Iterator

__all__ = ["MIGRATIONS", "migrate", "transaction"]

Migration = Callable[[sqlite3.Connection], None]
MIGRATIONS: list[Migration] = []


def migration(fn: Migration) -> Migration:
    MIGRATIONS.append(fn)
    return fn


@contextlib.contextmanager
def transaction(db: sqlite3.Connection) -> Iterator[None]:
    """Statements that land together or not at all (the connection is in autocommit mode, so
    each other statement is its own transaction)."""
    db.execute("BEGIN IMMEDIATE")
    try:
        yield
    except BaseException:
        db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")


def migrate(db: sqlite3.Connection) -> None:
    db.execute("CREATE TABLE IF NOT EXISTS _migrations (name TEXT PRIMARY KEY, applied_at REAL)")
    done = {row[0] for row in db.execute("SELECT name FROM _migrations")}
    for fn in MIGRATIONS:
        if fn.__name__ in done:
            continue
        with transaction(db):  # a migration is applied whole or not at all
            fn(db)
            db.execute("INSERT INTO _migrations VALUES (?, ?)", (fn.__name__, time.time()))


@migration
def m001_files(db: sqlite3.Connection) -> None:
    # seq orders the listings (created_at has one-second ties); location is where the bytes
    # are, relative to the data folder, always made by the service from ids, never from input.
    db.execute("""
        CREATE TABLE files (
            seq INTEGER PRIMARY KEY AUTOINCREMENT,
            id TEXT NOT NULL UNIQUE,
            owner TEXT NOT NULL,
            bytes INTEGER NOT NULL,
            created_at INTEGER NOT NULL,
            expires_at INTEGER,
            filename TEXT NOT NULL,
            purpose TEXT NOT NULL,
            location TEXT NOT NULL
        )""")
    db.execute("CREATE INDEX files_owner ON files (owner, seq)")


@migration
def m002_batches(db: sqlite3.Connection) -> None:
    # The Batch object as JSON (doc), with what is looked up by beside it.
    db.execute("""
        CREATE TABLE batches (
            seq INTEGER PRIMARY KEY AUTOINCREMENT,
            id TEXT NOT NULL UNIQUE,
            owner TEXT NOT NULL,
            status TEXT NOT NULL,
            doc TEXT NOT NULL
        )""")
    db.execute("CREATE INDEX batches_owner ON batches (owner, seq)")
    db.execute("CREATE INDEX batches_status ON batches (status)")


@migration
def m003_job_state(db: sqlite3.Connection) -> None:
    # What the core's FileStateStore keeps beside an output, kept here for each batch's job.
    db.execute("""
        CREATE TABLE job_state (
            batch_id TEXT PRIMARY KEY,
            fingerprint TEXT NOT NULL,
            parts TEXT NOT NULL,
            rows INTEGER NOT NULL,
            batch_lines INTEGER NOT NULL,
            digests BLOB NOT NULL
        )""")


@migration
def m004_output_ttl(db: sqlite3.Connection) -> None:
    # A batch's output_expires_after (seconds after each output file is made), when asked for.
    db.execute("ALTER TABLE batches ADD COLUMN output_ttl_s INTEGER")


@migration
def m005_batch_custom_ids(db: sqlite3.Connection) -> None:
    # A batch's custom_ids in input order (a JSON list), kept from validation to its end: an
    # expiring batch's batch_expired lines need them, and the input may be gone by then. A
    # batch validated before this migration has none here (finalize reads its input instead).
    db.execute("""
        CREATE TABLE batch_custom_ids (
            batch_id TEXT PRIMARY KEY,
            custom_ids TEXT NOT NULL
        )""")


@migration
def m006_batch_inputs(db: sqlite3.Connection) -> None:
    # Where each unfinished batch's input bytes are: deleting the input file (allowed, as in
    # OpenAI's API) removes the file object, and its bytes stay until every batch reading them
    # has ended, a restart included. Filled for the batches already running.
    db.execute("""
        CREATE TABLE batch_inputs (
            batch_id TEXT PRIMARY KEY,
            location TEXT NOT NULL
        )""")
    db.execute("CREATE INDEX batch_inputs_location ON batch_inputs (location)")
    db.execute("""
        INSERT INTO batch_inputs
        SELECT batches.id, files.location FROM batches JOIN files
        ON files.id = json_extract(batches.doc, '$.input_file_id')
        WHERE batches.status IN ('validating', 'in_progress', 'finalizing', 'cancelling')""")


@migration
def m007_cancels_and_live(db: sqlite3.Connection) -> None:
    # The API and the runner are two processes (serve.py): what one tells the other is here.
    # batch_cancels: cancels the API accepted, which the runner applies on its tick; the runner
    # only removes a row as its batch ends, so none of its saves of a batch can undo a cancel,
    # and the API's views show "cancelling" over the stored status until then (views.py).
    db.execute("""
        CREATE TABLE batch_cancels (
            batch_id TEXT PRIMARY KEY,
            requested_at INTEGER NOT NULL
        )""")
    # What only the runner knows live, published each tick: a JSON per batch (its flushed
    # counts, rate, ETA, share, output tokens/s) and one for the fleet (servers, window).
    db.execute("""
        CREATE TABLE live_batches (
            batch_id TEXT PRIMARY KEY,
            doc TEXT NOT NULL
        )""")
    db.execute("""
        CREATE TABLE live_fleet (
            id INTEGER PRIMARY KEY CHECK (id = 1),
            doc TEXT NOT NULL
        )""")
