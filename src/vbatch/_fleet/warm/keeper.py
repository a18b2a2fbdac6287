"""The keeper: the process that owns a warm fleet, so that its servers outlive the run that
started them.

usage: python -m vbatch._fleet.warm   (its order, a pickled ``KeeperOrder``, on stdin)

A run with ``--keep-alive`` starts it in a session of its own (not a child that dies with the
run). It takes the GPU set's lock (registry.py), starts the servers as a ``LocalFleet`` (which
restarts one that dies), publishes its entry, and then watches the leases: once none is held
for ``keep_alive_s`` it stops the fleet and exits. SIGTERM (``vbatch stop``) stops it at once.
The servers are its children under their shepherds, so should the keeper be killed outright
they end too: nothing outlives it, and its entry, no longer locked, is stale.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import pickle
import signal
import sys
import time
from dataclasses import dataclass

from ..._config import MAX_RESTARTS
from ..._engine.plan import LaunchPlan
from ..._errors import FleetError, VbatchError
from ..._tasks import CancelledOn
from ..local import LocalFleet
from .registry import (
    WarmEntry,
    entry_exists,
    live_leases,
    remove_entry,
    take_keeper_lock,
    write_entry,
)

__all__ = ["KeeperOrder", "keep"]

POLL_S = 0.5  # how often the leases and the fleet are looked at


@dataclass(frozen=True)
class KeeperOrder:
    """What a run asks of a keeper it starts."""

    key: str
    plan: LaunchPlan
    engine: dict[str, object]
    keep_alive_s: float
    max_restarts: int = MAX_RESTARTS
    log: str | None = None


async def keep(order: KeeperOrder, stop: asyncio.Event) -> int:
    """Hold the fleet of ``order`` until it has been idle ``keep_alive_s`` or ``stop`` is set;
    0, or 1 when its servers could not be started or kept (the entry says why)."""
    plan = order.plan
    entry = WarmEntry(order.key, os.getpid(), plan.spec.model, plan.served_model, order.engine,
                      plan.spec.max_model_len, plan.replicas, plan.concurrency,
                      order.keep_alive_s, log=order.log)  # fmt: skip
    write_entry(entry)
    fleet = LocalFleet(plan, max_restarts=order.max_restarts)
    try:
        async with CancelledOn(stop) as cancelled:
            await fleet.start()
        if not cancelled.fired:
            entry.state, entry.up_at, entry.urls = "up", time.time(), list(fleet.roster.order)
            print(f"vbatch keeper: serving {plan.served_model} at {', '.join(entry.urls)}; "
                  f"server logs: {', '.join(str(s.log_path) for s in fleet.servers)}",
                  flush=True)  # fmt: skip
            write_entry(entry)
            await _watch(entry, fleet, stop)
    except VbatchError as exc:
        # Left for the run that started this keeper to read; stale (and removed by whoever
        # reads it next) once this process is gone.
        entry.state, entry.error = "failed", str(exc)
        write_entry(entry)
        return 1
    finally:
        await fleet.stop()
    remove_entry(order.key)
    return 0


async def _watch(entry: WarmEntry, fleet: LocalFleet, stop: asyncio.Event) -> None:
    """Until ``stop``, or idle past the keep-alive; a fleet that fails raises its error."""
    written = entry.to_json()
    while not stop.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), POLL_S)
        status = fleet.status()
        if status.failure is not None:
            raise FleetError(status.failure)
        holders = list(live_leases(entry.key))
        entry.users = [h.pid for h in holders]
        entry.restarts = status.restarts
        entry.restart_reasons = list(status.restart_reasons)
        asked = [h.keep_alive_s for h in holders if h.keep_alive_s is not None]
        if asked:
            entry.keep_alive_s = asked[-1]  # the newest run's word
        if holders:
            entry.idle_since = None
        elif entry.idle_since is None:
            entry.idle_since = time.time()
        idle = entry.idle_s()
        if idle is not None and idle >= entry.keep_alive_s and _may_stop(entry):
            print(f"vbatch keeper: idle for {idle:.0f}s, stopping", flush=True)
            return
        if entry.to_json() != written or not entry_exists(entry.key):
            write_entry(entry)
            written = entry.to_json()
    entry.state = "stopping"
    write_entry(entry)


def _may_stop(entry: WarmEntry) -> bool:
    """Say "stopping", then look at the leases once more (registry.py: why in this order);
    carry on if a run took one meanwhile."""
    entry.state = "stopping"
    write_entry(entry)
    if any(True for _ in live_leases(entry.key)):
        entry.state, entry.idle_since = "up", None
        write_entry(entry)
        return False
    return True


def main() -> int:
    order: KeeperOrder = pickle.load(sys.stdin.buffer)
    sys.stdin.close()
    lock = take_keeper_lock(order.key)
    if lock is None:
        print(f"vbatch keeper: another keeper holds {order.key}", file=sys.stderr)
        return 75
    # The lock is never released by hand: it goes with the process, so "the lock is free"
    # means "the keeper is gone".
    return asyncio.run(_main(order))


async def _main(order: KeeperOrder) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        loop.add_signal_handler(sig, stop.set)
    return await keep(order, stop)
