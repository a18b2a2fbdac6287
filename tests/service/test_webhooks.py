"""Completion webhooks: Standard Webhooks signatures (the spec's own test vector), retries
with back-off, and the events a service sends when batches end."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from helpers import ServerProcess

from service.apiproc import batch_lines, upload, wait_done, write_lines
from service.conftest import StartApi
from vbatch import RetryPolicy, StopAfterAttempt
from vbatch._service.webhooks import Webhooks, sign

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"


def test_signature_matches_the_standard_webhooks_test_vector() -> None:
    signature = sign(SECRET, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330,
                     b'{"test": 2432232314}')  # fmt: skip
    assert signature == "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="


def _verify(headers: dict[str, str], body: bytes) -> bool:
    """A receiver's check, as the spec describes it."""
    key = base64.b64decode(SECRET.removeprefix("whsec_"))
    signed = f"{headers['webhook-id']}.{headers['webhook-timestamp']}.".encode() + body
    expected = base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()
    return any(part == f"v1,{expected}" for part in headers["webhook-signature"].split())


class Receiver:
    """An HTTP endpoint in its own thread that records what it is sent; it answers 500 to
    the first ``fail_first`` posts."""

    def __init__(self, fail_first: int = 0) -> None:
        self.fail_first = fail_first
        self.received: list[tuple[dict[str, str], bytes]] = []
        self.url = ""
        self._loop = asyncio.new_event_loop()
        self._started = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        app = web.Application()
        app.router.add_post("/hook", self._hook)
        runner = web.AppRunner(app)
        self._loop.run_until_complete(runner.setup())
        site = web.TCPSite(runner, "127.0.0.1", 0)
        self._loop.run_until_complete(site.start())
        port = runner.addresses[0][1]
        self.url = f"http://127.0.0.1:{port}/hook"
        self._started.set()
        self._loop.run_forever()
        self._loop.run_until_complete(runner.cleanup())

    async def _hook(self, request: web.Request) -> web.Response:
        self.received.append((dict(request.headers), await request.read()))
        if len(self.received) <= self.fail_first:
            return web.Response(status=500)
        return web.Response(status=204)

    def __enter__(self) -> Receiver:
        self._thread.start()
        self._started.wait(10)
        return self

    def __exit__(self, *exc: object) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    def events(self) -> list[dict[str, Any]]:
        return [json.loads(body) for _, body in self.received]


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with Receiver(fail_first=2) as r:
        yield r


async def test_an_event_is_retried_with_back_off_until_taken(receiver: Receiver) -> None:
    delays: list[float] = []

    async def sleep(seconds: float) -> None:
        delays.append(seconds)

    policy = RetryPolicy(stop=StopAfterAttempt(5), wait=lambda n: 2.0**n, sleep=sleep)
    hooks = Webhooks(receiver.url, SECRET, policy)
    hooks.notify({"id": "batch_1", "status": "completed"})
    hooks.notify({"id": "batch_2", "status": "in_progress"})  # not an event
    deadline = time.monotonic() + 10
    while hooks.delivered < 1:
        assert time.monotonic() < deadline
        await asyncio.sleep(0.01)
    assert delays == [2.0, 4.0]  # two 500s, then taken
    assert len(receiver.received) == 3
    assert len({headers["webhook-id"] for headers, _ in receiver.received}) == 1
    assert all(_verify(headers, body) for headers, body in receiver.received)
    event = receiver.events()[-1]
    assert event["type"] == "batch.completed" and event["data"] == {"id": "batch_1"}


def test_the_service_sends_signed_events_when_batches_end(
    start_api: StartApi, server_process: ServerProcess, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    with Receiver() as hook:
        monkeypatch.setenv("VBATCH_WEBHOOK_SECRET", SECRET)
        api = start_api("--webhook-url", hook.url, "--concurrency", "2")
        client = api.client()
        done = client.batches.create(
            input_file_id=upload(client, write_lines(tmp_path / "a.jsonl", batch_lines(3))),
            endpoint="/v1/chat/completions", completion_window="24h")  # fmt: skip
        assert wait_done(client, done.id).status == "completed"
        server_process.control(latency=0.5)
        stopped = client.batches.create(
            input_file_id=upload(client, write_lines(tmp_path / "b.jsonl", batch_lines(50))),
            endpoint="/v1/chat/completions", completion_window="24h")  # fmt: skip
        client.batches.cancel(stopped.id)
        assert wait_done(client, stopped.id).status == "cancelled"
        deadline = time.monotonic() + 20
        while len(hook.received) < 2:
            assert time.monotonic() < deadline, hook.received
            time.sleep(0.05)
        events = {e["data"]["id"]: e["type"] for e in hook.events()}
        assert events == {done.id: "batch.completed", stopped.id: "batch.cancelled"}
        assert all(_verify(headers, body) for headers, body in hook.received)
        assert SECRET not in api.log()
