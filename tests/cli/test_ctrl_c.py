"""Ctrl-C: SIGINT mid-run stops the CLI with exit code 130, keeps only whole lines and what it
finished, and a second run completes the job."""

from __future__ import annotations

import json
import random
import signal
from pathlib import Path

from helpers import (
    ROWS,
    ServerProcess,
    big_run_args,
    cli,
    prompt_rows,
    read_jsonl,
    start_and_stop,
    write_jsonl,
)


def test_sigint_exits_130_and_resumes(server_process: ServerProcess, tmp_path: Path) -> None:
    rows = prompt_rows(ROWS)
    inp = write_jsonl(tmp_path / "in.jsonl", rows)
    out = tmp_path / "out.jsonl"
    metrics = tmp_path / "m.json"

    status, stderr, target = start_and_stop(
        server_process, inp, out, signal.SIGINT, random.Random(7), "--metrics-json", str(metrics)
    )

    assert status == 130, stderr
    assert "interrupted" in stderr
    assert "Traceback" not in stderr
    kept = read_jsonl(out)  # only whole lines: the sink was flushed and closed
    assert target <= len(kept) < ROWS
    assert len({r["id"] for r in kept}) == len(kept)
    data = json.loads(metrics.read_text())
    assert data["interrupted"] is True
    assert data["done"] >= len(kept)
    sent_before = server_process.stats()["generation_requests"]

    resumed = cli(*big_run_args(server_process, inp, out, "-q"))

    assert resumed.returncode == 0, resumed.stderr
    records = read_jsonl(out)
    assert sorted(r["id"] for r in records) == sorted(r["id"] for r in rows)
    assert server_process.stats()["generation_requests"] - sent_before == ROWS - len(kept)
