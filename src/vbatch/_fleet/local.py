"""``LocalFleet``: vLLM servers started on this machine from a launch plan, and stopped.

Replicas with a fixed KV cache start together; otherwise one after another (engine/plan.py says
why). ``start`` returns once every replica answers ``/health``; a server that exits or misses
its start-up deadline raises ``LaunchError`` with its command line and log tail, and whatever
was started is stopped by ``stop``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence

from .._engine.plan import LaunchPlan
from .._engine.server import VllmServer

__all__ = ["LocalFleet"]

# How often a starting server's /health is asked.
HEALTH_POLL_S = 0.5


class LocalFleet:
    def __init__(
        self,
        plan: LaunchPlan,
        on_launch: Callable[[LaunchPlan, list[VllmServer]], None] | None = None,
        stop: asyncio.Event | None = None,
    ) -> None:
        """``on_launch`` is told once the first servers' processes are started (the CLI prints
        where their log is); setting ``stop`` while they start ends start-up with
        ``KeyboardInterrupt``."""
        self.plan = plan
        self.servers = [VllmServer(plan.spec) for _ in range(plan.replicas)]
        self._on_launch = on_launch
        self._stop = stop
        self._endpoints: tuple[str, ...] = ()

    def __repr__(self) -> str:
        return f"LocalFleet({self.plan.served_model!r}, replicas={len(self.servers)})"

    async def start(self) -> None:
        servers = self.servers
        batches = [servers] if self.plan.start_together else [[s] for s in servers]
        for batch in batches:
            for server in batch:
                await asyncio.to_thread(server.start)
            if self._on_launch is not None and batch[0] is servers[0]:
                self._on_launch(self.plan, servers)
            for server in batch:
                while not await asyncio.to_thread(server.healthy):
                    if self._stop is not None and self._stop.is_set():
                        # Ctrl-C while vLLM starts: the caller stops what started, and the
                        # run ends as interrupted.
                        raise KeyboardInterrupt
                    await asyncio.sleep(HEALTH_POLL_S)
        self._endpoints = tuple(server.base_url for server in servers)

    def endpoints(self) -> Sequence[str]:
        return self._endpoints

    async def stop(self) -> None:
        self._endpoints = ()
        for server in self.servers:
            await asyncio.to_thread(server.stop)
