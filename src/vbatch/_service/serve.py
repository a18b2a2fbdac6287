"""The service's process: the fleet and its one dispatcher, the database, the runner that
resumes unfinished batches, and uvicorn serving the routes on a socket bound before anything
is printed (so ``--port 0`` works: the URL printed names the port taken)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field

import uvicorn

from .._api import run_sync
from .._client.dispatcher import Dispatcher, dispatcher_for
from .._config import (
    DEFAULT_API_PORT,
    DEFAULT_HOST,
    MAX_BATCH_LINES,
    MAX_FILE_BYTES,
    ClientOptions,
    OverflowPolicy,
)
from .._engine.paths import home
from .._fleet.factory import FleetFactory, FleetTarget, running
from .app import Service, create_app
from .auth import Keys, check_host
from .filestore import FileStore
from .runner import BatchRunner
from .store import Store
from .webhooks import Webhooks

__all__ = ["ServiceSettings", "default_data_dir", "serve"]

log = logging.getLogger("vbatch.api")


def default_data_dir() -> str:
    """``$VBATCH_HOME/api``: beside the converted models and server logs (``_engine/paths``)."""
    return str(home() / "api")


@dataclass(frozen=True)
class ServiceSettings:
    keys: Keys = field(repr=False)
    host: str = DEFAULT_HOST
    port: int = DEFAULT_API_PORT
    data_dir: str = field(default_factory=default_data_dir)
    fleet: FleetTarget = field(default_factory=FleetTarget)  # servers to front, or to launch
    client: ClientOptions = field(default_factory=ClientOptions)
    on_overflow: OverflowPolicy = "error"
    max_lines: int = MAX_BATCH_LINES
    max_file_bytes: int = MAX_FILE_BYTES
    webhook_url: str | None = None
    webhook_secret: str | None = field(default=None, repr=False)

    def check(self) -> None:
        check_host(self.host, self.keys)


class _Server(uvicorn.Server):
    """uvicorn's server without its own signal handling: after its graceful stop it raises the
    signal again, which would end the process before the batches' files are closed and the
    fleet (the vLLM servers launched) is stopped. ``_serve``'s handlers ask it to exit."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(2048)
    sock.setblocking(False)
    return sock


async def _serve(settings: ServiceSettings) -> None:
    settings.check()
    store = Store(os.path.join(settings.data_dir, "vbatch-api.db"))
    files = FileStore(settings.data_dir)
    sock = _bind(settings.host, settings.port)  # before the fleet: a taken port fails at once
    webhooks = (Webhooks(settings.webhook_url, settings.webhook_secret)
                if settings.webhook_url else None)  # fmt: skip
    try:
        # The service opens once the fleet is up, so a vLLM that cannot start ends the service
        # with its log rather than failing each batch.
        async with FleetFactory(settings.fleet) as factory:
            built = await asyncio.to_thread(factory.build)  # plans (may convert a model) first
            async with (
                running(built.fleet) as fleet,
                dispatcher_for(
                    fleet, settings.client, window_per_member=built.window_per_member
                ) as dispatcher,
            ):
                await _serve_with(settings, store, files, sock, webhooks, dispatcher)
    finally:
        sock.close()
        store.close()


async def _serve_with(
    settings: ServiceSettings,
    store: Store,
    files: FileStore,
    sock: socket.socket,
    webhooks: Webhooks | None,
    dispatcher: Dispatcher,
) -> None:
    runner = BatchRunner(store, files, dispatcher, max_lines=settings.max_lines,
                         on_overflow=settings.on_overflow,
                         notify=webhooks.notify if webhooks else None)  # fmt: skip
    runner.resume()
    service = Service(store, files, runner, dispatcher, settings.keys,
                      settings.max_file_bytes)  # fmt: skip
    config = uvicorn.Config(create_app(service), lifespan="off", access_log=False,
                            log_level="warning")  # fmt: skip
    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host
    print(f"http://{shown}:{port}/v1", flush=True)
    print(f"vbatch: Batch API at http://{shown}:{port}/v1 (status page at "
          f"http://{shown}:{port}/)", file=sys.stderr, flush=True)  # fmt: skip
    server = _Server(config)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, setattr, server, "should_exit", True)
    try:
        await server.serve(sockets=[sock])
    finally:
        await runner.aclose()
        if webhooks is not None:
            await webhooks.aclose()


def serve(settings: ServiceSettings) -> None:
    """Run the service until SIGINT or SIGTERM (uvicorn's graceful stop)."""
    run_sync(_serve(settings))
