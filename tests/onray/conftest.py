"""A real Ray cluster for the Ray tests: a head and two worker nodes on this machine, on loopback
only, started by the tests and torn down after each.

Kept on 127.0.0.1 by giving each node that address (``node_ip_address``; Ray's servers bind to
the node's address) and no dashboard; usage stats off (they would call out). The driver (the
``vbatch`` under test) joins by ``127.0.0.1:PORT``, which vbatch keeps on loopback
(_fleet/ray/cluster.py says how). Each worker offers one CPU, so the fleet places one CPU vLLM
server per worker: two servers at most, which is what this machine's memory allows. The head
offers none, so that the tests can remove either member's node (a cluster keeps its head).
Tests of ``--ray`` with no cluster to join take ``ray_tmpdir`` alone: the same settings and a
Ray folder of their own, and no cluster.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
from e2e.conftest import E2E_HOME
from helpers import is_vllm_server

LOOPBACK = "127.0.0.1"


def ray_env() -> dict[str, str]:
    return {
        "RAY_USAGE_STATS_ENABLED": "0",
        # Ray's memory monitor kills (and so restarts) the newest workers once the machine's
        # memory is 95% used; on a machine shared with other test runs that is our members,
        # over and over. The tests are about the deaths they cause themselves.
        "RAY_memory_monitor_refresh_ms": "0",
        "VBATCH_HOME": str(E2E_HOME),
        "HF_HUB_OFFLINE": "1",
    }


@pytest.fixture
def ray_tmpdir(monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """What each Ray test runs in: ``ray_env``, no cluster named (no $RAY_ADDRESS), and a Ray
    folder of its own ($RAY_TMPDIR, yielded), so that nothing of Ray's stays where a user's
    own ``ray.init()`` would find it, nor is found there. Whatever the test started (marked,
    see _end_marked) is ended after it."""
    for name, value in ray_env().items():
        monkeypatch.setenv(name, value)  # Ray's processes, started from here, inherit it
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    # ... and this mark, which the servers' engine processes inherit too: see _end_marked.
    mark = uuid.uuid4().hex
    monkeypatch.setenv("VBATCH_TEST_MARK", mark)
    E2E_HOME.mkdir(parents=True, exist_ok=True)
    # Short: Ray's unix sockets live below it, and their paths are limited to ~100 bytes.
    temp_dir = tempfile.mkdtemp(prefix="vbray-", dir="/tmp")
    # Ray notes the newest cluster's address in $RAY_TMPDIR/ray (else /tmp/ray), where
    # `ray.init()` looks for a cluster to join.
    monkeypatch.setenv("RAY_TMPDIR", temp_dir)
    try:
        yield Path(temp_dir)
    finally:
        _end_marked(mark)
        shutil.rmtree(temp_dir, ignore_errors=True)


@pytest.fixture
def ray_cluster(ray_tmpdir: Path) -> Iterator[Any]:
    try:
        from ray.cluster_utils import Cluster
    except ImportError:  # a failure, not a skip: CI must run these
        pytest.fail("the Ray tests need Ray: pip install -e '.[ray]' (make venv does)")
    (ray_tmpdir / "ray").mkdir()  # where Ray's note goes, which it expects to exist
    node: dict[str, Any] = {"node_ip_address": LOOPBACK, "temp_dir": str(ray_tmpdir)}
    head = {**node, "num_cpus": 0, "include_dashboard": False}
    # Servers already running (the e2e tests' shared one) are not this cluster's to end.
    before = {proc.pid for proc in _vllm_servers()}
    cluster = Cluster(initialize_head=True, head_node_args=head)
    try:
        for _ in range(2):
            cluster.add_node(**node, num_cpus=1)
        yield cluster
    finally:
        servers = [proc for proc in _vllm_servers() if proc.pid not in before]
        cluster.shutdown()
        _end(servers)  # they end with their members; vLLM may take a few seconds to


def _vllm_servers() -> list[psutil.Process]:
    found = []
    for proc in psutil.Process().children(recursive=True):
        with contextlib.suppress(psutil.Error):
            if is_vllm_server(proc.cmdline()):
                found.append(proc)
    return found


def _end(servers: list[psutil.Process], grace_s: float = 30.0) -> None:
    """Wait for ``servers`` to exit; then end what is left of each (its process group)."""
    _, alive = psutil.wait_procs(servers, timeout=grace_s)
    for proc in alive:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(os.getpgid(proc.pid), signal.SIGKILL)


def marked(mark: str | None = None) -> list[psutil.Process]:
    """The processes started under this test's ``ray_tmpdir`` (they inherit its mark) still
    running: Ray's, and the vLLM servers' it started."""
    mark = mark or os.environ["VBATCH_TEST_MARK"]
    found = []
    for proc in psutil.process_iter():
        with contextlib.suppress(psutil.Error):
            if (proc.pid != os.getpid() and proc.status() != psutil.STATUS_ZOMBIE
                    and proc.environ().get("VBATCH_TEST_MARK") == mark):  # fmt: skip
                found.append(proc)
    return found


def _end_marked(mark: str) -> None:
    """End whatever this cluster started that is still running. A node removed mid-test takes
    its members' servers down with it (each server's shepherd ends its process group when the
    member dies); before the shepherd, the engine process of such a server lived on here,
    reparented to init, holding its KV cache's memory. This is the net should anything else."""
    left = marked(mark)
    for proc in left:
        with contextlib.suppress(psutil.Error):
            proc.kill()
    psutil.wait_procs(left, timeout=10)
