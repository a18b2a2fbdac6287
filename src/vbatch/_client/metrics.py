"""Reading vLLM's load from its Prometheus ``/metrics``, and watching it while a job runs.

vLLM reports, per engine, ``vllm:num_requests_running`` (sequences in the batch),
``vllm:num_requests_waiting`` (accepted, not yet scheduled) and
``vllm:generation_tokens_total`` (output tokens generated since it started); several engines or
replicas sum.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass

from .._config import MONITOR_INTERVAL_S
from .._errors import TransportError
from .._tasks import cancel_and_wait
from .transport import Transport

__all__ = ["LoadMonitor", "ServerLoad", "parse_metrics"]

_RUNNING = "vllm:num_requests_running"
_WAITING = "vllm:num_requests_waiting"
_GENERATED = "vllm:generation_tokens_total"


@dataclass(frozen=True)
class ServerLoad:
    running: int
    waiting: int
    generation_tokens: float | None = None  # output tokens generated since the server started


def parse_metrics(text: str) -> ServerLoad | None:
    """The load summed over engines (and replicas' models), or None if these are not vLLM's."""
    running = waiting = 0.0
    generated: float | None = None
    seen = False
    for line in text.splitlines():
        if not line.startswith("vllm:"):
            continue
        name = line.split("{", 1)[0].split(" ", 1)[0]
        try:
            value = float(line.rsplit(" ", 1)[1])
        except (IndexError, ValueError):
            continue
        if name == _RUNNING:
            running += value
            seen = True
        elif name == _WAITING:
            waiting += value
        elif name == _GENERATED:
            generated = (generated or 0.0) + value
    if not seen:
        return None
    return ServerLoad(int(running), int(waiting), generated)


class LoadMonitor:
    """Reads the server's ``/metrics`` every ``interval_s``, keeps the last load and hands each
    new one to ``on_load``. A server without vLLM's metrics (three answers in a row that are not
    vLLM's) is simply not watched any more; no answer at all (no server up right now, one
    restarting) is only a look missed."""

    def __init__(
        self,
        transport: Transport,
        on_load: Callable[[ServerLoad], None] | None = None,
        interval_s: float = MONITOR_INTERVAL_S,
    ) -> None:
        self.transport = transport
        self.on_load = on_load
        self.interval_s = interval_s
        self.load: ServerLoad | None = None  # the last reported, when known
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._watch())

    async def aclose(self) -> None:
        await cancel_and_wait(self._task)
        self._task = None

    async def _watch(self) -> None:
        misses = 0
        while misses < 3:
            await asyncio.sleep(self.interval_s)
            try:
                response = await self.transport.request("GET", "/metrics")
            except TransportError:
                continue
            load = None
            if response.status == 200:
                load = parse_metrics(response.content.decode("utf-8", "replace"))
            if load is None:
                misses += 1
                continue
            misses = 0
            self.load = load
            if self.on_load is not None:
                self.on_load(load)
