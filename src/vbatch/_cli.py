"""The ``vbatch`` command: a thin shell over the library."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import click
import orjson

from ._api import arun, run_sync
from ._dispatcher import DEFAULT_CONCURRENCY, OVERFLOW_POLICIES
from ._errors import VbatchError
from ._job import ORDERS, RunSummary
from ._launcher import VllmServer
from ._parquet import write_parquet
from ._plan import LaunchPlan, plan_launch, pop_launch_options
from ._progress import choose_progress
from ._requests import ENDPOINT_MODES
from ._sources import FORMATS

__all__ = ["main"]

T = TypeVar("T")


class UserError(click.ClickException):
    """A problem with the input, output or options: message, no traceback, exit code 2."""

    exit_code = 2

    def show(self, file: Any = None) -> None:
        click.echo(f"vbatch: error: {self.format_message()}", err=True)


def _parse_json_object(ctx: click.Context, param: click.Parameter, value: str | None) -> Any:
    if value is None:
        return {}
    try:
        parsed = orjson.loads(value)
    except orjson.JSONDecodeError as exc:
        raise click.BadParameter(f"not valid JSON: {exc}") from None
    if not isinstance(parsed, dict):
        raise click.BadParameter("must be a JSON object")
    return parsed


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="vbatch")
def cli() -> None:
    """vbatch: large batch generation on vLLM.

    Streams a dataset through a vLLM (or any OpenAI-compatible) server with a bounded in-flight
    window, retries what is transient, records what is not, writes every result crash-safely
    and resumes where it stopped.
    """


def launch_options(f: Callable[..., Any]) -> Callable[..., Any]:
    """Options for a vLLM server that vbatch starts itself."""
    options = [
        click.option("--max-model-len", type=click.IntRange(min=16), help="Context size "
                     "[default for run: longest prompt + max_tokens, from the data]."),
        click.option("--max-num-seqs", type=click.IntRange(min=1), help="vLLM's batch size "
                     "(its default: 128 on CPU, 1024 on an H100)."),
        click.option("--tensor-parallel-size", type=click.IntRange(min=1),
                     help="GPUs per model replica."),
        click.option("--data-parallel-size", type=click.IntRange(min=1),
                     help="Model replicas behind one server (vLLM's own data parallelism)."),
        click.option("--replicas", type=click.IntRange(min=1),
                     help="vLLM servers sharing the GPU(s), requests spread by load: for small "
                          "models whose engine loop (one CPU core each) is the limit "
                          "[default on a GPU: 3 for models under ~0.5B weights, else 2, when "
                          "their full batches fit with room to spare and there are 4 cores "
                          "per replica; else 1]."),
        click.option("--gpu-memory-utilization", type=click.FloatRange(0.05, 1.0),
                     help="Share of GPU memory vLLM may take [default: 0.9 on GPU]."),
        click.option("--dtype", help="Model dtype [default on CPU: bfloat16 with AMX or "
                     "AVX512-BF16, else float32]."),
        click.option("--vllm-arg", "vllm_args", multiple=True, metavar="ARG",
                     help="Any other vLLM server flag, passed through (repeat; e.g. "
                          "--vllm-arg=--enable-prefix-caching)."),
        click.option("--host", default="127.0.0.1", show_default=True,
                     help="Interface the started server listens on."),
        click.option("--port", type=click.IntRange(0, 65535), default=0,
                     help="Port of the started server [default: a free one]."),
        click.option("--startup-timeout", "startup_timeout_s", type=float, default=900.0,
                     show_default=True, help="Seconds the started server may take to be healthy."),
    ]  # fmt: skip
    for option in reversed(options):
        f = option(f)
    return f


def _announce(plan: LaunchPlan, servers: list[VllmServer]) -> None:
    spec = plan.spec
    size = f"max_model_len {spec.max_model_len}" if spec.max_model_len else "the model's context"
    count = f"{len(servers)} replicas of " if len(servers) > 1 else ""
    click.echo(f"vbatch: starting {count}vLLM ({spec.backend}) for {plan.served_model} on "
               f"{servers[0].root_url}, {size}, window {plan.concurrency}", err=True)  # fmt: skip
    for note in plan.notes:
        click.echo(f"vbatch: {note}", err=True)
    click.echo(f"vbatch: server log: {servers[0].log_path}", err=True)


@cli.command("run")
@click.argument("input_path", metavar="INPUT", type=click.Path(dir_okay=False))
@click.option(
    "-o",
    "--output",
    required=True,
    type=click.Path(dir_okay=False),
    help="Results file (JSONL), one line per input row. Re-running into it resumes.",
)
@click.option(
    "--base-url",
    envvar="VBATCH_BASE_URL",
    metavar="URL",
    help="OpenAI-compatible server, e.g. http://127.0.0.1:8000/v1 [env VBATCH_BASE_URL]. "
    "Without it vbatch starts vLLM for the job, sized for the data, and stops it at the end.",
)
@click.option(
    "--api-key",
    envvar="OPENAI_API_KEY",
    metavar="KEY",
    show_envvar=True,
    help="Bearer key for the server. Never printed or logged.",
)
@click.option(
    "--model",
    help="Model name sent with every request [default: the server's only model]. Without "
    "--base-url: the model vLLM serves, a path or hub name [default: the embedded "
    "SmolLM2-135M-Instruct].",
)
@click.option("--max-tokens", type=click.IntRange(min=1), help="Default max_tokens.")
@click.option("--temperature", type=float, help="Default temperature.")
@click.option("--top-p", type=float, help="Default top_p.")
@click.option(
    "--n",
    "n",
    type=click.IntRange(min=1),
    help="Completions per row (text becomes a list when > 1).",
)
@click.option("--seed", type=int, help="Default sampling seed.")
@click.option("--stop", multiple=True, help="Stop string (repeat for several).")
@click.option("--system", help="System message prepended to chat rows that have none.")
@click.option(
    "--extra-body",
    callback=_parse_json_object,
    metavar="JSON",
    help="JSON object merged into every request body untouched, e.g. '{\"ignore_eos\": true}'.",
)
@click.option(
    "--input-format",
    type=click.Choice(("auto", *FORMATS)),
    default="auto",
    show_default=True,
    help="Input format; auto goes by the file extension.",
)
@click.option(
    "--endpoint",
    type=click.Choice(ENDPOINT_MODES),
    default="auto",
    show_default=True,
    help="auto: prompt rows -> /v1/completions, messages rows -> /v1/chat/completions; "
    "chat: send prompts as a user message.",
)
@click.option(
    "--id-field",
    metavar="NAME",
    help="Column holding the row id [default: id; "
    "custom_id for OpenAI Batch lines]. Rows without one get their line number.",
)
@click.option(
    "--prompt-field",
    default="prompt",
    show_default=True,
    metavar="NAME",
    help="Column holding the prompt.",
)
@click.option(
    "--messages-field",
    default="messages",
    show_default=True,
    metavar="NAME",
    help="Column holding chat messages.",
)
@click.option(
    "--template",
    metavar="TEXT",
    help="Build the prompt from columns with a Python "
    "format string, e.g. 'Translate to French: {text}'.",
)
@click.option(
    "--concurrency",
    type=click.IntRange(min=1),
    help=f"Requests in flight at once [default: from {DEFAULT_CONCURRENCY}, following the load "
    "and output tokens/s vLLM reports on /metrics; 2 x max_num_seqs x replicas for a server "
    "vbatch starts]. The server's --max-num-seqs plus a quarter keeps its batch full.",
)
@click.option(
    "--timeout",
    "timeout_s",
    type=click.FloatRange(min=0.1),
    default=600.0,
    show_default=True,
    help="Seconds one request may take.",
)
@click.option(
    "--max-attempts",
    type=click.IntRange(min=1),
    default=5,
    show_default=True,
    help="Attempts per row for transient failures (connection, timeout, 408/409/429/5xx).",
)
@click.option(
    "--on-overflow",
    type=click.Choice(OVERFLOW_POLICIES),
    default="error",
    show_default=True,
    help="A row whose prompt + max_tokens exceeds the context: "
    "record an error, or retry once with max_tokens lowered to fit.",
)
@click.option(
    "--order",
    type=click.Choice(ORDERS),
    default="completion",
    show_default=True,
    help="Write results as they complete (fastest), or in input order (a bounded "
    "reorder buffer; a slow row holds the rest back).",
)
@click.option(
    "--resume/--overwrite",
    default=True,
    help="Re-running into an existing output resumes it (the default): rows already in it are "
    "skipped. --overwrite starts again, replacing it.",
)
@click.option(
    "--retry-failed", is_flag=True, help="When resuming, send rows that ended as errors again."
)
@click.option(
    "--force",
    is_flag=True,
    help="Resume even though the job (model, defaults, input) "
    "changed since the output was started.",
)
@click.option(
    "--include-response",
    is_flag=True,
    help="Add the server's full reply to each record (logprobs etc.).",
)
@click.option(
    "--metrics-json",
    type=click.Path(dir_okay=False),
    metavar="PATH",
    help="Write the run's summary as JSON.",
)
@click.option(
    "--parquet",
    "parquet_path",
    type=click.Path(dir_okay=False),
    metavar="PATH",
    help="Also write the results as Parquet when the run is over (typed, flat columns).",
)
@click.option("-q", "--quiet", is_flag=True, help="No progress and no summary.")
@launch_options
def run_command(
    input_path: str,
    output: str,
    base_url: str | None,
    api_key: str | None,
    concurrency: int | None,
    timeout_s: float,
    max_attempts: int,
    metrics_json: str | None,
    parquet_path: str | None,
    quiet: bool,
    extra_body: dict[str, Any],
    stop: tuple[str, ...],
    n: int | None,
    **options: Any,
) -> None:
    """Send every row of INPUT (JSONL, CSV or Parquet) and write one result per row.

    \b
    Input rows (JSONL), detected per file:
      {"id": ..., "prompt": "..."}                  -> /v1/completions
      {"id": ..., "messages": [...]}                -> /v1/chat/completions
      {"custom_id": ..., "method": "POST", "url": "/v1/chat/completions", "body": {...}}
                                                    -> OpenAI Batch output lines
    Row keys that are request fields (max_tokens, temperature, seed, stop, ...) override
    the defaults given here for that row.

    \b
    Exit codes: 0 every row succeeded; 1 some rows ended as error records;
    2 bad usage, input or output (nothing sent); 130 interrupted (results so far kept).
    """
    launch = pop_launch_options(options)
    if base_url and launch:
        flag = "--" + next(iter(launch)).replace("_", "-")
        raise UserError(f"{flag} applies only to a server vbatch starts (no --base-url)")
    for side_file in (metrics_json, parquet_path):
        if side_file:
            _check_writable(side_file)
    options["overwrite"] = not options.pop("resume")
    options = {k: v for k, v in options.items() if v is not None}
    if stop:
        options["stop"] = stop
    if n is not None:
        options["n"] = n
    progress = choose_progress(quiet)
    try:
        summary: RunSummary = run_sync(
            _until_interrupted(
                lambda stop: arun(input_path, output, base_url=base_url, api_key=api_key,
                                  concurrency=concurrency, timeout_s=timeout_s,
                                  max_attempts=max_attempts, progress=progress, stop=stop,
                                  on_launch=None if quiet else _announce,
                                  extra_body=extra_body, **options, **launch)
            )
        )  # fmt: skip
    except VbatchError as exc:
        raise UserError(str(exc)) from None
    except ValueError as exc:
        raise UserError(str(exc)) from None
    except KeyboardInterrupt:
        click.echo("vbatch: interrupted", err=True)
        sys.exit(130)
    if metrics_json:
        try:
            with open(metrics_json, "wb") as f:
                f.write(orjson.dumps(summary.to_dict(), option=orjson.OPT_INDENT_2))
        except OSError as exc:
            click.echo(f"vbatch: error: cannot write {metrics_json}: {exc.strerror}", err=True)
    if parquet_path and not summary.interrupted:
        try:
            rows = write_parquet(output, parquet_path)
        except (OSError, VbatchError) as exc:
            raise UserError(f"cannot write {parquet_path}: {exc}") from None
        if not quiet:
            click.echo(f"vbatch: {rows:,} rows also in {parquet_path}", err=True)
    if not quiet:
        _print_summary(summary)
    sys.exit(summary.exit_code)


@cli.command("serve")
@click.option("--model", help="Model to serve, a path or hub name [default: the embedded "
              "SmolLM2-135M-Instruct].")  # fmt: skip
@launch_options
def serve_command(model: str | None, **options: Any) -> None:
    """Start a vLLM server, print its URL, and keep it until Ctrl-C.

    For reuse across several `vbatch run --base-url URL` calls. It listens on 127.0.0.1 unless
    --host says otherwise; Ctrl-C stops it and every process it started.
    """
    launch = pop_launch_options(options)
    try:
        plan = plan_launch(None, model, **{"replicas": 1, **launch})
        if plan.replicas > 1:
            raise UserError("serve starts one server; run several for replicas")
        server = VllmServer(plan.spec)
        server.start()
        try:
            _announce(plan, [server])
            server.wait_healthy()
            click.echo(f"vbatch: serving {plan.served_model} at {server.base_url}", err=True)
            click.echo(server.base_url)
            # Blocked only now: the server must not inherit a mask that hides SIGTERM from it.
            signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
            signal.sigwait({signal.SIGINT, signal.SIGTERM})
        finally:
            click.echo("vbatch: stopping the server...", err=True)
            server.stop()
    except VbatchError as exc:
        raise UserError(str(exc)) from None
    except KeyboardInterrupt:
        sys.exit(130)


def _check_writable(path: str) -> None:
    """Refuse an unwritable side file before anything is sent, not after the whole run."""
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise UserError(f"{path}: folder {folder} does not exist")
    if not os.access(folder, os.W_OK) or (os.path.exists(path) and not os.access(path, os.W_OK)):
        raise UserError(f"{path}: cannot be written")


async def _until_interrupted(start: Callable[[asyncio.Event], Awaitable[T]]) -> T:
    """Run ``start(stop)`` with Ctrl-C (and SIGTERM) setting ``stop`` for a clean finish; a
    second Ctrl-C quits at once."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()

    def on_signal() -> None:
        if stop.is_set():
            os._exit(130)
        click.echo("vbatch: stopping (Ctrl-C again to quit at once)...", err=True)
        stop.set()

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, on_signal)
    try:
        return await start(stop)
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)


def _print_summary(summary: RunSummary) -> None:
    s = summary.stats
    prev = summary.previous
    lines = [
        f"vbatch: {'interrupted' if summary.interrupted else 'done'}: {s.done:,} rows sent "
        f"({s.ok:,} ok, {s.failed:,} errors, {s.retries:,} retries"
        + (f", {s.clamped:,} clamped" if s.clamped else "")
        + ")"
        + (f", {s.skipped:,} already done" if s.skipped else ""),
        f"vbatch: {s.elapsed_s:.1f}s, {s.requests_per_s:,.1f} req/s, "
        f"{s.completion_tokens:,} output tokens ({s.output_tokens_per_s:,.0f} tok/s), "
        f"{s.prompt_tokens:,} prompt tokens",
    ]
    if prev.torn_bytes:
        lines.append(f"vbatch: dropped a torn last line ({prev.torn_bytes} bytes) from the output")
    if summary.failed_total:
        lines.append(f"vbatch: {summary.failed_total:,} rows are error records in {summary.output}"
                     " (re-run with --retry-failed to send them again)")  # fmt: skip
    else:
        lines.append(f"vbatch: results in {summary.output}")
    for line in lines:
        click.echo(line, err=True)


def main() -> None:
    # Let a user's pipe (| head) close early without a traceback.
    try:
        cli(prog_name="vbatch")
    except BrokenPipeError:
        os._exit(1)
