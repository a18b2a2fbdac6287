"""Retry policy: exact backoff with injected randomness, stop rules, Retry-After parsing."""

from __future__ import annotations

import random

from vbatch import RetryPolicy, StopAfterAttempt, StopAfterDelay, WaitExponentialJitter
from vbatch._client.retry import RETRYABLE_STATUSES, parse_retry_after


def test_exponential_backoff_without_jitter_is_exact() -> None:
    wait = WaitExponentialJitter(initial_s=0.5, base=2.0, max_s=4.0, jitter_s=0.0)
    assert [wait(a) for a in range(1, 7)] == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]


def test_jitter_comes_from_the_injected_rng() -> None:
    wait = WaitExponentialJitter(initial_s=1.0, jitter_s=1.0, rng=random.Random(7))
    expected = random.Random(7).uniform(0, 1.0)
    assert wait(1) == 1.0 + expected


def test_policy_stops_after_max_attempts() -> None:
    policy = RetryPolicy(stop=StopAfterAttempt(3), wait=lambda a: float(a))
    assert policy.next_delay(1, 0.0) == 1.0
    assert policy.next_delay(2, 0.0) == 2.0
    assert policy.next_delay(3, 0.0) is None


def test_stops_combine_with_or() -> None:
    stop = StopAfterAttempt(10) | StopAfterDelay(5.0)
    assert not stop(2, 4.9)
    assert stop(2, 5.0)
    assert stop(10, 0.0)


def test_retry_after_wins_when_longer_and_is_capped() -> None:
    policy = RetryPolicy(wait=lambda a: 1.0, max_retry_after_s=30.0)
    assert policy.next_delay(1, 0.0, retry_after_s=7.0) == 7.0
    assert policy.next_delay(1, 0.0, retry_after_s=0.2) == 1.0
    assert policy.next_delay(1, 0.0, retry_after_s=999.0) == 30.0


def test_parse_retry_after_seconds_and_http_date() -> None:
    assert parse_retry_after({"Retry-After": "3"}) == 3.0
    assert parse_retry_after({"retry-after": "1.5"}) == 1.5
    assert parse_retry_after({}) is None
    assert parse_retry_after({"Retry-After": "soon"}) is None
    date = "Wed, 21 Oct 2015 07:28:10 GMT"
    assert parse_retry_after({"Retry-After": date}, now=1445412480.0) == 10.0


def test_retryable_statuses() -> None:
    for status in (408, 409, 429, 500, 502, 503, 504):
        assert status in RETRYABLE_STATUSES
    for status in (400, 401, 403, 404, 422):
        assert status not in RETRYABLE_STATUSES
