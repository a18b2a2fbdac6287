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
    help="OpenAI-compatible server, e.g. http://127.0.0.1:8000/v1 [env VBATCH_BASE_URL].",
)
@click.option(
    "--api-key",
    envvar="OPENAI_API_KEY",
    metavar="KEY",
    show_envvar=True,
    help="Bearer key for the server. Never printed or logged.",
)
@click.option(
    "--model", help="Model name sent with every request (default: the server's only model)."
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
    default=DEFAULT_CONCURRENCY,
    show_default=True,
    help="Requests in flight at once. About 2x the server's --max-num-seqs keeps its batch full.",
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
@click.option("--overwrite", is_flag=True, help="Start again, replacing an existing output.")
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
@click.option("-q", "--quiet", is_flag=True, help="No progress and no summary.")
def run_command(
    input_path: str,
    output: str,
    base_url: str | None,
    api_key: str | None,
    concurrency: int,
    timeout_s: float,
    max_attempts: int,
    metrics_json: str | None,
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
    if not base_url:
        raise UserError("no server: pass --base-url (or set VBATCH_BASE_URL)")
    if metrics_json:
        _check_writable(metrics_json)
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
                                  extra_body=extra_body, **options)
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
    if not quiet:
        _print_summary(summary)
    sys.exit(summary.exit_code)


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
