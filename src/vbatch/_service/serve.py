"""The service's two processes. This one, the runner's, owns every lifetime: the fleet and
its one dispatcher, the database, the runner that drives the batches, the webhooks, and the
API's process (apiserver.py: uvicorn serving the routes), its child, handed the socket bound
here before anything is printed (so ``--port 0`` works: the URL printed names the port taken).

Polls never take the dispatcher's core: the two share no memory, only the database (WAL) and
the data folder. The API inserts batches and cancel requests; the runner, on its tick, starts
the one and applies the other, and publishes what only it knows live (counts, rates, the
fleet) for the API to read (runner.py, views.py). SIGINT or SIGTERM stops the API's process,
then the batches (their files closed whole), then the fleet."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import sys
from dataclasses import dataclass, field
from typing import Any

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
from .._errors import VbatchError
from .._fleet.factory import FleetFactory, FleetTarget, running
from .._tasks import cancel_and_wait, run_sync
from .apiprocess import ApiProcess, ApiSettings
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
    store = Store(_database(settings))
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


def _database(settings: ServiceSettings) -> str:
    return os.path.join(settings.data_dir, "vbatch-api.db")


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
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    api = ApiProcess(ApiSettings(sock.fileno(), os.getpid(), _database(settings),
                                 settings.data_dir, settings.keys.digests,
                                 settings.max_file_bytes))  # fmt: skip
    try:
        runner.resume()  # before the API serves: what it shows of running batches is there
        async with api:
            host, port = sock.getsockname()[:2]
            sock.close()  # the API's process holds it: should it die, connections are refused
            shown = f"[{host}]" if ":" in host else host
            print(f"http://{shown}:{port}/v1", flush=True)
            print(f"vbatch: Batch API at http://{shown}:{port}/v1 (status page at "
                  f"http://{shown}:{port}/)", file=sys.stderr, flush=True)  # fmt: skip
            await _until_stopped(stop, api)
    finally:
        await runner.aclose()
        if webhooks is not None:
            await webhooks.aclose()


async def _until_stopped(stop: asyncio.Event, api: ApiProcess) -> None:
    """Until SIGINT or SIGTERM; the API's process ending first ends the service with an
    error (its own is on stderr), its batches stopped where they are, to resume."""
    assert api.exited is not None
    stopped = asyncio.ensure_future(stop.wait())
    either: list[asyncio.Future[Any]] = [stopped, api.exited]
    try:
        await asyncio.wait(either, return_when=asyncio.FIRST_COMPLETED)
    finally:
        await cancel_and_wait(stopped)
    if not stop.is_set():
        raise VbatchError(f"the API's process ended (exit status {api.exited.result()}); "
                          "the service stops, its batches resume at its next start")  # fmt: skip


def serve(settings: ServiceSettings) -> None:
    """Run the service until SIGINT or SIGTERM."""
    run_sync(_serve(settings))
