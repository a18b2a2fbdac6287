"""kill -9 of the service mid-batch, three times: started again on the same data folder it
goes on where the batch's files end, and they hold every custom_id exactly once; a client
polling the batch never sees its counts go back, across the kills included."""

from __future__ import annotations

import itertools
import random
import time
from pathlib import Path

import openai
import pytest
from helpers import ServerProcess

from service.apiproc import (
    KEYS,
    ApiProcess,
    batch_lines,
    content_lines,
    upload,
    wait_done,
    write_lines,
)

ROWS = 3000


def _wait_for(api: ApiProcess, batch_id: str, completed: int, seen: list[tuple[int, int]]) -> None:
    client = api.client()
    deadline = time.monotonic() + 60
    while True:
        batch = client.batches.retrieve(batch_id)
        assert batch.status == "in_progress" or batch.status == "validating", batch
        if batch.request_counts is not None:
            seen.append((batch.request_counts.completed, batch.request_counts.failed))
        if batch.request_counts is not None and batch.request_counts.completed >= completed:
            return
        assert time.monotonic() < deadline, "the batch made no progress"
        time.sleep(0.02)


def test_kill_9_three_times_loses_and_repeats_nothing(
    server_process: ServerProcess, tmp_path: Path
) -> None:
    failing = {f"r{i}" for i in range(5, ROWS, 250)}
    # Refused on every try: a failing row in flight at a kill is sent again, and must fail again.
    server_process.control(scripts={key: [400] * 5 for key in failing})
    rng = random.Random(14)
    data = tmp_path / "data"
    args = ("--base-url", server_process.base_url, "--concurrency", "8")
    api = ApiProcess(data, *args).start()
    try:
        client = api.client()
        file_id = upload(client, write_lines(tmp_path / "in.jsonl", batch_lines(ROWS)))
        batch_id = client.batches.create(input_file_id=file_id, endpoint="/v1/chat/completions",
                                         completion_window="24h").id  # fmt: skip
        seen: list[tuple[int, int]] = []  # (completed, failed) as a poller saw them
        for target in (0.15, 0.4, 0.65):
            _wait_for(api, batch_id, int((target + rng.uniform(0, 0.1)) * ROWS), seen)
            api.kill()
            api = ApiProcess(data, *args).start()
        client = api.client()
        deadline = time.monotonic() + 120
        while (batch := client.batches.retrieve(batch_id)).status != "completed":
            assert batch.status in ("in_progress", "finalizing"), batch
            assert batch.request_counts is not None
            seen.append((batch.request_counts.completed, batch.request_counts.failed))
            assert time.monotonic() < deadline
            time.sleep(0.1)
        for before, after in itertools.pairwise(seen):
            assert after[0] >= before[0] and after[1] >= before[1], (before, after)
        outputs = content_lines(client, batch.output_file_id)
        errors = content_lines(client, batch.error_file_id)
        seen = [line["custom_id"] for line in outputs + errors]
        assert sorted(seen) == sorted(f"r{i}" for i in range(ROWS))  # each exactly once
        assert {e["custom_id"] for e in errors} == failing
        counts = batch.request_counts
        assert counts is not None
        assert (counts.total, counts.completed, counts.failed) == (
            ROWS, ROWS - len(failing), len(failing))  # fmt: skip
        # The rows in flight at each kill were sent again: more requests than rows, not
        # more lines.
        assert server_process.stats()["generation_requests"] >= ROWS
        for path in data.rglob("*"):
            if path.is_file():
                assert not any(key.encode() in path.read_bytes() for key in KEYS), path
    finally:
        api.stop()
    assert api.proc is not None and api.proc.returncode == 0  # SIGTERM: a clean stop


def test_deleting_a_running_batchs_input_loses_nothing_across_a_restart(
    server_process: ServerProcess, tmp_path: Path
) -> None:
    """The file object goes at once, as in OpenAI's API; the bytes stay until the batch ends,
    whether or not the service restarts meanwhile, and go then."""
    rows = 400
    server_process.control(latency=0.01)
    data = tmp_path / "data"
    args = ("--base-url", server_process.base_url, "--concurrency", "4")
    api = ApiProcess(data, *args).start()
    try:
        client = api.client()
        file_id = upload(client, write_lines(tmp_path / "in.jsonl", batch_lines(rows)))
        stored = data / "files" / file_id
        assert stored.exists()
        batch_id = client.batches.create(input_file_id=file_id, endpoint="/v1/chat/completions",
                                         completion_window="24h").id  # fmt: skip
        _wait_for(api, batch_id, rows // 10, [])
        assert client.files.delete(file_id).deleted
        with pytest.raises(openai.NotFoundError):
            client.files.retrieve(file_id)
        assert file_id not in [f.id for f in client.files.list()]
        assert stored.exists(), "a running batch's input went with its file object"
        api.kill()
        api = ApiProcess(data, *args).start()
        batch = wait_done(api.client(), batch_id, timeout_s=120)
        assert batch.status == "completed", batch.errors
        assert batch.request_counts is not None and batch.request_counts.completed == rows
        outputs = content_lines(api.client(), batch.output_file_id)
        assert sorted(o["custom_id"] for o in outputs) == sorted(f"r{i}" for i in range(rows))
        assert not stored.exists(), "the input's bytes outlived the batch"
    finally:
        api.stop()
