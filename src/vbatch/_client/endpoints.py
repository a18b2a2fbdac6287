"""``FleetTransport``: one transport over whichever servers a fleet lists now.

Each generation request goes to the member with the fewest requests in flight from us (vLLM
batches what it is given, so the least busy is the one whose batch has room). ``/metrics`` is
read from every member and their lines concatenated, so the load sums; other calls (``/v1/models``,
``/tokenize``) go to the first member. Members that join get a connection pool on first use.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine, Sequence
from typing import Any

from .._config import CONNECT_TIMEOUT_S, DEFAULT_TIMEOUT_S
from .._errors import TransportError
from .._fleet.base import Fleet
from .transport import AiohttpTransport, Response

__all__ = ["FleetTransport"]


class FleetTransport:
    def __init__(
        self,
        fleet: Fleet,
        api_key: str | None = None,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        connect_timeout_s: float = CONNECT_TIMEOUT_S,
    ) -> None:
        self.fleet = fleet
        self._settings = (api_key, timeout_s, connect_timeout_s)
        self._pools: dict[str, AiohttpTransport] = {}
        self._in_flight: dict[str, int] = {}
        self._seen: Sequence[str] | None = None  # the fleet's list the members were made from
        self._members: list[AiohttpTransport] = []
        # Told the number of members up whenever it changes (a window per member follows it).
        self.on_members: Callable[[int], None] | None = None

    def __repr__(self) -> str:
        return f"FleetTransport({self.fleet!r})"

    def _follow(self, urls: Sequence[str]) -> None:
        """The fleet's list changed: transports for the members up now."""
        self._seen = urls
        api_key, timeout_s, connect_timeout_s = self._settings
        for url in urls:
            if url not in self._pools:
                self._pools[url] = AiohttpTransport(url, api_key, timeout_s, connect_timeout_s)
                self._in_flight[url] = 0
        self._members = [self._pools[url] for url in urls]
        if self.on_members is not None:
            self.on_members(len(urls))

    def request(
        self, method: str, path: str, body: bytes | None = None
    ) -> Coroutine[Any, Any, Response]:
        # A plain function handing back the chosen member's coroutine: no extra frame for the
        # common case (one member, or a request that goes to the first), ~1 us a request.
        urls = self.fleet.endpoints()
        if urls is not self._seen:
            self._follow(urls)
        members = self._members
        if not members:
            raise TransportError("connect_error", "no server is up")
        if len(members) == 1:
            return members[0].request(method, path, body)
        if path == "/metrics":
            return self._gather_metrics(members)
        if method != "POST" or path == "/tokenize":
            return members[0].request(method, path, body)
        return self._least_busy(members, method, path, body)

    async def _gather_metrics(self, members: list[AiohttpTransport]) -> Response:
        replies = await asyncio.gather(
            *(t.request("GET", "/metrics") for t in members), return_exceptions=True
        )
        answers = [r for r in replies if isinstance(r, Response)]
        if not answers:
            raise TransportError("connect_error", "no server answered GET /metrics")
        texts = [r.content for r in answers if r.status == 200]
        return Response(200 if texts else answers[0].status, b"\n".join(texts))

    async def _least_busy(
        self, members: list[AiohttpTransport], method: str, path: str, body: bytes | None
    ) -> Response:
        counts = self._in_flight
        target = min(members, key=lambda t: counts[t.base_url])
        counts[target.base_url] += 1
        try:
            return await target.request(method, path, body)
        finally:
            counts[target.base_url] -= 1

    async def aclose(self) -> None:
        for transport in self._pools.values():
            await transport.aclose()
