"""One run of a job, phase by phase (the package's docstring lists them):

1. **prepare** – take the output's lock, check it can be written, and decide whether it resumes
   (its fingerprint against this job's); nothing is launched yet, so a locked or unwritable
   output, or a changed job, ends the run before any server process exists.
2. **plan** – on the scan's first rows: start this machine's servers in the background.
3. **scan** – one streaming pass, in a thread, while the servers start: validation, the id
   index, the digest, the size of the rows still to send (``scan.py``).
4. **re-plan** – only if the scan found a row the first plan cannot hold (``servers.py``).
5. **send** – once the scan passed and a server is up (``send.py``).

An input read once (a generator: ``_input/data.py``) has no scan: its first rows plan the
servers and name it, and each row is checked as it is sent (``_send_once``).

Everything the run starts lives in one task group and one exit stack: leaving the block, however
it is left (the end, an error, a ``break``, a cancellation), stops the servers it started,
closes the pool and lets go of the output's lock.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import threading
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Sequence
from typing import Any

import numpy as np
import orjson

from .._client.dispatcher import Dispatcher, DispatcherSnapshot
from .._client.stats import Stats
from .._config import ClientOptions
from .._engine import sizing as _sizing
from .._engine.lora import MAX_RESIDENT_LORAS, adapter_groups
from .._engine.sizing import measure_requests
from .._errors import InputError, ResumeError, TransportError
from .._fleet.factory import FleetTarget
from .._fleet.local import OnLaunch
from .._input.data import DataInput, DataSource
from .._input.requests import RequestBuilder
from .._input.sources import Source, finish_digest, new_digest, open_source
from .._input.validate import InputIndex
from .._job import Job
from .._models import RequestDefaults, Result
from .._output.resume import Resumption, decide_resume, pending_mask, start_output
from .._output.writer import JsonlResultWriter, OutputState, ResultWriter
from .._tasks import task_group
from .scan import ModelTally, Scanned, Sizing, scan
from .send import flush_periodically, send
from .servers import RunServers

__all__ = ["OnReady", "RunResults", "open_run"]

OnReady = Callable[[Stats, OutputState], None]


class RunResults:
    """A run's results as they are written, and what progress reads of its dispatcher."""

    def __init__(self, results: AsyncGenerator[Result], dispatcher: Dispatcher | None) -> None:
        self._results = results
        self._dispatcher = dispatcher

    def __aiter__(self) -> AsyncIterator[Result]:
        return self._results

    def snapshot(self) -> DispatcherSnapshot | None:
        return self._dispatcher.snapshot() if self._dispatcher is not None else None


@contextlib.asynccontextmanager
async def open_run(
    job: Job,
    servers: FleetTarget | Dispatcher,
    *,
    client: ClientOptions | None = None,
    stats: Stats | None = None,
    on_ready: OnReady | None = None,
    on_launch: OnLaunch | None = None,
    writer: ResultWriter | None = None,
    weight: float = 1.0,
) -> AsyncIterator[RunResults]:
    """``job``'s results, as they are written, within the block. ``servers``: a dispatcher
    someone keeps, or where to find or start servers for this run."""
    stats = stats or Stats()
    source = _open_input(job)  # a missing input: before anything else
    if writer is None and job.output is not None:
        writer = JsonlResultWriter(job.output, job.include_response)
    async with contextlib.AsyncExitStack() as stack:
        # -- prepare ---------------------------------------------------------------------------
        if writer is not None:
            writer.lock()  # first: one writer per output, whatever happens next
            stack.callback(writer.close)
            writer.check()
        side = RunServers(servers, client or ClientOptions(), on_launch)
        await stack.enter_async_context(side)
        async with task_group() as group:
            side.begin(group)
            if side.launches:  # every row goes to the model launched
                model = await side.model_name()
                defaults = dataclasses.replace(job.defaults, model=model)
                job = dataclasses.replace(job, defaults=defaults)
            if source.one_pass:
                async with _send_once(job, source, side, writer, stats, on_ready, weight,
                                      group) as once:  # fmt: skip
                    yield once
                return
            resumption = None
            if writer is not None:
                resumption = await _decide(job, source, writer, side)
            left = None
            if resumption is not None and resumption.index is not None:
                left = _left(job, resumption.index, resumption.previous.done)
                if not left[1].any():
                    _ready(stats, resumption, *left, on_ready)
                    # All done: no server started, the input not read again.
                    yield RunResults(_nothing(), None)
                    return
            # -- plan + scan, while the servers start ------------------------------------------
            builder = _scan_builder(job, source, side)
            tally = ModelTally() if _by_adapter(job, side) else None
            scanned = await _scan(source, builder, job, resumption,
                                  None if left is None else left[1], side, tally)  # fmt: skip
            side.scanned(scanned.measure)
            if writer is not None and job.defaults.model:  # the fingerprint is known: record
                _record(job, writer, job.defaults, resumption, scanned)
            builder = await _send_builder(job, source, builder, side)  # may wait for servers
            if writer is not None and not job.defaults.model:
                _record(job, writer, builder.defaults, resumption, scanned)
            index = scanned.index or (resumption.index if resumption is not None else None)
            assert index is not None
            rows, pending = left or _left(job, index, _done(resumption))
            # -- send ------------------------------------------------------------------------
            dispatcher = await side.dispatcher()
            _ready(stats, resumption, rows, pending, on_ready)
            if writer is not None:
                writer.open(index.batch_lines)
            passes = _passes(tally, side, pending)
            async with _sending(job, dispatcher, builder, source, passes, writer, stats, weight,
                                group) as results:  # fmt: skip
                yield results


def _open_input(job: Job) -> Source:
    if isinstance(job.input, DataInput):
        fields = job.fields
        return DataSource(job.input, fields.prompt_field, fields.messages_field)
    return open_source(job.input, job.input_format)


@contextlib.asynccontextmanager
async def _send_once(
    job: Job,
    source: Source,
    side: RunServers,
    writer: ResultWriter | None,
    stats: Stats,
    on_ready: OnReady | None,
    weight: float,
    group: asyncio.TaskGroup,
) -> AsyncIterator[RunResults]:
    """An input read once: no resuming (which of its rows are done cannot be told); its first
    rows plan the servers and name it in the output's fingerprint; a bad row is its own error
    result (``send``), the others go on."""
    assert isinstance(source, DataSource)
    if writer is not None and not job.overwrite and writer.holds_results():
        raise ResumeError(f"{writer.name} holds results, and {source.path} can be read only "
                          "once, so which of its rows are done cannot be told: pass "
                          "overwrite=True to start again, or give a list, a DataFrame or a "
                          "Dataset, which resume")  # fmt: skip
    head = source.head(_sizing.SAMPLE_ROWS)
    builder = _scan_builder(job, source, side)
    requests = []
    for row in head:
        with contextlib.suppress(InputError):  # refused when it is sent
            requests.append(builder.build(row))
    if side.launches and side.target is not None:
        folder = (await asyncio.to_thread(side.model_files)).folder
        measure = await asyncio.to_thread(measure_requests, requests, folder,
                                          job.defaults.max_tokens)  # fmt: skip
        measure = dataclasses.replace(measure, complete=False)
        side.on_sample(measure)
        side.scanned(measure)
    builder = await _send_builder(job, source, builder, side)
    if writer is not None:
        hasher = new_digest()
        for request in requests:
            hasher.update(orjson.dumps(request.body, option=orjson.OPT_SORT_KEYS))
        parts = job.fingerprint_parts(builder.defaults, f"once:{finish_digest(hasher)}")
        index = InputIndex(0, bool(builder.batch_lines), np.zeros(0, np.uint64))
        start_output(writer, parts, index, fresh=True)
        writer.open(index.batch_lines)
    dispatcher = await side.dispatcher()
    stats.total = None
    if on_ready is not None:
        on_ready(stats, OutputState())
    async with _sending(job, dispatcher, builder, source, None, writer, stats, weight,
                        group) as results:  # fmt: skip
        yield results


@contextlib.asynccontextmanager
async def _sending(
    job: Job,
    dispatcher: Dispatcher,
    builder: RequestBuilder,
    source: Source,
    passes: Sequence[np.ndarray] | None,
    writer: ResultWriter | None,
    stats: Stats,
    weight: float,
    group: asyncio.TaskGroup,
) -> AsyncIterator[RunResults]:
    """The send phase: the results as they are written, the output flushed now and then, until
    the block is left. ``passes``: the rows to send, in passes over the input one after another
    (None: every row, once)."""
    flusher = group.create_task(flush_periodically(writer)) if writer else None
    results = send(job, dispatcher, builder, source, passes, writer, stats, weight)
    try:
        yield RunResults(results, dispatcher)
    finally:
        await results.aclose()
        if flusher is not None:
            flusher.cancel()


async def _decide(
    job: Job, source: Source, writer: ResultWriter, side: RunServers
) -> Resumption | None:
    """Whether the output resumes; its fingerprint needs the model rows go to, which servers
    someone runs are asked for only when the job names none."""
    defaults = job.defaults
    if not defaults.model and not side.launches and writer.holds_results():
        defaults = await _default_model(defaults, side)

    def parts() -> dict[str, Any]:
        return job.fingerprint_parts(defaults, source.digest())

    return await asyncio.to_thread(decide_resume, writer, parts, overwrite=job.overwrite,
                                   retry_failed=job.retry_failed, force=job.force)  # fmt: skip


def _left(job: Job, index: InputIndex, done: np.ndarray) -> tuple[int, np.ndarray]:
    """The job's rows (its shard's, for a shard) and which of them are left to send."""
    pending = pending_mask(index.digests, done)
    if job.shard is None:
        return index.rows, pending
    mine = job.shard.mask(index.digests)
    return int(mine.sum()), pending & mine


def _by_adapter(job: Job, side: RunServers) -> bool:
    """Whether the rows may go adapter group by adapter group: more adapters launched than
    vLLM holds at once, and results wanted as they finish (in input order, a row of a later
    group would hold back every result after it)."""
    return len(side.adapters) > MAX_RESIDENT_LORAS and job.order == "completion"


def _passes(tally: ModelTally | None, side: RunServers, pending: np.ndarray) -> list[np.ndarray]:
    """The pending rows in the passes they are sent in: one, or one per adapter group."""
    groups = adapter_groups(list(tally.names), side.adapters) if tally is not None else None
    if groups is None:
        return [pending]
    assert tally is not None
    return [pending & mask for mask in tally.masks(groups, len(pending))]


def _done(resumption: Resumption | None) -> np.ndarray:
    return resumption.previous.done if resumption is not None else np.zeros(0, np.uint64)


def _scan_builder(job: Job, source: Source, side: RunServers) -> RequestBuilder:
    """The builder rows are validated with: the launched model (and its adapters) are known
    before its servers are up; which models servers someone runs serve is checked once the
    scan is over."""
    served = None
    if side.launches and job.defaults.model:
        served = [job.defaults.model, *side.adapters]
    return RequestBuilder(source.path, job.defaults, job.fields, job.endpoint,
                          require_model=False, served=served,
                          force_model=_forces_model(job, side))  # fmt: skip


def _forces_model(job: Job, side: RunServers) -> bool:
    """Whether the job's model replaces each row's own: it names one, and no launched adapter
    could be what a row's own names (with ``--lora``, a row's model chooses its adapter)."""
    return job.defaults.model is not None and not side.adapters


async def _scan(
    source: Source,
    builder: RequestBuilder,
    job: Job,
    resumption: Resumption | None,
    pending: np.ndarray | None,
    side: RunServers,
    tally: ModelTally | None = None,
) -> Scanned:
    validate = resumption is None or resumption.index is None
    sizing = None
    if side.launches and side.target is not None:
        folder = (await asyncio.to_thread(side.model_files)).folder
        sizing = Sizing(folder, job.defaults.max_tokens, side.on_sample)
    if not validate and sizing is None:
        return Scanned(None, None, None)  # a resumption against running servers: no pass
    cancelled = threading.Event()
    try:
        return await asyncio.to_thread(scan, source, builder, validate=validate,
                                       pending=pending, digest=resumption is None,
                                       sizing=sizing, cancelled=cancelled,
                                       tally=tally)  # fmt: skip
    finally:
        cancelled.set()  # a scan still running in its thread stops at its next row


async def _default_model(defaults: RequestDefaults, side: RunServers) -> RequestDefaults:
    """Without ``model``, a server serving one model (its adapters aside) gives it."""
    try:
        models = await (await side.dispatcher()).server.models()
    except TransportError:
        return defaults
    if len(models) == 1:
        return dataclasses.replace(defaults, model=models[0])
    return defaults


async def _send_builder(
    job: Job, source: Source, scanned_with: RequestBuilder, side: RunServers
) -> RequestBuilder:
    """The builder requests are sent with, told what the servers serve: rows naming a model
    they do not serve are refused here (the line named), and without ``model`` a server's only
    model (its adapters aside) is the default."""
    served: list[str] | None = None
    try:
        served = list(await side.served())
    except TransportError as exc:
        hint = f"the server's models could not be listed ({exc})"
    else:
        hint = f"the server serves {len(served)} models ({', '.join(served)})"
    defaults = job.defaults
    if served is not None:
        scanned_with.model_hint = hint
        scanned_with.check_served(served)
        server = (await side.dispatcher()).server
        models = await server.models()  # a model and its adapters: the model is the default
        if not defaults.model and len(models) == 1:
            defaults = dataclasses.replace(defaults, model=models[0])
        await server.use(defaults.model)
    if not defaults.model:
        scanned_with.model_hint = hint
        scanned_with.checks.check_named()  # rows without a model, and no default for them
    return RequestBuilder(source.path, defaults, job.fields, job.endpoint, model_hint=hint,
                          served=served, force_model=_forces_model(job, side))  # fmt: skip


def _record(
    job: Job,
    writer: ResultWriter,
    defaults: RequestDefaults,
    resumption: Resumption | None,
    scanned: Scanned,
) -> None:
    """Keep the job's fingerprint and index with the output (a fresh one emptied now that the
    input passed); a resumption that had to validate again records its new index."""
    if scanned.index is None:
        return
    if resumption is None:
        assert scanned.digest is not None
        start_output(writer, job.fingerprint_parts(defaults, scanned.digest), scanned.index,
                     fresh=True)  # fmt: skip
    else:
        start_output(writer, resumption.parts, scanned.index, fresh=False)


def _ready(
    stats: Stats,
    resumption: Resumption | None,
    rows: int,
    pending: np.ndarray,
    on_ready: OnReady | None,
) -> None:
    stats.total = rows
    stats.skipped = rows - int(pending.sum())
    if on_ready is not None:
        on_ready(stats, resumption.previous if resumption is not None else OutputState())


async def _nothing() -> AsyncGenerator[Result]:
    return
    yield
