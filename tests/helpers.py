"""Helpers shared by the tests: JSONL files, the CLI runner, a recording retry policy and a
handle on the fake server running as a subprocess, and the start-then-kill of a long CLI run."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import vbatch
from vbatch._engine.server import ServerSpec
from vbatch._engine.shepherd import kill_all_but_trackers

FAKESERVER = str(Path(__file__).with_name("fakeserver.py"))
CLI_TIMEOUT_S = 60


class ServerProcess:
    """The fake server as a subprocess, driven over HTTP (``/_control``, ``/_stats``)."""

    def __init__(self, proc: subprocess.Popen[str], root_url: str) -> None:
        self.proc = proc
        self.root_url = root_url
        self.base_url = root_url + "/v1"
        self.port = int(root_url.rsplit(":", 1)[1])

    @classmethod
    def start(cls, port: int = 0, latency: str = "0.005,0.02") -> ServerProcess:
        proc = subprocess.Popen(
            [sys.executable, FAKESERVER, "--port", str(port), "--latency", latency],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.startswith("LISTENING "), f"fake server did not start: {line!r}"
        return cls(proc, line.split()[1])

    def kill(self) -> None:
        """SIGKILL: no goodbye to the connections it holds."""
        self.proc.kill()
        self.proc.wait()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()

    def _call(self, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(
            self.root_url + path, data=data, method="POST" if data else "GET"
        )
        with urllib.request.urlopen(req, timeout=10) as resp:
            result: dict[str, Any] = json.loads(resp.read())
        return result

    def stats(self) -> dict[str, Any]:
        return self._call("/_stats")

    def control(self, **settings: Any) -> dict[str, Any]:
        return self._call("/_control", settings)


class FastRetry:
    """A retry policy that records each delay instead of sleeping it."""

    def __init__(self, max_attempts: int = 4, wait_s: float = 0.001) -> None:
        self.delays: list[float] = []
        self.policy = vbatch.RetryPolicy(
            stop=vbatch.StopAfterAttempt(max_attempts),
            wait=lambda attempt: wait_s,
            sleep=self._sleep,
        )

    async def _sleep(self, delay: float) -> None:
        self.delays.append(delay)
        await asyncio.sleep(0)


# -- a stand-in for vLLM ------------------------------------------------------------------------

# A stand-in for vLLM's API server: forks a child (as vLLM forks its engine), then either
# serves /health or dies, as told. "deaf-MODE": MODE, ignoring SIGTERM (as vLLM's API process
# does while it waits for its engine to start).
FAKE_VLLM = """
import http.server, os, signal, sys, time
mode, port = sys.argv[1], int(sys.argv[2])
if os.fork() == 0:
    time.sleep(600)  # the "engine": must not outlive the server
    sys.exit(0)
if mode.startswith("deaf-"):
    mode = mode.removeprefix("deaf-")
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    print("deaf to SIG" + "TERM", flush=True)  # (the log's copy of this command is not)
if mode == "die":
    print("ValueError: model path does-not-exist is not valid", flush=True)
    sys.exit(3)
if mode == "env":
    print("KV=" + os.environ.get("VLLM_CPU_KVCACHE_SPACE", "unset"), flush=True)
    sys.exit(3)
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200 if mode == "ok" else 503); self.end_headers()
    def log_message(self, *a): pass
http.server.HTTPServer(("127.0.0.1", port), H).serve_forever()
"""


class FakeSpec(ServerSpec):
    def argv(self, port: int) -> list[str]:
        return [sys.executable, "-c", FAKE_VLLM, self.model, str(port)]


def crash_server(pid: int) -> None:
    """SIGKILL every process of the process group of ``pid`` (a vLLM server: its API process,
    its engine, the shepherd and its guard) at once: the server crashes. All but Python's
    resource trackers (``kill_all_but_trackers``): a SIGKILL to the whole group leaves vLLM's
    shared memory in /dev/shm, ~420 MB a CPU server: the suite's memory, on CI's machine."""
    with contextlib.suppress(ProcessLookupError):
        kill_all_but_trackers(os.getpgid(pid))


def is_vllm_server(cmdline: list[str]) -> bool:
    """Whether a process is vLLM's API server (not the shepherd vbatch runs it under, whose
    command line holds the server's)."""
    return cmdline[1:3] == ["-m", "vllm.entrypoints.openai.api_server"]


# -- helpers -----------------------------------------------------------------------------------


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """Every line of ``path``; fails on a torn or non-JSON line."""
    data = path.read_bytes()
    assert not data or data.endswith(b"\n"), f"{path} ends with a partial line"
    return [json.loads(line) for line in data.splitlines()]


def prompt_rows(n: int, prefix: str = "r", words: int = 5) -> list[dict[str, Any]]:
    """Rows whose prompt starts with their id (the fake server keys scripts on that word)."""
    filler = " ".join(f"w{k}" for k in range(words))
    return [{"id": f"{prefix}{i}", "prompt": f"{prefix}{i} {filler} {i}"} for i in range(n)]


def cli(*args: str, timeout: float = CLI_TIMEOUT_S) -> subprocess.CompletedProcess[str]:
    """``python -m vbatch run ARGS`` with output captured."""
    return subprocess.run(
        [sys.executable, "-m", "vbatch", "run", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


# -- interrupted runs --------------------------------------------------------------------------

ROWS = 3000  # rows of the interrupted runs (test_kill_resume, test_ctrl_c)


def run_args(base_url: str, inp: Path, out: Path, *extra: str, concurrency: int = 4) -> list[str]:
    """`vbatch run`'s arguments against a fake server: model smol, 4 tokens a reply."""
    return [str(inp), "-o", str(out), "--base-url", base_url, "--model", "smol",
            "--concurrency", str(concurrency), "--max-tokens", "4", *extra]  # fmt: skip


def big_run_args(server: ServerProcess, inp: Path, out: Path, *extra: str) -> list[str]:
    """The interrupted runs' command line: 32 in flight, the server adds 5-20 ms."""
    return run_args(server.base_url, inp, out, *extra, concurrency=32)


def count_lines(path: Path) -> int:
    try:
        return path.read_bytes().count(b"\n")
    except FileNotFoundError:
        return 0


def start_and_stop(
    server: ServerProcess, inp: Path, out: Path, sig: int, rng: random.Random, *extra: str
) -> tuple[int, str, int]:
    """Start the CLI, wait until the output holds a random number of lines, then send ``sig``.

    Returns the exit status, the stderr and the number of lines the kill point was aimed at."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "vbatch", "run", *big_run_args(server, inp, out, *extra)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    target = int(rng.uniform(0.05, 0.5) * ROWS)
    deadline = time.monotonic() + 60
    try:
        while count_lines(out) < target:
            _check_running(proc)
            assert time.monotonic() < deadline, "the run made no progress"
            time.sleep(0.005)
        time.sleep(rng.uniform(0.0, 0.1))
        _check_running(proc)
        proc.send_signal(sig)
        _, stderr = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    return proc.returncode, stderr, target


def _check_running(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is not None:
        _, stderr = proc.communicate()
        pytest.fail(f"the run ended (exit {proc.returncode}) before the kill point: {stderr}")


def preview_requests(job: Any) -> Iterator[Any]:
    """Every row's request, built without asking for a model: what sizing a server reads."""
    from vbatch._input.requests import RequestBuilder
    from vbatch._input.sources import open_source

    source = open_source(job.input, job.input_format)
    builder = RequestBuilder(source.path, job.defaults, job.fields, job.endpoint,
                             require_model=False)  # fmt: skip
    return (builder.build(row) for row in source.rows())


def post_json(url: str, body: dict[str, Any]) -> dict[str, Any]:
    """POST a JSON body to a server (real vLLM or the fake) and return its JSON reply."""
    import json
    import urllib.request

    request = urllib.request.Request(url, data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})  # fmt: skip
    with urllib.request.urlopen(request, timeout=60) as reply:
        result: dict[str, Any] = json.loads(reply.read())
        return result
