"""What the server serves, asked once: ``GET /v1/models`` gives the model names and, from vLLM,
each one's ``max_model_len``. The job uses it to default the model and to notice replies the
server shortened to fit; overflow handling uses it to know the room left. A fleet that started
the servers knows the answer before they are up (``known``); otherwise the servers are asked."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping

import orjson

from .._errors import TransportError
from .._fleet.base import API_PREFIX
from .transport import Transport

__all__ = ["ServerInfo"]


class ServerInfo:
    def __init__(
        self,
        transport: Transport,
        known: Callable[[], Awaitable[Mapping[str, int | None] | None]] | None = None,
    ) -> None:
        self._transport = transport
        self._known = known
        self._served: dict[str, int | None] | None = None
        self._adapters: set[str] = set()  # served names that are LoRA adapters (a ``parent``)
        # The context size of the model being sent to, once known; lets a reply that the server
        # shortened to fit be marked as clamped.
        self.max_model_len: int | None = None

    async def served(self) -> dict[str, int | None]:
        """Model name -> its max_model_len (None where not told), in the server's order. Asked
        once; ``TransportError`` when the list cannot be had (then asked again next time)."""
        if self._served is None and self._known is not None:
            known = await self._known()
            if known is not None:
                self._served = dict(known)
        if self._served is None:
            response = await self._transport.request("GET", API_PREFIX + "/models")
            try:
                models = orjson.loads(response.content)["data"]
                served = {m["id"]: m.get("max_model_len") for m in models}
                self._adapters = {m["id"] for m in models if m.get("parent")}
            except (orjson.JSONDecodeError, KeyError, TypeError) as exc:
                raise TransportError(
                    "malformed_response", f"GET /v1/models gave no model list ({exc!r})"
                ) from None
            self._served = {k: v if isinstance(v, int) else None for k, v in served.items()}
        return self._served

    async def models(self) -> list[str]:
        """The served models that are not adapters of another (vLLM lists a LoRA adapter with
        its model as ``parent``): what a row naming no model can go to."""
        return [name for name in await self.served() if name not in self._adapters]

    async def use(self, model: str | None) -> None:
        """Requests will go to ``model``: take its context size, when the server says it."""
        served = await self.served()
        if model in served:
            self.max_model_len = served[model]

    async def context_size(self) -> int | None:
        """The context size to fit requests into: the model's in use, else the server's first."""
        if self.max_model_len is None:
            try:
                served = await self.served()
            except TransportError:
                return None
            self.max_model_len = next(iter(served.values()), None)
        return self.max_model_len
