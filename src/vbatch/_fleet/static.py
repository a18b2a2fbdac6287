"""Servers someone else runs, given by URL: watched, never started or stopped.

A circuit breaker per member: a member whose ``/health`` fails (at once when a request to it
got no reply, else after ``UNHEALTHY_PROBES`` failed probes in a row) is parked, out of the
endpoints, and re-admitted after its next good probe. With every member parked for
``down_timeout_s`` the fleet gives up (``FleetError``); the job stops there, finished rows kept.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence

from .._config import DOWN_TIMEOUT_S, HEALTH_INTERVAL_S, UNHEALTHY_PROBES
from .._errors import ConfigError, FleetError
from .._tasks import cancel_and_wait
from .base import FleetStatus, ServerState, split_base_url
from .roster import Prober, Roster

__all__ = ["StaticFleet"]


class StaticFleet:
    def __init__(
        self,
        base_urls: str | Sequence[str],
        down_timeout_s: float = DOWN_TIMEOUT_S,
        interval_s: float = HEALTH_INTERVAL_S,
        probe: Callable[[str], Awaitable[bool]] | None = None,
    ) -> None:
        urls = [base_urls] if isinstance(base_urls, str) else list(base_urls)
        if not urls:
            raise ConfigError("at least one base URL")
        # Checked here, so a bad URL is refused before the job starts.
        self._urls = tuple(dict.fromkeys("".join(split_base_url(url)) for url in urls))
        # Up until seen otherwise: a dispatcher used without start() still sends.
        self.roster = Roster(self._urls, up=True)
        self.down_timeout_s = down_timeout_s
        self.interval_s = interval_s
        self._prober = Prober()
        self._probe = probe or self._prober
        self._fails = dict.fromkeys(self._urls, 0)
        self._watcher: asyncio.Task[None] | None = None

    def __repr__(self) -> str:
        return f"StaticFleet({', '.join(self._urls)})"

    async def start(self) -> None:
        """Look at every member once; ``FleetError`` when none answers."""
        answers = await asyncio.gather(*(self._probe(url) for url in self._urls))
        for url, ok in zip(self._urls, answers, strict=True):
            self.roster.mark(url, ok)
        if not self.roster.endpoints:
            raise FleetError(f"no server answers at {', '.join(self._urls)}")
        self._watch()

    def endpoints(self) -> Sequence[str]:
        return self.roster.endpoints

    async def models(self) -> None:
        return None  # servers someone else runs: ask them

    async def suspect(self, url: str) -> bool:
        self._watch()
        ok = await self.roster.probe_once(url, self._probe)
        self.roster.mark(url, ok)
        return not ok

    async def wait_up(self) -> None:
        self._watch()
        await self.roster.wait_up()

    def status(self) -> FleetStatus:
        failure = self.roster.failure
        servers = tuple(ServerState(url, self.roster.is_up(url)) for url in self.roster.order)
        return FleetStatus(len(self._urls), len(self.roster.endpoints), 0,
                           None if failure is None else str(failure), servers)  # fmt: skip

    async def stop(self) -> None:
        await cancel_and_wait(self._watcher)
        self._watcher = None
        await self._prober.aclose()

    def _watch(self) -> None:
        if self._watcher is None:
            self._watcher = asyncio.create_task(self._supervise())

    async def _supervise(self) -> None:
        down_since: float | None = None
        while True:
            await asyncio.sleep(self.interval_s)
            answers = await asyncio.gather(*(self._probe(url) for url in self._urls))
            for url, ok in zip(self._urls, answers, strict=True):
                self._fails[url] = 0 if ok else self._fails[url] + 1
                if ok:
                    self.roster.mark(url, True)  # re-admitted after a good probe
                elif self._fails[url] >= UNHEALTHY_PROBES:
                    self.roster.mark(url, False)
            now = time.monotonic()
            if self.roster.endpoints:
                down_since = None
            elif down_since is None:
                down_since = now
            elif now - down_since >= self.down_timeout_s:
                self.roster.fail(FleetError(
                    f"no server has answered for {self.down_timeout_s:.0f}s "
                    f"({', '.join(self._urls)}); finished rows are kept, and running the same "
                    "command again resumes"
                ))  # fmt: skip
                return
