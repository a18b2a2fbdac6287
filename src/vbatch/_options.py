"""The library's keyword options, typed: ``vbatch.run("in.jsonl", "out.jsonl", max_tokenz=5)``
is a type error under ``mypy --strict`` and a ``TypeError`` at run time.

Each keyword is a field of one frozen option group, declared there once with its default and
check: ``RequestDefaults`` (model and sampling), ``FieldMap`` (where rows keep things), ``Job``
(how the job reads and writes), ``ClientOptions`` (how vbatch talks to servers) and
``LaunchOptions`` (how it starts vLLM). ``Options`` lists them for the type checker (a test
locks it to the groups' fields); ``split_options`` files each keyword into its group.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypedDict

from ._config import (
    ClientOptions,
    EndpointMode,
    InputFormat,
    LaunchOptions,
    Order,
    OverflowPolicy,
)
from ._errors import ConfigError
from ._input.data import DataInput, data_input
from ._input.hub import is_dataset, open_dataset
from ._input.requests import FieldMap
from ._input.shard import Shard
from ._job import Job
from ._models import RequestDefaults

__all__ = ["ClientKeywords", "OptionGroups", "Options", "client_options", "split_options"]


class ClientKeywords(TypedDict, total=False):
    """``ClientOptions`` as keywords (``connect`` takes these)."""

    api_key: str | None
    concurrency: int | None
    timeout_s: float
    max_attempts: int
    down_timeout_s: float


class Options(ClientKeywords, total=False):
    """Every keyword option of ``run``/``arun``/``stream``, by group (see the module)."""

    # RequestDefaults
    model: str | None
    max_tokens: int | None
    temperature: float | None
    top_p: float | None
    n: int | None
    seed: int | None
    stop: str | Sequence[str] | None
    system: str | None
    extra_body: Mapping[str, Any]
    schema: Mapping[str, Any] | type | None  # a JSON schema, or a pydantic model class
    resend_cut_off: int | None
    # FieldMap
    id_field: str | None
    prompt_field: str
    messages_field: str
    template: str | None
    schema_field: str
    lora_field: str | None
    # Job
    input_format: InputFormat
    endpoint: EndpointMode
    order: Order
    on_overflow: OverflowPolicy
    overwrite: bool
    retry_failed: bool
    force: bool
    include_response: bool
    shard: Shard | str | tuple[int, int] | None
    split: str | None
    # LaunchOptions
    max_model_len: int | None
    max_num_seqs: int | None
    tensor_parallel_size: int | None
    data_parallel_size: int | None
    replicas: int | None
    gpu_memory_utilization: float | None
    dtype: str | None
    vllm_args: Sequence[str]
    host: str
    port: int
    startup_timeout_s: float
    max_restarts: int
    keep_alive_s: float
    lora: Mapping[str, str] | Sequence[str] | Sequence[tuple[str, str]]


def _names(cls: type) -> frozenset[str]:
    return frozenset(f.name for f in dataclasses.fields(cls))


_DEFAULTS = _names(RequestDefaults)
_FIELDS = _names(FieldMap)
_JOB = _names(Job) - {"input", "output", "defaults", "fields"}
_CLIENT = _names(ClientOptions)
_LAUNCH = _names(LaunchOptions)
GROUPS = {"RequestDefaults": _DEFAULTS, "FieldMap": _FIELDS, "Job": _JOB,
          "ClientOptions": _CLIENT, "LaunchOptions": _LAUNCH}  # fmt: skip


@dataclass(frozen=True)
class OptionGroups:
    job: Job
    client: ClientOptions
    launch: LaunchOptions


def split_options(
    input: str | os.PathLike[str] | Any,
    output: str | os.PathLike[str] | None,
    options: Mapping[str, Any],
    client: ClientOptions | None = None,
    launch: LaunchOptions | None = None,
) -> OptionGroups:
    """File each keyword into its group (over ``client``/``launch`` when given); the API key
    defaults to ``$OPENAI_API_KEY``. ``input`` is a path, or Python data (``_input/data.py``)."""
    unknown = set(options) - _DEFAULTS - _FIELDS - _JOB - _CLIENT - _LAUNCH
    if unknown:
        raise TypeError(f"unknown option(s): {', '.join(sorted(unknown))}")
    defaults = {k: v for k, v in options.items() if k in _DEFAULTS}
    if defaults.get("stop") is not None:
        stop = defaults["stop"]
        defaults["stop"] = (stop,) if isinstance(stop, str) else tuple(stop)
    if "extra_body" in defaults:
        defaults["extra_body"] = dict(defaults["extra_body"])
    job = {k: v for k, v in options.items() if k in _JOB}
    if job.get("shard") is not None:
        job["shard"] = Shard.parse(job["shard"])  # "I/N", (I, N) or a Shard
    client = client_options({k: v for k, v in options.items() if k in _CLIENT}, client)
    settings = {k: v for k, v in options.items() if k in _LAUNCH}
    if "vllm_args" in settings:
        settings["vllm_args"] = tuple(settings["vllm_args"])
    launch = dataclasses.replace(launch or LaunchOptions(), **settings)
    return OptionGroups(
        Job(
            input=_input(input, job.get("split")),
            output=os.fspath(output) if output is not None else None,
            defaults=RequestDefaults(**defaults),
            fields=FieldMap(**{k: v for k, v in options.items() if k in _FIELDS}),
            **job,
        ),
        client,
        launch,
    )


def _input(given: Any, split: str | None) -> str | DataInput:
    """A path stays a path; a dataset's path or Hub name, and Python data, are data."""
    path = os.fspath(given) if isinstance(given, (str, os.PathLike)) else None
    if path is not None and is_dataset(path):
        return open_dataset(path, split)
    if split is not None:
        raise ConfigError("split applies to a dataset (hf://datasets/NAME, or a folder written "
                          "by save_to_disk)")  # fmt: skip
    return path if path is not None else data_input(given)


def client_options(
    options: Mapping[str, Any], client: ClientOptions | None = None
) -> ClientOptions:
    """``ClientOptions`` from keywords (over ``client``); the API key defaults to
    ``$OPENAI_API_KEY``."""
    unknown = set(options) - _CLIENT
    if unknown:
        raise TypeError(f"unknown option(s): {', '.join(sorted(unknown))}")
    client = dataclasses.replace(client or ClientOptions(), **options)
    if client.api_key is None and os.environ.get("OPENAI_API_KEY"):
        client = dataclasses.replace(client, api_key=os.environ["OPENAI_API_KEY"])
    return client
