"""The scheduler between jobs sharing one dispatcher: a lane per job, taken in turn.

Each job's feeder puts its rows into its own bounded ``Lane`` (it blocks there while the lane is
full, so rows are still read lazily); a worker that is free takes the next row from
``FairQueue.get``, which picks among the lanes holding rows by smooth weighted round robin (as
nginx balances upstreams): each lane gains its weight, the richest one gives a row and pays the
total. Two lanes of weight 1 alternate; weights 3 and 1 give 3 rows to 1, evenly spread. So a
small job that starts behind a huge one gets its share of the window at once instead of waiting
behind the huge one's queued rows, and finishes first.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from typing import Generic, TypeVar

__all__ = ["FairQueue", "Lane"]

T = TypeVar("T")


def _wake_one(waiters: deque[asyncio.Future[None]]) -> None:
    while waiters:
        waiter = waiters.popleft()
        if not waiter.done():
            waiter.set_result(None)
            return


class Lane(Generic[T]):
    """One job's rows waiting for a worker."""

    def __init__(self, queue: FairQueue[T], size: int, weight: float) -> None:
        if weight <= 0:
            raise ValueError("a lane's weight must be positive")
        self._queue = queue
        self.size = size
        self.weight = weight
        self.credit = 0.0  # smooth weighted round robin's running balance
        self.items: deque[T] = deque()
        self._putters: deque[asyncio.Future[None]] = deque()
        self.closed = False

    async def put(self, item: T) -> None:
        """Add ``item``; waits while the lane holds ``size`` items."""
        while len(self.items) >= self.size:
            waiter = asyncio.get_running_loop().create_future()
            self._putters.append(waiter)
            try:
                await waiter
            except BaseException:
                waiter.cancel()
                raise
        if self.closed:
            return  # its job ended while it waited: the item goes nowhere
        self.items.append(item)
        self._queue.added()

    def took(self) -> T:
        item = self.items.popleft()
        _wake_one(self._putters)
        return item

    def close(self) -> None:
        """Drop what the lane holds and leave the queue (its job is over)."""
        if self.closed:
            return
        self.closed = True
        self._queue.remove(self)
        self.items.clear()
        for waiter in self._putters:
            if not waiter.done():
                waiter.set_result(None)
        self._putters.clear()


class FairQueue(Generic[T]):
    """Lanes of ``lane_size`` items each; ``get`` takes from them in weighted turn."""

    def __init__(self, lane_size: int) -> None:
        self.lane_size = max(1, lane_size)
        self._lanes: list[Lane[T]] = []
        self._getters: deque[asyncio.Future[None]] = deque()
        self._count = 0

    def lane(self, weight: float = 1.0) -> Lane[T]:
        lane = Lane(self, self.lane_size, weight)
        self._lanes.append(lane)
        return lane

    def qsize(self) -> int:
        return self._count

    def added(self) -> None:
        self._count += 1
        _wake_one(self._getters)

    def remove(self, lane: Lane[T]) -> None:
        with contextlib.suppress(ValueError):
            self._lanes.remove(lane)
        self._count -= len(lane.items)

    async def get(self) -> T:
        while not self._count:
            waiter = asyncio.get_running_loop().create_future()
            self._getters.append(waiter)
            try:
                await waiter
            except BaseException:
                waiter.cancel()
                if self._count:
                    _wake_one(self._getters)  # pass on a wake-up this getter will not use
                raise
        self._count -= 1
        return self._pick().took()

    def _pick(self) -> Lane[T]:
        if len(self._lanes) == 1:  # one job (``vbatch run``): no turns to take
            return self._lanes[0]
        ready = [lane for lane in self._lanes if lane.items]
        if len(ready) == 1:
            return ready[0]
        total = 0.0
        best = ready[0]
        for lane in ready:
            lane.credit += lane.weight
            total += lane.weight
            if lane.credit > best.credit:
                best = lane
        best.credit -= total
        return best
