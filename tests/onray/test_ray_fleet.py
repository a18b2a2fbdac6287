"""``vbatch run --ray`` on a real local Ray cluster (conftest.py) with real vLLM on the CPU: a
job over two members on two nodes, all on loopback; and a node killed mid-job."""

from __future__ import annotations

import contextlib
import ipaddress
import json
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import psutil
import pytest
from e2e.conftest import MAX_MODEL_LEN
from helpers import crash_server, is_vllm_server, read_jsonl, write_jsonl

from vbatch._engine.server import VllmServer

# Two vLLM servers start on two shared cores (~45 s), and a killed one starts again.
pytestmark = [pytest.mark.vllm, pytest.mark.timeout(540)]

ROWS = [{"id": f"r{i}", "prompt": f"Count to {i}:", "max_tokens": 16} for i in range(40)]
GREEDY = ["--temperature", "0", "--max-model-len", str(MAX_MODEL_LEN)]


def vbatch_run(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "vbatch", "run", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip


def raylet_pid(node: Any) -> int:
    return int(node.all_processes["raylet"][0].process.pid)


def servers_under(pid: int) -> list[psutil.Process]:
    """The vLLM API servers started below process ``pid`` (a node's raylet: by its members)."""
    found = []
    with contextlib.suppress(psutil.NoSuchProcess):
        for child in psutil.Process(pid).children(recursive=True):
            with contextlib.suppress(psutil.Error):
                if is_vllm_server(child.cmdline()):
                    found.append(child)
    return found


def _loopback(ip: str) -> bool:
    return ipaddress.ip_address(ip.removeprefix("::ffff:")).is_loopback


class SocketWatch:
    """Samples, until stopped, every inet socket of this test's processes (the cluster's nodes,
    their workers, the vLLM servers, the vbatch driver) and the node each server runs under."""

    def __init__(self, nodes: dict[str, int]) -> None:
        self.nodes = nodes  # name -> raylet pid
        self.outside: set[str] = set()
        self.sockets = 0
        self.servers: dict[str, set[int]] = {name: set() for name in nodes}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> SocketWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(0.5):
            for name, pid in self.nodes.items():
                self.servers[name] |= {p.pid for p in servers_under(pid)}
            for proc in psutil.Process().children(recursive=True):
                with contextlib.suppress(psutil.Error):
                    for conn in proc.net_connections(kind="inet"):
                        self.sockets += 1
                        for addr in (conn.laddr, conn.raddr):
                            if addr and not _loopback(addr.ip):
                                self.outside.add(f"{proc.name()} {conn.status} {addr.ip}")


def test_a_job_over_two_ray_nodes_equals_a_local_run_and_stays_on_loopback(
    ray_cluster: Any, vllm_server: VllmServer, tmp_path: Path
) -> None:
    inp = write_jsonl(tmp_path / "in.jsonl", ROWS)
    out, metrics = tmp_path / "out.jsonl", tmp_path / "metrics.json"
    nodes = {f"worker{k}": raylet_pid(node) for k, node in enumerate(ray_cluster.worker_nodes)}
    with SocketWatch(nodes) as watch:
        run = vbatch_run(str(inp), "-o", str(out), *GREEDY, "--metrics-json", str(metrics),
                         f"--ray={ray_cluster.address}")  # fmt: skip
        _, stderr = run.communicate(timeout=540)
    assert run.returncode == 0, stderr
    assert watch.sockets > 0 and watch.outside == set(), watch.outside
    # A server on each node, started by its member there: Ray spread the two members. (A node
    # may have had a second one, one after the other: its member restarted, which a loaded
    # machine can cause; the summary says why.)
    summary = json.loads(metrics.read_text())
    seen = (watch.servers, summary["restart_reasons"], stderr[-3000:])
    assert all(pids for pids in watch.servers.values()), seen
    assert summary["failed"] == 0
    records = read_jsonl(out)
    assert sorted(r["id"] for r in records) == sorted(r["id"] for r in ROWS)  # each once
    assert all(r["error"] is None for r in records)
    time.sleep(1)
    assert all(servers_under(pid) == [] for pid in nodes.values()), "a server outlived the job"

    # The same rows through the session's one local server (same model, same context).
    local = tmp_path / "local.jsonl"
    proc = subprocess.run([sys.executable, "-m", "vbatch", "run", str(inp), "-o", str(local),
                           "--temperature", "0", "--base-url", vllm_server.base_url],
                          capture_output=True, text=True, timeout=540)  # fmt: skip
    assert proc.returncode == 0, proc.stderr

    def content(path: Path) -> dict[str, Any]:
        return {r["id"]: (r["text"], r["finish_reason"], r["usage"]) for r in read_jsonl(path)}

    assert content(out) == content(local)


SLOW_ROWS = [{"id": f"s{i}", "prompt": f"Count to {i}:", "max_tokens": 16} for i in range(400)]


def test_a_node_killed_mid_job_loses_nothing(ray_cluster: Any, tmp_path: Path) -> None:
    inp = write_jsonl(tmp_path / "in.jsonl", SLOW_ROWS)
    out, metrics = tmp_path / "out.jsonl", tmp_path / "metrics.json"
    raylets = {raylet_pid(node): node for node in ray_cluster.worker_nodes}
    run = vbatch_run(str(inp), "-o", str(out), *GREEDY, "--metrics-json", str(metrics),
                     "--concurrency", "4", "--extra-body", '{"ignore_eos": true}',
                     f"--ray={ray_cluster.address}", "--quiet")  # fmt: skip
    try:
        # The node of the first server to serve goes, with rows in flight on it (see _serving).
        victim = _serving(list(raylets), out, run)
        assert out.read_bytes().count(b"\n") < len(SLOW_ROWS), "the job ended before the kill"
        node = next(raylets[r] for r in raylets if victim in servers_under(r))
        # The node goes: its raylet and everything Ray runs on it; its member's server with it.
        ray_cluster.remove_node(node, allow_graceful=False)
        _, stderr = run.communicate(timeout=540)
    finally:
        if run.poll() is None:
            run.kill()
    assert run.returncode == 0, stderr
    assert not victim.is_running() or victim.status() == psutil.STATUS_ZOMBIE
    records = read_jsonl(out)
    assert sorted(r["id"] for r in records) == sorted(r["id"] for r in SLOW_ROWS)  # each once
    assert all(r["error"] is None for r in records), [r for r in records if r["error"]][:3]
    assert all(r["usage"]["completion_tokens"] == 16 for r in records)
    summary = json.loads(metrics.read_text())
    assert summary["failed"] == 0


def test_a_member_whose_server_dies_is_restarted_by_ray(ray_cluster: Any, tmp_path: Path) -> None:
    rows = SLOW_ROWS
    inp = write_jsonl(tmp_path / "in.jsonl", rows)
    out, metrics = tmp_path / "out.jsonl", tmp_path / "metrics.json"
    raylets = [raylet_pid(node) for node in ray_cluster.worker_nodes]
    run = vbatch_run(str(inp), "-o", str(out), *GREEDY, "--metrics-json", str(metrics),
                     "--concurrency", "2", "--extra-body", '{"ignore_eos": true}',
                     f"--ray={ray_cluster.address}", "--quiet")  # fmt: skip
    try:
        # The first server to serve is the victim, killed a few rows in (see _serving).
        victim = _serving(raylets, out, run, rows=5)
        before = {p.pid for raylet in raylets for p in servers_under(raylet)}
        crash_server(victim.pid)  # the server and its engine, no goodbye
        # Ray starts the member again (on its node while that has the CPU), and with it a new
        # server. (Whether that one is up before the job ends depends on the machine's speed:
        # not asserted.)
        deadline = time.monotonic() + 300
        while not {p.pid for raylet in raylets for p in servers_under(raylet)} - before:
            assert run.poll() is None, "the job ended before Ray restarted the member"
            assert time.monotonic() < deadline, "Ray did not restart the member"
            time.sleep(0.5)
        _, stderr = run.communicate(timeout=540)
    finally:
        if run.poll() is None:
            run.kill()
    assert run.returncode == 0, stderr
    records = read_jsonl(out)
    assert sorted(r["id"] for r in records) == sorted(r["id"] for r in rows)  # each once
    assert all(r["error"] is None for r in records), [r for r in records if r["error"]][:3]
    assert json.loads(metrics.read_text())["failed"] == 0


def _serving(
    raylets: list[int], out: Path, run: subprocess.Popen[str], rows: int = 20
) -> psutil.Process:
    """The first healthy server of a member under one of ``raylets`` (nodes), once the job has
    written ``rows`` rows. The first: on two shared cores one server may be up a minute before
    the other, and the job can go on without that one only once the other is up too, so the
    job cannot end before what the test does to it. (Waiting for a given node's server
    instead, the other server sometimes did the whole job first.)"""
    deadline = time.monotonic() + 400
    while True:
        done = out.read_bytes().count(b"\n") if out.exists() else 0
        if done >= rows:
            for raylet in raylets:
                for server in servers_under(raylet):
                    if _healthy(server):
                        return server
        assert run.poll() is None, run.communicate()[1]
        assert time.monotonic() < deadline, "no member served"
        time.sleep(0.5)


def _healthy(server: psutil.Process) -> bool:
    import urllib.request

    with contextlib.suppress(psutil.Error):
        for conn in server.net_connections(kind="inet"):
            if conn.status == psutil.CONN_LISTEN:
                url = f"http://{conn.laddr.ip}:{conn.laddr.port}/health"
                with contextlib.suppress(OSError), urllib.request.urlopen(url, timeout=2) as r:
                    return bool(r.status == 200)
    return False


def test_a_server_that_cannot_start_fails_the_run_with_its_log(
    ray_cluster: Any, tmp_path: Path
) -> None:
    inp = write_jsonl(tmp_path / "in.jsonl", ROWS[:2])
    run = vbatch_run(str(inp), "-o", str(tmp_path / "out.jsonl"), *GREEDY, "--model",
                     str(tmp_path / "no-such-model"), f"--ray={ray_cluster.address}")  # fmt: skip
    _, stderr = run.communicate(timeout=300)
    assert run.returncode == 2, stderr  # nothing sent
    assert "before it was ready" in stderr and "--- last lines of the log ---" in stderr
    assert "no-such-model" in stderr
