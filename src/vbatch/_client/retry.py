"""Retry policy as small composable parts, after tenacity: when to stop, how long to wait.

Sleep, clock and the jitter's random source are injectable, so tests assert exact delays
without waiting.
"""

from __future__ import annotations

import asyncio
import email.utils
import random
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field

from .._config import DEFAULT_MAX_ATTEMPTS

__all__ = [
    "RETRYABLE_STATUSES",
    "RetryPolicy",
    "StopAfterAttempt",
    "StopAfterDelay",
    "WaitExponentialJitter",
    "parse_retry_after",
]

# 408 request timeout, 409 conflict, 429 rate limited, and every 5xx: the server may succeed later.
RETRYABLE_STATUSES = frozenset({408, 409, 429, *range(500, 600)})


class Stop:
    """Decides, after a failed attempt, whether to give up."""

    def __call__(self, attempt: int, elapsed_s: float) -> bool:
        raise NotImplementedError

    def __or__(self, other: Stop) -> Stop:
        return _StopAny((self, other))


@dataclass(frozen=True)
class _StopAny(Stop):
    parts: tuple[Stop, ...]

    def __call__(self, attempt: int, elapsed_s: float) -> bool:
        return any(p(attempt, elapsed_s) for p in self.parts)


@dataclass(frozen=True)
class StopAfterAttempt(Stop):
    max_attempts: int

    def __call__(self, attempt: int, elapsed_s: float) -> bool:
        return attempt >= self.max_attempts


@dataclass(frozen=True)
class StopAfterDelay(Stop):
    max_delay_s: float

    def __call__(self, attempt: int, elapsed_s: float) -> bool:
        return elapsed_s >= self.max_delay_s


@dataclass(frozen=True)
class WaitExponentialJitter:
    """``initial * base**(attempt-1)`` capped at ``max_s``, plus up to ``jitter_s`` of noise.

    The jitter spreads a burst of retries (e.g. after a server restart) so they do not all land
    in the same instant.
    """

    initial_s: float = 0.5
    base: float = 2.0
    max_s: float = 30.0
    jitter_s: float = 0.5
    rng: random.Random = field(default_factory=random.Random, compare=False)

    def __call__(self, attempt: int) -> float:
        delay = min(self.max_s, self.initial_s * self.base ** (attempt - 1))
        return delay + self.rng.uniform(0, self.jitter_s) if self.jitter_s else delay


def parse_retry_after(headers: Mapping[str, str], now: float | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delta-seconds or an HTTP date)."""
    value = headers.get("Retry-After") or headers.get("retry-after")
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


@dataclass(frozen=True)
class RetryPolicy:
    """What a failed attempt leads to.

    ``next_delay`` returns the seconds to sleep before the next attempt, or ``None`` to give up.
    A server's ``Retry-After`` is honoured (up to ``max_retry_after_s``) when longer than the
    computed backoff.
    """

    stop: Stop = field(default_factory=lambda: StopAfterAttempt(DEFAULT_MAX_ATTEMPTS))
    wait: Callable[[int], float] = field(default_factory=WaitExponentialJitter)
    retry_statuses: frozenset[int] = RETRYABLE_STATUSES
    max_retry_after_s: float = 300.0
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep
    clock: Callable[[], float] = time.monotonic

    @classmethod
    def default(cls, max_attempts: int = DEFAULT_MAX_ATTEMPTS) -> RetryPolicy:
        return cls(stop=StopAfterAttempt(max_attempts))

    def is_retryable_status(self, status: int) -> bool:
        return status in self.retry_statuses

    def next_delay(
        self, attempt: int, elapsed_s: float, retry_after_s: float | None = None
    ) -> float | None:
        if self.stop(attempt, elapsed_s):
            return None
        delay = self.wait(attempt)
        if retry_after_s is not None:
            delay = max(delay, min(retry_after_s, self.max_retry_after_s))
        return delay
