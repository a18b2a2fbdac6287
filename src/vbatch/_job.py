"""A job is a value: what to read, how to build requests, where to write. ``iter_results`` runs
one through a dispatcher: validate -> prepare output -> stream pending rows -> write -> yield."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from ._client.dispatcher import Dispatcher, DispatcherSnapshot
from ._client.failfast import FailFast
from ._client.stats import Stats
from ._config import (
    ENDPOINT_MODES,
    FAIL_FAST_REPLIES,
    FLUSH_INTERVAL_S,
    INPUT_FORMATS,
    ORDERS,
    OVERFLOW_POLICIES,
    EndpointMode,
    InputFormat,
    Order,
    OverflowPolicy,
    check_choice,
)
from ._errors import TransportError
from ._input.requests import FieldMap, RequestBuilder
from ._input.shard import Shard
from ._input.sources import open_source
from ._input.validate import InputIndex, validate_input
from ._models import PreparedRequest, RequestDefaults, Result
from ._output.resume import pending_mask, prepare_output
from ._output.state import FileStateStore, JobStateStore, file_digest
from ._output.writer import JsonlResultWriter, OutputState, ResultWriter
from ._progress import NullProgress, Progress
from ._tasks import cancel_and_wait

__all__ = ["Job", "RunSummary", "iter_results", "preview_requests", "run_job"]


@dataclass(frozen=True)
class Job:
    """Everything that decides a job's output. Connection settings (URL, key, window) are the
    dispatcher's, so one dispatcher can serve many jobs and a job can move between servers."""

    input: str
    output: str | None = None
    defaults: RequestDefaults = field(default_factory=RequestDefaults)
    fields: FieldMap = field(default_factory=FieldMap)
    input_format: InputFormat = "auto"
    endpoint: EndpointMode = "auto"
    order: Order = "completion"
    on_overflow: OverflowPolicy = "error"
    overwrite: bool = False
    retry_failed: bool = False
    force: bool = False
    include_response: bool = False
    shard: Shard | None = None  # only the rows of this shard (an array job's part)

    def __post_init__(self) -> None:
        check_choice("input_format", self.input_format, INPUT_FORMATS)
        check_choice("endpoint", self.endpoint, ENDPOINT_MODES)
        check_choice("order", self.order, ORDERS)
        check_choice("on_overflow", self.on_overflow, OVERFLOW_POLICIES)

    def fingerprint_parts(self, defaults: RequestDefaults, input_digest: str) -> dict[str, Any]:
        """What must not change between a run and its resumption."""
        parts: dict[str, Any] = {
            "input": input_digest,
            "model": defaults.model,
            "endpoint": self.endpoint,
            "request_defaults": {**defaults.body_fields(), "system": defaults.system},
            "fields": dataclasses.asdict(self.fields),
            "include_response": self.include_response,
        }
        if self.shard is not None:  # absent otherwise: outputs of unsharded runs still resume
            parts["shard"] = [self.shard.index, self.shard.count]
        return parts


def preview_requests(job: Job) -> Iterator[PreparedRequest]:
    """Every row's request, built without asking for a model: what sizing a server reads."""
    source = open_source(job.input, job.input_format)
    builder = RequestBuilder(source.path, job.defaults, job.fields, job.endpoint,
                             require_model=False)  # fmt: skip
    return (builder.build(row) for row in source.rows())


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


async def _builder(job: Job, dispatcher: Dispatcher, path: str) -> RequestBuilder:
    """The job's request builder, told what the server serves: rows naming a model it does not
    serve are refused while validating, and without --model its only model is the default.
    (Its max_model_len also lets rows the server shortened be marked.)"""
    defaults = job.defaults
    try:
        served: list[str] | None = list(await dispatcher.server.served())
    except TransportError as exc:
        served, hint = None, f"the server's models could not be listed ({exc})"
    else:
        assert served is not None
        hint = f"the server serves {len(served)} models ({', '.join(served)})"
        if not defaults.model and len(served) == 1:
            defaults = dataclasses.replace(defaults, model=served[0])
        await dispatcher.server.use(defaults.model)
    # --model given (or the model vbatch launched): every row goes to it.
    force = job.defaults.model is not None
    return RequestBuilder(path, defaults, job.fields, job.endpoint, model_hint=hint,
                          served=served, force_model=force)  # fmt: skip


async def iter_results(
    job: Job,
    dispatcher: Dispatcher,
    stats: Stats | None = None,
    on_ready: Callable[[Stats, OutputState], None] | None = None,
    *,
    writer: ResultWriter | None = None,
    state: JobStateStore | None = None,
    weight: float = 1.0,
) -> AsyncIterator[Result]:
    """Run ``job`` and yield each result once it is safely handed to the output (if any).

    The output is ``writer`` with its job state in ``state``; by default a JSONL file at
    ``job.output`` with the state files beside it (none when ``job.output`` is None). Raises
    ``InputError``/``OutputError``/``ResumeError`` before the first request when the input or
    output cannot be used. Jobs sharing the dispatcher take turns at its window, ``weight``
    rows for each one of a job of weight 1.
    """
    stats = stats or Stats()
    source = open_source(job.input, job.input_format)
    if writer is None and job.output is not None:
        writer = JsonlResultWriter(job.output, job.include_response)
        state = state or FileStateStore(job.output)
    if writer is not None:
        writer.lock()  # first: one writer per output, whatever happens next
    flusher: asyncio.Task[None] | None = None
    try:
        builder = await _builder(job, dispatcher, source.path)

        def validate() -> InputIndex:
            return validate_input(source, builder)

        # Whole passes over the input, in a thread: a fleet starting meanwhile is watched, and
        # a progress display drawn, from this loop.
        if writer is not None:
            assert state is not None, "a writer needs a state store"
            digest = await asyncio.to_thread(file_digest, source.path)
            parts = job.fingerprint_parts(builder.defaults, digest)
            previous, index = await asyncio.to_thread(
                prepare_output, writer, state, parts, validate,
                overwrite=job.overwrite, retry_failed=job.retry_failed, force=job.force,
            )  # fmt: skip
            writer.open(index.batch_lines)
            flusher = asyncio.create_task(_flush_periodically(writer))
        else:
            previous, index = OutputState(), await asyncio.to_thread(validate)
        pending = pending_mask(index.digests, previous.done)
        rows = index.rows
        if job.shard is not None:
            mine = job.shard.mask(index.digests)
            pending &= mine
            rows = int(mine.sum())
        stats.total = rows
        stats.skipped = rows - int(pending.sum())
        if on_ready is not None:
            on_ready(stats, previous)
        requests = (builder.build(row) for row in source.rows(pending))
        fail_fast = FailFast(FAIL_FAST_REPLIES)
        async for result in dispatcher.stream(requests, stats, ordered=job.order == "input",
                                              on_overflow=job.on_overflow,
                                              weight=weight):  # fmt: skip
            if writer is not None:
                writer.write(result)
            yield result
            fail_fast.see(result)
    finally:
        await cancel_and_wait(flusher)
        if writer is not None:
            writer.close()


async def _flush_periodically(writer: ResultWriter) -> None:
    while True:
        await asyncio.sleep(FLUSH_INTERVAL_S)
        writer.flush()


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
                await cancel_and_wait(runner)
            else:
                runner.result()
    finally:
        if not runner.done():
            await cancel_and_wait(runner)
        stats.finished_at = time.monotonic()
        stats.cpu_end_s = time.process_time()
        snapshot = dispatcher.snapshot()
        stats.window = snapshot.window
        stats.window_history = snapshot.window_history
        _fleet_counts(stats, snapshot)
        if ticker is not None:
            ticker.cancel()
        if started:
            progress.stop(stats)
    return RunSummary(job.output, stats, previous, interrupted)


async def _tick(progress: Progress, stats: Stats, dispatcher: Dispatcher) -> None:
    while True:
        await asyncio.sleep(progress.interval_s)
        snapshot = dispatcher.snapshot()
        if snapshot.fleet is not None and not snapshot.fleet.up:
            stats.server_running = stats.server_waiting = None  # the last look is stale
        elif snapshot.load is not None:
            stats.server_running = snapshot.load.running
            stats.server_waiting = snapshot.load.waiting
        stats.window = snapshot.window
        stats.window_capped = snapshot.window_held
        _fleet_counts(stats, snapshot)
        progress.refresh(stats)


def _fleet_counts(stats: Stats, snapshot: DispatcherSnapshot) -> None:
    if snapshot.fleet is not None:
        stats.servers, stats.servers_up = snapshot.fleet.members, snapshot.fleet.up
        stats.restarts = snapshot.fleet.restarts
