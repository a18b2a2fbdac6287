"""The API's own process: uvicorn serving the routes (app.py) on the listening socket the
service's process bound and handed down, apart from the runner (the fleet, the dispatcher,
the batches' drives) and its event loop, so polls never take the dispatcher's core
(docs/benchmarks.md, issue 19).

usage: python -m vbatch._service.apiserver   (settings on stdin: apiprocess.py starts it)

It reads and writes the database (its own connection; WAL) and the data folder only, and
imports nothing of the runner, the dispatcher or the fleet (tests/test_layers.py). It writes
``READY`` on stdout once it serves, stops on SIGTERM (the requests it holds answered first),
and the kernel sends it SIGTERM should the service's process die (PR_SET_PDEATHSIG).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import sys
from collections.abc import Iterator

import uvicorn

from .._config import API_STOP_GRACE_S
from .._engine.shepherd import tell_on_parent_death
from .._tasks import run_sync
from .apiprocess import READY, ApiSettings
from .app import Service, create_app
from .auth import Keys
from .filestore import FileStore
from .store import Store

__all__ = ["main"]

# Its own stop's grace, within the service's (which then SIGKILLs): requests still open by
# then are cut.
DRAIN_S = int(API_STOP_GRACE_S / 2)


class _Server(uvicorn.Server):
    """uvicorn's server, its signals left to ``_serve``'s handlers (uvicorn's would raise the
    signal again after its graceful stop: an exit status the service would take for a
    crash), saying ``READY`` once it serves."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        sys.stdout.buffer.write(READY)
        sys.stdout.buffer.flush()


async def _serve(service: Service, sock: socket.socket) -> None:
    config = uvicorn.Config(create_app(service), lifespan="off", access_log=False,
                            log_level="warning", timeout_graceful_shutdown=DRAIN_S)  # fmt: skip
    server = _Server(config)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, setattr, server, "should_exit", True)
    await server.serve(sockets=[sock])


def main() -> int:
    settings = ApiSettings.decode(sys.stdin.buffer.read())
    tell_on_parent_death(signal.SIGTERM)
    if os.getppid() != settings.parent:  # the service died before the kernel was told
        return 1
    sock = socket.socket(fileno=settings.fd)
    store = Store(settings.database)
    try:
        service = Service(store, FileStore(settings.data_dir),
                          Keys.from_digests(settings.key_digests),
                          settings.max_file_bytes)  # fmt: skip
        run_sync(_serve(service, sock))
    finally:
        store.close()
        sock.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
