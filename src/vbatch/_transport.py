"""HTTP transports. ``AiohttpTransport`` is the real one: one session, keep-alive, raw bytes in
and out (JSON is encoded and decoded by the caller with orjson). ``MockTransport`` answers from a
function, for tests, in the manner of httpx's.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Protocol

import aiohttp

__all__ = [
    "AiohttpTransport",
    "MockTransport",
    "ReplicaTransport",
    "Response",
    "Transport",
    "TransportError",
    "split_base_url",
]


@dataclass(slots=True)
class Response:
    status: int
    content: bytes
    headers: Mapping[str, str] = field(default_factory=dict)


class TransportError(Exception):
    """No usable HTTP reply: ``code`` is connect_error, server_disconnected or timeout."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class Transport(Protocol):
    async def request(self, method: str, path: str, body: bytes | None = None) -> Response:
        """Send one request. ``path`` starting with ``/v1`` or not is taken relative to the
        server root, e.g. ``/v1/completions``, ``/health``, ``/tokenize``."""
        ...

    async def aclose(self) -> None: ...


def split_base_url(base_url: str) -> tuple[str, str]:
    """``http://h:8000/v1`` -> (root ``http://h:8000``, API prefix ``/v1``).

    vLLM serves the OpenAI routes under ``/v1`` but ``/health``, ``/tokenize`` and ``/metrics``
    at the root, so both are needed. A URL given without ``/v1`` gets it.
    """
    url = base_url.rstrip("/")
    if not url.startswith(("http://", "https://")):
        raise ValueError(f"base URL must start with http:// or https://, got {base_url!r}")
    if url.endswith("/v1"):
        return url[: -len("/v1")], "/v1"
    return url, "/v1"


class AiohttpTransport:
    """One ``aiohttp.ClientSession`` shared by all workers; created lazily inside the loop."""

    def __init__(
        self,
        base_url: str,
        api_key: str | None = None,
        timeout_s: float = 600.0,
        connect_timeout_s: float = 30.0,
    ) -> None:
        self.root, self.api_prefix = split_base_url(base_url)
        self._headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if api_key:
            self._headers["Authorization"] = f"Bearer {api_key}"
        self._timeout = aiohttp.ClientTimeout(total=timeout_s, sock_connect=connect_timeout_s)
        self._session: aiohttp.ClientSession | None = None

    def __repr__(self) -> str:  # never show the key
        return f"AiohttpTransport({self.root}{self.api_prefix!s})"

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
                return Response(resp.status, content, resp.headers)
        except TimeoutError:
            raise TransportError("timeout", f"no reply within {self._timeout.total}s") from None
        except aiohttp.ClientConnectorError as exc:
            message = f"cannot connect to {self.root}: {exc.os_error}"
            raise TransportError("connect_error", message) from None
        except (aiohttp.ServerDisconnectedError, aiohttp.ClientPayloadError) as exc:
            raise TransportError("server_disconnected", str(exc) or type(exc).__name__) from None
        except (aiohttp.ClientError, OSError) as exc:
            raise TransportError("server_disconnected", f"{type(exc).__name__}: {exc}") from None

    async def aclose(self) -> None:
        if self._session is not None and not self._session.closed:
            await self._session.close()


class ReplicaTransport:
    """Several servers of the same model behind one transport: each generation request goes to
    the replica with the fewest requests in flight; ``/metrics`` reads all of them (their lines
    concatenated, so the load sums); other calls go to the first."""

    def __init__(self, transports: list[AiohttpTransport]) -> None:
        if not transports:
            raise ValueError("at least one transport")
        self.transports = transports
        self.api_prefix = transports[0].api_prefix
        self._in_flight = [0] * len(transports)

    def __repr__(self) -> str:
        return f"ReplicaTransport({', '.join(map(repr, self.transports))})"

    async def request(self, method: str, path: str, body: bytes | None = None) -> Response:
        if path == "/metrics":
            replies = await asyncio.gather(
                *(t.request(method, path, body) for t in self.transports), return_exceptions=True
            )
            texts = [r.content for r in replies if isinstance(r, Response) and r.status == 200]
            return Response(200 if texts else 503, b"\n".join(texts))
        if method != "POST" or path == "/tokenize":
            return await self.transports[0].request(method, path, body)
        counts = self._in_flight
        i = counts.index(min(counts))
        counts[i] += 1
        try:
            return await self.transports[i].request(method, path, body)
        finally:
            counts[i] -= 1

    async def aclose(self) -> None:
        for transport in self.transports:
            await transport.aclose()


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
