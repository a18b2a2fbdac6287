"""One server of a ``LocalFleet`` and its supervision: start it when its turn comes, admit it
once healthy, watch it, restart it when it dies or hangs, fail the fleet when it cannot be kept
up. The replicas of one fleet share a ``Supervision`` (who is up, the probe, the start slot, the
restart budget)."""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from .._config import RESTART_REASONS_KEPT, RESTART_WINDOW_S, STARTUP_POLL_S, UNHEALTHY_PROBES
from .._engine.server import VllmServer
from .._errors import FleetError, LaunchError
from .roster import Roster

__all__ = ["Replica", "Supervision"]


@dataclass
class Supervision:
    roster: Roster
    probe: Callable[[str], Awaitable[bool]]
    # Without fixed KV caches, one replica starts at a time (vLLM sizes its cache from the
    # memory it finds free, which a neighbour starting beside it would take).
    start_slot: asyncio.Semaphore
    interval_s: float
    max_restarts: int
    restarts: int = 0  # over all replicas, for progress and the summary
    reasons: deque[str] = field(default_factory=lambda: deque(maxlen=RESTART_REASONS_KEPT))
    ever_up: bool = False  # once a replica has served, a failed start is restarted, not fatal
    startup_error: LaunchError | None = None  # why the fleet never came up, when it did not


class Replica:
    def __init__(self, server: VllmServer, shared: Supervision) -> None:
        self.server = server
        self.shared = shared
        self.started_at = 0.0
        self.restarts: deque[float] = deque()  # when it was restarted, within the window
        self.restarted = 0  # times in all

    @property
    def url(self) -> str:
        return self.server.base_url

    async def launch(self) -> None:
        self.started_at = time.monotonic()
        await asyncio.to_thread(self.server.start)

    async def healthy(self) -> bool:
        proc = self.server.proc
        return proc is not None and proc.poll() is None and await self.shared.probe(self.url)

    async def watch(self, launched: bool) -> None:
        """The replica's whole life; ends only by cancellation or by failing the fleet."""
        shared, roster = self.shared, self.shared.roster
        try:
            if not launched:
                await shared.start_slot.acquire()
                await self.launch()
            while True:
                try:
                    await self._until_up()
                except LaunchError:
                    if not shared.ever_up:
                        raise  # the job's start-up fails, as a server that never came up
                    await self._restart("failed to start")
                    continue
                shared.ever_up = True
                roster.mark(self.url, True)
                why = await self._until_down()
                roster.mark(self.url, False)
                await self._restart(why)
        except LaunchError as exc:
            shared.startup_error = shared.startup_error or exc
            roster.fail(FleetError(str(exc)))
        except FleetError as exc:
            roster.fail(exc)

    async def _until_up(self) -> None:
        """Wait for a starting server's health; raise if it exits or misses its deadline."""
        server = self.server
        try:
            while True:
                code = server.proc.poll() if server.proc is not None else -1
                if code is not None:
                    raise server.failure(f"vLLM exited with code {code} before it was ready")
                if await self.shared.probe(self.url):
                    return
                if time.monotonic() - self.started_at > server.spec.startup_timeout_s:
                    timeout = server.spec.startup_timeout_s
                    raise server.failure(f"vLLM was not healthy within {timeout:.0f}s")
                await asyncio.sleep(min(self.shared.interval_s, STARTUP_POLL_S))
        finally:
            self.shared.start_slot.release()

    async def _until_down(self) -> str:
        """Watch a healthy server; say why once it is not."""
        fails = 0
        while True:
            await asyncio.sleep(self.shared.interval_s)
            proc = self.server.proc
            code = proc.poll() if proc is not None else -1
            if code is not None:
                return f"exited with code {code}"
            if await self.shared.probe(self.url):
                fails = 0
                self.shared.roster.mark(self.url, True)  # back after ``suspect`` took it out
            else:
                fails += 1
                if fails >= UNHEALTHY_PROBES:
                    return f"stopped answering /health ({fails} probes in a row)"

    async def _restart(self, why: str) -> None:
        server, shared = self.server, self.shared
        await asyncio.to_thread(server.stop)
        now = time.monotonic()
        while self.restarts and now - self.restarts[0] > RESTART_WINDOW_S:
            self.restarts.popleft()
        if len(self.restarts) >= shared.max_restarts:
            raise FleetError(str(server.failure(
                f"vLLM at {server.root_url} {why}, after {len(self.restarts)} restarts in "
                f"the last {RESTART_WINDOW_S / 60:.0f} minutes: giving up (finished rows are "
                "kept; running the same command again resumes)"
            )))  # fmt: skip
        self.restarts.append(now)
        self.restarted += 1
        shared.restarts += 1
        shared.reasons.append(f"vLLM at {server.root_url} {why} (log: {server.log_path})")
        await shared.start_slot.acquire()
        await self.launch()
