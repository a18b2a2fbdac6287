"""Who is up: the membership state both fleets keep, and the probe they judge members by.

A member is up once a probe of its ``/health`` gets any HTTP answer below 500 (a server without
a ``/health`` route answers 404, which still shows it is there; vLLM answers 503 once its engine
is dead). The roster publishes the up members as one tuple, replaced whole on every change, and
wakes whoever waits for a member. A failure, once set, is final: ``wait_up`` raises it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence

import aiohttp

from .._config import PROBE_TIMEOUT_S
from .._errors import FleetError
from .base import split_base_url

__all__ = ["Prober", "Roster"]


class Prober:
    """``/health`` probes over one small connection pool (created inside the loop)."""

    def __init__(self, timeout_s: float = PROBE_TIMEOUT_S) -> None:
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._session: aiohttp.ClientSession | None = None

    async def __call__(self, base_url: str) -> bool:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(timeout=self._timeout)
        root, _ = split_base_url(base_url)
        try:
            async with self._session.get(root + "/health") as response:
                return response.status < 500
        except (aiohttp.ClientError, OSError, TimeoutError):
            return False

    async def aclose(self) -> None:
        if self._session is not None and not self._session.closed:
            await self._session.close()


class Roster:
    def __init__(self, urls: Sequence[str] = (), up: bool = False) -> None:
        self.order = list(urls)  # every member, in the order given or started
        self._up: set[str] = set(urls) if up else set()
        self.endpoints: tuple[str, ...] = tuple(urls) if up else ()
        self._changed = asyncio.Event()
        self.failure: FleetError | None = None
        self._probes: dict[str, asyncio.Future[bool]] = {}

    def add(self, url: str) -> None:
        if url not in self.order:
            self.order.append(url)

    def is_up(self, url: str) -> bool:
        return url in self._up

    def mark(self, url: str, up: bool) -> None:
        if (url in self._up) == up:
            return
        (self._up.add if up else self._up.discard)(url)
        self.endpoints = tuple(u for u in self.order if u in self._up)
        self._changed.set()
        self._changed = asyncio.Event()

    def fail(self, error: FleetError) -> None:
        if self.failure is None:
            self.failure = error
            self._up.clear()
            self.endpoints = ()
            self._changed.set()

    async def wait_up(self) -> None:
        while not self.endpoints:
            if self.failure is not None:
                raise self.failure
            await self._changed.wait()
        if self.failure is not None:
            raise self.failure

    async def probe_once(self, url: str, probe: Callable[[str], Awaitable[bool]]) -> bool:
        """One probe of ``url`` however many ask at once (a dead server fails hundreds of
        requests together; it is asked once)."""
        pending = self._probes.get(url)
        if pending is None:
            pending = asyncio.ensure_future(probe(url))
            self._probes[url] = pending
            pending.add_done_callback(lambda _: self._probes.pop(url, None))
        return await asyncio.shield(pending)
