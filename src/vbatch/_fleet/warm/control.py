"""Starting, stopping and sizing up keepers from outside: what a run, ``vbatch ps`` and
``vbatch stop`` do to them."""

from __future__ import annotations

import contextlib
import os
import pickle
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from ..._config import STOP_GRACE_S
from ..._engine.paths import logs_dir
from .keeper import KeeperOrder
from .registry import WarmEntry, keeper_alive, live_leases

__all__ = ["WarmUsage", "spawn_keeper", "stop_keeper", "usage"]

KEEPER_MODULE = "vbatch._fleet.warm"  # its __main__.py


def spawn_keeper(order: KeeperOrder) -> subprocess.Popen[bytes]:
    """Start a keeper for ``order``: in a session of its own, so that it outlives this
    process and a Ctrl-C at the terminal does not reach it; its output goes to its log."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    log = logs_dir() / f"warm-{order.key}-{stamp}.log"
    order = KeeperOrder(order.key, order.plan, order.engine, order.keep_alive_s,
                        order.max_restarts, str(log))  # fmt: skip
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", KEEPER_MODULE],
            stdin=subprocess.PIPE,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    assert proc.stdin is not None
    proc.stdin.write(pickle.dumps(order))
    proc.stdin.close()
    return proc


def _is_keeper(pid: int) -> bool:
    try:
        return KEEPER_MODULE in Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
    except OSError:
        return False


def stop_keeper(entry: WarmEntry, grace_s: float = STOP_GRACE_S + 10) -> None:
    """Stop the keeper of ``entry`` and so its servers: SIGTERM (it stops them as a run's end
    does), SIGKILL after ``grace_s`` (its servers' shepherds then end them). Returns once its
    lock is free."""
    if not keeper_alive(entry.key) or not _is_keeper(entry.pid):
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(entry.pid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while keeper_alive(entry.key):
        if time.monotonic() > deadline:
            with contextlib.suppress(ProcessLookupError):
                os.kill(entry.pid, signal.SIGKILL)
            deadline = time.monotonic() + 10
        time.sleep(0.1)


@dataclass(frozen=True)
class WarmUsage:
    users: list[int]  # pids of the runs using the fleet now
    memory_bytes: int  # resident memory of the keeper and its servers
    gpu_memory_bytes: int | None  # GPU memory of its processes; None without nvidia-smi


def usage(entry: WarmEntry) -> WarmUsage:
    """Who uses the fleet, and the memory its processes hold (``vbatch ps``)."""
    pids = _descendants(entry.pid)
    resident = sum(_rss(pid) for pid in pids)
    users = [h.pid for h in live_leases(entry.key)]
    return WarmUsage(users, resident, _gpu_memory(set(pids)))


def _descendants(root: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            parent = int(stat.rsplit(")", 1)[1].split()[1])
            children.setdefault(parent, []).append(int(entry))
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo.extend(children.get(pid, []))
    return found


def _rss(pid: int) -> int:
    try:
        pages = int(Path(f"/proc/{pid}/statm").read_text().split()[1])
    except (OSError, IndexError, ValueError):
        return 0
    return pages * os.sysconf("SC_PAGE_SIZE")


def _gpu_memory(pids: set[int]) -> int | None:
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-compute-apps=pid,used_memory", "--format=csv,noheader,nounits"],
            capture_output=True, text=True, timeout=10, check=True,
        ).stdout  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return None
    total = 0
    for line in out.splitlines():
        pid, _, mib = line.partition(",")
        with contextlib.suppress(ValueError):
            if int(pid) in pids:
                total += int(mib) * 1024 * 1024
    return total
