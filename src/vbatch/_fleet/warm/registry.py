"""Where warm fleets are found: one keeper per GPU set, its entry, and the runs that use it.

Files below ``$VBATCH_HOME/warm/``, for a GPU set ``KEY`` (``gpu_set``):

- ``KEY.lock``: the keeper holds an exclusive ``flock`` on it for its whole life. The kernel drops
  it when the keeper ends however it ends, so "is a keeper alive" is one non-blocking lock try,
  never a pid that may have been reused; a second keeper for the set cannot start.
- ``KEY.json``: the entry (``WarmEntry``), written by the keeper only, replaced whole. An entry
  whose lock nobody holds is stale (its keeper was killed) and is removed by whoever reads it.
- ``KEY.leases/``: one file per run using the fleet, locked by that run while it does (the same
  flock rule: a run killed outright releases its lease). The keeper counts a fleet idle once no
  lease is locked, and stops it ``keep_alive_s`` later.

Attaching and stopping race safely: a run locks its lease *then* reads the entry; the keeper
writes "stopping" *then* looks at the leases once more, and carries on if one appeared. Either
the run sees "stopping" (and starts its own), or the keeper sees the lease (and stays).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import time
import uuid
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

import orjson

from ..._config import Backend
from ..._engine.paths import home

__all__ = [
    "Lease",
    "LeaseHolder",
    "WarmEntry",
    "WarmState",
    "entry_exists",
    "gpu_set",
    "keeper_alive",
    "live_leases",
    "read_entry",
    "read_raw",
    "remove_entry",
    "take_keeper_lock",
    "warm_dir",
    "warm_entries",
    "write_entry",
]

WarmState = Literal["starting", "up", "stopping", "failed"]


def warm_dir(create: bool = False) -> Path:
    path = home() / "warm"
    if create:
        path.mkdir(parents=True, exist_ok=True)
    return path


def gpu_set(backend: Backend, visible: str | None = None) -> str:
    """The key of the devices a fleet started here would use: ``cpu``, or ``gpu-`` and the
    ``CUDA_VISIBLE_DEVICES`` it would see (``all`` when unset)."""
    if backend == "cpu":
        return "cpu"
    if visible is None:
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    return "gpu-" + (re.sub(r"[^A-Za-z0-9,-]", "_", visible).replace(",", "+") or "none"
                     if visible is not None else "all")  # fmt: skip


@dataclass
class WarmEntry:
    """A warm fleet, as its keeper describes it."""

    key: str
    pid: int  # the keeper's
    model: str  # what the servers were started with (a path or hub name)
    served_model: str
    engine: dict[str, Any]  # the launch options that shape the engine (``engine_options``)
    context: int | None  # the servers' max_model_len (None: the model's own)
    replicas: int
    concurrency: int  # the window planned for all replicas
    keep_alive_s: float
    state: WarmState = "starting"
    urls: list[str] = field(default_factory=list)
    created_at: float = field(default_factory=time.time)
    up_at: float | None = None
    idle_since: float | None = None  # None: in use (or not up yet)
    users: list[int] = field(default_factory=list)  # pids of the runs using it now
    restarts: int = 0
    restart_reasons: list[str] = field(default_factory=list)  # the last few, oldest first
    error: str | None = None
    log: str | None = None  # the keeper's own log; the servers' logs are named in it

    @classmethod
    def from_json(cls, data: bytes) -> WarmEntry:
        raw = orjson.loads(data)
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in raw.items() if k in known})

    def to_json(self) -> bytes:
        return orjson.dumps(asdict(self), option=orjson.OPT_INDENT_2)

    def idle_s(self, now: float | None = None) -> float | None:
        return None if self.idle_since is None else (now or time.time()) - self.idle_since


def _paths(key: str, create: bool = False) -> tuple[Path, Path, Path]:
    base = warm_dir(create)
    return base / f"{key}.lock", base / f"{key}.json", base / f"{key}.leases"


def keeper_alive(key: str) -> bool:
    """Whether a keeper holds ``key``'s lock now."""
    lock, _, _ = _paths(key)
    try:
        fd = os.open(lock, os.O_RDONLY)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # closing drops a lock taken here
    return False


def take_keeper_lock(key: str, wait_s: float = 1.0) -> int | None:
    """The keeper's lock for ``key`` (a descriptor to keep open), or None when another keeper
    has it. Tried for ``wait_s``: ``keeper_alive`` holds it for a moment when it looks."""
    lock, _, _ = _paths(key, create=True)
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
    deadline = time.monotonic() + wait_s
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return fd
        except BlockingIOError:
            if time.monotonic() >= deadline:
                os.close(fd)
                return None
            time.sleep(0.05)


def write_entry(entry: WarmEntry) -> None:
    """Replace ``entry``'s file whole (a reader never sees half of it)."""
    _, path, _ = _paths(entry.key, create=True)
    temp = path.with_suffix(f".{os.getpid()}.tmp")
    temp.write_bytes(entry.to_json())
    os.replace(temp, path)


def entry_exists(key: str) -> bool:
    return _paths(key)[1].exists()


def read_raw(key: str) -> WarmEntry | None:
    """``key``'s entry as last written, live or not (a failed keeper's says why)."""
    try:
        return WarmEntry.from_json(_paths(key)[1].read_bytes())
    except (FileNotFoundError, orjson.JSONDecodeError, TypeError):
        return None


def remove_entry(key: str) -> None:
    _, path, leases = _paths(key)
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
    if leases.is_dir():
        for lease in leases.iterdir():
            with contextlib.suppress(FileNotFoundError):
                lease.unlink()


def read_entry(key: str) -> WarmEntry | None:
    """The live keeper's entry for ``key``; None when there is none. A stale entry (its keeper
    gone) is removed on the way."""
    _, path, _ = _paths(key)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    if not keeper_alive(key):
        # Its keeper was killed. (A keeper rewrites a missing entry: one started since the
        # look above and removed here comes back within a poll.)
        remove_entry(key)
        return None
    try:
        return WarmEntry.from_json(data)
    except (orjson.JSONDecodeError, TypeError):
        return None


def warm_entries() -> list[WarmEntry]:
    """Every warm fleet on this machine (stale entries removed), oldest first."""
    base = warm_dir()
    keys = sorted(p.stem for p in base.glob("*.json")) if base.is_dir() else []
    found = [entry for key in keys if (entry := read_entry(key)) is not None]
    return sorted(found, key=lambda e: e.created_at)


# -- leases ----------------------------------------------------------------------------------------


class Lease:
    """A run's claim on the fleet of ``key``: held (locked) from ``acquire`` until ``release``
    or the run's end, however it ends. ``keep_alive_s``, when given, becomes the fleet's
    idle time from this run on."""

    def __init__(self, key: str, keep_alive_s: float | None = None) -> None:
        self.key = key
        self.keep_alive_s = keep_alive_s
        _, _, leases = _paths(key, create=True)
        leases.mkdir(exist_ok=True)
        self.path = leases / f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self._fd: int | None = None

    def acquire(self) -> Lease:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        fcntl.flock(fd, fcntl.LOCK_EX)  # a file of its own: never contended
        os.write(fd, orjson.dumps({"pid": os.getpid(), "keep_alive_s": self.keep_alive_s}))
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> Lease:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


@dataclass(frozen=True)
class LeaseHolder:
    pid: int
    keep_alive_s: float | None
    modified: float


def live_leases(key: str) -> Iterator[LeaseHolder]:
    """The leases held now (the oldest first); leases of runs that ended are removed."""
    _, _, leases = _paths(key)
    if not leases.is_dir():
        return
    held = []
    for path in leases.iterdir():
        try:
            fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            continue
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                held.append(_holder(fd))
                continue
            with contextlib.suppress(FileNotFoundError):
                path.unlink()  # nobody holds it: its run is gone
        finally:
            os.close(fd)
    yield from sorted(held, key=lambda h: h.modified)


def _holder(fd: int) -> LeaseHolder:
    try:
        data = orjson.loads(os.pread(fd, 4096, 0) or b"{}")
    except orjson.JSONDecodeError:  # being written: its content comes at the next look
        data = {}
    return LeaseHolder(int(data.get("pid", 0)), data.get("keep_alive_s"), os.fstat(fd).st_mtime)
