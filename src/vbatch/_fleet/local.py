"""``LocalFleet``: vLLM servers started on this machine from a launch plan, supervised, stopped.

Requests start as soon as the first replica is healthy; the others join as they come up (all at
once when each has a fixed KV cache, else one after another: engine/plan.py says why). Each
replica is watched (replica.py): a server that exits, or whose process lives but fails
``UNHEALTHY_PROBES`` probes of ``/health`` in a row, is taken out at once, stopped (its whole
process group) and started again on the same port. A replica may be restarted ``max_restarts``
times within ``RESTART_WINDOW_S``; one more death fails the fleet with that server's last log
lines.

The plan may be made from the data's first rows only (engine/plan.py): ``settle`` then reads the
rest while the first servers start, and a row that needs a bigger context has them stopped and
started again from the plan for all of the data, before any request is sent.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from .._config import HEALTH_INTERVAL_S, MAX_RESTARTS
from .._engine.plan import LaunchPlan
from .._engine.server import VllmServer, free_port
from .._errors import FleetError
from .._tasks import cancel_and_wait
from .base import FleetStatus, ServerState
from .replica import Replica, Supervision
from .roster import Prober, Roster

__all__ = ["Launched", "LocalFleet", "OnLaunch", "Settle"]


@dataclass(frozen=True)
class Launched:
    """What a fleet of this machine tells its caller once its servers are started (or found:
    a warm fleet), for the user."""

    plan: LaunchPlan
    urls: Sequence[str]  # the members' base URLs
    log: Path | str | None  # where to look when something goes wrong
    warm: str | None = None  # how a warm fleet serves this run; None: the run's own servers


Settle = Callable[[], Awaitable[LaunchPlan | None]]
OnLaunch = Callable[[Launched], None]


class LocalFleet:
    def __init__(
        self,
        plan: LaunchPlan,
        on_launch: OnLaunch | None = None,
        max_restarts: int = MAX_RESTARTS,
        interval_s: float = HEALTH_INTERVAL_S,
        probe: Callable[[str], Awaitable[bool]] | None = None,
        settle: Settle | None = None,
    ) -> None:
        """``on_launch`` is told once the first servers' processes are started (the CLI prints
        where their log is). ``settle`` gives the plan to start again from, if the rest of the
        data needs one (see the module's docstring). Cancelling ``start`` stops what it
        started."""
        self._prober = Prober()
        self._probe = probe or self._prober
        self._interval_s = interval_s
        self._max_restarts = max_restarts
        self._build(plan)
        self._on_launch = on_launch
        self._settle = settle
        self._settled = asyncio.Event()
        self._watchers: list[asyncio.Task[None]] = []

    def _build(self, plan: LaunchPlan) -> None:
        self.plan = plan
        slots = plan.replicas if plan.start_together else 1
        self.shared = Supervision(Roster(), self._probe, asyncio.Semaphore(slots),
                                  self._interval_s, self._max_restarts)  # fmt: skip
        self.roster = self.shared.roster
        self.replicas = [Replica(VllmServer(plan.spec), self.shared) for _ in range(plan.replicas)]

    def __repr__(self) -> str:
        return f"LocalFleet({self.plan.served_model!r}, replicas={len(self.replicas)})"

    @property
    def servers(self) -> list[VllmServer]:
        return [r.server for r in self.replicas]

    async def _launch_first(self) -> list[Replica]:
        for replica in self.replicas:  # ports first: members are known by URL from the start
            if replica.server.port == 0:
                replica.server.port = free_port(replica.server.spec.host)
            self.roster.add(replica.url)
        first = self.replicas if self.plan.start_together else self.replicas[:1]
        for replica in first:
            await self.shared.start_slot.acquire()
            await replica.launch()
        return first

    async def start(self) -> None:
        """Start the replicas; return once the first is healthy. A replica that fails before
        then fails the start (``LaunchError``, with its log)."""
        try:
            first = await self._launch_first()
            if self._settle is not None and (plan := await self._settle()) is not None:
                await self._stop_servers()
                self._build(plan)
                first = await self._launch_first()
        except BaseException:
            await self.stop()
            raise
        finally:
            self._settled.set()
        if self._on_launch is not None:
            log = self.servers[0].log_path
            self._on_launch(Launched(self.plan, [r.url for r in self.replicas], log))
        self._watchers = [asyncio.create_task(r.watch(r in first)) for r in self.replicas]
        try:
            await self.roster.wait_up()
        except BaseException as exc:
            await self.stop()
            if isinstance(exc, FleetError) and self.shared.startup_error is not None:
                raise self.shared.startup_error from None  # the server's failure, with its log
            raise

    def endpoints(self) -> Sequence[str]:
        return self.roster.endpoints

    async def models(self) -> Mapping[str, int | None] | None:
        await self._settled.wait()  # the plan is final: the context size known
        # Without a planned context size the model's own applies, which only the server knows.
        context = self.plan.spec.max_model_len
        return None if context is None else dict.fromkeys(self.plan.served_names, context)

    async def suspect(self, url: str) -> bool:
        replica = next((r for r in self.replicas if r.url == url), None)
        if replica is None:
            return False
        ok = await self.roster.probe_once(url, lambda u: replica.healthy())
        if not ok:
            self.roster.mark(url, False)  # its watcher restarts it or lets it back in
        return not ok

    async def wait_up(self) -> None:
        await self.roster.wait_up()

    def status(self) -> FleetStatus:
        failure = self.roster.failure
        servers = tuple(ServerState(r.url, self.roster.is_up(r.url), r.restarted)
                        for r in self.replicas)  # fmt: skip
        return FleetStatus(len(self.replicas), len(self.roster.endpoints), self.shared.restarts,
                           None if failure is None else str(failure), servers,
                           tuple(self.shared.reasons))  # fmt: skip

    async def stop(self) -> None:
        await cancel_and_wait(*self._watchers)
        self._watchers = []
        await self._stop_servers()
        await self._prober.aclose()

    async def _stop_servers(self) -> None:
        for replica in self.replicas:
            self.roster.mark(replica.url, False)
        await asyncio.gather(*(asyncio.to_thread(r.server.stop) for r in self.replicas))
