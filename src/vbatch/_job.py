"""A job is a value: what to read, how to build requests, where to write. ``iter_results`` runs
one through a dispatcher: validate -> prepare output -> stream pending rows -> write -> yield."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import orjson

from ._dispatcher import OVERFLOW_POLICIES, Dispatcher
from ._errors import OutputError
from ._models import RequestDefaults, Result
from ._progress import NullProgress, Progress
from ._records import format_batch_line, format_record
from ._requests import FieldMap, RequestBuilder
from ._resume import InputIndex, OutputState, file_digest, pending_mask, prepare_output
from ._sink import JsonlSink
from ._sources import open_source
from ._stats import Stats
from ._transport import TransportError
from ._validate import validate_input

__all__ = ["ORDERS", "Job", "RunSummary", "iter_results", "run_job"]

ORDERS = ("completion", "input")


@dataclass(frozen=True)
class Job:
    """Everything that decides a job's output. Connection settings (URL, key, window) are the
    dispatcher's, so one dispatcher can serve many jobs and a job can move between servers."""

    input: str
    output: str | None = None
    defaults: RequestDefaults = field(default_factory=RequestDefaults)
    fields: FieldMap = field(default_factory=FieldMap)
    input_format: str = "auto"
    endpoint: str = "auto"  # auto | completions | chat
    order: str = "completion"  # completion | input
    on_overflow: str = "error"  # error | clamp
    overwrite: bool = False
    retry_failed: bool = False
    force: bool = False
    include_response: bool = False

    def __post_init__(self) -> None:
        if self.order not in ORDERS:
            raise ValueError(f"order must be one of {ORDERS}, not {self.order!r}")
        if self.on_overflow not in OVERFLOW_POLICIES:
            raise ValueError(f"on_overflow must be one of {OVERFLOW_POLICIES}")

    def fingerprint_parts(self, defaults: RequestDefaults, input_digest: str) -> dict[str, Any]:
        """What must not change between a run and its resumption."""
        return {
            "input": input_digest,
            "model": defaults.model,
            "endpoint": self.endpoint,
            "request_defaults": {**defaults.body_fields(), "system": defaults.system},
            "fields": dataclasses.asdict(self.fields),
            "include_response": self.include_response,
        }


@dataclass
class RunSummary:
    """The end of a run: counts for this run plus what the output held before it."""

    output: str | None
    stats: Stats
    previous: OutputState
    interrupted: bool = False

    @property
    def failed_total(self) -> int:
        return self.stats.failed + self.previous.failed

    @property
    def exit_code(self) -> int:
        if self.interrupted:
            return 130
        return 1 if self.failed_total else 0

    def to_dict(self) -> dict[str, Any]:
        return {
            **self.stats.summary(),
            "output": self.output,
            "resumed": self.previous.resumed,
            "previous_ok": self.previous.ok,
            "previous_failed": self.previous.failed,
            "retried_failed": self.previous.dropped_failed,
            "torn_bytes_dropped": self.previous.torn_bytes,
            "interrupted": self.interrupted,
        }


async def _server_defaults(job: Job, dispatcher: Dispatcher) -> tuple[RequestDefaults, str]:
    """Ask the server what it serves (its max_model_len lets server-shortened rows be marked);
    without --model, use its model when it serves exactly one. Returns the defaults and, for
    rows that still lack a model, a hint of why."""
    defaults = job.defaults
    try:
        resp = await dispatcher.transport.request("GET", dispatcher.api_prefix + "/models")
        models = orjson.loads(resp.content)["data"]
        names = [m["id"] for m in models]
    except (TransportError, orjson.JSONDecodeError, KeyError, TypeError) as exc:
        return defaults, f"the server's models could not be listed ({exc})"
    if not defaults.model and len(names) == 1:
        defaults = dataclasses.replace(defaults, model=names[0])
    for m in models:
        if m.get("id") == defaults.model and isinstance(m.get("max_model_len"), int):
            dispatcher.max_model_len = m["max_model_len"]
    return defaults, f"the server serves {len(names)} models ({', '.join(names)})"


async def iter_results(
    job: Job,
    dispatcher: Dispatcher,
    stats: Stats | None = None,
    on_ready: Callable[[Stats, OutputState], None] | None = None,
) -> AsyncIterator[Result]:
    """Run ``job`` and yield each result once it is safely handed to the output (if any).

    Raises ``InputError``/``OutputError``/``ResumeError`` before the first request when the input
    or output cannot be used.
    """
    stats = stats or Stats()
    source = open_source(job.input, job.input_format)
    defaults, hint = await _server_defaults(job, dispatcher)
    builder = RequestBuilder(source.path, defaults, job.fields, job.endpoint, model_hint=hint)

    def validate() -> InputIndex:
        return validate_input(source, builder)

    if job.output is not None:
        parts = job.fingerprint_parts(defaults, file_digest(source.path))
        previous, index = prepare_output(
            job.output, parts, validate,
            overwrite=job.overwrite, retry_failed=job.retry_failed, force=job.force,
        )  # fmt: skip
    else:
        previous, index = OutputState(), validate()
    if job.include_response and index.batch_lines:
        raise OutputError("--include-response does not apply to OpenAI Batch output")
    pending = pending_mask(index.digests, previous.done)
    stats.total = index.rows
    stats.skipped = index.rows - int(pending.sum())
    if on_ready is not None:
        on_ready(stats, previous)
    requests = (builder.build(row) for row in source.rows(pending))
    sink = JsonlSink(job.output) if job.output is not None else None
    flusher = asyncio.create_task(_flush_periodically(sink)) if sink is not None else None
    try:
        async for result in dispatcher.stream(requests, stats, ordered=job.order == "input",
                                              on_overflow=job.on_overflow):  # fmt: skip
            if sink is not None:
                sink.write(format_batch_line(result) if index.batch_lines
                           else format_record(result, job.include_response))  # fmt: skip
            yield result
    finally:
        if flusher is not None:
            flusher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await flusher
        if sink is not None:
            sink.close()


async def _flush_periodically(sink: JsonlSink, interval_s: float = 0.2) -> None:
    # Results that trickle in slowly still reach the file within interval_s.
    while True:
        await asyncio.sleep(interval_s)
        sink.flush()


async def run_job(
    job: Job,
    dispatcher: Dispatcher,
    progress: Progress | None = None,
    stop: asyncio.Event | None = None,
) -> RunSummary:
    """Run ``job`` to the end, showing progress.

    Setting ``stop`` (the CLI does on Ctrl-C) ends the run cleanly: results already received are
    written, in-flight ones dropped, and the summary says ``interrupted``. Cancelling the task
    instead propagates as usual, after the same clean-up.
    """
    progress = progress or NullProgress()
    stats = Stats()
    started = False
    ticker: asyncio.Task[None] | None = None
    previous = OutputState()

    def ready(s: Stats, prev: OutputState) -> None:
        nonlocal started, ticker, previous
        previous = prev
        progress.start(s)
        started = True
        ticker = asyncio.create_task(_tick(progress, s, dispatcher))

    async def consume() -> None:
        async for _ in iter_results(job, dispatcher, stats, on_ready=ready):
            pass

    interrupted = False
    runner = asyncio.ensure_future(consume())
    try:
        if stop is None:
            await runner
        else:
            stopper = asyncio.ensure_future(stop.wait())
            try:
                await asyncio.wait({runner, stopper}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                stopper.cancel()
            if not runner.done():
                interrupted = True
                runner.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await runner
            else:
                runner.result()
    finally:
        if not runner.done():
            runner.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await runner
        stats.finished_at = time.monotonic()
        stats.cpu_end_s = time.process_time()
        stats.window = dispatcher.concurrency
        if dispatcher.adaptive:
            stats.window_history = list(dispatcher.controller.history)
        if ticker is not None:
            ticker.cancel()
        if started:
            progress.stop(stats)
    return RunSummary(job.output, stats, previous, interrupted)


async def _tick(progress: Progress, stats: Stats, dispatcher: Dispatcher) -> None:
    while True:
        await asyncio.sleep(progress.interval_s)
        load = dispatcher.load
        if load is not None:
            stats.server_running, stats.server_waiting = load.running, load.waiting
        stats.window = dispatcher.concurrency
        stats.window_capped = dispatcher.adaptive and dispatcher.controller.capped
        progress.refresh(stats)
