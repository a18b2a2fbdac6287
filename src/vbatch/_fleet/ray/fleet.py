"""``RayFleet``: vLLM servers that Ray places, hosts and restarts across a cluster's nodes; this
process (the one dispatcher, the one writer) feeds them over HTTP like any other fleet.

Each member (member.py) is an actor with ``max_restarts``: when its server dies, or its node
does, Ray starts it again, on the same node or another, and its new URL joins the endpoints once
healthy. A member whose ``/health`` fails is out of the endpoints at once (``suspect``, after a
request got no reply) or after ``UNHEALTHY_PROBES`` probes; its rows in flight go elsewhere,
uncharged (the dispatcher's part). A member Ray gave up on (restarts spent) is gone; with every
member gone, or none up for ``down_timeout_s`` once one was, the fleet fails (``FleetError``)
and the job stops there, finished rows kept. How each member is followed: watch.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from ..._config import DOWN_TIMEOUT_S, HEALTH_INTERVAL_S, LaunchOptions
from ..._engine.sizing import InputMeasure
from ..._tasks import cancel_and_wait
from ..base import FleetStatus
from ..roster import Prober, Roster
from .cluster import import_ray
from .member import ServerMember
from .shape import MemberShape
from .watch import MemberWatch

__all__ = ["RayFleet", "forwarded_env"]

STOP_GRACE_S = 40.0  # a member's server gets this long to stop before its actor is killed
# The driver's settings a member needs on its node (where the model is kept, vLLM's own);
# never anything that looks like a secret: those are set on the nodes.
_FORWARD_PREFIXES = ("VBATCH_HOME", "VLLM_", "HF_", "TRANSFORMERS_OFFLINE")
_SECRET_WORDS = ("TOKEN", "KEY", "SECRET", "PASSWORD")


def forwarded_env(environ: dict[str, str] | None = None) -> dict[str, str]:
    env = os.environ if environ is None else environ
    secret = tuple(_SECRET_WORDS)
    return {k: v for k, v in env.items()
            if k.startswith(_FORWARD_PREFIXES) and not any(w in k for w in secret)}  # fmt: skip


class RayFleet:
    def __init__(
        self,
        shape: MemberShape,
        model: str | None,
        measure: InputMeasure | None,
        options: LaunchOptions,
        down_timeout_s: float = DOWN_TIMEOUT_S,
        interval_s: float = HEALTH_INTERVAL_S,
        probe: Callable[[str], Awaitable[bool]] | None = None,
    ) -> None:
        """``shape`` from ``shape.shape_members`` (in a ``cluster.ray_session``). Cancelling
        ``start`` stops what it started."""
        self.shape = shape
        self._args = (model, measure, options)
        self.max_restarts = options.max_restarts
        self._prober = Prober()
        self._probe = probe or self._prober
        self.roster = Roster()
        self.watch = MemberWatch(self.roster, self._probe, shape.count, interval_s, down_timeout_s)
        self.actors: list[Any] = []
        self._tasks: list[asyncio.Task[None]] = []

    def __repr__(self) -> str:
        return f"RayFleet({self.shape.count} members, {self.shape.backend})"

    async def start(self) -> None:
        """Create the members; return once one is healthy. A member whose server fails to
        start before any was up fails the start (``LaunchError``, with its log)."""
        try:
            self._create_members()
            watch = self.watch
            self._tasks = [asyncio.create_task(watch.member(k, actor))
                           for k, actor in enumerate(self.actors)]  # fmt: skip
            self._tasks.append(asyncio.create_task(watch.supervise()))
            await self.roster.wait_up()
        except BaseException:
            await self.stop()
            if self.watch.startup_error is not None:
                raise self.watch.startup_error from None  # as LocalFleet: the server's failure
            raise

    def _create_members(self) -> None:
        ray = import_ray()
        env = forwarded_env()
        member = ray.remote(ServerMember)
        model, measure, options = self._args
        one = dataclasses.replace(options, replicas=self.shape.replicas)
        for k in range(self.shape.count):  # each kept as made: ``stop`` kills what was made
            self.actors.append(member.options(
                max_restarts=self.max_restarts,
                max_task_retries=-1,  # ``ready`` asked of a dying member is asked again
                runtime_env={"env_vars": env} if env else None,
                **self.shape.actor_options(k),
            ).remote(model, measure, one))  # fmt: skip

    def endpoints(self) -> Sequence[str]:
        return self.roster.endpoints

    async def suspect(self, url: str) -> bool:
        ok = await self.roster.probe_once(url, self._probe)
        if not ok:
            self.roster.mark(url, False)  # its watcher sees it back, or its restart
        return not ok

    async def wait_up(self) -> None:
        await self.roster.wait_up()

    async def models(self) -> None:
        return None  # each member plans on its own node: ask the servers

    def status(self) -> FleetStatus:
        failure = self.roster.failure
        return FleetStatus(self.shape.count, len(self.roster.endpoints), self.watch.restarts,
                           None if failure is None else str(failure),
                           restart_reasons=tuple(self.watch.reasons))  # fmt: skip

    async def stop(self) -> None:
        await cancel_and_wait(*self._tasks)
        self._tasks = []
        up = set(self.roster.endpoints)
        for url in up:
            self.roster.mark(url, False)
        if self.actors:
            ray = import_ray()
            # The members up stop their servers; the others (starting, or being restarted)
            # are killed, and their servers end with them. Asked once: a member gone meanwhile
            # is not started again to be stopped.
            stops = [self.actors[k].stop.options(max_task_retries=0).remote()
                     for k, ready in self.watch.ready.items() if ready.url in up]  # fmt: skip
            with contextlib.suppress(Exception):
                await asyncio.wait_for(asyncio.gather(*stops, return_exceptions=True),
                                       STOP_GRACE_S)  # fmt: skip
            for actor in self.actors:
                with contextlib.suppress(Exception):
                    ray.kill(actor, no_restart=True)
            self.actors = []
        await self._prober.aclose()
