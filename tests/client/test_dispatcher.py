"""The dispatcher against a MockTransport: exact retry delays, window bound, clamping."""

from __future__ import annotations

import asyncio
import contextlib
import random

import orjson

from vbatch import (
    Dispatcher,
    MockTransport,
    PreparedRequest,
    Response,
    RetryPolicy,
    StopAfterAttempt,
    TransportError,
    WaitExponentialJitter,
)
from vbatch._client.stats import Stats
from vbatch._models import COMPLETIONS, Result

OK = orjson.dumps(
    {"id": "c", "choices": [{"index": 0, "text": "t"}], "usage": {"completion_tokens": 1}}
)


def req(i: int = 0, **body: object) -> PreparedRequest:
    return PreparedRequest(i, f"r{i}", COMPLETIONS, {"model": "m", "prompt": "p", **body})


def recording_policy(max_attempts: int = 5) -> tuple[RetryPolicy, list[float]]:
    delays: list[float] = []

    async def sleep(seconds: float) -> None:
        delays.append(seconds)

    wait = WaitExponentialJitter(initial_s=1.0, base=2.0, max_s=8.0, jitter_s=0.0)
    return RetryPolicy(stop=StopAfterAttempt(max_attempts), wait=wait, sleep=sleep), delays


async def test_exact_backoff_and_retry_after() -> None:
    replies = iter(
        [
            Response(503, b"{}"),
            TransportError("server_disconnected", "gone"),
            Response(429, b"{}", {"Retry-After": "20"}),
            Response(500, b"oops"),
            Response(200, OK),
        ]
    )

    def handler(method: str, path: str, body: bytes | None) -> Response:
        reply = next(replies)
        if isinstance(reply, Exception):
            raise reply
        return reply

    policy, delays = recording_policy()
    async with Dispatcher(MockTransport(handler), concurrency=1, retry=policy) as d:
        result = await d.execute(req())
    assert result.ok and result.attempts == 5
    assert delays == [1.0, 2.0, 20.0, 8.0]


async def test_gives_up_after_max_attempts_with_last_error() -> None:
    policy, delays = recording_policy(max_attempts=3)
    transport = MockTransport(lambda m, p, b: Response(502, b"bad gateway"))
    async with Dispatcher(transport, concurrency=1, retry=policy) as d:
        result = await d.execute(req())
    assert not result.ok and result.attempts == 3
    assert result.error is not None and result.error.status == 502
    assert result.error.message == "bad gateway"
    assert delays == [1.0, 2.0]


async def test_window_bounds_in_flight_and_refills() -> None:
    live = peak = 0

    async def handler(method: str, path: str, body: bytes | None) -> Response:
        nonlocal live, peak
        live += 1
        peak = max(peak, live)
        await asyncio.sleep(random.random() / 500)
        live -= 1
        return Response(200, OK)

    async with Dispatcher(MockTransport(handler), concurrency=7) as d:
        results = [r async for r in d.stream(req(i) for i in range(300))]
    assert sorted(r.index for r in results) == list(range(300))
    assert peak == 7


async def test_a_first_wave_then_the_whole_window() -> None:
    """Until the first result is back only ``first_wave`` rows are in flight (a server handed
    the whole window answers none of it before a whole batch); then the window opens."""
    live = peak = 0
    first_back = asyncio.Event()
    peak_before_first = 0

    async def handler(method: str, path: str, body: bytes | None) -> Response:
        nonlocal live, peak, peak_before_first
        live += 1
        peak = max(peak, live)
        if not first_back.is_set():
            peak_before_first = max(peak_before_first, live)
        await asyncio.sleep(0.02 if not first_back.is_set() else random.random() / 500)
        first_back.set()
        live -= 1
        return Response(200, OK)

    async with Dispatcher(MockTransport(handler), concurrency=64, first_wave=4) as d:
        assert d.concurrency == 64  # what it opens to: the reorder buffer's size reads it
        results = [r async for r in d.stream(req(i) for i in range(400))]
    assert len(results) == 400
    assert peak_before_first == 4 and peak == 64


async def test_input_order_with_bounded_reorder_buffer() -> None:
    async def handler(method: str, path: str, body: bytes | None) -> Response:
        await asyncio.sleep(random.random() / 200)
        return Response(200, OK)

    async with Dispatcher(MockTransport(handler), concurrency=8) as d:
        stream = d.stream((req(i) for i in range(200)), ordered=True, reorder_window=10)
        indexes = [r.index async for r in stream]
    assert indexes == list(range(200))


async def test_clamp_learns_room_from_models_and_tokenize() -> None:
    seen: list[dict] = []

    def handler(method: str, path: str, body: bytes | None) -> Response:
        if path == "/v1/models":
            return Response(200, orjson.dumps({"data": [{"id": "m", "max_model_len": 100}]}))
        if path == "/tokenize":
            return Response(200, orjson.dumps({"count": 30}))
        payload = orjson.loads(body or b"{}")
        seen.append(payload)
        if payload["max_tokens"] > 70:
            err = {"error": {"message": "'max_tokens' is too large: 500.", "code": 400}}
            return Response(400, orjson.dumps(err))
        return Response(200, OK)

    async with Dispatcher(MockTransport(handler)) as d:
        result = await d.execute(req(max_tokens=500), on_overflow="clamp")
    assert result.ok and result.clamped_max_tokens == 70
    assert [s["max_tokens"] for s in seen] == [500, 70]


async def test_overflow_error_policy_is_not_retried() -> None:
    msg = (
        "This model's maximum context length is 100 tokens. However, your request has 300 "
        "input tokens."
    )
    body = orjson.dumps({"error": {"message": msg, "type": "BadRequestError", "code": 400}})
    calls = 0

    def handler(method: str, path: str, b: bytes | None) -> Response:
        nonlocal calls
        calls += 1
        return Response(400, body)

    async with Dispatcher(MockTransport(handler)) as d:
        result = await d.execute(req(), on_overflow="clamp")
    assert calls == 1  # prompt alone too long: nothing to clamp to
    assert result.error is not None and result.error.code == "context_length_exceeded"


class _Fleet:
    """A fleet whose members' health the test decides."""

    def __init__(self, down: set[str]) -> None:
        self.down = down
        self.asked: list[str] = []

    async def start(self) -> None:
        pass

    def endpoints(self) -> tuple[str, ...]:
        return ("http://a/v1", "http://b/v1")

    async def suspect(self, url: str) -> bool:
        self.asked.append(url)
        return url in self.down

    async def wait_up(self) -> None:
        pass

    async def models(self) -> None:
        return None

    def status(self) -> object:
        return None

    async def stop(self) -> None:
        pass


async def test_a_5xx_from_a_server_that_died_is_not_charged_but_from_a_live_one_is() -> None:
    from vbatch import Stats

    for down, attempts, retries in ((set(), 2, 1), ({"http://a/v1"}, 1, 0)):
        replies = iter([Response(500, b'{"error": {"message": "EngineDeadError"}}', {},
                                 "http://a/v1"), Response(200, OK, {}, "http://b/v1")])  # fmt: skip
        fleet = _Fleet(down)
        policy, _ = recording_policy()
        stats = Stats()
        transport = MockTransport(lambda m, p, b, replies=replies: next(replies))
        async with Dispatcher(transport, retry=policy, fleet=fleet) as d:  # type: ignore[arg-type]
            result = await d.execute(req(), stats)
        assert result.ok and fleet.asked == ["http://a/v1"]
        assert (result.attempts, stats.retries, stats.requeued) == (attempts, retries, 1 - retries)


async def test_a_cancelled_stream_still_hands_out_the_results_already_back() -> None:
    """Cancelled (a batch's cancel, Ctrl-C) while results wait in its queue, the stream yields
    them before the cancellation goes on, so they are written rather than lost."""
    never = asyncio.Event()

    async def handler(method: str, path: str, body: bytes | None) -> Response:
        if orjson.loads(body or b"{}")["prompt"] not in ("p0", "p1", "p2"):
            await never.wait()  # in flight when the cancellation comes
        return Response(200, OK)

    class CancelOnThird(Stats):
        def record(self, result: Result) -> None:
            super().record(result)
            if self.done == 3:  # before the third reaches the queue
                consumer.cancel()

    got: list[Result] = []

    async def consume(d: Dispatcher) -> None:
        async for result in d.stream((req(i, prompt=f"p{i}") for i in range(10)), CancelOnThird()):
            got.append(result)

    async with Dispatcher(MockTransport(handler), concurrency=5) as d:
        consumer = asyncio.create_task(consume(d))
        with contextlib.suppress(asyncio.CancelledError):
            await consumer
    assert consumer.cancelled()
    assert sorted(r.index for r in got) == [0, 1, 2]
