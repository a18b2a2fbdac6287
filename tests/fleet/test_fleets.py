"""Fleets and the transport over them: members that join and leave while a job runs, servers
vbatch starts and stops."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import psutil
import pytest
from fakeserver import FakeServer
from helpers import FakeSpec, FastRetry, prompt_rows, read_jsonl, write_jsonl

import vbatch
from vbatch import ConfigError, Dispatcher, FleetError, PreparedRequest
from vbatch._client.endpoints import FleetTransport
from vbatch._engine.plan import LaunchPlan
from vbatch._engine.sizing import InputMeasure
from vbatch._fleet.local import LocalFleet
from vbatch._fleet.static import StaticFleet
from vbatch._models import COMPLETIONS


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
        async with (
            Dispatcher(FleetTransport(fleet), concurrency=8) as d,
            vbatch.stream(str(inp), str(tmp_path / "out.jsonl"), dispatcher=d,
                          model="smol") as results,
        ):  # fmt: skip
            async for _ in results:
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
    async with (
        Dispatcher(FleetTransport(MovingFleet()), concurrency=2, retry=retry.policy) as d,
        vbatch.stream(str(inp), dispatcher=d, model="smol") as stream,
    ):
        results = [r async for r in stream]
    assert [r.error.code if r.error else None for r in results] == ["connect_error"] * 2
    assert all(r.attempts == 3 for r in results)


def test_a_static_fleet_checks_its_urls() -> None:
    assert StaticFleet("http://h:8000").endpoints() == ("http://h:8000/v1",)
    with pytest.raises(ConfigError, match="must start with http"):
        StaticFleet("h:8000/v1")


async def _until(check: Callable[[], bool], timeout_s: float = 15.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.05)


def _fake_plan(replicas: int, together: bool = True) -> LaunchPlan:
    return LaunchPlan(FakeSpec(model="ok"), "m", 8, InputMeasure(), replicas=replicas,
                      start_together=together)  # fmt: skip


async def test_a_local_fleet_is_up_with_its_first_replica_and_stops_them_all() -> None:
    announced: list[int] = []
    fleet = LocalFleet(_fake_plan(2, together=False), interval_s=0.1,
                       on_launch=lambda launched: announced.append(len(launched.urls)))  # fmt: skip
    await fleet.start()
    try:
        assert announced == [2]
        # One after another: start() returned with the first up, the second still to come.
        first = fleet.replicas[0].url
        assert fleet.endpoints() == (first,)
        await _until(lambda: len(fleet.endpoints()) == 2)
        urls = list(fleet.endpoints())
        assert urls[0] == first and len(set(urls)) == 2
        assert all(u.startswith("http://127.0.0.1:") and u.endswith("/v1") for u in urls)
        pids = [s.proc.pid for s in fleet.servers if s.proc is not None]
    finally:
        await fleet.stop()
    assert fleet.endpoints() == ()
    await _until(lambda: not any(psutil.pid_exists(p) for p in pids))


async def test_a_plan_the_rest_of_the_data_changes_restarts_the_servers_before_any_send() -> None:
    first = _fake_plan(1)
    final = LaunchPlan(FakeSpec(model="ok", max_model_len=1024), "m", 8, InputMeasure(),
                       replicas=2, start_together=True)  # fmt: skip
    started: list[int] = []

    async def settle() -> LaunchPlan:
        server = fleet.servers[0]  # the first plan's server, starting meanwhile
        assert server.proc is not None
        started.append(server.proc.pid)
        return final

    fleet = LocalFleet(first, interval_s=0.1, settle=settle)
    await fleet.start()
    try:
        assert fleet.plan is final and len(fleet.replicas) == 2
        assert await fleet.models() == {"m": 1024}
        await _until(lambda: len(fleet.endpoints()) == 2)
        await _until(lambda: not psutil.pid_exists(started[0]))  # the first plan's: stopped
    finally:
        await fleet.stop()


async def test_a_dead_replica_is_taken_out_restarted_and_let_back_in() -> None:
    fleet = LocalFleet(_fake_plan(2), interval_s=0.1, max_restarts=2)
    await fleet.start()
    try:
        await _until(lambda: len(fleet.endpoints()) == 2)
        victim = fleet.replicas[1]
        assert victim.server.proc is not None
        os.killpg(victim.server.proc.pid, signal.SIGKILL)
        assert await fleet.suspect(victim.url)  # asked at once: it is down, and out
        assert fleet.endpoints() == (fleet.replicas[0].url,)
        await fleet.wait_up()  # the other one is still up: no waiting
        log = victim.server.log_path
        await _until(lambda: len(fleet.endpoints()) == 2)  # restarted on its port, back in
        assert fleet.status().restarts == 1 and fleet.status().up == 2
        # Why, with its log (the restarted server appends to it), for the summary.
        assert fleet.status().restart_reasons == (
            f"vLLM at {victim.server.root_url} exited with code -9 (log: {log})",
        )
        assert not await fleet.suspect(victim.url)  # healthy again: a request's own failure
    finally:
        await fleet.stop()


async def test_past_its_restart_budget_the_fleet_fails_with_the_servers_log() -> None:
    fleet = LocalFleet(_fake_plan(1), interval_s=0.1, max_restarts=1)
    await fleet.start()
    try:
        for _ in range(2):  # one restart is allowed; the second death is one too many
            await _until(lambda: len(fleet.endpoints()) == 1)
            server = fleet.replicas[0].server
            assert server.proc is not None
            os.killpg(server.proc.pid, signal.SIGKILL)
            await _until(lambda: not fleet.endpoints())
        with pytest.raises(FleetError, match="after 1 restarts") as info:
            await asyncio.wait_for(fleet.wait_up(), 15)
        assert "--- last lines of the log ---" in str(info.value)
        assert fleet.status().failure is not None
    finally:
        await fleet.stop()


async def test_a_window_per_member_follows_the_members_up() -> None:
    a, b = FakeServer().start(), FakeServer().start()
    try:
        fleet = MovingFleet(a.base_url)
        d = Dispatcher(FleetTransport(fleet), concurrency=8, window_per_member=8)
        requests = (PreparedRequest(i, i, COMPLETIONS, {"model": "smol", "prompt": f"r{i} x"})
                    for i in range(100))  # fmt: skip
        async with d:
            seen = 0
            async for _ in d.stream(requests):
                seen += 1
                if seen == 10:
                    fleet.members = (a.base_url, b.base_url)
                if seen == 30:
                    assert d.concurrency == 16  # two members: twice the window
                    fleet.members = (b.base_url,)
        assert d.concurrency == 8 and seen == 100
    finally:
        await asyncio.to_thread(a.stop)
        await asyncio.to_thread(b.stop)
