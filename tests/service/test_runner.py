"""The runner picking batches up from each step a stopped service left them on (validating,
in_progress past its window, finalizing, cancelling), with an injected clock."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

from fakeserver import FakeServer

import vbatch
from service.apiproc import batch_lines, write_lines
from vbatch._service.filestore import FileStore
from vbatch._service.ids import new_id
from vbatch._service.objects import TERMINAL, new_batch
from vbatch._service.runner import BatchRunner
from vbatch._service.store import FileRow, Store
from vbatch._service.views import batch_view


class Clock:
    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


def _setup(tmp_path: Path, rows: int) -> tuple[Store, FileStore, str]:
    store, files = Store(str(tmp_path / "api.db")), FileStore(str(tmp_path))
    file_id = new_id("file")
    location = files.upload_location(file_id)
    path = write_lines(Path(files.path(location)), batch_lines(rows))
    store.add_file(FileRow(file_id, "o", path.stat().st_size, 0, None, "in.jsonl", "batch",
                           location))  # fmt: skip
    return store, files, file_id


def _batch(store: Store, file_id: str, status: str, now: float, window_s: int) -> str:
    doc = new_batch(new_id("batch"), file_id, "/v1/chat/completions", "24h", None, int(now),
                    int(now) + window_s)  # fmt: skip
    doc["status"] = status
    row = store.file("o", file_id)
    assert row is not None
    store.add_batch("o", doc, row.location)
    return str(doc["id"])


async def _until_done(runner: BatchRunner, store: Store, batch_id: str) -> dict[str, Any]:
    for _ in range(400):
        doc = store.batch("o", batch_id)
        assert doc is not None
        if doc["status"] in TERMINAL:
            return doc
        await asyncio.sleep(0.02)
    raise AssertionError(f"still {doc['status']}")


def _completed(runner: BatchRunner, batch_id: str) -> int:
    """The batch's completed rows as its drive counts them now (0 until it runs)."""
    active = runner.active.get(batch_id)
    return active.live_counts()["completed"] if active is not None else 0


async def test_resume_from_each_step(tmp_path: Path, server: FakeServer) -> None:
    store, files, file_id = _setup(tmp_path, 30)
    clock = Clock()
    ids = {status: _batch(store, file_id, status, clock.now, 3600)
           for status in ("validating", "in_progress", "cancelling", "finalizing")}  # fmt: skip
    expired = _batch(store, file_id, "in_progress", clock.now - 7200, 3600)
    notified: list[tuple[str, str]] = []
    async with vbatch.connect(server.base_url, concurrency=4) as dispatcher:
        runner = BatchRunner(store, files, dispatcher, max_lines=100, clock=clock,
                             notify=lambda d: notified.append((d["id"], d["status"])))  # fmt: skip
        runner.resume()
        try:
            docs = {k: await _until_done(runner, store, v) for k, v in ids.items()}
            old = await _until_done(runner, store, expired)
        finally:
            await runner.aclose()
    assert docs["validating"]["status"] == "completed"
    assert docs["validating"]["request_counts"] == {"total": 30, "completed": 30, "failed": 0}
    assert docs["in_progress"]["status"] == "completed"
    # Nothing was sent for these two: they end with what their (empty) files hold.
    assert docs["cancelling"]["status"] == "cancelled"
    assert docs["cancelling"]["output_file_id"] is None
    assert docs["finalizing"]["status"] == "completed"
    # Past its window when the service came back: every row gets a batch_expired line.
    assert old["status"] == "expired" and old["expired_at"] is not None
    assert old["request_counts"]["failed"] == 30 and old["output_file_id"] is None
    errors = store.file("o", old["error_file_id"])
    assert errors is not None
    lines = [json.loads(x) for x in Path(files.path(errors.location)).read_text().splitlines()]
    assert sorted(x["custom_id"] for x in lines) == sorted(f"r{i}" for i in range(30))
    assert {x["error"]["code"] for x in lines} == {"batch_expired"}
    assert sorted(notified) == sorted([(ids["validating"], "completed"),
                                       (ids["in_progress"], "completed"),
                                       (ids["cancelling"], "cancelled"),
                                       (ids["finalizing"], "completed"),
                                       (expired, "expired")])  # fmt: skip
    assert server.generation_requests == 60  # the two batches that ran, each row once


async def test_the_clock_expires_a_running_batch(tmp_path: Path, server: FakeServer) -> None:
    server.latency = 0.05
    store, files, file_id = _setup(tmp_path, 200)
    clock = Clock()
    batch_id = _batch(store, file_id, "validating", clock.now, 60)
    async with vbatch.connect(server.base_url, concurrency=2) as dispatcher:
        runner = BatchRunner(store, files, dispatcher, max_lines=1000, clock=clock, tick_s=0.05)
        runner.resume()
        try:
            while _completed(runner, batch_id) < 5:
                await asyncio.sleep(0.01)
            clock.now += 61  # the window ends
            doc = await _until_done(runner, store, batch_id)
        finally:
            await runner.aclose()
    assert doc["status"] == "expired"
    counts = doc["request_counts"]
    assert counts["completed"] >= 5 and counts["completed"] + counts["failed"] == 200
    assert counts["failed"] > 100  # most rows never went out


async def test_expired_files_are_removed(tmp_path: Path, server: FakeServer) -> None:
    store, files, file_id = _setup(tmp_path, 1)
    clock = Clock()
    short_lived = new_id("file")
    location = files.upload_location(short_lived)
    Path(files.path(location)).write_bytes(b"x")
    store.add_file(FileRow(short_lived, "o", 1, 0, int(clock.now) + 10, "x", "user_data",
                           location))  # fmt: skip
    async with vbatch.connect(server.base_url, concurrency=1) as dispatcher:
        runner = BatchRunner(store, files, dispatcher, max_lines=10, clock=clock, tick_s=0.01)
        runner.resume()
        try:
            await asyncio.sleep(0.05)
            assert len(store.files("o", None, None, 10, True)[0]) == 2  # not yet
            clock.now += 11
            for _ in range(600):  # expired files are looked for every SAVE_INTERVAL_S
                if len(store.files("o", None, None, 10, True)[0]) == 1:
                    break
                await asyncio.sleep(0.01)
        finally:
            await runner.aclose()
    assert [f.id for f in store.files("o", None, None, 10, True)[0]] == [file_id]
    assert not Path(files.path(location)).exists()  # the bytes went with it


def _add_input(store: Store, files: FileStore, rows: int) -> str:
    file_id = new_id("file")
    location = files.upload_location(file_id)
    path = write_lines(Path(files.path(location)), batch_lines(rows))
    store.add_file(FileRow(file_id, "o", path.stat().st_size, 0, None, "in.jsonl", "batch",
                           location))  # fmt: skip
    return file_id


def _delete_input(store: Store, files: FileStore, file_id: str) -> None:
    """As DELETE /v1/files/{id} does: the bytes stay while a batch reads them."""
    row = store.file("o", file_id)
    assert row is not None
    store.delete_file("o", file_id)
    if not store.location_used(row.location):
        files.remove(row.location)


def _error_lines(store: Store, files: FileStore, doc: dict[str, Any]) -> list[dict[str, Any]]:
    errors = store.file("o", doc["error_file_id"])
    assert errors is not None
    return [json.loads(x) for x in Path(files.path(errors.location)).read_text().splitlines()]


async def test_a_batch_expires_by_its_kept_custom_ids_with_its_input_deleted(
    tmp_path: Path, server: FakeServer
) -> None:
    server.latency = 0.05
    store, files, file_id = _setup(tmp_path, 200)
    clock = Clock()
    batch_id = _batch(store, file_id, "validating", clock.now, 60)
    async with vbatch.connect(server.base_url, concurrency=2) as dispatcher:
        runner = BatchRunner(store, files, dispatcher, max_lines=1000, clock=clock, tick_s=0.05)
        runner.resume()
        try:
            while _completed(runner, batch_id) < 5:
                await asyncio.sleep(0.01)
            assert store.custom_ids(batch_id) == [f"r{i}" for i in range(200)]  # validated
            _delete_input(store, files, file_id)
            clock.now += 61  # the window ends
            doc = await _until_done(runner, store, batch_id)
        finally:
            await runner.aclose()
    assert doc["status"] == "expired" and doc["errors"] is None
    output = store.file("o", doc["output_file_id"])
    assert output is not None
    sent = [json.loads(x) for x in Path(files.path(output.location)).read_text().splitlines()]
    expired = [x for x in _error_lines(store, files, doc) if x["error"]["code"] == "batch_expired"]
    every = sorted(x["custom_id"] for x in sent + _error_lines(store, files, doc))
    assert every == sorted(f"r{i}" for i in range(200))  # each row once, in one file or other
    assert len(expired) > 100 and doc["request_counts"]["failed"] == len(expired)
    assert store.custom_ids(batch_id) is None  # an ended batch keeps them no more


async def test_a_batch_validated_before_the_ids_were_kept_reads_them_from_its_input(
    tmp_path: Path, server: FakeServer
) -> None:
    store, files, _ = _setup(tmp_path, 1)
    clock = Clock()
    past = clock.now - 7200
    kept_input, old_input, gone_input = (_add_input(store, files, 30) for _ in range(3))
    kept = _batch(store, kept_input, "in_progress", past, 3600)  # validated since: ids kept
    store.save_custom_ids(kept, [f"r{i}" for i in range(30)])
    old = _batch(store, old_input, "in_progress", past, 3600)  # before: none kept
    gone = _batch(store, gone_input, "in_progress", past, 3600)  # before, and input deleted
    _delete_input(store, files, kept_input)
    # A database from before the service kept running batches' inputs, the input deleted then.
    gone_row = store.file("o", gone_input)
    assert gone_row is not None
    store.drop_batch_input(gone)
    _delete_input(store, files, gone_input)
    assert not Path(files.path(gone_row.location)).exists()
    async with vbatch.connect(server.base_url, concurrency=1) as dispatcher:
        runner = BatchRunner(store, files, dispatcher, max_lines=100, clock=clock)
        runner.resume()
        try:
            docs = {k: await _until_done(runner, store, k) for k in (kept, old, gone)}
        finally:
            await runner.aclose()
    for batch_id in (kept, old):
        doc = docs[batch_id]
        assert doc["status"] == "expired" and doc["request_counts"]["failed"] == 30
        lines = _error_lines(store, files, doc)
        assert sorted(x["custom_id"] for x in lines) == sorted(f"r{i}" for i in range(30))
        assert {x["error"]["code"] for x in lines} == {"batch_expired"}
    # Neither kept nor readable: the batch cannot name its rows, and fails saying why.
    assert docs[gone]["status"] == "failed"
    assert "input file was deleted" in docs[gone]["errors"]["data"][0]["message"]
    assert server.generation_requests == 0


async def test_the_runner_starts_what_the_api_inserts_and_applies_its_cancels(
    tmp_path: Path, server: FakeServer
) -> None:
    """The API's process only writes the database: a batch inserted "validating" is started
    on the runner's next tick, and a cancel request stops a running batch, whose every view
    from then on says cancelling, whatever the runner saves meanwhile, until it ends."""
    server.latency = 0.02
    store, files, file_id = _setup(tmp_path, 300)
    api = Store(str(tmp_path / "api.db"))  # the API's own connection
    clock = Clock()
    async with vbatch.connect(server.base_url, concurrency=2) as dispatcher:
        runner = BatchRunner(store, files, dispatcher, max_lines=1000, clock=clock, tick_s=0.05)
        runner.resume()
        try:
            batch_id = _batch(api, file_id, "validating", clock.now, 3600)  # POST /v1/batches
            while _completed(runner, batch_id) < 5:
                await asyncio.sleep(0.01)
            api.request_cancel(batch_id, int(clock.now))  # POST .../cancel
            seen = []
            while True:
                shown = api.shown_batch("o", batch_id)
                assert shown is not None
                view = batch_view(shown)
                if view["status"] in TERMINAL:
                    break
                seen.append((view["status"], view["request_counts"]["completed"]))
                await asyncio.sleep(0.005)
        finally:
            await runner.aclose()
    assert seen and {status for status, _ in seen} == {"cancelling"}
    assert [n for _, n in seen] == sorted(n for _, n in seen)  # never back
    assert view["status"] == "cancelled" and view["cancelling_at"] == int(clock.now)
    assert 5 <= view["request_counts"]["completed"] < 300
    assert api.cancels() == {}  # the request went with the batch's end


async def test_a_cancel_taken_as_the_last_rows_came_back_ends_cancelled(
    tmp_path: Path, server: FakeServer
) -> None:
    store, files, file_id = _setup(tmp_path, 3)
    clock = Clock()
    # Every row done, the batch finalizing, when the API took the cancel.
    batch_id = _batch(store, file_id, "finalizing", clock.now, 3600)
    store.request_cancel(batch_id, int(clock.now) - 1)
    async with vbatch.connect(server.base_url, concurrency=1) as dispatcher:
        runner = BatchRunner(store, files, dispatcher, max_lines=10, clock=clock)
        runner.resume()
        try:
            doc = await _until_done(runner, store, batch_id)
        finally:
            await runner.aclose()
    assert doc["status"] == "cancelled" and doc["cancelling_at"] == int(clock.now) - 1
    assert store.cancels() == {}
