"""Crash safety: SIGKILL the CLI at a random moment mid-run, run it again, and the output must hold
every input id exactly once with no torn line. The fake server runs in its own process so it
outlives the client and counts exactly what the resumed run sends."""

from __future__ import annotations

import json
import random
import signal
from pathlib import Path
from typing import Any

import pytest
from fakeserver import completion_text
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


def _whole_lines(out: Path) -> list[dict[str, Any]]:
    """The complete lines of an output a killed run left; each must parse."""
    data = out.read_bytes()
    whole = data[: data.rfind(b"\n") + 1]
    return [json.loads(line) for line in whole.splitlines()]


@pytest.mark.parametrize("seed", [11, 22, 33])
def test_sigkill_then_resume(server_process: ServerProcess, tmp_path: Path, seed: int) -> None:
    rng = random.Random(seed)
    rows = prompt_rows(ROWS)
    inp = write_jsonl(tmp_path / "in.jsonl", rows)
    out = tmp_path / "out.jsonl"

    status, stderr, target = start_and_stop(server_process, inp, out, signal.SIGKILL, rng, "-q")

    assert status == -signal.SIGKILL, stderr
    kept = _whole_lines(out)
    assert target <= len(kept) < ROWS, "the kill did not land mid-run"
    kept_ids = [r["id"] for r in kept]
    assert len(kept_ids) == len(set(kept_ids)), "an id was written twice before the kill"
    sent_before = server_process.stats()["generation_requests"]
    assert sent_before >= len(kept)

    resumed = cli(*big_run_args(server_process, inp, out, "-q"))

    assert resumed.returncode == 0, resumed.stderr
    records = read_jsonl(out)  # every line parses, the file ends with a newline
    ids = [r["id"] for r in records]
    assert len(ids) == ROWS
    assert set(ids) == {r["id"] for r in rows}
    prompts = {r["id"]: r["prompt"] for r in rows}
    assert all(
        r["error"] is None and r["text"] == completion_text(prompts[r["id"]]) for r in records
    )
    assert records[: len(kept)] == kept, "resume rewrote lines the killed run had finished"
    # The resumed run sent exactly the rows the output lacked, nothing twice.
    sent_after = server_process.stats()["generation_requests"] - sent_before
    assert sent_after == ROWS - len(kept)
