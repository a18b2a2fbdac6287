"""``--ray`` with no address: the cluster ``ray start`` noted on this machine, else a local Ray
instance started for the job (on loopback only, in a folder of its own, stopped after it); an
address with no cluster behind it fails at once. Sessions run in processes of their own
(session_probe.py), as ``vbatch`` does; the job runs real vLLM on the CPU."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import psutil
import pytest
from e2e.conftest import MAX_MODEL_LEN
from helpers import read_jsonl, write_jsonl

from onray.conftest import marked
from vbatch import LaunchError
from vbatch._fleet.ray import ray_session

PROBE = Path(__file__).with_name("session_probe.py")


def probe(address: str) -> dict[str, Any]:
    proc = subprocess.run([sys.executable, str(PROBE), address], capture_output=True,
                          text=True, timeout=180)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    facts: dict[str, Any] = json.loads(proc.stdout)
    return facts


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_no_cluster_starts_a_local_instance_on_loopback_and_stops_it(ray_tmpdir: Path) -> None:
    facts = probe("")
    assert facts["session"]["local"] is True
    assert facts["session"]["address"].startswith("127.0.0.1:")
    assert facts["nodes"] == ["127.0.0.1"] and facts["cpus"] >= 1
    assert facts["started"] == ["gcs_server", "raylet"]
    assert facts["off_loopback"] == []  # no socket of Ray's, nor the driver's, off loopback
    # Its files in a folder of its own, beside (not in) Ray's, and gone with it.
    assert len(facts["ray_tmpdir"]) == 1 and facts["ray_tmpdir"][0].startswith("vbatch-ray-")
    assert facts["left"] == [] and facts["ray_tmpdir_after"] == []
    assert facts["joined_after"] is False


def test_no_address_joins_the_cluster_ray_start_noted(ray_cluster: Any, ray_tmpdir: Path) -> None:
    (ray_tmpdir / "ray" / "ray_current_cluster").write_text(ray_cluster.address)
    facts = probe("")
    assert facts["session"] == {"address": ray_cluster.address, "local": False}
    assert facts["nodes"] == ["127.0.0.1"] * 3  # the head and its two workers
    assert facts["started"] == [] and facts["off_loopback"] == []
    assert facts["joined_after"] is False


async def test_an_address_with_no_cluster_fails_at_once(ray_tmpdir: Path) -> None:
    port = free_port()
    for address in (f"127.0.0.1:{port}", f"ray://127.0.0.1:{port}"):
        with pytest.raises(LaunchError, match="nothing answers there"):
            async with ray_session(address):
                pytest.fail("joined no cluster")
    # A note Ray kept of a cluster since gone (stopped without `ray stop`).
    (ray_tmpdir / "ray").mkdir()
    (ray_tmpdir / "ray" / "ray_current_cluster").write_text(f"127.0.0.1:{port}")
    with pytest.raises(LaunchError, match=r"`ray start` last started.*`ray stop`"):
        async with ray_session(""):
            pytest.fail("joined no cluster")
    assert list(ray_tmpdir.iterdir()) == [ray_tmpdir / "ray"]  # and started nothing


ROWS = [{"id": f"r{i}", "prompt": f"Count to {i}:", "max_tokens": 8} for i in range(12)]


@pytest.mark.vllm
@pytest.mark.timeout(400)
def test_a_job_with_ray_and_no_cluster_runs_on_a_local_instance(
    ray_tmpdir: Path, tmp_path: Path
) -> None:
    inp = write_jsonl(tmp_path / "in.jsonl", ROWS)
    out = tmp_path / "out.jsonl"
    proc = subprocess.run([sys.executable, "-m", "vbatch", "run", str(inp), "-o", str(out),
                           "--temperature", "0", "--max-model-len", str(MAX_MODEL_LEN),
                           "--quiet", "--ray"], capture_output=True, text=True,
                          timeout=380)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    records = read_jsonl(out)
    assert sorted(r["id"] for r in records) == sorted(r["id"] for r in ROWS)
    assert all(r["error"] is None for r in records)
    # Ray's notices of what vbatch chose on purpose stay off the terminal.
    assert "SIGTERM" not in proc.stderr and "Token authentication" not in proc.stderr
    # The instance is gone with the job: no process of it (nor of its server), no file of it.
    _, left = psutil.wait_procs(marked(), timeout=15)
    assert [p.name() for p in left] == [] and list(ray_tmpdir.iterdir()) == []
