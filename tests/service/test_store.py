"""The service's SQLite parts: migrations run once each, owners never see each other's
objects, and a batch's job state round-trips (the core's JobStateStore seam)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import numpy as np
import pytest

from vbatch._errors import ResumeError
from vbatch._input.validate import InputIndex
from vbatch._output.state import fingerprint
from vbatch._service import migrations
from vbatch._service.auth import Keys, check_host
from vbatch._service.ids import is_id, new_id
from vbatch._service.migrations import MIGRATIONS, migrate
from vbatch._service.objects import new_batch
from vbatch._service.statestore import DbStateStore
from vbatch._service.store import FileRow, Store
from vbatch._service.views import batch_view


def test_migrations_run_once_each(tmp_path: Path) -> None:
    db = sqlite3.connect(tmp_path / "x.db", isolation_level=None)
    migrate(db)
    migrate(db)  # a second start changes nothing
    names = [r[0] for r in db.execute("SELECT name FROM _migrations ORDER BY rowid")]
    assert names == [m.__name__ for m in MIGRATIONS]
    tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert {"files", "batches", "job_state"} <= tables


def test_wal_and_owners_apart(tmp_path: Path) -> None:
    store = Store(str(tmp_path / "api.db"))
    assert store.db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    row = FileRow(new_id("file"), "alice", 3, 1, None, "a.jsonl", "batch", "files/x")
    store.add_file(row)
    assert store.file("alice", row.id) == row and store.file("bob", row.id) is None
    assert store.files("bob", None, None, 10, True) == ([], False)
    store.delete_file("bob", row.id)  # not bob's: still there
    assert store.file("alice", row.id) == row
    doc = new_batch(new_id("batch"), row.id, "/v1/completions", "24h", None, 1, 2)
    store.add_batch("alice", doc, row.location)
    assert store.batch("alice", doc["id"]) == doc and store.batch("bob", doc["id"]) is None
    assert store.batches_in(("validating",)) == [("alice", doc)]


def test_job_state_round_trip(tmp_path: Path) -> None:
    state = DbStateStore(Store(str(tmp_path / "api.db")), "batch_x")
    with pytest.raises(ResumeError):
        state.load()
    digests = np.array([3, 1, 2], dtype=np.uint64)
    state.save({"input": "abc"}, InputIndex(3, True, digests))
    loaded = state.load()
    assert loaded.fingerprint == fingerprint({"input": "abc"}) and loaded.parts == {"input": "abc"}
    assert loaded.index is not None and loaded.index.rows == 3 and loaded.index.batch_lines
    assert loaded.index.digests.tolist() == [3, 1, 2]


def test_ids_are_random_and_checked() -> None:
    a, b = new_id("file"), new_id("file")
    assert a != b and is_id(a, "file") and not is_id(a, "batch")
    assert new_id("batch").startswith("batch_")
    assert not is_id("file-../../etc/passwd", "file")


def test_keys() -> None:
    keys = Keys(["alpha", "beta"])
    alice = keys.owner("Bearer alpha")
    assert alice is not None and alice != keys.owner("Bearer beta")
    assert "alpha" not in alice
    assert keys.owner("Bearer gamma") is None and keys.owner(None) is None
    assert keys.owner("Basic alpha") is None
    assert Keys([]).owner(None) == "local"
    check_host("0.0.0.0", keys)  # with keys, any interface
    check_host("127.0.0.1", Keys([]))
    check_host("::1", Keys([]))
    with pytest.raises(Exception, match="loopback"):
        check_host("0.0.0.0", Keys([]))


def test_a_batchs_custom_ids_round_trip_and_go(tmp_path: Path) -> None:
    store = Store(str(tmp_path / "api.db"))
    tables = {r[0] for r in store.db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert "batch_custom_ids" in tables
    assert store.custom_ids("batch_x") is None  # validated before they were kept: none
    store.save_custom_ids("batch_x", ["b", "a", "é"])
    store.save_custom_ids("batch_y", ["y"])
    assert store.custom_ids("batch_x") == ["b", "a", "é"]  # in input order
    store.drop_custom_ids("batch_x")
    assert store.custom_ids("batch_x") is None and store.custom_ids("batch_y") == ["y"]


def test_a_database_from_before_the_custom_ids_gets_their_table(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "api.db"
    names = [m.__name__ for m in MIGRATIONS]
    before = MIGRATIONS[: names.index("m005_batch_custom_ids")]
    with monkeypatch.context() as patch:  # a service of before m005 made this database
        patch.setattr(migrations, "MIGRATIONS", before)
        Store(str(path)).close()
    store = Store(str(path))  # this one, starting on it, runs what it lacks
    ran = [r[0] for r in store.db.execute("SELECT name FROM _migrations ORDER BY rowid")]
    assert ran == names
    assert store.custom_ids("batch_x") is None
    store.save_custom_ids("batch_x", ["a"])
    assert store.custom_ids("batch_x") == ["a"]


def test_a_cancel_the_api_took_is_never_undone_by_the_runners_saves(tmp_path: Path) -> None:
    runner_side, api_side = Store(str(tmp_path / "api.db")), Store(str(tmp_path / "api.db"))
    doc = new_batch(new_id("batch"), "file-x", "/v1/completions", "24h", None, 1, 99)
    doc.update(status="in_progress", request_counts={"total": 10, "completed": 2, "failed": 0})
    runner_side.add_batch("alice", doc, "files/x")
    api_side.request_cancel(doc["id"], 50)
    api_side.request_cancel(doc["id"], 60)  # again: the first time stands
    # The runner, not yet told, saves the batch running on (its tick, every 2 s).
    doc["request_counts"] = {"total": 10, "completed": 5, "failed": 1}
    runner_side.save_batch(doc)
    shown = api_side.shown_batch("alice", doc["id"])
    assert shown is not None and api_side.shown_batch("bob", doc["id"]) is None
    view = batch_view(shown)
    assert (view["status"], view["cancelling_at"]) == ("cancelling", 50)
    assert view["request_counts"] == {"total": 10, "completed": 5, "failed": 1}
    assert runner_side.cancels() == {doc["id"]: 50}
    # Its end: the stored status is the last word, and the request goes with it (drive.py).
    doc.update(status="cancelled", cancelled_at=70)
    runner_side.save_batch(doc)
    runner_side.drop_cancel(doc["id"])
    shown = api_side.shown_batch("alice", doc["id"])
    assert shown is not None and batch_view(shown)["status"] == "cancelled"


def test_a_view_takes_the_newer_of_the_saved_and_published_counts(tmp_path: Path) -> None:
    store = Store(str(tmp_path / "api.db"))
    doc = new_batch(new_id("batch"), "file-x", "/v1/completions", "24h", None, 1, 99)
    doc.update(status="in_progress", request_counts={"total": 10, "completed": 4, "failed": 1})
    store.add_batch("alice", doc, "files/x")
    fleet = {"fleet": None, "tokens_per_s": [], "window": 8, "in_flight": 3}
    # Published before the last save (an older tick): the saved counts stand.
    store.publish_live({doc["id"]: {"request_counts": {"total": 10, "completed": 3,
                                                       "failed": 2}}}, fleet)  # fmt: skip
    shown = store.shown_batch("alice", doc["id"])
    assert shown is not None
    assert batch_view(shown)["request_counts"] == {"total": 10, "completed": 4, "failed": 2}
    assert store.live_fleet() == fleet
    store.publish_live({}, fleet)  # the batch runs no more: its row goes
    shown = store.shown_batch("alice", doc["id"])
    assert shown is not None and shown.live is None
    store.clear_live()
    assert store.live_fleet() is None
