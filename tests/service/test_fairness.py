"""Batches share the service's one window in turn: a small batch submitted behind a big one
finishes first, and metadata["vbatch_priority"] weights the share."""

from __future__ import annotations

import time
from pathlib import Path

from helpers import ServerProcess

from service.apiproc import batch_lines, upload, wait_done, write_lines
from service.conftest import StartApi

CHAT = "/v1/chat/completions"


def test_a_small_batch_behind_a_big_one_finishes_first(
    start_api: StartApi, server_process: ServerProcess, tmp_path: Path
) -> None:
    server_process.control(latency=0.05)
    client = start_api("--concurrency", "2").client()
    big_file = upload(client, write_lines(tmp_path / "big.jsonl", batch_lines(400, "big")))
    small_file = upload(client, write_lines(tmp_path / "small.jsonl", batch_lines(20, "s")))
    big = client.batches.create(input_file_id=big_file, endpoint=CHAT, completion_window="24h")
    while (client.batches.retrieve(big.id).request_counts.completed or 0) < 10:  # type: ignore[union-attr]
        time.sleep(0.02)
    small = client.batches.create(input_file_id=small_file, endpoint=CHAT,
                                  completion_window="24h")  # fmt: skip
    assert wait_done(client, small.id).status == "completed"
    big_now = client.batches.retrieve(big.id)
    assert big_now.status == "in_progress"
    assert big_now.request_counts is not None and big_now.request_counts.completed < 200
    client.batches.cancel(big.id)
    wait_done(client, big.id)


def test_priority_weights_the_share(
    start_api: StartApi, server_process: ServerProcess, tmp_path: Path
) -> None:
    # A slow server until both batches are in: neither gets a head start.
    server_process.control(latency=0.05)
    client = start_api("--concurrency", "2").client()
    ids = {}
    for name, priority in (("low", "1"), ("high", "3")):
        file_id = upload(client, write_lines(tmp_path / f"{name}.jsonl",
                                             batch_lines(120, name)))  # fmt: skip
        ids[name] = client.batches.create(input_file_id=file_id, endpoint=CHAT,
                                          completion_window="24h",
                                          metadata={"vbatch_priority": priority}).id  # fmt: skip
    assert wait_done(client, ids["high"]).status == "completed"
    low = client.batches.retrieve(ids["low"])
    assert low.request_counts is not None
    # 3 to 1: about 40 of low's rows by the time high's 120 are done; equal shares would
    # have it near 120 too.
    assert low.request_counts.completed < 80, low.request_counts
    assert wait_done(client, ids["low"]).status == "completed"
