"""Being a Ray cluster's driver for as long as a job (or ``vbatch serve``) lasts: joining the
cluster, or, with none to join, starting a local Ray instance for it, as ``ray.init()`` does.

``ray_session`` is the way in. An address (``auto``, ``HOST:PORT``, ``ray://HOST:PORT``) or
``$RAY_ADDRESS`` joins that cluster. Neither joins the cluster ``ray start`` last started on
this machine (Ray notes its address for ``ray.init()``), else starts a local instance: on
loopback only, its files in a folder of its own (not where a later ``ray.init()`` would find
them), stopped and removed when the session ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import os
import shutil
import socket
import tempfile
import threading
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

from ..._errors import ConfigError, LaunchError

__all__ = ["RAY_INSTALL", "RaySession", "import_ray", "ray_session"]

RAY_INSTALL = "pip install 'vbatch[ray]'"
LOOPBACK = "127.0.0.1"
ANSWER_TIMEOUT_S = 10.0  # a cluster's address gets this long to accept a connection
# The driver's settings: members' output stays in their own logs (each server's log is on its
# node), not on this terminal under the progress display.
_DRIVER: dict[str, Any] = {"log_to_driver": False, "logging_level": "WARNING"}
# What Ray says of choices made here on purpose, kept off the terminal: ray.init away from the
# main thread leaves SIGTERM to vbatch (which stops its servers on it); a local instance has
# token authentication on (Ray's default: its token is ~/.ray/auth_token).
_NOTICES = {
    "ray._private.worker": "SIGTERM handler is not set",
    "ray._private.authentication.authentication_token_setup": "Token authentication is enabled",
}


def import_ray() -> Any:
    """The ``ray`` module; ``ConfigError`` (exit 2) saying how to get it when it is missing."""
    try:
        import ray
    except ImportError:
        raise ConfigError(f"--ray needs Ray, which is not installed: {RAY_INSTALL}") from None
    return ray


@dataclass(frozen=True)
class RaySession:
    address: str  # the cluster's: as given, as Ray noted it, or the local instance's HOST:PORT
    local: bool = False  # a local instance started for the session (stopped at its end)


@contextlib.asynccontextmanager
async def ray_session(address: str | None = None) -> AsyncIterator[RaySession]:
    """This process as a Ray driver while the block lasts (see the module docstring): joined
    to ``address`` (None or "": ``$RAY_ADDRESS``, else the cluster ``ray start`` noted, else
    a local instance started for the block). ``LaunchError`` when the cluster cannot be
    joined. A process that joined one itself (its own ``ray.init``) is left as it is."""
    if import_ray().is_initialized():
        yield RaySession(address or os.environ.get("RAY_ADDRESS") or "")
        return
    driver = _Driver(address or os.environ.get("RAY_ADDRESS") or None)
    driver.start()
    try:
        yield await asyncio.wrap_future(driver.joined)
    finally:
        driver.leave.set()
        await asyncio.to_thread(driver.join)


class _Driver(threading.Thread):
    """Joins (or starts) and leaves, in a thread of its own for the whole session: Ray ties the
    processes of a local instance to the thread that started them (Linux ends them with it:
    PR_SET_PDEATHSIG), and ray.init, seconds long, stays off the event loop."""

    def __init__(self, address: str | None) -> None:
        super().__init__(name="vbatch-ray", daemon=True)
        self.address = address
        self.joined: Future[RaySession] = Future()
        self.leave = threading.Event()
        self._temp_dir: str | None = None

    def run(self) -> None:
        if not self.joined.set_running_or_notify_cancel():
            return
        try:
            with _hushed():
                self.joined.set_result(self._join())
        except BaseException as exc:  # the session's to raise
            self.joined.set_exception(exc)
        self.leave.wait()
        import_ray().shutdown()  # leaves a cluster joined; stops an instance started here
        if self._temp_dir is not None:
            shutil.rmtree(self._temp_dir, ignore_errors=True)

    def _join(self) -> RaySession:
        if self.address is not None:
            _join(self.address)
            return RaySession(self.address)
        noted = _noted()
        if noted is not None:
            _join(noted, noted=True)
            return RaySession(noted)
        # Beside Ray's own folder (RAY_TMPDIR, else TMPDIR or /tmp), short: Ray's unix sockets
        # live below it, and their paths are limited to ~100 bytes.
        self._temp_dir = tempfile.mkdtemp(prefix="vbatch-ray-", dir=os.environ.get("RAY_TMPDIR"))
        try:
            with _loopback_kept(True):
                started = import_ray().init(address="local", _temp_dir=self._temp_dir,
                                            _node_ip_address=LOOPBACK, include_dashboard=False,
                                            **_DRIVER)  # fmt: skip
        except (ConnectionError, RuntimeError, ValueError) as exc:
            raise LaunchError(f"no Ray cluster to join, and a local Ray instance did not "
                              f"start: {exc}") from None  # fmt: skip
        return RaySession(started.address_info["gcs_address"], local=True)


def _join(address: str, noted: bool = False) -> None:
    """ray.init as a driver of the cluster at ``address`` (``noted``: the one Ray noted, joined
    as ``ray.init()`` would, its token auth included); ``LaunchError`` when it cannot."""
    where = f"at {address}"
    if noted:
        where += (", the one `ray start` last started on this machine (`ray stop` makes Ray "
                  "forget it)")  # fmt: skip
    if address != "auto":
        _answering(address, where)
    try:
        with _loopback_kept(not address.startswith("ray://") and _loopback(address)):
            import_ray().init(address=None if noted else address, **_DRIVER)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        raise LaunchError(f"cannot join the Ray cluster {where}: {exc}") from None


def _noted() -> str | None:
    """The address of the cluster ``ray start`` last started or joined on this machine, where
    ``ray.init()`` finds it ($RAY_TMPDIR/ray, else $TMPDIR/ray or /tmp/ray)."""
    from ray._private.utils import read_ray_address

    address: str | None = read_ray_address()
    return address or None


def _answering(address: str, where: str) -> None:
    """``LaunchError`` at once when nothing accepts a connection at ``address`` (HOST:PORT):
    ray.init would keep trying for many minutes before it said so."""
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        return  # Ray's to judge
    try:
        socket.create_connection((host.strip("[]"), int(port)), ANSWER_TIMEOUT_S).close()
    except OSError as exc:
        raise LaunchError(f"cannot join the Ray cluster {where}: nothing answers there "
                          f"({exc})") from None  # fmt: skip


def _loopback(address: str) -> bool:
    host = address.rpartition(":")[0].strip("[]") if ":" in address else address
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


@contextlib.contextmanager
def _loopback_kept(keep: bool) -> Iterator[None]:
    """Ray rewrites a loopback address (127.0.0.1) to this machine's network address as it
    joins or starts a cluster (``services.resolve_ip_for_localhost``), but not where it runs
    without clusters (Windows, macOS): a cluster on loopback only (``ray start --head
    --node-ip-address 127.0.0.1``, or the local instance) is joined or started as there."""
    if not keep:
        yield
        return
    from ray._private import ray_constants

    before = ray_constants.ENABLE_RAY_CLUSTER
    ray_constants.ENABLE_RAY_CLUSTER = False  # read as Ray resolves addresses, in ray.init
    try:
        yield
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = before


@contextlib.contextmanager
def _hushed() -> Iterator[None]:
    """Ray's ``_NOTICES`` left out of its log while the block lasts."""

    def shown(record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(_NOTICES.get(record.name, "\0"))

    loggers = [logging.getLogger(name) for name in _NOTICES]
    for logger in loggers:
        logger.addFilter(shown)
    try:
        yield
    finally:
        for logger in loggers:
            logger.removeFilter(shown)
