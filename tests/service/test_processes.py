"""The service as two processes (issue 19): the API's (uvicorn, the routes) answers from the
database while the runner's (the fleet, the dispatcher, the batches) is frozen; what it takes
then (a new batch, a cancel) crosses through the database and the runner acts on it once it
runs again; the API's process ends with the service, killed or stopped."""

from __future__ import annotations

import contextlib
import os
import signal
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil
from helpers import ServerProcess

from service.apiproc import KEYS, ApiProcess, batch_lines, upload, wait_done, write_lines
from service.conftest import StartApi

CHAT = "/v1/chat/completions"
API_MODULE = "vbatch._service.apiserver"


def _api_child(api: ApiProcess) -> psutil.Process:
    assert api.proc is not None
    (child,) = [c for c in psutil.Process(api.proc.pid).children() if API_MODULE in c.cmdline()]
    return child


def _write_lock_free(data_dir: Path) -> bool:
    """Whether no connection holds the database's write lock now."""
    db = sqlite3.connect(data_dir / "vbatch-api.db", timeout=0, isolation_level=None)
    try:
        db.execute("BEGIN IMMEDIATE")
        db.execute("ROLLBACK")
        return True
    except sqlite3.OperationalError:
        return False
    finally:
        db.close()


@contextlib.contextmanager
def _frozen(api: ApiProcess) -> Iterator[None]:
    """The runner's process stopped (SIGSTOP) where it holds no write transaction (else the
    API's writes would wait on a frozen lock: a case of its own), continued at the end."""
    assert api.proc is not None
    pid = api.proc.pid
    try:
        for _ in range(50):
            os.kill(pid, signal.SIGSTOP)
            if _write_lock_free(api.data_dir):
                break
            os.kill(pid, signal.SIGCONT)
            time.sleep(0.01)
        else:
            raise AssertionError("the runner always held the database's write lock")
        yield
    finally:
        os.kill(pid, signal.SIGCONT)


def test_the_api_answers_from_the_database_while_the_runner_is_frozen(
    start_api: StartApi, server_process: ServerProcess, tmp_path: Path
) -> None:
    server_process.control(latency=0.05)
    api = start_api("--concurrency", "2")
    client = api.client().with_options(timeout=10)  # a frozen single process never answers
    running = client.batches.create(
        input_file_id=upload(client, write_lines(tmp_path / "a.jsonl", batch_lines(400))),
        endpoint=CHAT, completion_window="24h")  # fmt: skip
    small = upload(client, write_lines(tmp_path / "b.jsonl", batch_lines(3, "b")))
    deadline = time.monotonic() + 30
    while (client.batches.retrieve(running.id).request_counts.completed or 0) < 4:  # type: ignore[union-attr]
        assert time.monotonic() < deadline
        time.sleep(0.05)
    with _frozen(api):
        before = client.batches.retrieve(running.id)
        assert before.status == "in_progress"
        time.sleep(3 * 0.5)  # three of the runner's ticks, had it run
        still = client.batches.retrieve(running.id)
        # The same counts: the answer is what the frozen runner last published, read from
        # the database by the API's own process.
        assert still.status == "in_progress" and still.request_counts == before.request_counts
        assert [b.id for b in client.batches.list()] == [running.id]
        assert client.files.retrieve(small).id == small
        status = httpx.get(api.base_url + "/vbatch/status", timeout=10,
                           headers={"Authorization": f"Bearer {KEYS[0]}"}).json()  # fmt: skip
        assert [b["id"] for b in status["batches"]] == [running.id]
        assert status["window"] == 2 and status["fleet"]["up"] == 1
        # A new batch and a cancel go into the database; nobody acts on them yet.
        created = client.batches.create(input_file_id=small, endpoint=CHAT,
                                        completion_window="24h")  # fmt: skip
        assert created.status == "validating"
        cancelling = client.batches.cancel(running.id)
        assert cancelling.status == "cancelling" and cancelling.cancelling_at is not None
        time.sleep(2 * 0.5)
        assert client.batches.retrieve(created.id).status == "validating"
        assert client.batches.retrieve(running.id).status == "cancelling"
    # Running again, the runner starts the new batch and applies the cancel; no poll sees the
    # cancelled batch in progress again, and its counts never go back.
    seen = []
    deadline = time.monotonic() + 60
    while (batch := client.batches.retrieve(running.id)).status not in ("cancelled", "failed"):
        assert batch.request_counts is not None
        seen.append((batch.status, batch.request_counts.completed))
        assert time.monotonic() < deadline, batch
        time.sleep(0.02)
    assert {status for status, _ in seen} <= {"cancelling"}
    assert [n for _, n in seen] == sorted(n for _, n in seen)
    assert batch.status == "cancelled" and batch.cancelling_at == cancelling.cancelling_at
    assert batch.request_counts is not None and batch.request_counts.completed < 400
    assert wait_done(client, created.id).status == "completed"


def test_the_api_process_ends_with_the_service(
    server_process: ServerProcess, tmp_path: Path
) -> None:
    args = ("--base-url", server_process.base_url)
    # Stopped (SIGTERM): the API's process first, then the service, cleanly.
    api = ApiProcess(tmp_path / "one", *args).start()
    child = _api_child(api)
    api.stop()
    assert api.proc is not None and api.proc.returncode == 0, api.log()
    assert not child.is_running()
    # Killed outright: the kernel tells the API's process (PR_SET_PDEATHSIG), which ends too,
    # and the port is closed (nobody holds the socket any more).
    api = ApiProcess(tmp_path / "two", *args).start()
    child = _api_child(api)
    headers = {"Authorization": f"Bearer {KEYS[0]}"}
    assert httpx.get(api.base_url + "/files", headers=headers, timeout=10).status_code == 200
    api.kill()
    gone, alive = psutil.wait_procs([child], timeout=15)
    assert gone and not alive, "the API's process outlived the service"
    try:
        httpx.get(api.base_url + "/files", headers=headers, timeout=5)
    except httpx.ConnectError:
        pass
    else:
        raise AssertionError("something still answers on the service's port")


def test_the_service_stops_when_its_api_process_dies(
    server_process: ServerProcess, tmp_path: Path
) -> None:
    """A service nobody can reach is no service: it stops (its batches resume at its next
    start) and says why."""
    api = ApiProcess(tmp_path / "data", "--base-url", server_process.base_url).start()
    try:
        _api_child(api).kill()
        assert api.proc is not None
        assert api.proc.wait(30) == 2  # a VbatchError's exit status
        assert "the API's process ended" in api.log()
    finally:
        api.stop()
