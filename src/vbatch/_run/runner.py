"""Running a job to its end (``run_job``) or taking its results as they come (``ResultStream``,
what ``vbatch.stream`` and ``iter_results`` return)."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

from .._client.dispatcher import Dispatcher, DispatcherSnapshot
from .._client.stats import Stats
from .._config import ClientOptions
from .._fleet.factory import FleetTarget
from .._fleet.local import OnLaunch
from .._job import Job, RunSummary
from .._models import Result
from .._output.writer import OutputState, ResultWriter
from .._progress import NullProgress, Progress, fleet_summary, show_progress
from .._tasks import CancelledOn, task_group
from .remote import localize, shown, upload
from .session import OnReady, RunResults, open_run

__all__ = ["ResultStream", "iter_results", "run_job"]


class ResultStream:
    """A job's results as they are written, within ``async with``::

        async with vbatch.stream("in.jsonl", base_url=...) as results:
            async for result in results:
                ...

    Leaving the block, however early (``break``, an error), stops the servers it started,
    closes its connections and lets go of the output's lock at once. Iterating it without
    ``async with`` is refused: a half-read generator would hold them until it is collected.
    """

    def __init__(self, job: Job, servers: FleetTarget | Dispatcher, **session: Any) -> None:
        self._job = job
        self._servers = servers
        self._session = session
        self._run: contextlib.AbstractAsyncContextManager[RunResults] | None = None
        self._results: RunResults | None = None

    async def __aenter__(self) -> ResultStream:
        self._run = open_run(self._job, self._servers, **self._session)
        self._results = await self._run.__aenter__()
        return self

    async def __aexit__(self, *exc: Any) -> bool | None:
        run, self._run, self._results = self._run, None, None
        assert run is not None
        return await run.__aexit__(*exc)

    def on_ready(self, call: OnReady) -> None:
        """``call(stats, what the output held)`` once the rows to send are known."""
        self._session["on_ready"] = call

    def snapshot(self) -> DispatcherSnapshot | None:
        """The window's and the servers' side, for progress (None before sending)."""
        return self._results.snapshot() if self._results is not None else None

    def __aiter__(self) -> AsyncIterator[Result]:
        if self._results is None:
            raise TypeError("use it as `async with vbatch.stream(...) as results: async for "
                            "result in results: ...`, which releases the output and the "
                            "servers however the loop ends")  # fmt: skip
        return aiter(self._results)


def iter_results(
    job: Job,
    dispatcher: Dispatcher,
    stats: Stats | None = None,
    on_ready: OnReady | None = None,
    *,
    writer: ResultWriter | None = None,
    weight: float = 1.0,
) -> ResultStream:
    """``job``'s results through a dispatcher its owner keeps (``vbatch.connect``), written to
    ``writer`` (default: a JSONL file at ``job.output``, if any). Jobs sharing the dispatcher
    take turns at its window, ``weight`` rows for each one of a job of weight 1. Raises
    ``InputError``/``OutputError``/``ResumeError`` before the first request when the input or
    output cannot be used."""
    return ResultStream(job, dispatcher, stats=stats, on_ready=on_ready, writer=writer,
                        weight=weight)  # fmt: skip


async def run_job(
    job: Job,
    servers: FleetTarget | Dispatcher,
    progress: Progress | None = None,
    stop: asyncio.Event | None = None,
    *,
    client: ClientOptions | None = None,
    on_launch: OnLaunch | None = None,
    on_result: Callable[[Result], None] | None = None,
) -> RunSummary:
    """Run ``job`` to the end, showing progress; ``on_result`` sees each result once it is
    written.

    Setting ``stop`` (the CLI does on Ctrl-C) cancels the run: results already received are
    written, in-flight ones dropped, servers it started are stopped, and the summary says
    ``interrupted``. Cancelling the task instead propagates as usual, after the same clean-up.
    An input or output at an ``http(s)://`` URL is fetched first and sent once the job has
    ended, not when it was interrupted (``remote.py``).
    """
    job, send_to = await localize(job)
    summary = await _run_local(job, servers, progress, stop, client=client, on_launch=on_launch,
                               on_result=on_result)  # fmt: skip
    if send_to is not None and not summary.interrupted:
        assert job.output is not None
        await upload(job.output, send_to)
        summary = dataclasses.replace(summary, sent_to=shown(send_to))
    return summary


async def _run_local(
    job: Job,
    servers: FleetTarget | Dispatcher,
    progress: Progress | None,
    stop: asyncio.Event | None,
    *,
    client: ClientOptions | None,
    on_launch: OnLaunch | None,
    on_result: Callable[[Result], None] | None,
) -> RunSummary:
    progress = progress or NullProgress()
    stats = Stats()
    previous = OutputState()
    stream = ResultStream(job, servers, client=client, stats=stats, on_launch=on_launch)
    async with task_group() as group:
        shown: asyncio.Task[None] | None = None

        def ready(s: Stats, before: OutputState) -> None:
            nonlocal previous, shown
            previous = before
            shown = group.create_task(show_progress(progress, s, stream.snapshot))

        async with CancelledOn(stop) as stopping:
            stream.on_ready(ready)
            last = None
            try:
                async with stream:
                    try:
                        async for result in stream:
                            if on_result is not None:
                                on_result(result)
                    finally:
                        last = stream.snapshot()  # the window's and the servers' side, at the end
            finally:
                stats.finished_at = time.monotonic()
                stats.cpu_end_s = time.process_time()
                if shown is not None:
                    shown.cancel()
    return RunSummary(job.output, stats, previous, stopping.fired, fleet_summary(last))
