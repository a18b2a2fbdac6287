"""One job's plumbing inside a shared dispatcher: where its results go and, for input order,
its bounded reorder buffer with back-pressure."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass

from .._config import OverflowPolicy
from .._models import PreparedRequest, Result
from .stats import Stats

__all__ = ["DONE", "JobStream", "Work"]

# Ends a job's results; an exception put there instead ends them with that error.
DONE = object()


@dataclass(slots=True)
class Work:
    request: PreparedRequest
    seq: int
    job: JobStream


class JobStream:
    def __init__(
        self, stats: Stats, ordered: bool, reorder_window: int, on_overflow: OverflowPolicy
    ) -> None:
        self.stats = stats
        self.on_overflow: OverflowPolicy = on_overflow
        self.ordered = ordered
        self.window = reorder_window
        self.results: asyncio.Queue[Result | object] = asyncio.Queue()
        self.pending: dict[int, Result] = {}
        self.next_seq = 0  # next sequence number to hand out, in input order
        self.space = asyncio.Condition()
        self.outstanding = 0  # handed to workers, not yet delivered
        self.idle = asyncio.Event()
        self.idle.set()
        self.closed = False  # its reader is gone (done, failed, interrupted): send no more

    async def feed(
        self, requests: Iterable[PreparedRequest], put: Callable[[Work], Awaitable[None]]
    ) -> None:
        """Hand every request to ``put`` (the workers' queue), then end the results once all
        are delivered; an error while reading rows (an ``InputError``) ends them with it."""
        try:
            for seq, request in enumerate(requests):
                await self.wait_for_room(seq)
                self.outstanding += 1
                self.idle.clear()
                await put(Work(request, seq, self))
            await self.idle.wait()
            self.results.put_nowait(DONE)
        except asyncio.CancelledError:
            raise
        except BaseException as exc:
            self.results.put_nowait(exc)

    async def deliver(self, work: Work, result: Result) -> None:
        self.stats.record(result)
        if not self.ordered:
            self.results.put_nowait(result)
        else:
            self.pending[work.seq] = result
            released = False
            while self.next_seq in self.pending:
                self.results.put_nowait(self.pending.pop(self.next_seq))
                self.next_seq += 1
                released = True
            if released:
                async with self.space:
                    self.space.notify_all()
        self.outstanding -= 1
        if self.outstanding == 0:
            self.idle.set()

    def fail(self, error: BaseException) -> None:
        """End the job's results with ``error`` (a fleet that gave up, or a bug: the job must
        not wait for rows that will never come)."""
        self.results.put_nowait(error)

    async def wait_for_room(self, seq: int) -> None:
        """Back-pressure for input order: row ``seq`` may start only while it is fewer than
        ``window`` rows ahead of the oldest unwritten one, so the buffer stays bounded."""
        if not self.ordered or seq - self.next_seq < self.window:
            return
        async with self.space:
            await self.space.wait_for(lambda: seq - self.next_seq < self.window)
