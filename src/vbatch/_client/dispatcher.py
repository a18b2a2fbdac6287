"""The dispatcher: keeps up to ``concurrency`` requests in flight over one transport.

Rows come from a lazy iterator; each job's feeder moves them into its short lane of the worker
pool's queue and a worker takes the next one the moment its previous request completes, so the
server's batch is refilled at once and never in lumps. Several jobs may share one dispatcher
(one connection pool, one window): each ``stream()`` call is a job, and the window is shared
between them in weighted turn (``fairqueue.py``).

The dispatcher only dispatches. Sending one request with retries is the ``Sender``'s; reading
the server's load is the ``LoadMonitor``'s and choosing the window from it the
``WindowController``'s; what the server serves is ``ServerInfo``'s; counting is ``Stats``'.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass

from .._config import (
    DEFAULT_CONCURRENCY,
    FIRST_WAVE,
    MAX_WINDOW,
    MONITOR_INTERVAL_S,
    ClientOptions,
    OverflowPolicy,
)
from .._errors import ConfigError
from .._fleet.base import Fleet, FleetStatus
from .._models import PreparedRequest, Result
from .endpoints import FleetTransport
from .jobstream import DONE, JobStream, Work
from .metrics import LoadMonitor, ServerLoad
from .retry import RetryPolicy
from .sender import Sender
from .server_info import ServerInfo
from .stats import Stats
from .transport import Transport
from .window import WindowController
from .workers import WorkerPool

__all__ = ["Dispatcher", "DispatcherSnapshot", "dispatcher_for"]


@dataclass(frozen=True)
class DispatcherSnapshot:
    """What progress displays and the run's summary read of a dispatcher."""

    window: int
    adaptive: bool
    window_held: bool  # an adaptive window kept small because a bigger one measured slower
    load: ServerLoad | None  # the server's last reported load, when known
    window_history: list[tuple[float, int, float]] | None  # an adaptive window's changes
    fleet: FleetStatus | None = None  # the servers' side, when the dispatcher has a fleet


class Dispatcher:
    """Sends prepared requests through one transport with a bounded window and retries."""

    def __init__(
        self,
        transport: Transport,
        *,
        concurrency: int = DEFAULT_CONCURRENCY,
        retry: RetryPolicy | None = None,
        adaptive: bool = False,
        max_window: int = MAX_WINDOW,
        monitor_interval_s: float = MONITOR_INTERVAL_S,
        controller: WindowController | None = None,
        fleet: Fleet | None = None,
        window_per_member: int | None = None,
        first_wave: int | None = FIRST_WAVE,
    ) -> None:
        """With a ``fleet`` (started: its lifetime is its owner's), a row whose server died is
        sent again uncharged (sender.py); with ``window_per_member`` too, the fixed window is
        that many times the members up, following them as they join and leave.
        ``first_wave``: rows in flight until the first result is back (None: the window at
        once). A server given the whole window at once answers none of it before it has
        prefilled a whole batch; a few rows first come back in a few steps, and the window
        opens as soon as one has (docs/benchmarks.md §1, "First result")."""
        if concurrency < 1:
            raise ConfigError("concurrency must be at least 1")
        self.transport = transport
        self.fleet = fleet
        self.server = ServerInfo(transport, fleet.models if fleet else None)
        self.sender = Sender(transport, retry or RetryPolicy.default(), self.server, fleet)
        # adaptive: follow the server's load (its /metrics) instead of a fixed window.
        self.adaptive = adaptive
        self.controller = controller or WindowController(concurrency, max_window)
        self.monitor = LoadMonitor(transport, self._on_load, monitor_interval_s)
        self._window = concurrency  # the pool's size once the first wave is over
        if first_wave is not None and first_wave >= concurrency:
            first_wave = None  # a window that small is its own first wave
        self._first_wave = first_wave
        self.pool: WorkerPool[Work] = WorkerPool(first_wave or concurrency, self._run)
        self.output_tokens = 0  # received over all jobs, for the adaptive window
        self.window_per_member = window_per_member
        if window_per_member is not None and isinstance(transport, FleetTransport):
            transport.on_members = self._members_changed

    @property
    def concurrency(self) -> int:
        """The window (during the first wave, what it opens to)."""
        return self._window

    async def __aenter__(self) -> Dispatcher:
        self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    def start(self) -> None:
        if not self.pool.running:
            self.pool.start()
            self.monitor.start()

    async def aclose(self) -> None:
        await self.monitor.aclose()
        await self.pool.aclose()
        await self.transport.aclose()

    def resize(self, concurrency: int) -> None:
        """Change the window while running."""
        self._window = max(1, concurrency)
        wave = self._first_wave
        self.pool.resize(self._window if wave is None else min(wave, self._window))

    def _members_changed(self, up: int) -> None:
        assert self.window_per_member is not None
        self.resize(self.window_per_member * max(1, up))

    def _on_load(self, load: ServerLoad) -> None:
        if not self.adaptive:
            return
        generated = load.generation_tokens
        now = asyncio.get_running_loop().time()
        tokens = self.output_tokens if generated is None else generated
        window = self.controller.update(now, tokens, self.sender.in_flight, load)
        if window != self.concurrency:
            self.resize(window)

    def snapshot(self) -> DispatcherSnapshot:
        adaptive = self.adaptive
        return DispatcherSnapshot(
            window=self.concurrency,
            adaptive=adaptive,
            window_held=adaptive and self.controller.capped,
            load=self.monitor.load,
            window_history=list(self.controller.history) if adaptive else None,
            fleet=self.fleet.status() if self.fleet is not None else None,
        )

    async def stream(
        self,
        requests: Iterable[PreparedRequest],
        stats: Stats | None = None,
        *,
        ordered: bool = False,
        reorder_window: int | None = None,
        on_overflow: OverflowPolicy = "error",
        weight: float = 1.0,
    ) -> AsyncIterator[Result]:
        """Send every request; yield each result as it completes (or in input order).

        With ``ordered``, at most ``reorder_window`` rows (default 4 x concurrency) may be
        finished but waiting for an older one; beyond that, sending pauses. Jobs running at
        once take turns at the window, ``weight`` rows for each one of a job of weight 1.
        Cancelled, it still yields the results already back, then lets the cancellation go on.
        """
        self.start()
        stats = stats or Stats()
        stats.begin_sending()
        window = reorder_window or 4 * self.concurrency
        job = JobStream(stats, ordered, window, on_overflow)
        lane = self.pool.queue.lane(weight)
        feeder = asyncio.create_task(job.feed(requests, lane.put))
        finished = False
        try:
            results = job.results
            try:
                while (item := await results.get()) is not DONE:
                    if isinstance(item, BaseException):
                        raise item
                    assert isinstance(item, Result)
                    yield item
            except asyncio.CancelledError:
                # Results already back still reach the caller (its sink) before the
                # cancellation goes on: nothing more is sent, and nothing is awaited meanwhile.
                job.closed = True
                while not results.empty():
                    if isinstance(item := results.get_nowait(), Result):
                        yield item
                raise
            finished = True
        finally:
            job.closed = True
            lane.close()
            if not finished:
                feeder.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await feeder

    async def _run(self, work: Work) -> None:
        job = work.job
        if job.closed:
            return  # queued before its job ended: not sent, not written
        request = work.request
        try:
            if request.refused is not None:
                result = Result(request.index, request.id, request.endpoint, None, None,
                                request.refused, 0, 0.0)  # fmt: skip
            else:
                result = await self.sender.send(request, job.stats, job.on_overflow)
        except asyncio.CancelledError:
            raise
        except BaseException as exc:  # a fleet that gave up, or a bug: end the job with it
            job.fail(exc)
            return
        self.output_tokens += result.completion_tokens
        if self._first_wave is not None:  # the first result is back: open the whole window
            self._first_wave = None
            self.pool.resize(self._window)
        await job.deliver(work, result)

    async def execute(
        self,
        request: PreparedRequest,
        stats: Stats | None = None,
        on_overflow: OverflowPolicy = "error",
    ) -> Result:
        """Send one request with retries; always returns a ``Result`` (errors become records)."""
        return await self.sender.send(request, stats, on_overflow)


def dispatcher_for(
    fleet: Fleet,
    client: ClientOptions,
    retry: RetryPolicy | None = None,
    window_per_member: int | None = None,
) -> Dispatcher:
    """A dispatcher over a started ``fleet``: a fixed window (``client.concurrency``, else
    ``window_per_member`` for each member up), or without either an adaptive one."""
    transport = FleetTransport(fleet, client.api_key, client.timeout_s)
    fixed = client.concurrency or window_per_member
    return Dispatcher(
        transport,
        concurrency=fixed or DEFAULT_CONCURRENCY,
        adaptive=fixed is None,
        retry=retry or RetryPolicy.default(client.max_attempts),
        fleet=fleet,
        window_per_member=None if client.concurrency else window_per_member,
    )
