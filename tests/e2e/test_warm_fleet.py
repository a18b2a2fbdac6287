"""A warm fleet of real vLLM (CPU build, embedded SmolLM2): kept after a run, used by the next
without starting vLLM, listed by ``vbatch ps`` and stopped by ``vbatch stop``."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import read_jsonl, write_jsonl

from .test_real_vllm import mark, vbatch, vllm_processes

pytestmark = pytest.mark.vllm
__all__ = ["mark"]  # the fixture, imported to be used here


def _vbatch(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "vbatch", *args], capture_output=True,
                          text=True, timeout=120)  # fmt: skip


def test_a_warm_fleet_serves_the_next_run_and_stops_when_told(tmp_path: Path, mark: str) -> None:
    rows = [{"id": f"r{i}", "prompt": f"Count to {i}:"} for i in range(6)]
    inp = write_jsonl(tmp_path / "in.jsonl", rows)
    common = ("--max-tokens", "8", "--temperature", "0")
    try:
        first = vbatch(str(inp), "-o", str(tmp_path / "a.jsonl"), *common, "--keep-alive", "10m")
        assert first.returncode == 0, first.stderr
        assert "starting a warm fleet (kept 600s after the run" in first.stderr
        servers = vllm_processes(mark)
        assert servers, "the warm fleet's servers ended with the run"

        (fleet,) = [json.loads(line) for line in _vbatch("ps", "--json").stdout.splitlines()]
        assert fleet["model"] == "SmolLM2-135M-Instruct" and fleet["state"] == "up"
        assert fleet["users"] == [] and fleet["idle_s"] is not None
        assert fleet["keep_alive_s"] == 600 and fleet["context"] == 512

        # No --keep-alive: the next run uses what is there, and leaves it there.
        second = vbatch(str(inp), "-o", str(tmp_path / "b.jsonl"), *common)
        assert second.returncode == 0, second.stderr
        assert "using the warm fleet of keeper pid" in second.stderr
        assert "starting" not in second.stderr
        assert vllm_processes(mark) == servers  # nothing started, nothing stopped
        texts = [{r["id"]: r["text"] for r in read_jsonl(tmp_path / out)}
                 for out in ("a.jsonl", "b.jsonl")]  # fmt: skip
        assert texts[0] == texts[1] and len(texts[0]) == len(rows)

        stopped = _vbatch("stop")
        assert stopped.returncode == 0, stopped.stderr
        deadline = time.monotonic() + 30
        while vllm_processes(mark) and time.monotonic() < deadline:
            time.sleep(0.5)
        assert not vllm_processes(mark), "vbatch stop left vLLM processes"
        assert _vbatch("ps", "--json").stdout == ""
    finally:
        _vbatch("stop", "--all", "--force")
