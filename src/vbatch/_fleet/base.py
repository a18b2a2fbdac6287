"""The fleet seam: what the client needs of whoever holds the servers.

A fleet starts its servers, lists the base URLs of those that can take requests *now*, and stops
them. The transport asks for that list as it sends, so a member may join or leave while a job
runs. ``StaticFleet`` is a fixed list of servers someone else runs; ``LocalFleet`` starts vLLM
on this machine.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from .._errors import ConfigError

__all__ = ["API_PREFIX", "Fleet", "split_base_url"]

# Where vLLM (and every OpenAI-compatible server) serves the OpenAI routes, below the root.
API_PREFIX = "/v1"


class Fleet(Protocol):
    async def start(self) -> None:
        """Return once requests can be sent (at least one member is up)."""
        ...

    def endpoints(self) -> Sequence[str]:
        """Base URLs (``http://host:port/v1``) of the members that can take requests now. The
        same sequence object is returned until the membership changes (callers cache on it)."""
        ...

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
