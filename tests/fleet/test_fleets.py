"""Fleets and the transport over them: members that join and leave while a job runs, servers
vbatch starts and stops."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from pathlib import Path

import psutil
import pytest
from fakeserver import FakeServer
from helpers import FakeSpec, FastRetry, prompt_rows, read_jsonl, write_jsonl

import vbatch
from vbatch import ConfigError, Dispatcher
from vbatch._client.endpoints import FleetTransport
from vbatch._engine.plan import LaunchPlan
from vbatch._engine.sizing import InputMeasure
from vbatch._fleet.local import LocalFleet
from vbatch._fleet.static import StaticFleet


class MovingFleet:
    """A fleet whose members the test changes while a job runs."""

    def __init__(self, *urls: str) -> None:
        self.members: tuple[str, ...] = urls

    async def start(self) -> None:
        pass

    def endpoints(self) -> Sequence[str]:
        return self.members

    async def stop(self) -> None:
        pass


async def test_members_join_and_leave_while_a_job_runs(tmp_path: Path) -> None:
    a, b = FakeServer().start(), FakeServer().start()
    try:
        a.latency = b.latency = 0.002
        fleet = MovingFleet(a.base_url)
        rows = 600
        inp = write_jsonl(tmp_path / "in.jsonl", prompt_rows(rows))
        seen = 0
        a_at_leave = None
        async with Dispatcher(FleetTransport(fleet), concurrency=8) as d:
            async for _ in vbatch.stream(str(inp), str(tmp_path / "out.jsonl"), dispatcher=d,
                                         model="smol"):  # fmt: skip
                seen += 1
                if seen == 100:
                    fleet.members = (a.base_url, b.base_url)  # b joins
                elif seen == 300:
                    fleet.members = (b.base_url,)  # a leaves
                    a_at_leave = a.generation_requests
        assert len(read_jsonl(tmp_path / "out.jsonl")) == rows
        assert a.generation_requests + b.generation_requests == rows
        assert b.generation_requests > 300  # it took its share, then the rest
        assert a_at_leave is not None
        assert a.generation_requests - a_at_leave <= 8  # only what was in flight when it left
    finally:
        await asyncio.to_thread(a.stop)
        await asyncio.to_thread(b.stop)


async def test_no_member_up_is_a_retried_connect_error(tmp_path: Path) -> None:
    retry = FastRetry(max_attempts=3)
    inp = write_jsonl(tmp_path / "in.jsonl", prompt_rows(2))
    async with Dispatcher(FleetTransport(MovingFleet()), concurrency=2, retry=retry.policy) as d:
        results = [r async for r in vbatch.stream(str(inp), dispatcher=d, model="smol")]
    assert [r.error.code if r.error else None for r in results] == ["connect_error"] * 2
    assert all(r.attempts == 3 for r in results)


def test_a_static_fleet_checks_its_urls() -> None:
    assert StaticFleet("http://h:8000").endpoints() == ("http://h:8000/v1",)
    with pytest.raises(ConfigError, match="must start with http"):
        StaticFleet("h:8000/v1")


async def test_a_local_fleet_starts_lists_and_stops_its_servers(tmp_path: Path) -> None:
    plan = LaunchPlan(FakeSpec(model="ok"), "m", 8, InputMeasure(), replicas=2,
                      start_together=True)  # fmt: skip
    announced: list[int] = []
    fleet = LocalFleet(plan, on_launch=lambda p, servers: announced.append(len(servers)))
    await fleet.start()
    try:
        urls = list(fleet.endpoints())
        assert announced == [2] and len(set(urls)) == 2
        assert all(u.startswith("http://127.0.0.1:") and u.endswith("/v1") for u in urls)
        pids = [s.proc.pid for s in fleet.servers if s.proc is not None]
    finally:
        await fleet.stop()
    assert fleet.endpoints() == ()
    deadline = time.monotonic() + 10
    while any(psutil.pid_exists(p) for p in pids) and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
    assert not any(psutil.pid_exists(p) for p in pids)
