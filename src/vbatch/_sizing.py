"""What a job needs of a model: its prompts' lengths in the model's tokens, the model's config,
and the KV cache bytes one token takes.

``--max-model-len`` comes from the data: the longest prompt in tokens plus the largest
``max_tokens`` any row asks for, capped by the model's ``max_position_embeddings``. Prompts are
counted with the model's own tokenizer (``tokenizer.json``, of a local folder or from the Hugging
Face Hub), in batches the Rust tokenizer spreads over the cores, skipping those whose UTF-8
length cannot beat the longest found so far (a byte-level BPE token is at least one byte). Chat
rows add a bound for the chat template's tokens.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ._job import Job
from ._models import CHAT
from ._requests import RequestBuilder
from ._sources import open_source

__all__ = [
    "InputMeasure",
    "approx_params",
    "kv_bytes_per_token",
    "measure_input",
    "model_config",
    "model_files",
]

# Chat template tokens around the messages: role markers, a default system prompt (SmolLM2's
# is ~20 tokens), the generation prompt. A bound, not a count.
CHAT_OVERHEAD_TOKENS = 64
CHAT_TOKENS_PER_MESSAGE = 8
# Prompts counted per call to the tokenizer (it spreads each batch over the cores).
TOKENIZE_BATCH = 4096


@dataclass
class InputMeasure:
    rows: int = 0
    max_prompt_tokens: int = 0
    max_needed_tokens: int = 0  # prompt + max_tokens, over rows (0: some row has no max_tokens)
    unbounded_rows: int = 0  # rows with no max_tokens at all


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


def model_config(model_dir: Path | None) -> dict[str, Any]:
    if model_dir is None or not (model_dir / "config.json").exists():
        return {}
    with open(model_dir / "config.json") as f:
        config: dict[str, Any] = json.load(f)
    return config


def _kv_shape(config: dict[str, Any]) -> tuple[int, int, int] | None:
    """A plain decoder's (layers, KV heads, head size), head size from hidden/heads when the
    config does not give it; None for MLA and for fields missing or not positive integers."""
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
    return layers, kv_heads, head_dim  # type: ignore[return-value]


def kv_bytes_per_token(config: dict[str, Any]) -> int | None:
    """KV cache bytes one token takes (16-bit), for a plain decoder config; None for shapes this
    simple count would get wrong (MLA, nested multimodal configs, missing fields)."""
    shape = _kv_shape(config)
    if shape is None:
        return None
    layers, kv_heads, head_dim = shape
    return 2 * layers * kv_heads * head_dim * 2


# The config fields ``approx_params`` needs besides the KV shape.
_PARAM_FIELDS = ("hidden_size", "num_attention_heads", "intermediate_size", "vocab_size")


def approx_params(config: dict[str, Any]) -> int | None:
    """About how many weights a plain decoder has (attention, gated MLP, embeddings), from its
    config alone, so it works before (or without) any weights are on disk; None for shapes this
    count would get wrong (mixture of experts, MLA, nested multimodal configs, missing fields)."""
    shape = _kv_shape(config)
    sizes = [config.get(key) for key in _PARAM_FIELDS]
    if shape is None or not all(isinstance(v, int) and v > 0 for v in sizes):
        return None
    if "num_experts" in config or "num_local_experts" in config:
        return None
    layers, kv_heads, head_dim = shape
    hidden, heads, mlp, vocab = (int(v) for v in sizes)  # type: ignore[arg-type]
    attention = 2 * hidden * heads * head_dim + 2 * hidden * kv_heads * head_dim  # q, o; k, v
    embeddings = vocab * hidden * (1 if config.get("tie_word_embeddings") else 2)
    return layers * (attention + 3 * hidden * mlp) + embeddings


def model_files(model: str) -> Path | None:
    """The folder with ``model``'s config and tokenizer: the model itself when it is a folder,
    else a Hugging Face id's snapshot; None when neither can be had."""
    return Path(model) if Path(model).is_dir() else _hub_snapshot(model)
