"""The CLI's flags, each declared once, grouped as ``vbatch run --help`` lists them. Defaults
come from where the library declares them (``_config``, ``Job``, ``FieldMap``,
``LaunchOptions``), so the CLI and the library cannot drift apart."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import click
import orjson

from .._config import (
    DEFAULT_CONCURRENCY,
    DEFAULT_MAX_ATTEMPTS,
    DEFAULT_TIMEOUT_S,
    DOWN_TIMEOUT_S,
    ENDPOINT_MODES,
    INPUT_FORMATS,
    ORDERS,
    OVERFLOW_POLICIES,
    LaunchOptions,
    parse_duration,
)
from .._engine.plan import CPU_MAX_NUM_SEQS, GPU_MEMORY_UTILIZATION
from .._errors import ConfigError
from .._input.requests import FieldMap
from .._input.shard import Shard
from .._job import Job

__all__ = [
    "client_options",
    "engine_options",
    "input_options",
    "keep_alive_option",
    "launch_options",
    "output_options",
    "request_options",
]

Decorator = Callable[[Callable[..., Any]], Callable[..., Any]]


def _group(options: list[Decorator]) -> Decorator:
    def apply(f: Callable[..., Any]) -> Callable[..., Any]:
        for option in reversed(options):
            f = option(f)
        return f

    return apply


def _shard(ctx: click.Context, param: click.Parameter, value: str | None) -> Shard | None:
    try:
        return None if value is None else Shard.parse(value)
    except ConfigError as exc:
        raise click.BadParameter(str(exc)) from None


def _ray_address(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    # An option whose value may be left out takes the next word as its value unless it starts
    # with "-": `--ray in.jsonl` would read the input as the address. Only address-like values
    # pass, so that mistake is named instead of tried.
    if value in (None, "", "auto") or (value and (value.startswith("ray://") or ":" in value)):
        return value
    raise click.BadParameter(f"{value!r} is not a Ray address (auto, HOST:PORT or "
                             "ray://HOST:PORT); write --ray=ADDRESS, or --ray last")  # fmt: skip


def _duration(ctx: click.Context, param: click.Parameter, value: str | None) -> float | None:
    try:
        return None if value is None else parse_duration(value)
    except ConfigError as exc:
        raise click.BadParameter(str(exc)) from None


def _json_object(ctx: click.Context, param: click.Parameter, value: str | None) -> Any:
    if value is None:
        return {}
    try:
        parsed = orjson.loads(value)
    except orjson.JSONDecodeError as exc:
        raise click.BadParameter(f"not valid JSON: {exc}") from None
    if not isinstance(parsed, dict):
        raise click.BadParameter("must be a JSON object")
    return parsed


def _json_schema(ctx: click.Context, param: click.Parameter, value: str | None) -> Any:
    if value is None:
        return None
    try:
        with open(value, "rb") as f:
            schema = orjson.loads(f.read())
    except OSError as exc:
        raise click.BadParameter(f"cannot read {value}: {exc.strerror}") from None
    except orjson.JSONDecodeError as exc:
        raise click.BadParameter(f"{value} is not JSON: {exc}") from None
    if not isinstance(schema, dict):
        raise click.BadParameter(f"{value} must hold a JSON schema (an object)")
    return schema


request_options = _group([
    click.option("--max-tokens", type=click.IntRange(min=1), help="Default max_tokens."),
    click.option("--temperature", type=float, help="Default temperature."),
    click.option("--top-p", type=float, help="Default top_p."),
    click.option("--n", "n", type=click.IntRange(min=1),
                 help="Completions per row (text becomes a list when > 1)."),
    click.option("--seed", type=int, help="Default sampling seed."),
    click.option("--stop", multiple=True, help="Stop string (repeat for several)."),
    click.option("--system", help="System message prepended to chat rows that have none."),
    click.option("--extra-body", callback=_json_object, metavar="JSON",
                 help="JSON object merged into every request body untouched, e.g. "
                      "'{\"ignore_eos\": true}'."),
    click.option("--json-schema", "schema", callback=_json_schema, metavar="FILE",
                 help="Every reply is JSON valid against the schema in FILE: vLLM decodes to "
                      "it, and each record gets `parsed` (the value) or `schema_error` (why "
                      "not: cut_off, invalid_json, schema_mismatch), the text kept. A row's "
                      "own `schema` column or response_format wins."),
    click.option("--resend-cut-off", "resend_cut_off", type=click.IntRange(min=2),
                 metavar="MAX_TOKENS",
                 help="A reply with a schema (the job's or a row's own) that max_tokens cut off "
                      "is sent again with max_tokens doubled, up to MAX_TOKENS [default: kept, "
                      "as schema_error cut_off]."),
])  # fmt: skip

input_options = _group([
    click.option("--input-format", type=click.Choice(INPUT_FORMATS), default=Job.input_format,
                 show_default=True, help="Input format; auto goes by the file extension."),
    click.option("--endpoint", type=click.Choice(ENDPOINT_MODES), default=Job.endpoint,
                 show_default=True,
                 help="auto: prompt rows -> /v1/completions, messages rows -> "
                      "/v1/chat/completions; chat: send prompts as a user message; "
                      "embeddings: embed each row's input (or prompt) via /v1/embeddings."),
    click.option("--id-field", metavar="NAME",
                 help="Column holding the row id [default: id; custom_id for OpenAI Batch "
                      "lines]. Rows without one get their line number."),
    click.option("--prompt-field", default=FieldMap.prompt_field, show_default=True,
                 metavar="NAME", help="Column holding the prompt."),
    click.option("--messages-field", default=FieldMap.messages_field, show_default=True,
                 metavar="NAME", help="Column holding chat messages."),
    click.option("--schema-field", default=FieldMap.schema_field, show_default=True,
                 metavar="NAME", help="Column holding a row's own JSON schema (or its JSON)."),
    click.option("--lora-field", metavar="NAME",
                 help="Column naming each row's LoRA adapter (sent as its model; empty: the "
                      "model itself)."),
    click.option("--template", metavar="TEXT",
                 help="Build the prompt from columns with a Python format string, e.g. "
                      "'Translate to French: {text}'."),
    click.option("--split", metavar="NAME",
                 help="The split of a dataset INPUT (hf://datasets/NAME, or a folder written "
                      "by save_to_disk) that has several."),
    click.option("--shard", callback=_shard, metavar="I/N",
                 help="Run only shard I (from 0) of N: the rows whose id hashes there, into "
                      "this run's own output (resumable on its own). For array jobs (Slurm, "
                      "Kubernetes indexed Jobs); `vbatch merge` puts the N outputs together."),
])  # fmt: skip

client_options = _group([
    click.option("--base-url", envvar="VBATCH_BASE_URL", metavar="URL", multiple=True,
                 help="OpenAI-compatible server, e.g. http://127.0.0.1:8000/v1 [env "
                      "VBATCH_BASE_URL]. Repeat it (or separate URLs by commas) for several "
                      "servers of one model: each request goes to the least busy, each is "
                      "watched, and one that fails is parked until it answers again. Without "
                      "it vbatch starts vLLM for the job, sized for the data, and stops it at "
                      "the end."),
    click.option("--api-key", envvar="OPENAI_API_KEY", metavar="KEY", show_envvar=True,
                 help="Bearer key for the server. Never printed or logged."),
    click.option("--concurrency", type=click.IntRange(min=1),
                 help=f"Requests in flight at once [default: from {DEFAULT_CONCURRENCY}, "
                      "following the load and output tokens/s vLLM reports on /metrics; 2 x "
                      "max_num_seqs for each replica up, for servers vbatch starts]. The "
                      "server's --max-num-seqs plus a quarter keeps its batch full."),
    click.option("--timeout", "timeout_s", type=click.FloatRange(min=0.1),
                 default=DEFAULT_TIMEOUT_S, show_default=True,
                 help="Seconds one request may take."),
    click.option("--max-attempts", type=click.IntRange(min=1), default=DEFAULT_MAX_ATTEMPTS,
                 show_default=True,
                 help="Attempts per row for transient failures (connection, timeout, "
                      "408/409/429/5xx)."),
    click.option("--down-timeout", "down_timeout_s", type=click.FloatRange(min=1),
                 default=DOWN_TIMEOUT_S, show_default=True,
                 help="Seconds to wait, with every --base-url server down, for one to come "
                      "back; then the run stops (exit 3) and keeps what is finished."),
    click.option("--on-overflow", type=click.Choice(OVERFLOW_POLICIES), default=Job.on_overflow,
                 show_default=True,
                 help="A row whose prompt + max_tokens exceeds the context: record an error, "
                      "or retry once with max_tokens lowered to fit."),
])  # fmt: skip

output_options = _group([
    click.option("--order", type=click.Choice(ORDERS), default=Job.order, show_default=True,
                 help="Write results as they complete (fastest), or in input order (a bounded "
                      "reorder buffer; a slow row holds the rest back)."),
    click.option("--resume/--overwrite", default=True,
                 help="Re-running into an existing output resumes it (the default): rows "
                      "already in it are skipped. --overwrite starts again, replacing it."),
    click.option("--retry-failed", is_flag=True,
                 help="When resuming, send rows that ended as errors again."),
    click.option("--force", is_flag=True,
                 help="Resume even though the job (model, defaults, input) changed since the "
                      "output was started."),
    click.option("--include-response", is_flag=True,
                 help="Add the server's full reply to each record (logprobs etc.)."),
    click.option("--metrics-json", type=click.Path(dir_okay=False), metavar="PATH",
                 help="Write the run's summary as JSON."),
    click.option("--parquet", "parquet_path", type=click.Path(dir_okay=False), metavar="PATH",
                 help="Also write the results as Parquet when the run is over (typed, flat "
                      "columns)."),
    click.option("-q", "--quiet", is_flag=True, help="No progress and no summary."),
])  # fmt: skip

# Where vbatch starts vLLM: this machine, or a Ray cluster (``vbatch run`` and ``serve``).
ray_option = click.option(
    "--ray", is_flag=False, flag_value="", default=None, callback=_ray_address,
    metavar="[ADDRESS]",
    help="Start the vLLM servers on a Ray cluster instead of this machine: one per GPU "
         "(--replicas per GPU, or one per --tensor-parallel-size GPUs), one per node on "
         "CPU-only nodes; Ray restarts a server that dies, on another node if its node died. "
         "ADDRESS: auto, HOST:PORT or ray://HOST:PORT [default: $RAY_ADDRESS, else the cluster "
         "`ray start` last started on this machine, else a local Ray instance started for "
         "this run and stopped after it]. "
         "Needs pip install 'vbatch[ray]'.",
)  # fmt: skip

# How vbatch starts vLLM, except where it listens (``vbatch api`` has a --host of its own).
engine_options = _group([
    click.option("--max-model-len", type=click.IntRange(min=16),
                 help="Context size [default for run: longest prompt + max_tokens, from the "
                      "data]."),
    click.option("--max-num-seqs", type=click.IntRange(min=1),
                 help=f"vLLM's batch size (its default: {CPU_MAX_NUM_SEQS} on CPU, 1024 on an "
                      "H100)."),
    click.option("--tensor-parallel-size", type=click.IntRange(min=1),
                 help="GPUs per model replica."),
    click.option("--data-parallel-size", type=click.IntRange(min=1),
                 help="Model replicas behind one server (vLLM's own data parallelism)."),
    click.option("--replicas", type=click.IntRange(min=1),
                 help="vLLM servers sharing the GPU(s), requests spread by load: for small "
                      "models whose engine loop (one CPU core each) is the limit [default on a "
                      "GPU: 3 for models up to ~1.5B weights, else 2, where the job's working "
                      "set fits each one's share and there are 4 cores per replica; else 1]."),
    click.option("--gpu-memory-utilization", type=click.FloatRange(0.05, 1.0),
                 help="Share of GPU memory vLLM may take [default: "
                      f"{GPU_MEMORY_UTILIZATION} on GPU]."),
    click.option("--dtype", help="Model dtype [default on CPU: bfloat16 with AMX or "
                                 "AVX512-BF16, else float32]."),
    click.option("--lora", multiple=True, metavar="NAME=FOLDER",
                 help="A LoRA adapter (peft's format) the started servers serve beside the "
                      "model (repeat for several; all resident at once up to 16): rows ask for "
                      "it by NAME in their `model` (or --lora-field); a row naming a model "
                      "neither the model's nor an adapter's is refused before sending."),
    click.option("--vllm-arg", "vllm_args", multiple=True, metavar="ARG",
                 help="Any other vLLM server flag, passed through (repeat; e.g. "
                      "--vllm-arg=--enable-prefix-caching)."),
    click.option("--startup-timeout", "startup_timeout_s", type=float,
                 default=LaunchOptions.startup_timeout_s, show_default=True,
                 help="Seconds the started server may take to be healthy."),
    click.option("--max-restarts", type=click.IntRange(min=0),
                 default=LaunchOptions.max_restarts, show_default=True,
                 help="A started server that dies or hangs is restarted (its rows in flight "
                      "are sent again, not charged an attempt), at most this many times in 10 "
                      "minutes; then the run stops (exit 3) and keeps what is finished."),
])  # fmt: skip

server_address_options = _group([
    click.option("--host", default=LaunchOptions.host, show_default=True,
                 help="Interface the started server listens on."),
    click.option("--port", type=click.IntRange(0, 65535), default=LaunchOptions.port,
                 help="Port of the started server [default: a free one]."),
])  # fmt: skip

launch_options = _group([ray_option, engine_options, server_address_options])

# Servers kept after the run (``vbatch run`` only: ``serve`` and ``api`` keep theirs anyway).
keep_alive_option = click.option(
    "--keep-alive", "keep_alive_s", callback=_duration, metavar="DURATION",
    help="Keep the started servers up after the run, for this long idle (90s, 10m, 2h): a "
         "later run of the same model and engine settings uses them instead of starting vLLM "
         "(and renews the time). `vbatch ps` lists them, `vbatch stop` stops them [env "
         "VBATCH_KEEP_ALIVE; default: stopped with the run].",
)  # fmt: skip
