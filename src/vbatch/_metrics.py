"""Reading vLLM's load from its Prometheus ``/metrics`` and sizing the window from it.

vLLM reports, per engine, ``vllm:num_requests_running`` (sequences in the batch) and
``vllm:num_requests_waiting`` (accepted, not yet scheduled). A batch job wants the batch full at
every step, so a few requests should always be waiting; many waiting means the client holds
more open requests than the server can use. ``next_window`` grows the window while the server
takes everything it is sent, and trims it to the running batch plus a margin once a queue forms.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["ServerLoad", "next_window", "parse_metrics"]

_RUNNING = "vllm:num_requests_running"
_WAITING = "vllm:num_requests_waiting"
_KV = "vllm:kv_cache_usage_perc"


@dataclass(frozen=True)
class ServerLoad:
    running: int
    waiting: int
    kv_cache_usage: float | None = None  # 0..1, the fullest engine's


def parse_metrics(text: str) -> ServerLoad | None:
    """The load summed over engines (and replicas' models), or None if these are not vLLM's."""
    running = waiting = 0.0
    kv: float | None = None
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
        elif name == _KV:
            kv = value if kv is None else max(kv, value)
    if not seen:
        return None
    return ServerLoad(int(running), int(waiting), kv)


def next_window(window: int, in_flight: int, load: ServerLoad, max_window: int) -> int:
    """The window for the next interval, given what the server reports now."""
    queue_target = max(32, load.running // 4)
    if load.waiting > 2 * queue_target:
        # The server is saturated and our surplus only waits: keep its batch plus a margin.
        return max(queue_target, load.running + queue_target)
    if load.waiting == 0 and in_flight >= 0.9 * window:
        # Everything we send is running at once: the server could take more.
        return min(max_window, max(window + 16, int(window * 1.5)))
    return window
