"""One request to its end: send, let ``classify`` decide, act (return, shorten, wait and retry).

The loop is small on purpose (after tenacity): what a reply means is ``classify``'s, when to
stop and how long to wait is the ``RetryPolicy``'s, how much room is left for output is
``room_for_output``'s. A failure is never raised: it becomes the row's ``Result``. A reply to a
request with a schema is checked against it (``Schema.check``); one cut off by max_tokens goes
again with a larger one where the job's policy says so (``resend_size``), and if that fails the
cut-off reply stands.

With a fleet, a request that got no reply (or a 5xx) is not simply charged an attempt: the
fleet is asked whether that server is down (``suspect``). If it is, the server went away under
the row, which is not the row's doing: no attempt is charged, and the row waits for a member
that is up and goes again (``FleetError`` ends the wait when none will be).
"""

from __future__ import annotations

import time
from typing import Any

import orjson

from .._config import OverflowPolicy
from .._errors import TransportError
from .._fleet.base import API_PREFIX, Fleet
from .._models import CHAT, PreparedRequest, Result, body_texts
from .._schema import resend_size
from .classify import Outcome, classify
from .overflow import room_for_output
from .retry import RetryPolicy
from .server_info import ServerInfo
from .stats import Stats
from .transport import Response, Transport

__all__ = ["Sender"]


class Sender:
    def __init__(
        self,
        transport: Transport,
        retry: RetryPolicy,
        server: ServerInfo,
        fleet: Fleet | None = None,
    ) -> None:
        self.transport = transport
        self.fleet = fleet
        self.retry = retry
        self.server = server
        self.in_flight = 0  # requests on the wire now, over all jobs (the window watches it)

    async def send(
        self,
        request: PreparedRequest,
        stats: Stats | None = None,
        on_overflow: OverflowPolicy = "error",
    ) -> Result:
        result = await self._attempts(request, request.body, stats, on_overflow)
        schema = request.schema
        if schema is None:
            return result
        body = request.body
        while result.error is None:
            assert result.body is not None
            checked = schema.check(*body_texts(result.body, request.endpoint == CHAT))
            result.checked = checked
            larger = resend_size(checked, body, schema)
            if larger is None:
                break
            body = {**body, "max_tokens": larger}
            body.pop("max_completion_tokens", None)
            again = await self._attempts(request, body, stats, on_overflow)
            again.attempts += result.attempts
            again.latency_s += result.latency_s
            if again.error is not None:
                break  # the cut-off reply stands
            result = again
        return result

    async def _attempts(
        self,
        request: PreparedRequest,
        body: dict[str, Any],
        stats: Stats | None,
        on_overflow: OverflowPolicy,
    ) -> Result:
        """``body`` sent until it succeeds or the policy gives up."""
        policy = self.retry
        clock = policy.clock
        start = clock()
        payload = orjson.dumps(body)
        path = API_PREFIX + request.endpoint
        clamped: int | None = None  # the max_tokens we lowered the request's to
        attempt = 0
        while True:
            attempt += 1
            reply: Response | TransportError
            self.in_flight += 1
            if stats is not None:
                stats.in_flight += 1
            try:
                reply = await self.transport.request("POST", path, payload)
            except TransportError as exc:
                reply = exc
            finally:
                self.in_flight -= 1
                if stats is not None:
                    stats.in_flight -= 1
            outcome = classify(reply, body, self.server.max_model_len, policy.retry_statuses)
            if (
                outcome.error is not None  # successes pay one check, nothing more
                and self.fleet is not None
                and _server_failure(reply)
                and await self._server_went_away(reply.endpoint, stats)
            ):
                attempt -= 1
                continue
            if outcome.error is None:
                clamped = clamped if clamped is not None else outcome.shortened_to
                return self._result(request, outcome, attempt, clock() - start, clamped)
            if outcome.overflow is not None and on_overflow == "clamp" and clamped is None:
                fit = await room_for_output(request, outcome.overflow, self.server, self.transport)
                if fit is not None:
                    clamped = fit
                    body = {**body, "max_tokens": fit}
                    body.pop("max_completion_tokens", None)
                    payload = orjson.dumps(body)
                    continue
            delay = None
            if outcome.retryable:
                delay = policy.next_delay(attempt, clock() - start, outcome.retry_after_s)
            if delay is None:
                return self._result(request, outcome, attempt, clock() - start, clamped)
            if stats is not None:
                stats.retries += 1
                stats.retrying += 1
                stats.backoff_until = max(stats.backoff_until, time.monotonic() + delay)
            try:
                await policy.sleep(delay)
            finally:
                if stats is not None:
                    stats.retrying -= 1

    async def _server_went_away(self, endpoint: str | None, stats: Stats | None) -> bool:
        """Whether the server at ``endpoint`` is down (or, None, none was up to send to): then
        wait until one is up, and the row goes again uncharged."""
        fleet = self.fleet
        if fleet is None:
            return False
        if endpoint is not None and not await fleet.suspect(endpoint):
            return False  # the server is fine: this request's own failure, charged as usual
        if stats is not None:
            stats.requeued += 1
        await fleet.wait_up()
        return True

    @staticmethod
    def _result(
        request: PreparedRequest, outcome: Outcome, attempts: int, latency_s: float,
        clamped: int | None,
    ) -> Result:  # fmt: skip
        request_id = outcome.body.get("id") if outcome.error is None and outcome.body else None
        return Result(
            request.index, request.id, request.endpoint, outcome.status, outcome.body,
            outcome.error, attempts, latency_s, request_id, clamped,
        )  # fmt: skip


def _server_failure(reply: Response | TransportError) -> bool:
    """No reply, or a 5xx from a known server: what a server that is dying gives (vLLM answers
    its in-flight requests with a 500 once its engine is dead, then goes). Worth asking the
    fleet about."""
    if isinstance(reply, TransportError):
        return True
    return reply.status >= 500 and reply.endpoint is not None
