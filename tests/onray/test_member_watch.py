"""``MemberWatch`` without a cluster: a member's actor is a stand-in whose ``ready`` answers as
Ray's would; what the watch counts and tells of each restart."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import pytest

from vbatch._errors import LaunchError
from vbatch._fleet.ray import watch as watch_module
from vbatch._fleet.ray.member import MemberReady
from vbatch._fleet.ray.watch import MemberWatch
from vbatch._fleet.roster import Roster


class Actor:
    """Answers ``ready.remote()`` from a script: a ``MemberReady`` or an exception to raise."""

    def __init__(self, answers: list[MemberReady | Exception]) -> None:
        self._answers: Iterator[MemberReady | Exception] = iter(answers)
        self.ready = SimpleNamespace(remote=self._ready)

    async def _ready(self) -> MemberReady:
        answer = next(self._answers, None)
        if answer is None:
            await asyncio.Event().wait()  # no more: a member starting for ever
        if isinstance(answer, Exception):
            raise answer
        assert isinstance(answer, MemberReady)
        return answer


def ready(port: int, pid: int) -> MemberReady:
    return MemberReady(f"http://127.0.0.1:{port}/v1", 8, f"/logs/vllm-{port}.log", pid)


async def test_each_restart_is_counted_and_told_with_the_log_of_the_server_that_went(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    killed: list[Any] = []
    ray = SimpleNamespace(kill=lambda actor, no_restart: killed.append(actor))
    monkeypatch.setattr(watch_module, "import_ray", lambda: ray)
    up = {"http://127.0.0.1:1/v1": False, "http://127.0.0.1:2/v1": True}

    async def probe(url: str) -> bool:
        return up[url]  # the first server stops answering at once

    actor = Actor([ready(1, 100), LaunchError("vLLM exited with code 1\n--- log ---"),
                   ready(2, 200)])  # fmt: skip
    watch = MemberWatch(Roster(), probe, count=1, interval_s=0.01, down_timeout_s=60)
    task = asyncio.create_task(watch.member(0, actor))
    try:
        async with asyncio.timeout(10):
            while watch.restarts < 2:
                await asyncio.sleep(0.01)
    finally:
        task.cancel()
    assert killed == [actor]  # the failed start: Ray is told to start the member again
    assert list(watch.reasons) == [
        "Ray member 0's vLLM failed to start: vLLM exited with code 1",
        "vLLM at http://127.0.0.1:1/v1 went down (log on its node: /logs/vllm-1.log); "
        "Ray started member 0 again, now at http://127.0.0.1:2/v1",
    ]
