"""The fleet seam: what the client needs of whoever holds the servers.

A fleet starts its servers (the dispatcher starts it in the background and waits for it before
the first send, so a job reads its input meanwhile), lists the base URLs of those that can take
requests *now*, watches them, and stops them. The transport asks for that list as it sends, so a
member may join or leave while a job runs. When a request fails without a reply, the sender asks
the fleet whether that member is down (``suspect``): if it is, the row goes back to be sent
elsewhere without being charged an attempt, and waits (``wait_up``) while no member is up.
``StaticFleet`` is a list of servers someone else runs; ``LocalFleet`` starts vLLM on this
machine and restarts it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from .._errors import ConfigError

__all__ = ["API_PREFIX", "Fleet", "FleetStatus", "ServerState", "base_urls", "split_base_url"]

# Where vLLM (and every OpenAI-compatible server) serves the OpenAI routes, below the root.
API_PREFIX = "/v1"


@dataclass(frozen=True)
class ServerState:
    """One member, as the Batch API's status page lists them."""

    url: str
    up: bool
    restarts: int = 0


@dataclass(frozen=True)
class FleetStatus:
    """What progress and the run's summary show of a fleet."""

    members: int  # servers the fleet holds
    up: int  # of them, taking requests now
    restarts: int = 0  # servers restarted so far
    failure: str | None = None  # why the fleet gave up, once it has
    servers: tuple[ServerState, ...] = ()  # each member, where the fleet tells them
    restart_reasons: tuple[str, ...] = ()  # why the last restarts happened, oldest first


class Fleet(Protocol):
    async def start(self) -> None:
        """Return once requests can be sent (at least one member is up)."""
        ...

    def endpoints(self) -> Sequence[str]:
        """Base URLs (``http://host:port/v1``) of the members that can take requests now. The
        same sequence object is returned until the membership changes (callers cache on it)."""
        ...

    async def suspect(self, url: str) -> bool:
        """A request to ``url`` got no reply: look at that member now. True when it is down
        (it is then out of ``endpoints()`` until it is back)."""
        ...

    async def wait_up(self) -> None:
        """Return once a member is up; ``FleetError`` when none will be."""
        ...

    async def models(self) -> Mapping[str, int | None] | None:
        """What the members will serve (model name -> its ``max_model_len``) when the fleet
        knows it before they are up, because it starts them (as soon as its plan is final);
        None: ask them. Knowing it lets a job check its input while the servers start."""
        ...

    def status(self) -> FleetStatus: ...

    async def stop(self) -> None:
        """Stop whatever the fleet started; a no-op for servers it does not own."""
        ...


def split_base_url(base_url: str) -> tuple[str, str]:
    """``http://h:8000/v1`` -> (root ``http://h:8000``, API prefix ``/v1``).

    vLLM serves the OpenAI routes under ``/v1`` but ``/health``, ``/tokenize`` and ``/metrics``
    at the root, so both are needed. A URL given without ``/v1`` gets it.
    """
    url = base_url.rstrip("/")
    if not url.startswith(("http://", "https://")):
        raise ConfigError(f"base URL must start with http:// or https://, got {base_url!r}")
    if url.endswith(API_PREFIX):
        return url[: -len(API_PREFIX)], API_PREFIX
    return url, API_PREFIX


def base_urls(value: str | Sequence[str]) -> list[str]:
    """Server URLs given once each, comma-separated or both (``--base-url a,b --base-url c``)."""
    items = [value] if isinstance(value, str) else list(value)
    return [url.strip() for item in items for url in item.split(",") if url.strip()]
