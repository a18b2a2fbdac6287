"""Servers someone else runs, given by URL: always all members, nothing to start or stop."""

from __future__ import annotations

from collections.abc import Sequence

from .._errors import ConfigError
from .base import split_base_url

__all__ = ["StaticFleet"]


class StaticFleet:
    def __init__(self, base_urls: str | Sequence[str]) -> None:
        urls = [base_urls] if isinstance(base_urls, str) else list(base_urls)
        if not urls:
            raise ConfigError("at least one base URL")
        # Checked here, so a bad URL is refused before the job starts.
        self._urls = tuple("".join(split_base_url(url)) for url in urls)

    def __repr__(self) -> str:
        return f"StaticFleet({', '.join(self._urls)})"

    async def start(self) -> None:
        pass

    def endpoints(self) -> Sequence[str]:
        return self._urls

    async def stop(self) -> None:
        pass
