"""The scheduler between jobs sharing a dispatcher: lanes taken in weighted turn."""

from __future__ import annotations

import asyncio

import pytest

from vbatch._client.fairqueue import FairQueue


async def _drain(queue: FairQueue[str], n: int) -> list[str]:
    return [await queue.get() for _ in range(n)]


async def test_equal_lanes_alternate_and_a_late_lane_gets_its_turn_at_once() -> None:
    queue: FairQueue[str] = FairQueue(lane_size=100)
    big, small = queue.lane(), queue.lane()
    for i in range(10):
        await big.put(f"b{i}")
    assert await _drain(queue, 2) == ["b0", "b1"]
    for i in range(3):
        await small.put(f"s{i}")
    # The small lane is served every other item, not after the big lane's queue.
    assert await _drain(queue, 8) == ["b2", "s0", "b3", "s1", "b4", "s2", "b5", "b6"]


async def test_weights_share_in_proportion_evenly_spread() -> None:
    queue: FairQueue[str] = FairQueue(lane_size=100)
    heavy, light = queue.lane(weight=3), queue.lane(weight=1)
    for _ in range(12):
        await heavy.put("h")
        await light.put("l")
    taken = await _drain(queue, 8)
    assert taken.count("h") == 6 and taken.count("l") == 2
    assert "hhhh" not in "".join(taken)  # spread, not in bursts


async def test_a_full_lane_blocks_its_feeder_only() -> None:
    queue: FairQueue[int] = FairQueue(lane_size=2)
    a, b = queue.lane(), queue.lane()
    await a.put(1)
    await a.put(2)
    blocked = asyncio.create_task(a.put(3))
    await asyncio.sleep(0)
    assert not blocked.done()
    await b.put(10)  # another lane is not held up
    assert await queue.get() == 1  # a tie goes to the older lane
    await asyncio.wait_for(blocked, 1)  # room again: the feeder goes on
    assert await _drain(queue, 3) == [10, 2, 3]


async def test_closing_a_lane_drops_its_items_and_frees_its_feeder() -> None:
    queue: FairQueue[int] = FairQueue(lane_size=1)
    gone, kept = queue.lane(), queue.lane()
    await gone.put(1)
    waiting = asyncio.create_task(gone.put(2))
    await asyncio.sleep(0)
    gone.close()
    await asyncio.wait_for(waiting, 1)
    await kept.put(5)
    assert queue.qsize() == 1 and await queue.get() == 5


async def test_a_getter_waits_for_an_item() -> None:
    queue: FairQueue[int] = FairQueue(lane_size=4)
    getter = asyncio.create_task(queue.get())
    await asyncio.sleep(0)
    assert not getter.done()
    await queue.lane().put(7)
    assert await asyncio.wait_for(getter, 1) == 7


def test_a_weight_must_be_positive() -> None:
    with pytest.raises(ValueError):
        FairQueue[int](1).lane(weight=0)
