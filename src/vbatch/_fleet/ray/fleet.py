"""``RayFleet``: vLLM servers that Ray places, hosts and restarts across a cluster's nodes; this
process (the one dispatcher, the one writer) feeds them over HTTP like any other fleet.

Each member (member.py) is an actor with ``max_restarts``: when its server dies, or its node
does, Ray starts it again, on the same node or another, and its new URL joins the endpoints once
healthy. A member whose ``/health`` fails is out of the endpoints at once (``suspect``, after a
request got no reply) or after ``UNHEALTHY_PROBES`` probes; its rows in flight go elsewhere,
uncharged (the dispatcher's part). A member Ray gave up on (restarts spent) is gone; with every
member gone, or none up for ``down_timeout_s`` once one was, the fleet fails (``FleetError``)
and the job stops there, finished rows kept.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from ..._config import DOWN_TIMEOUT_S, HEALTH_INTERVAL_S, UNHEALTHY_PROBES, LaunchOptions
from ..._engine.sizing import InputMeasure
from ..._errors import FleetError, LaunchError
from ..._tasks import cancel_and_wait
from ..base import FleetStatus
from ..roster import Prober, Roster
from .cluster import MemberShape, import_ray
from .member import MemberReady, ServerMember

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
        stop: asyncio.Event | None = None,
    ) -> None:
        """``shape`` from ``cluster.shape_members`` (after ``cluster.connect``); setting
        ``stop`` while the first member starts ends start-up with ``KeyboardInterrupt``."""
        self.shape = shape
        self._args = (model, measure, options)
        self.max_restarts = options.max_restarts
        self.down_timeout_s = down_timeout_s
        self.interval_s = interval_s
        self._prober = Prober()
        self._probe = probe or self._prober
        self.roster = Roster()
        self.actors: list[Any] = []
        self.ready: dict[int, MemberReady] = {}  # each member's latest report, by index
        self.restarts = 0  # members back with a new server (counted once it is healthy)
        self._ever_up = False
        self._startup_error: LaunchError | None = None
        self._gone = 0
        self._tasks: list[asyncio.Task[None]] = []
        self._stop_event = stop

    def __repr__(self) -> str:
        return f"RayFleet({self.shape.count} members, {self.shape.backend})"

    async def start(self) -> None:
        """Create the members; return once one is healthy. A member whose server fails to
        start before any was up fails the start (``LaunchError``, with its log)."""
        ray = import_ray()
        env = forwarded_env()
        member = ray.remote(ServerMember)
        model, measure, options = self._args
        for k in range(self.shape.count):
            actor = member.options(
                max_restarts=self.max_restarts,
                max_task_retries=-1,  # ``ready`` asked of a dying member is asked again
                runtime_env={"env_vars": env} if env else None,
                **self.shape.actor_options(k),
            ).remote(model, measure, dataclasses.replace(options, replicas=self.shape.replicas))
            self.actors.append(actor)
        self._tasks = [asyncio.create_task(self._watch(k)) for k in range(self.shape.count)]
        self._tasks.append(asyncio.create_task(self._supervise()))
        try:
            await self.roster.wait_up_unless(self._stop_event)
        except BaseException:
            await self.stop()
            if self._startup_error is not None:
                raise self._startup_error from None  # as LocalFleet: the server's failure
            raise

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
        return FleetStatus(self.shape.count, len(self.roster.endpoints), self.restarts,
                           None if failure is None else str(failure))  # fmt: skip

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
                     for k, ready in self.ready.items() if ready.url in up]  # fmt: skip
            with contextlib.suppress(Exception):
                await asyncio.wait_for(asyncio.gather(*stops, return_exceptions=True),
                                       STOP_GRACE_S)  # fmt: skip
            for actor in self.actors:
                with contextlib.suppress(Exception):
                    ray.kill(actor, no_restart=True)
            self.actors = []
        await self._prober.aclose()

    # -- one member's life, as seen from here -------------------------------------------------

    async def _watch(self, k: int) -> None:
        from ray.exceptions import ActorDiedError, ActorUnavailableError

        ray = import_ray()
        actor = self.actors[k]
        while True:
            try:
                ready: MemberReady = await actor.ready.remote()
            except LaunchError as exc:  # its server did not start: the log says why
                if not self._ever_up:
                    self._startup_error = self._startup_error or LaunchError(str(exc))
                    self.roster.fail(FleetError(str(exc)))
                    return
                ray.kill(actor, no_restart=False)  # Ray starts it again (a restart spent)
                self.restarts += 1
                continue
            except ActorUnavailableError:  # its node is going: Ray will say what follows
                await asyncio.sleep(self.interval_s)
                continue
            except ActorDiedError as exc:  # restarts spent, or its node gone for good
                self._gone += 1
                if self._gone == self.shape.count:
                    self.roster.fail(FleetError(
                        f"every Ray member is gone (the last: {exc}); finished rows are "
                        "kept, and running the same command again resumes"
                    ))  # fmt: skip
                return
            if k in self.ready and self.ready[k].server_pid != ready.server_pid:
                self.restarts += 1  # back from a restart Ray did (its server died, or its node)
            self.ready[k] = ready
            self.roster.add(ready.url)
            self.roster.mark(ready.url, True)
            self._ever_up = True
            await self._until_down(ready.url)
            self.roster.mark(ready.url, False)

    async def _until_down(self, url: str) -> None:
        fails = 0
        while fails < UNHEALTHY_PROBES:
            await asyncio.sleep(self.interval_s)
            if await self._probe(url):
                fails = 0
                self.roster.mark(url, True)  # back after ``suspect`` took it out
            else:
                fails += 1

    async def _supervise(self) -> None:
        """Fail the fleet once no member has been up for ``down_timeout_s`` (after one was)."""
        down_since: float | None = None
        while True:
            await asyncio.sleep(self.interval_s)
            now = time.monotonic()
            if self.roster.endpoints or not self._ever_up:
                down_since = None
            elif down_since is None:
                down_since = now
            elif now - down_since >= self.down_timeout_s:
                self.roster.fail(FleetError(
                    f"no Ray member has been up for {self.down_timeout_s:.0f}s; finished rows "
                    "are kept, and running the same command again resumes"
                ))  # fmt: skip
                return
