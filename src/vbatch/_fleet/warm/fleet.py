"""``WarmFleet``: the servers of this machine's warm fleet, as one run sees them.

Its start finds the GPU set's keeper (registry.py) and attaches when the fleet can serve the
job (match.py); else it stops an idle one that cannot and starts a keeper of its own from the
job's plan. The run holds a lease until it stops, so the keeper does not count the fleet idle
meanwhile; stopping the run's fleet releases the lease and leaves the servers to the keeper.
Requests go to the keeper's servers as to servers someone runs (a ``StaticFleet`` inside); the
keeper restarts one that dies, and its end (a crash, ``vbatch stop``) fails the run at once.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
from collections.abc import Mapping, Sequence

from ..._config import DOWN_TIMEOUT_S, HEALTH_INTERVAL_S, LaunchOptions
from ..._engine.plan import LaunchPlan
from ..._errors import FleetError, LaunchError
from ..._tasks import cancel_and_wait
from ..base import FleetStatus
from ..local import Launched, OnLaunch, Settle
from ..static import StaticFleet
from .control import spawn_keeper, stop_keeper
from .keeper import KeeperOrder
from .match import engine_options, misfit
from .registry import Lease, WarmEntry, keeper_alive, live_leases, read_entry, read_raw

__all__ = ["WarmFleet"]

POLL_S = 0.2  # how often a run looks at a keeper it waits for


class WarmFleet:
    def __init__(
        self,
        key: str,
        plan: LaunchPlan,
        options: LaunchOptions,
        on_launch: OnLaunch | None = None,
        settle: Settle | None = None,
        down_timeout_s: float = DOWN_TIMEOUT_S,
    ) -> None:
        self.key = key
        self.plan = plan
        self._options = options
        self._on_launch = on_launch
        self._settle = settle
        self._down_timeout_s = down_timeout_s
        self._lease: Lease | None = None
        self._keeper: subprocess.Popen[bytes] | None = None
        self._entry: WarmEntry | None = None  # as the keeper last wrote it
        self._restarts_before = 0  # the keeper's restarts before this run
        self._inner: StaticFleet | None = None
        self._watcher: asyncio.Task[None] | None = None
        self._settled = asyncio.Event()
        self.attached = False  # found up, rather than started by this run

    def __repr__(self) -> str:
        return f"WarmFleet({self.key!r}, {self.plan.served_model!r})"

    # -- start ---------------------------------------------------------------------------------

    async def start(self) -> None:
        keep_alive = self._options.keep_alive_s
        try:
            self._lease = await asyncio.to_thread(Lease(self.key, keep_alive or None).acquire)
            entry = await self._claim(self.plan)
            if self._settle is not None and (plan := await self._settle()) is not None:
                self.plan = plan
                if misfit(entry, self._options, plan) is not None:
                    entry = await self._claim(plan)
            self._entry = entry
            self._settled.set()
            entry = await self._wait_up(entry)
            self._entry = entry
            self._restarts_before = entry.restarts
            if self._on_launch is not None:
                self._on_launch(Launched(self.plan, entry.urls, entry.log, self._how(entry)))
            self._inner = StaticFleet(entry.urls, self._down_timeout_s)
            await self._inner.start()
            self._watcher = asyncio.create_task(self._watch())
        except BaseException:
            self._settled.set()
            await self.stop()
            raise

    def _how(self, entry: WarmEntry) -> str:
        if self.attached:
            idle = entry.idle_s()
            since = f"idle for {idle:.0f}s" if idle is not None else "shared with another run"
            return f"using the warm fleet of keeper pid {entry.pid} ({since})"
        keep = self._options.keep_alive_s
        kept = f"kept {keep:.0f}s after the run" if keep else "stopped after the run"
        return f"starting a warm fleet ({kept}; see vbatch ps, vbatch stop)"

    async def _claim(self, plan: LaunchPlan) -> WarmEntry:
        """The keeper whose fleet serves ``plan``: the one there, or a new one (stopping one
        that cannot serve it and that no other run uses)."""
        while True:
            entry = await asyncio.to_thread(read_entry, self.key)
            if entry is None:
                return await self._spawn(plan)
            if entry.state == "stopping":
                await asyncio.to_thread(stop_keeper, entry)  # it is on its way: wait for it
                continue
            why = misfit(entry, self._options, plan)
            if why is None:
                self.attached = entry.pid != getattr(self._keeper, "pid", None)
                return entry
            others = [h.pid for h in live_leases(self.key) if h.pid != os.getpid()]
            if others:
                raise LaunchError(
                    f"the warm fleet on {self.key} (keeper pid {entry.pid}) cannot serve this "
                    f"job: {why}; runs {', '.join(map(str, others))} use it. Wait for them, or "
                    "`vbatch stop --force`"
                )
            plan.notes.append(f"stopped the warm fleet of {entry.served_model}: {why}")
            await asyncio.to_thread(stop_keeper, entry)

    async def _spawn(self, plan: LaunchPlan) -> WarmEntry:
        order = KeeperOrder(self.key, plan, engine_options(self._options),
                            self._options.keep_alive_s, self._options.max_restarts)  # fmt: skip
        self._keeper = keeper = await asyncio.to_thread(spawn_keeper, order)
        self.attached = False
        while True:
            entry = await asyncio.to_thread(read_entry, self.key)
            if entry is not None and entry.pid == keeper.pid:
                return entry
            if keeper.poll() is not None:
                raise self._keeper_failure(keeper)
            await asyncio.sleep(POLL_S)

    def _keeper_failure(self, keeper: subprocess.Popen[bytes]) -> LaunchError:
        entry = read_raw(self.key)
        if entry is not None and entry.pid == keeper.pid and entry.error:
            return LaunchError(entry.error)
        return LaunchError(f"the warm fleet's keeper exited with code {keeper.returncode}; "
                           f"its log: {entry.log if entry else 'in the logs folder'}")  # fmt: skip

    async def _wait_up(self, entry: WarmEntry) -> WarmEntry:
        while entry.state != "up":
            await asyncio.sleep(POLL_S)
            found = await asyncio.to_thread(read_entry, self.key)
            if found is None or found.pid != entry.pid or found.state in ("failed", "stopping"):
                if self._keeper is not None and self._keeper.pid == entry.pid:
                    await asyncio.to_thread(self._keeper.wait)
                    raise self._keeper_failure(self._keeper)
                return await self._wait_up(await self._claim(self.plan))  # another run's: gone
            entry = found
        return entry

    # -- while the run sends -------------------------------------------------------------------

    async def _watch(self) -> None:
        """Follow the keeper's entry (its restarts); fail the run at once when the keeper is
        gone, instead of after the down timeout."""
        while True:
            await asyncio.sleep(HEALTH_INTERVAL_S)
            assert self._inner is not None and self._entry is not None
            fresh = await asyncio.to_thread(read_raw, self.key)
            if fresh is not None and fresh.pid == self._entry.pid:
                self._entry = fresh
            if not await asyncio.to_thread(keeper_alive, self.key):
                self._inner.roster.fail(FleetError(
                    f"the warm fleet's keeper (pid {self._entry.pid}) has ended; its log: "
                    f"{self._entry.log}. Finished rows are kept: run the command again to resume"
                ))  # fmt: skip
                return

    def endpoints(self) -> Sequence[str]:
        return self._inner.endpoints() if self._inner is not None else ()

    async def suspect(self, url: str) -> bool:
        return await self._inner.suspect(url) if self._inner is not None else False

    async def wait_up(self) -> None:
        assert self._inner is not None, "start() first"
        await self._inner.wait_up()

    async def models(self) -> Mapping[str, int | None] | None:
        await self._settled.wait()
        entry = self._entry
        if entry is None or entry.context is None:
            return None
        adapters = [name for name, _ in entry.engine.get("lora", ())]
        return dict.fromkeys([entry.served_model, *adapters], entry.context)

    def status(self) -> FleetStatus:
        if self._inner is None or self._entry is None:
            return FleetStatus(self.plan.replicas, 0)
        inner, entry = self._inner.status(), self._entry
        restarts = entry.restarts - self._restarts_before  # during this run
        reasons = tuple(entry.restart_reasons[-restarts:]) if restarts else ()
        return FleetStatus(inner.members, inner.up, restarts, inner.failure, inner.servers,
                           reasons)  # fmt: skip

    async def stop(self) -> None:
        """Leave the fleet to its keeper: stop watching, release the lease."""
        await cancel_and_wait(self._watcher)
        self._watcher = None
        if self._inner is not None:
            await self._inner.stop()
        if self._lease is not None:
            self._lease.release()
            self._lease = None
