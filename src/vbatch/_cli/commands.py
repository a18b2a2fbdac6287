"""The ``vbatch`` command: a thin shell over the library."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import signal
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any, NoReturn, TypeVar

import click
import orjson

from .._api import arun, run_sync
from .._config import ORDERS, LaunchOptions, Order
from .._engine.machine import detect_backend
from .._errors import (
    ConfigError,
    FleetError,
    InputError,
    LaunchError,
    MergeError,
    OutputError,
    RejectedError,
    ResumeError,
    TransportError,
    VbatchError,
)
from .._fleet.factory import FleetFactory, FleetTarget, running
from .._fleet.warm import gpu_set, stop_keeper, usage, warm_entries
from .._job import RunSummary
from .._output.files import check_writable
from .._output.merge import merge
from .._output.parquet import write_parquet
from .._progress import choose_progress
from .._tasks import CancelledOn
from .options import (
    client_options,
    input_options,
    keep_alive_option,
    launch_options,
    output_options,
    request_options,
)
from .report import announce, print_summary

__all__ = ["main"]

T = TypeVar("T")

# The exit code of each kind of failure; anything that is not a VbatchError is a bug and ends
# with its traceback (exit 1).
EXIT_CODES: dict[type[VbatchError], int] = {
    ConfigError: 2,  # usage
    InputError: 2,  # nothing sent
    OutputError: 2,
    ResumeError: 2,
    LaunchError: 2,  # the server vbatch starts could not be started: nothing sent
    RejectedError: 2,  # the server refused the job's first requests alike: the rest not sent
    MergeError: 2,  # the shards do not add up to the input: nothing written
    FleetError: 3,  # no server could take requests any more: finished rows kept
    TransportError: 1,
}


class UserError(click.ClickException):
    """A problem with the options as given: a message, no traceback, exit code 2."""

    exit_code = 2

    def show(self, file: Any = None) -> None:
        click.echo(f"vbatch: error: {self.format_message()}", err=True)


def _fail(exc: VbatchError) -> NoReturn:
    """End with ``exc``'s message (no traceback) and its kind's exit code."""
    click.echo(f"vbatch: error: {exc}", err=True)
    sys.exit(next((EXIT_CODES[k] for k in type(exc).__mro__ if k in EXIT_CODES), 2))


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="vbatch")
def cli() -> None:
    """vbatch: large batch generation on vLLM.

    Streams a dataset through a vLLM (or any OpenAI-compatible) server with a bounded in-flight
    window, retries what is transient, records what is not, writes every result crash-safely
    and resumes where it stopped.
    """


@cli.command("run")
@click.argument("input_path", metavar="INPUT")
@click.option(
    "-o",
    "--output",
    required=True,
    type=click.Path(dir_okay=False),
    help="Results file (JSONL), one line per input row. Re-running into it resumes.",
)
@click.option(
    "--model",
    help="Model name sent with every request, replacing each row's own (an OpenAI Batch "
    "line's body model too, so a file written for another provider runs as is) [default: the "
    "server's only model]. Without --base-url: the model vLLM serves, a path or hub name "
    "[default: the embedded SmolLM2-135M-Instruct].",
)
@client_options
@request_options
@input_options
@output_options
@launch_options
@keep_alive_option
def run_command(
    input_path: str,
    output: str,
    base_url: tuple[str, ...],
    api_key: str | None,
    concurrency: int | None,
    timeout_s: float,
    max_attempts: int,
    metrics_json: str | None,
    parquet_path: str | None,
    quiet: bool,
    resume: bool,
    **options: Any,
) -> None:
    """Send every row of INPUT (JSONL, CSV or Parquet; a folder written by a Hugging Face
    Dataset's save_to_disk; hf://datasets/NAME from the datasets cache, with --split) and write
    one result per row.

    \b
    Input rows (JSONL), detected per file:
      {"id": ..., "prompt": "..."}                  -> /v1/completions
      {"id": ..., "messages": [...]}                -> /v1/chat/completions
      {"id": ..., "input": "..."} + --endpoint embeddings -> /v1/embeddings
      {"custom_id": ..., "method": "POST", "url": "/v1/chat/completions", "body": {...}}
                                                    -> OpenAI Batch output lines
    Row keys that are request fields (max_tokens, temperature, seed, stop, ...) override
    the defaults given here for that row.

    \b
    Exit codes: 0 every row succeeded; 1 some rows ended as error records (or as replies
    that do not fit --json-schema);
    2 bad usage, input or output, or the server rejects the job (nothing more sent);
    3 no server could take requests any more (results so far kept); 130 interrupted.
    """
    try:
        for side_file in (metrics_json, parquet_path):
            if side_file:
                check_writable(side_file)
    except VbatchError as exc:
        _fail(exc)
    options = {k: v for k, v in options.items() if v is not None and v != ()}
    options["overwrite"] = not resume
    progress = choose_progress(quiet)
    try:
        summary: RunSummary = run_sync(
            _until_interrupted(
                lambda stop: arun(input_path, output, base_url=list(base_url) or None,
                                  api_key=api_key, concurrency=concurrency,
                                  timeout_s=timeout_s, max_attempts=max_attempts,
                                  progress=progress, stop_event=stop,
                                  on_launch=None if quiet else announce, **options)
            )
        )  # fmt: skip
    except VbatchError as exc:
        _fail(exc)
    if metrics_json:
        try:
            with open(metrics_json, "wb") as f:
                f.write(orjson.dumps(summary.to_dict(), option=orjson.OPT_INDENT_2))
        except OSError as exc:
            click.echo(f"vbatch: error: cannot write {metrics_json}: {exc.strerror}", err=True)
    if parquet_path and not summary.interrupted:
        try:
            rows = write_parquet(summary.output or output, parquet_path)  # a URL's local copy
        except (OSError, VbatchError) as exc:
            raise UserError(f"cannot write {parquet_path}: {exc}") from None
        if not quiet:
            click.echo(f"vbatch: {rows:,} rows also in {parquet_path}", err=True)
    if not quiet:
        print_summary(summary)
    sys.exit(summary.exit_code)


@cli.command("serve")
@click.option("--model", help="Model to serve, a path or hub name [default: the embedded "
              "SmolLM2-135M-Instruct].")  # fmt: skip
@launch_options
def serve_command(model: str | None, **options: Any) -> None:
    """Start a vLLM server, print its URL, and keep it until Ctrl-C.

    For reuse across several `vbatch run --base-url URL` calls. It listens on 127.0.0.1 unless
    --host says otherwise; Ctrl-C stops it and every process it started. With --ray it starts
    the servers on a Ray cluster and prints their URLs (comma-separated, for --base-url) once
    all are up; a server Ray restarts comes back at a new URL, which it prints too.
    """
    ray = options.pop("ray", None)
    try:
        launch = LaunchOptions.pop_from(options)
        if ray is None and launch.replicas is not None and launch.replicas > 1:
            raise UserError("serve starts one server; run several for replicas")
        if ray is None:
            launch = dataclasses.replace(launch, replicas=1)
        target = FleetTarget(ray=ray, model=model, launch=launch)
        sys.exit(run_sync(_serve(target)))
    except VbatchError as exc:
        _fail(exc)


@cli.command("merge")
@click.argument("shards", nargs=-1, required=True, type=click.Path(dir_okay=False))
@click.option(
    "-o",
    "--output",
    required=True,
    type=click.Path(dir_okay=False),
    help="The merged results file (replaced whole once every check passed).",
)
@click.option(
    "--input",
    "input_path",
    type=click.Path(dir_okay=False),
    metavar="INPUT",
    help="The input the shards ran: checked to be that one, and a missing row is "
    "named by its id and line [default: named by row number].",
)
@click.option("--order", type=click.Choice(ORDERS), default="completion", show_default=True,
              help="Shard after shard, or in input order.")  # fmt: skip
def merge_command(shards: tuple[str, ...], output: str, input_path: str | None, order: Order
                  ) -> None:  # fmt: skip
    """Put the outputs of `vbatch run --shard I/N` together into one output.

    Checks first, from the state files beside each shard output, that they are all N shards of
    one job and that every input row is in exactly one of them; a missing or twice-written row
    fails the merge, naming it, and nothing is written. The merged output resumes like a single
    run's: `vbatch run INPUT -o OUTPUT` on it sends nothing.

    \b
    Example (a Slurm array of 4):
      vbatch run in.jsonl -o out.shard-$SLURM_ARRAY_TASK_ID.jsonl --shard $SLURM_ARRAY_TASK_ID/4
      vbatch merge out.shard-*.jsonl -o out.jsonl
    """
    try:
        summary = merge(list(shards), output, order=order, input=input_path)
    except VbatchError as exc:
        _fail(exc)
    failed = f" ({summary.failed:,} of them error records)" if summary.failed else ""
    click.echo(f"vbatch: {summary.rows:,} rows from {len(shards)} shards in {output}{failed}",
               err=True)  # fmt: skip


@cli.command("ps")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per fleet.")
def ps_command(as_json: bool) -> None:
    """List the warm fleets on this machine (kept up by `vbatch run --keep-alive`)."""
    now = time.time()
    fleets = [(entry, usage(entry), entry.idle_s(now)) for entry in warm_entries()]
    if as_json:
        for entry, use, idle in fleets:
            click.echo(orjson.dumps({
                "gpus": entry.key, "model": entry.served_model, "state": entry.state,
                "urls": entry.urls, "replicas": entry.replicas, "context": entry.context,
                "users": use.users, "idle_s": idle, "keep_alive_s": entry.keep_alive_s,
                "memory_bytes": use.memory_bytes, "gpu_memory_bytes": use.gpu_memory_bytes,
                "restarts": entry.restarts, "restart_reasons": entry.restart_reasons,
                "keeper_pid": entry.pid, "log": entry.log,
            }))  # fmt: skip
        return
    if not fleets:
        click.echo("no warm fleets (vbatch run --keep-alive 10m keeps one)", err=True)
        return
    click.echo(f"{'GPUS':<10} {'MODEL':<28} {'STATE':<9} {'IDLE':>7} {'STOPS IN':>8} "
               f"{'MEMORY':>7} {'GPU MEM':>7}  URL")  # fmt: skip
    for entry, use, idle in fleets:
        idle_text = "in use" if idle is None else _ago(idle)
        stops = "-" if idle is None else _ago(max(0.0, entry.keep_alive_s - idle))
        gpu = "-" if use.gpu_memory_bytes is None else _gib(use.gpu_memory_bytes)
        urls = entry.urls or ["(starting)"]
        more = f" +{len(urls) - 1}" if len(urls) > 1 else ""
        click.echo(f"{entry.key:<10} {entry.served_model[:28]:<28} {entry.state:<9} "
                   f"{idle_text:>7} {stops:>8} {_gib(use.memory_bytes):>7} {gpu:>7}  "
                   f"{urls[0]}{more}")  # fmt: skip


def _ago(seconds: float) -> str:
    return f"{seconds:.0f}s" if seconds < 120 else f"{seconds / 60:.0f}m"


def _gib(size: int) -> str:
    return f"{size / 2**30:.1f}G"


@cli.command("stop")
@click.argument("gpus", nargs=-1)
@click.option("--all", "stop_all", is_flag=True, help="Every warm fleet on this machine.")
@click.option("--force", is_flag=True, help="Stop a fleet even while runs use it (they fail "
              "and keep what they finished).")  # fmt: skip
def stop_command(gpus: tuple[str, ...], stop_all: bool, force: bool) -> None:
    """Stop warm fleets: those on GPUS (as `vbatch ps` names them), every one with --all, or
    else the one of this shell's GPUs ($CUDA_VISIBLE_DEVICES; cpu without a GPU)."""
    entries = warm_entries()
    if not stop_all:
        wanted = set(gpus) or {gpu_set(detect_backend())}
        entries = [e for e in entries if e.key in wanted]
        if not entries:
            raise UserError(f"no warm fleet on {', '.join(sorted(wanted))} (see vbatch ps)")
    busy = [e for e in entries if usage(e).users]
    if busy and not force:
        names = ", ".join(f"{e.key} (runs {', '.join(map(str, usage(e).users))})" for e in busy)
        raise UserError(f"in use: {names}; --force stops them anyway")
    for entry in entries:
        click.echo(f"vbatch: stopping the warm fleet of {entry.served_model} on {entry.key} "
                   f"(keeper pid {entry.pid})...", err=True)  # fmt: skip
        stop_keeper(entry)


async def _serve(target: FleetTarget) -> int:
    """Start the target's servers, print their URLs (again when they change: Ray restarts a
    member at a new one), keep them until Ctrl-C or SIGTERM, then stop them."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with FleetFactory(target) as factory, CancelledOn(stop):
        # Planned in a thread: the embedded model is converted on first use.
        built = await asyncio.to_thread(factory.build, None, on_launch=announce)
        assert built.plan is not None
        async with running(built.fleet) as fleet:
            shown: tuple[str, ...] = ()
            try:
                while True:
                    up = tuple(fleet.endpoints())
                    if up and up != shown:
                        click.echo(f"vbatch: serving {built.plan.served_model} at "
                                   f"{', '.join(up)}", err=True)  # fmt: skip
                        click.echo(",".join(up))
                        shown = up
                    await asyncio.sleep(1.0)
            finally:
                click.echo("vbatch: stopping the servers...", err=True)
    return 0


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


def main() -> None:
    # Let a user's pipe (| head) close early without a traceback.
    try:
        cli(prog_name="vbatch")
    except BrokenPipeError:
        os._exit(1)
