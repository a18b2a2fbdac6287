"""Completion webhooks: ``batch.completed|failed|expired|cancelled`` events POSTed to one URL,
signed the Standard Webhooks way and retried with the core's back-off (``RetryPolicy``).

Signing: ``webhook-signature: v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{body}">`` with
the secret's bytes (a ``whsec_`` secret is base64 after its prefix, as Standard Webhooks
libraries take it; any other string is used as is). The secret is never logged.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import logging
import secrets
import time
from typing import Any

import aiohttp
import orjson

from .._client.retry import RetryPolicy, StopAfterAttempt, WaitExponentialJitter

__all__ = ["EVENTS", "Webhooks", "sign"]

log = logging.getLogger("vbatch.api")
EVENTS = {"completed", "failed", "expired", "cancelled"}
TIMEOUT_S = 10.0


def _key(secret: str) -> bytes:
    if secret.startswith("whsec_"):
        return base64.b64decode(secret.removeprefix("whsec_"))
    return secret.encode()


def sign(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    signed = f"{msg_id}.{timestamp}.".encode() + body
    digest = hmac.new(_key(secret), signed, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def default_policy() -> RetryPolicy:
    # About 4 minutes of tries: 1, 2, 4, ... 60 s apart.
    wait = WaitExponentialJitter(initial_s=1.0, max_s=60.0, jitter_s=0.5)
    return RetryPolicy(stop=StopAfterAttempt(8), wait=wait)


class Webhooks:
    """Sends each event in its own task; ``aclose`` waits for none (a pending event of a
    service that stops is dropped)."""

    def __init__(self, url: str, secret: str | None, policy: RetryPolicy | None = None) -> None:
        self.url = url
        self._secret = secret
        self.policy = policy or default_policy()
        self._tasks: set[asyncio.Task[None]] = set()
        self.delivered = 0

    def notify(self, batch: dict[str, Any]) -> None:
        if batch["status"] not in EVENTS:
            return
        event = {
            "object": "event",
            "id": "evt_" + secrets.token_hex(12),
            "type": f"batch.{batch['status']}",
            "created_at": int(time.time()),
            "data": {"id": batch["id"]},
        }
        task = asyncio.create_task(self._deliver(event))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def headers(self, msg_id: str, timestamp: int, body: bytes) -> dict[str, str]:
        headers = {"content-type": "application/json", "webhook-id": msg_id,
                   "webhook-timestamp": str(timestamp)}  # fmt: skip
        if self._secret is not None:
            headers["webhook-signature"] = sign(self._secret, msg_id, timestamp, body)
        return headers

    async def _deliver(self, event: dict[str, Any]) -> None:
        body = orjson.dumps(event)
        started = time.monotonic()
        attempt = 0
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=TIMEOUT_S)) as s:
            while True:
                attempt += 1
                # The same id on every try (receivers deduplicate on it), a fresh timestamp.
                headers = self.headers(event["id"], int(time.time()), body)
                try:
                    async with s.post(self.url, data=body, headers=headers) as reply:
                        if 200 <= reply.status < 300:
                            self.delivered += 1
                            return
                        problem = f"HTTP {reply.status}"
                except (aiohttp.ClientError, TimeoutError) as exc:
                    problem = type(exc).__name__
                delay = self.policy.next_delay(attempt, time.monotonic() - started)
                if delay is None:
                    log.warning("webhook %s for %s not delivered (%s)", event["type"],
                                event["data"]["id"], problem)  # fmt: skip
                    return
                await self.policy.sleep(delay)

    async def aclose(self) -> None:
        for task in list(self._tasks):
            task.cancel()
