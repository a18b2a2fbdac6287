"""A ``RayFleet``'s members as the driver sees them: one watcher per member follows it through
Ray (ready, up, down, started again, gone) and keeps the roster; a supervisor fails the fleet
once no member has been up for ``down_timeout_s``. The watchers of one fleet share a
``MemberWatch`` (who is up, the probe, what happened so far)."""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any

from ..._config import RESTART_REASONS_KEPT, UNHEALTHY_PROBES
from ..._errors import FleetError, LaunchError
from ..roster import Roster
from .cluster import import_ray
from .member import MemberReady

__all__ = ["MemberWatch"]


class MemberWatch:
    def __init__(
        self,
        roster: Roster,
        probe: Callable[[str], Awaitable[bool]],
        count: int,
        interval_s: float,
        down_timeout_s: float,
    ) -> None:
        self.roster = roster
        self.probe = probe
        self.count = count  # members in the fleet
        self.interval_s = interval_s
        self.down_timeout_s = down_timeout_s
        self.ready: dict[int, MemberReady] = {}  # each member's latest report, by index
        self.restarts = 0  # members back with a new server (counted once it is healthy)
        self.reasons: deque[str] = deque(maxlen=RESTART_REASONS_KEPT)  # why, for the summary
        self.ever_up = False
        self.startup_error: LaunchError | None = None  # why the fleet never came up
        self._gone = 0

    async def member(self, k: int, actor: Any) -> None:
        """Member ``k``'s whole life; ends by cancellation, or once it is gone for good."""
        from ray.exceptions import ActorDiedError, ActorUnavailableError

        ray = import_ray()
        while True:
            try:
                ready: MemberReady = await actor.ready.remote()
            except LaunchError as exc:  # its server did not start: the log says why
                if not self.ever_up:
                    self.startup_error = self.startup_error or LaunchError(str(exc))
                    self.roster.fail(FleetError(str(exc)))
                    return
                ray.kill(actor, no_restart=False)  # Ray starts it again (a restart spent)
                self.restarts += 1
                first_line = str(exc).partition("\n")[0]
                self.reasons.append(f"Ray member {k}'s vLLM failed to start: {first_line}")
                continue
            except ActorUnavailableError:  # its node is going: Ray will say what follows
                await asyncio.sleep(self.interval_s)
                continue
            except ActorDiedError as exc:  # restarts spent, or its node gone for good
                self._gone += 1
                if self._gone == self.count:
                    self.roster.fail(FleetError(
                        f"every Ray member is gone (the last: {exc}); finished rows are "
                        "kept, and running the same command again resumes"
                    ))  # fmt: skip
                return
            before = self.ready.get(k)
            if before is not None and before.server_pid != ready.server_pid:
                self.restarts += 1  # back from a restart Ray did (its server died, or its node)
                self.reasons.append(
                    f"vLLM at {before.url} went down (log on its node: {before.log_path}); "
                    f"Ray started member {k} again, now at {ready.url}"
                )
            self.ready[k] = ready
            self.roster.add(ready.url)
            self.roster.mark(ready.url, True)
            self.ever_up = True
            await self._until_down(ready.url)
            self.roster.mark(ready.url, False)

    async def _until_down(self, url: str) -> None:
        fails = 0
        while fails < UNHEALTHY_PROBES:
            await asyncio.sleep(self.interval_s)
            if await self.probe(url):
                fails = 0
                self.roster.mark(url, True)  # back after ``suspect`` took it out
            else:
                fails += 1

    async def supervise(self) -> None:
        """Fail the fleet once no member has been up for ``down_timeout_s`` (after one was)."""
        down_since: float | None = None
        while True:
            await asyncio.sleep(self.interval_s)
            now = time.monotonic()
            if self.roster.endpoints or not self.ever_up:
                down_since = None
            elif down_since is None:
                down_since = now
            elif now - down_since >= self.down_timeout_s:
                self.roster.fail(FleetError(
                    f"no Ray member has been up for {self.down_timeout_s:.0f}s; finished rows "
                    "are kept, and running the same command again resumes"
                ))  # fmt: skip
                return
