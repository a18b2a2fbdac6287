"""A pool of workers that each take the next item the moment the previous one is done.

Items wait in a ``FairQueue``: a lane per feeder, each no longer than the pool, so whoever feeds
it blocks there and reads its input lazily (live coroutines and memory are O(size) per feeder,
not O(items)), and workers take from the lanes in turn. The pool can be resized while it
runs: new workers start at once, surplus ones leave after their current item.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

from .._tasks import cancel_and_wait
from .fairqueue import FairQueue

__all__ = ["WorkerPool"]

T = TypeVar("T")


class WorkerPool(Generic[T]):
    def __init__(self, size: int, handle: Callable[[T], Awaitable[None]]) -> None:
        self.size = size
        self._handle = handle
        self._queue: FairQueue[T] | None = None
        self._workers: list[asyncio.Task[None]] = []
        self._retiring = 0

    @property
    def running(self) -> bool:
        return self._queue is not None

    def start(self) -> None:
        if self._queue is None:
            self._queue = FairQueue(self.size)
            self._workers = [asyncio.create_task(self._work()) for _ in range(self.size)]

    @property
    def queue(self) -> FairQueue[T]:
        """Where items go: a feeder takes a lane (``queue.lane(weight)``) and awaits
        ``lane.put(item)``, which blocks while the lane is full."""
        assert self._queue is not None, "start() first"
        return self._queue

    def resize(self, size: int) -> None:
        size = max(1, size)
        self.size = size
        if self._queue is None:
            return
        live = len(self._workers) - self._retiring
        if size > live:
            revived = min(self._retiring, size - live)
            self._retiring -= revived
            live += revived
            self._workers += [asyncio.create_task(self._work()) for _ in range(size - live)]
        else:
            self._retiring += live - size

    async def aclose(self) -> None:
        await cancel_and_wait(*self._workers)
        self._workers = []
        self._queue = None

    async def _work(self) -> None:
        assert self._queue is not None
        queue = self._queue
        while True:
            if self._retiring:
                self._retiring -= 1
                task = asyncio.current_task()
                if task in self._workers:
                    self._workers.remove(task)
                return
            await self._handle(await queue.get())
