"""``LocalFleet``: vLLM servers started on this machine from a launch plan, supervised, stopped.

Requests start as soon as the first replica is healthy; the others join as they come up (all at
once when each has a fixed KV cache, else one after another: engine/plan.py says why). Each
replica is watched: a server that exits, or whose process lives but fails ``UNHEALTHY_PROBES``
probes of ``/health`` in a row, is taken out at once, stopped (its whole process group) and
started again on the same port. A replica may be restarted ``max_restarts`` times within
``RESTART_WINDOW_S``; one more death fails the fleet with that server's last log lines.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from .._config import HEALTH_INTERVAL_S, RESTART_WINDOW_S, UNHEALTHY_PROBES
from .._engine.plan import LaunchPlan
from .._engine.server import VllmServer, free_port
from .._errors import FleetError, LaunchError
from .base import FleetStatus
from .roster import Prober, Roster

__all__ = ["LocalFleet"]


class _Replica:
    """One server and what its supervision remembers of it."""

    def __init__(self, server: VllmServer) -> None:
        self.server = server
        self.started_at = 0.0
        self.restarts: deque[float] = deque()  # when it was restarted, within the window

    @property
    def url(self) -> str:
        return self.server.base_url


class LocalFleet:
    def __init__(
        self,
        plan: LaunchPlan,
        on_launch: Callable[[LaunchPlan, list[VllmServer]], None] | None = None,
        stop: asyncio.Event | None = None,
        max_restarts: int = 3,
        interval_s: float = HEALTH_INTERVAL_S,
        probe: Callable[[str], Awaitable[bool]] | None = None,
    ) -> None:
        """``on_launch`` is told once the first servers' processes are started (the CLI prints
        where their log is); setting ``stop`` while the first starts ends start-up with
        ``KeyboardInterrupt``."""
        self.plan = plan
        self.replicas = [_Replica(VllmServer(plan.spec)) for _ in range(plan.replicas)]
        self.roster = Roster()
        self.max_restarts = max_restarts
        self.interval_s = interval_s
        self.restarts = 0
        self._on_launch = on_launch
        self._stop = stop
        self._prober = Prober()
        self._probe = probe or self._prober
        # Without fixed KV caches, one replica starts at a time (vLLM sizes its cache from the
        # memory it finds free, which a neighbour starting beside it would take).
        self._start_slot = asyncio.Semaphore(len(self.replicas) if plan.start_together else 1)
        self._watchers: list[asyncio.Task[None]] = []
        self._ever_up = False
        self._startup_error: LaunchError | None = None

    def __repr__(self) -> str:
        return f"LocalFleet({self.plan.served_model!r}, replicas={len(self.replicas)})"

    @property
    def servers(self) -> list[VllmServer]:
        return [r.server for r in self.replicas]

    # -- the Fleet protocol ------------------------------------------------------------------------

    async def start(self) -> None:
        """Start the replicas; return once the first is healthy. A replica that fails before
        then fails the start (``LaunchError``, with its log)."""
        for replica in self.replicas:  # ports first: members are known by URL from the start
            if replica.server.port == 0:
                replica.server.port = free_port(replica.server.spec.host)
            self.roster.add(replica.url)
        first = self.replicas if self.plan.start_together else self.replicas[:1]
        for replica in first:
            await self._start_slot.acquire()
            await self._launch(replica)
        if self._on_launch is not None:
            self._on_launch(self.plan, self.servers)
        self._watchers = [asyncio.create_task(self._watch(r, r in first)) for r in self.replicas]
        up = asyncio.ensure_future(self.roster.wait_up())
        waits: set[asyncio.Future[Any]] = {up}
        if self._stop is not None:
            waits.add(asyncio.ensure_future(self._stop.wait()))
        try:
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
            if not up.done():
                # Ctrl-C while vLLM starts: stop what started, and the run ends as interrupted.
                raise KeyboardInterrupt
            if self._startup_error is not None:
                raise self._startup_error  # as before supervision: the server's own failure
            up.result()
        except BaseException:
            await self.stop()
            raise
        finally:
            for wait in waits:
                wait.cancel()

    def endpoints(self) -> Sequence[str]:
        return self.roster.endpoints

    async def suspect(self, url: str) -> bool:
        replica = next((r for r in self.replicas if r.url == url), None)
        if replica is None:
            return False
        ok = await self.roster.probe_once(url, lambda u: self._healthy(replica))
        if not ok:
            self.roster.mark(url, False)  # its watcher restarts it or re-admits it
        return not ok

    async def wait_up(self) -> None:
        await self.roster.wait_up()

    def status(self) -> FleetStatus:
        failure = self.roster.failure
        return FleetStatus(len(self.replicas), len(self.roster.endpoints), self.restarts,
                           None if failure is None else str(failure))  # fmt: skip

    async def stop(self) -> None:
        for task in self._watchers:
            task.cancel()
        for task in self._watchers:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._watchers = []
        for replica in self.replicas:
            self.roster.mark(replica.url, False)
            await asyncio.to_thread(replica.server.stop)
        await self._prober.aclose()

    # -- supervision -------------------------------------------------------------------------------

    async def _launch(self, replica: _Replica) -> None:
        replica.started_at = time.monotonic()
        await asyncio.to_thread(replica.server.start)

    async def _healthy(self, replica: _Replica) -> bool:
        proc = replica.server.proc
        return proc is not None and proc.poll() is None and await self._probe(replica.url)

    async def _watch(self, replica: _Replica, launched: bool) -> None:
        """One replica's life: start it (when its turn comes), admit it once healthy, restart
        it when it dies or hangs; fail the fleet when it cannot be kept up."""
        try:
            if not launched:
                await self._start_slot.acquire()
                await self._launch(replica)
            while True:
                try:
                    await self._until_up(replica)
                except LaunchError:
                    if not self._ever_up:
                        raise  # the job's start-up fails, as a server that never came up
                    await self._restart(replica, "failed to start")
                    continue
                self._ever_up = True
                self.roster.mark(replica.url, True)
                why = await self._until_down(replica)
                self.roster.mark(replica.url, False)
                await self._restart(replica, why)
        except LaunchError as exc:
            self._startup_error = self._startup_error or exc
            self.roster.fail(FleetError(str(exc)))
        except FleetError as exc:
            self.roster.fail(exc)

    async def _until_up(self, replica: _Replica) -> None:
        """Wait for a starting server's health; raise if it exits or misses its deadline."""
        server = replica.server
        try:
            while True:
                code = server.proc.poll() if server.proc is not None else -1
                if code is not None:
                    raise server.failure(f"vLLM exited with code {code} before it was ready")
                if await self._probe(replica.url):
                    return
                if time.monotonic() - replica.started_at > server.spec.startup_timeout_s:
                    timeout = server.spec.startup_timeout_s
                    raise server.failure(f"vLLM was not healthy within {timeout:.0f}s")
                await asyncio.sleep(min(self.interval_s, 0.5))
        finally:
            self._start_slot.release()

    async def _until_down(self, replica: _Replica) -> str:
        """Watch a healthy server; say why once it is not."""
        fails = 0
        while True:
            await asyncio.sleep(self.interval_s)
            proc = replica.server.proc
            code = proc.poll() if proc is not None else -1
            if code is not None:
                return f"exited with code {code}"
            if await self._probe(replica.url):
                fails = 0
                self.roster.mark(replica.url, True)  # back after ``suspect`` took it out
            else:
                fails += 1
                if fails >= UNHEALTHY_PROBES:
                    return f"stopped answering /health ({fails} probes in a row)"

    async def _restart(self, replica: _Replica, why: str) -> None:
        server = replica.server
        await asyncio.to_thread(server.stop)
        now = time.monotonic()
        while replica.restarts and now - replica.restarts[0] > RESTART_WINDOW_S:
            replica.restarts.popleft()
        if len(replica.restarts) >= self.max_restarts:
            raise FleetError(str(server.failure(
                f"vLLM at {server.root_url} {why}, after {len(replica.restarts)} restarts in "
                f"the last {RESTART_WINDOW_S / 60:.0f} minutes: giving up (finished rows are "
                "kept; running the same command again resumes)"
            )))  # fmt: skip
        replica.restarts.append(now)
        self.restarts += 1
        await self._start_slot.acquire()
        await self._launch(replica)
