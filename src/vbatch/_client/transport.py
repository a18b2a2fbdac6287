"""HTTP transports, the seam between the dispatcher and the network (as httpx's are).
``AiohttpTransport`` is the real one: one session, keep-alive, raw bytes in and out (JSON is
encoded and decoded by the caller with orjson). ``FleetTransport`` (endpoints.py) spreads
requests over a fleet's servers. ``MockTransport`` answers from a function, for tests.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Protocol

import aiohttp

from .._config import CONNECT_TIMEOUT_S, DEFAULT_TIMEOUT_S
from .._errors import TransportError
from .._fleet.base import split_base_url

__all__ = ["AiohttpTransport", "MockTransport", "Response", "Transport"]


@dataclass(slots=True)
class Response:
    status: int
    content: bytes
    headers: Mapping[str, str] = field(default_factory=dict)
    endpoint: str | None = None  # the server (base URL) that answered, when known


class Transport(Protocol):
    async def request(self, method: str, path: str, body: bytes | None = None) -> Response:
        """Send one request. ``path`` starting with ``/v1`` or not is taken relative to the
        server root, e.g. ``/v1/completions``, ``/health``, ``/tokenize``."""
        ...

    async def aclose(self) -> None: ...


class AiohttpTransport:
    """One ``aiohttp.ClientSession`` shared by all workers; created lazily inside the loop."""

    def __init__(
        self,
        base_url: str,
        api_key: str | None = None,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        connect_timeout_s: float = CONNECT_TIMEOUT_S,
    ) -> None:
        self.base_url = base_url
        self.root, self.api_prefix = split_base_url(base_url)
        self._headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if api_key:
            self._headers["Authorization"] = f"Bearer {api_key}"
        self._timeout = aiohttp.ClientTimeout(total=timeout_s, sock_connect=connect_timeout_s)
        self._session: aiohttp.ClientSession | None = None

    def __repr__(self) -> str:  # never show the key
        return f"AiohttpTransport({self.root}{self.api_prefix})"

    def _get_session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            # limit=0: the dispatcher's worker count is the only bound on connections.
            connector = aiohttp.TCPConnector(limit=0, ttl_dns_cache=300, keepalive_timeout=60)
            self._session = aiohttp.ClientSession(
                connector=connector,
                timeout=self._timeout,
                headers=self._headers,
                skip_auto_headers=("User-Agent",),
            )
        return self._session

    async def request(self, method: str, path: str, body: bytes | None = None) -> Response:
        session = self._get_session()
        try:
            async with session.request(method, self.root + path, data=body) as resp:
                content = await resp.read()
                return Response(resp.status, content, resp.headers, self.base_url)
        except TimeoutError:
            raise TransportError(
                "timeout", f"no reply within {self._timeout.total}s", self.base_url
            ) from None
        except aiohttp.ClientConnectorError as exc:
            message = f"cannot connect to {self.root}: {exc.os_error}"
            raise TransportError("connect_error", message, self.base_url) from None
        except (aiohttp.ServerDisconnectedError, aiohttp.ClientPayloadError) as exc:
            raise TransportError(
                "server_disconnected", str(exc) or type(exc).__name__, self.base_url
            ) from None
        except (aiohttp.ClientError, OSError) as exc:
            raise TransportError(
                "server_disconnected", f"{type(exc).__name__}: {exc}", self.base_url
            ) from None

    async def aclose(self) -> None:
        if self._session is not None and not self._session.closed:
            await self._session.close()


Handler = Callable[[str, str, bytes | None], "Response | Awaitable[Response]"]


class MockTransport:
    """Answers every request by calling ``handler(method, path, body)`` (sync or async).

    The handler may raise ``TransportError`` to act out a dropped connection or a timeout.
    """

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.closed = False

    async def request(self, method: str, path: str, body: bytes | None = None) -> Response:
        result = self.handler(method, path, body)
        if inspect.isawaitable(result):
            result = await result
        assert isinstance(result, Response)
        return result

    async def aclose(self) -> None:
        self.closed = True
