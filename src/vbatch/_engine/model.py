"""The model a server will load: where its config and tokenizer are, and what its config tells
(context cap, the KV cache bytes one token takes, about how many weights it has) before any
weights are on disk."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .embedded import EMBEDDED_MODEL_NAME, ensure_embedded_model

__all__ = ["ModelFiles", "approx_params", "kv_bytes_per_token", "resolve_model"]


@dataclass(frozen=True)
class ModelFiles:
    """``arg`` is what vLLM is given (a path or hub id), ``served`` the name requests use."""

    arg: str
    served: str
    folder: Path | None  # holding config.json (and tokenizer.json), when it can be had
    config: dict[str, Any] = field(default_factory=dict)
    notes: tuple[str, ...] = ()


def resolve_model(model: str | None) -> ModelFiles:
    """``model`` (a folder or a Hugging Face id), or the embedded default (converted on first
    use) when None."""
    if model is None:
        embedded = ensure_embedded_model()
        return ModelFiles(str(embedded), EMBEDDED_MODEL_NAME, embedded, model_config(embedded))
    folder = model_files(model)
    notes: tuple[str, ...] = ()
    if folder is None:
        notes = (f"{model}'s config and tokenizer could not be read (not a folder, and not on "
                 "the Hugging Face Hub or in its cache): max_model_len is sized by bytes, "
                 "one server",)  # fmt: skip
    return ModelFiles(model, model, folder, model_config(folder), notes)


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
    """The model's config.json, or {} when there is none to read."""
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
