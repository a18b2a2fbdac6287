"""The dispatcher: a fixed pool of workers keeps up to ``concurrency`` requests in flight.

Rows come from a lazy iterator; a feeder task moves them into a small queue and each worker takes
the next one the moment its previous request completes, so the server's batch is refilled at once
and never in lumps. Live coroutines and memory are O(concurrency), not O(rows). Several jobs may
share one dispatcher (one connection pool, one window): each ``stream()`` call is a job.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from typing import Any

import orjson

from ._metrics import ServerLoad, WindowController, parse_metrics
from ._models import CHAT, ErrorInfo, PreparedRequest, Result
from ._overflow import Overflow, parse_overflow
from ._retry import RetryPolicy, parse_retry_after
from ._stats import Stats
from ._transport import Response, Transport, TransportError

__all__ = ["DEFAULT_CONCURRENCY", "OVERFLOW_POLICIES", "Dispatcher"]

# vLLM's default largest CUDA-graph batch: a bigger step runs without graphs, and a hand-started
# server with default settings gave its best at this window (docs/benchmarks.md, section 2c).
DEFAULT_CONCURRENCY = 512
OVERFLOW_POLICIES = ("error", "clamp")
_DONE = object()


@dataclass(slots=True)
class _Work:
    request: PreparedRequest
    seq: int
    job: _JobStream


class _JobStream:
    """Per-job plumbing: where its results go, and (for input order) its reorder buffer."""

    def __init__(self, stats: Stats, ordered: bool, reorder_window: int, on_overflow: str) -> None:
        self.stats = stats
        self.on_overflow = on_overflow
        self.ordered = ordered
        self.window = reorder_window
        self.results: asyncio.Queue[Result | object] = asyncio.Queue()
        self.pending: dict[int, Result] = {}
        self.next_seq = 0  # next sequence number to hand out, in input order
        self.space = asyncio.Condition()
        self.outstanding = 0  # handed to workers, not yet delivered
        self.idle = asyncio.Event()
        self.idle.set()

    def started(self) -> None:
        self.outstanding += 1
        self.idle.clear()

    def finished(self) -> None:
        self.outstanding -= 1
        if self.outstanding == 0:
            self.idle.set()

    async def deliver(self, work: _Work, result: Result) -> None:
        if not self.ordered:
            self.results.put_nowait(result)
            return
        self.pending[work.seq] = result
        released = False
        while self.next_seq in self.pending:
            self.results.put_nowait(self.pending.pop(self.next_seq))
            self.next_seq += 1
            released = True
        if released:
            async with self.space:
                self.space.notify_all()

    async def wait_for_room(self, seq: int) -> None:
        """Back-pressure for input order: row ``seq`` may start only while it is fewer than
        ``window`` rows ahead of the oldest unwritten one, so the buffer stays bounded."""
        if not self.ordered or seq - self.next_seq < self.window:
            return
        async with self.space:
            await self.space.wait_for(lambda: seq - self.next_seq < self.window)


class Dispatcher:
    """Sends prepared requests through one transport with a bounded window and retries."""

    def __init__(
        self,
        transport: Transport,
        *,
        concurrency: int = DEFAULT_CONCURRENCY,
        retry: RetryPolicy | None = None,
        on_overflow: str = "error",
        api_prefix: str = "/v1",
        adaptive: bool = False,
        max_window: int = 4096,
        monitor_interval_s: float = 1.0,
        controller: WindowController | None = None,
    ) -> None:
        if concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        if on_overflow not in OVERFLOW_POLICIES:
            raise ValueError(f"on_overflow must be one of {OVERFLOW_POLICIES}")
        self.transport = transport
        self.concurrency = concurrency
        self.retry = retry or RetryPolicy.default()
        self.on_overflow = on_overflow
        self.api_prefix = api_prefix
        # adaptive: follow the server's load (its /metrics) instead of a fixed window.
        self.adaptive = adaptive
        self.controller = controller or WindowController(concurrency, max_window)
        self.monitor_interval_s = monitor_interval_s
        self.load: ServerLoad | None = None  # the server's last reported load, when known
        self.in_flight = 0
        self.output_tokens = 0  # received over all jobs, for the adaptive window
        self._queue: asyncio.Queue[_Work | None] | None = None
        self._workers: list[asyncio.Task[None]] = []
        self._retiring = 0
        self._monitor: asyncio.Task[None] | None = None
        # The server's context size, when known (from /v1/models); lets a reply that the server
        # shortened to fit be marked as clamped.
        self.max_model_len: int | None = None

    # -- lifecycle -------------------------------------------------------------------------------

    async def __aenter__(self) -> Dispatcher:
        self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    def start(self) -> None:
        if self._queue is not None:
            return
        # A queue no longer than the window: feeders block here, so rows are read lazily.
        self._queue = asyncio.Queue(maxsize=self.concurrency)
        self._workers = [asyncio.create_task(self._worker()) for _ in range(self.concurrency)]
        self._monitor = asyncio.create_task(self._watch_server())

    async def aclose(self) -> None:
        if self._monitor is not None:
            self._monitor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._monitor
            self._monitor = None
        for task in self._workers:
            task.cancel()
        for task in self._workers:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._workers = []
        self._queue = None
        await self.transport.aclose()

    def resize(self, concurrency: int) -> None:
        """Change the window while running: new workers start at once, surplus ones leave after
        their current request."""
        concurrency = max(1, concurrency)
        self.concurrency = concurrency
        if self._queue is None:
            return
        live = len(self._workers) - self._retiring
        if concurrency > live:
            revived = min(self._retiring, concurrency - live)
            self._retiring -= revived
            live += revived
            new = [asyncio.create_task(self._worker()) for _ in range(concurrency - live)]
            self._workers += new
        else:
            self._retiring += live - concurrency

    async def _watch_server(self) -> None:
        """Poll the server's /metrics: for the progress display, and to size an adaptive window.
        A server without vLLM's metrics is simply not watched."""
        misses = 0
        loop = asyncio.get_running_loop()
        while misses < 3:
            await asyncio.sleep(self.monitor_interval_s)
            try:
                response = await self.transport.request("GET", "/metrics")
                load = parse_metrics(response.content.decode("utf-8", "replace"))
            except (TransportError, UnicodeDecodeError):
                load = None
            if load is None:
                misses += 1
                continue
            misses = 0
            self.load = load
            if self.adaptive:
                generated = load.generation_tokens
                window = self.controller.update(
                    loop.time(),
                    self.output_tokens if generated is None else generated,
                    self.in_flight,
                    load,
                )
                if window != self.concurrency:
                    self.resize(window)

    # -- jobs ------------------------------------------------------------------------------------

    async def stream(
        self,
        requests: Iterable[PreparedRequest],
        stats: Stats | None = None,
        *,
        ordered: bool = False,
        reorder_window: int | None = None,
        on_overflow: str | None = None,
    ) -> AsyncIterator[Result]:
        """Send every request; yield each result as it completes (or in input order).

        With ``ordered``, at most ``reorder_window`` rows (default 4 x concurrency) may be
        finished but waiting for an older one; beyond that, sending pauses.
        """
        self.start()
        assert self._queue is not None
        window = reorder_window or 4 * self.concurrency
        job = _JobStream(stats or Stats(), ordered, window, on_overflow or self.on_overflow)
        feeder = asyncio.create_task(self._feed(requests, job))
        finished = False
        try:
            while True:
                item = await job.results.get()
                if item is _DONE:
                    break
                if isinstance(item, BaseException):
                    raise item
                assert isinstance(item, Result)
                yield item
            finished = True
        finally:
            if not finished:
                feeder.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await feeder

    async def _feed(self, requests: Iterable[PreparedRequest], job: _JobStream) -> None:
        assert self._queue is not None
        try:
            for seq, request in enumerate(requests):
                await job.wait_for_room(seq)
                job.started()
                await self._queue.put(_Work(request, seq, job))
            await job.idle.wait()
            job.results.put_nowait(_DONE)
        except asyncio.CancelledError:
            raise
        except BaseException as exc:  # e.g. an InputError raised while reading rows
            job.results.put_nowait(exc)

    async def _worker(self) -> None:
        assert self._queue is not None
        queue = self._queue
        while True:
            if self._retiring:
                self._retiring -= 1
                task = asyncio.current_task()
                if task in self._workers:
                    self._workers.remove(task)
                return
            work = await queue.get()
            assert work is not None
            result = await self.execute(work.request, work.job.stats, work.job.on_overflow)
            stats = work.job.stats
            stats.done += 1
            if result.error is None:
                stats.ok += 1
                stats.prompt_tokens += result.prompt_tokens
                stats.completion_tokens += result.completion_tokens
                self.output_tokens += result.completion_tokens
            else:
                stats.failed += 1
            if result.clamped_max_tokens is not None:
                stats.clamped += 1
            await work.job.deliver(work, result)
            work.job.finished()

    # -- one request -----------------------------------------------------------------------------

    async def execute(
        self, request: PreparedRequest, stats: Stats | None = None, on_overflow: str | None = None
    ) -> Result:
        """Send one request with retries; always returns a ``Result`` (errors become records)."""
        policy = self.retry
        clock = policy.clock
        start = clock()
        body = request.body
        payload = orjson.dumps(body)
        path = self.api_prefix + request.endpoint
        clamped: int | None = None
        attempt = 0
        while True:
            attempt += 1
            retry_after: float | None = None
            error_body: dict[str, Any] | None = None  # the server's error reply, if any
            self.in_flight += 1
            if stats is not None:
                stats.in_flight += 1
            try:
                response = await self.transport.request("POST", path, payload)
            except TransportError as exc:
                error = ErrorInfo(exc.code, exc.message)
                retryable = True
            else:
                if response.status == 200:
                    try:
                        parsed = orjson.loads(response.content)
                    except orjson.JSONDecodeError:
                        parsed = None
                    if isinstance(parsed, dict) and isinstance(parsed.get("choices"), list):
                        if clamped is None and self.max_model_len is not None:
                            clamped = _shortened_by_server(body, parsed, self.max_model_len)
                        return Result(
                            request.index, request.id, request.endpoint, 200, parsed, None,
                            attempt, clock() - start, parsed.get("id"), clamped,
                        )  # fmt: skip
                    error = ErrorInfo(
                        "malformed_response",
                        f"HTTP 200 with an unreadable body: {response.content[:200]!r}",
                        200,
                    )
                    retryable = True
                else:
                    error, error_body = _error_from_response(response)
                    overflow = parse_overflow(error.message) if response.status == 400 else None
                    if overflow is not None:
                        error = ErrorInfo("context_length_exceeded", error.message, 400)
                        if (on_overflow or self.on_overflow) == "clamp" and clamped is None:
                            fit = await self._fitting_max_tokens(request, overflow)
                            if fit is not None:
                                clamped = fit
                                body = {**body, "max_tokens": fit}
                                body.pop("max_completion_tokens", None)
                                payload = orjson.dumps(body)
                                continue
                    retryable = policy.is_retryable_status(response.status)
                    retry_after = parse_retry_after(response.headers)
            finally:
                self.in_flight -= 1
                if stats is not None:
                    stats.in_flight -= 1
            delay = policy.next_delay(attempt, clock() - start, retry_after) if retryable else None
            if delay is None:
                return Result(
                    request.index, request.id, request.endpoint, error.status, error_body, error,
                    attempt, clock() - start, None, clamped,
                )  # fmt: skip
            if stats is not None:
                stats.retries += 1
            await policy.sleep(delay)

    async def _fitting_max_tokens(self, request: PreparedRequest, overflow: Overflow) -> int | None:
        """Room left for output: from the error message, else from /v1/models and /tokenize."""
        fit = overflow.fitting_max_tokens()
        if fit is not None:
            return fit
        max_len = overflow.max_model_len or await self._server_max_model_len()
        prompt_tokens = overflow.prompt_tokens or await self._count_prompt_tokens(request)
        if max_len is None or prompt_tokens is None or max_len - prompt_tokens <= 0:
            return None
        return max_len - prompt_tokens

    async def _server_max_model_len(self) -> int | None:
        if self.max_model_len is None:
            with contextlib.suppress(TransportError, orjson.JSONDecodeError, KeyError, TypeError):
                resp = await self.transport.request("GET", self.api_prefix + "/models")
                models = orjson.loads(resp.content)["data"]
                self.max_model_len = int(models[0]["max_model_len"])
        return self.max_model_len

    async def _count_prompt_tokens(self, request: PreparedRequest) -> int | None:
        body = request.body
        key = "messages" if request.endpoint == CHAT else "prompt"
        query: dict[str, Any] = {"model": body.get("model"), key: body[key]}
        with contextlib.suppress(TransportError, orjson.JSONDecodeError, KeyError, TypeError):
            resp = await self.transport.request("POST", "/tokenize", orjson.dumps(query))
            if resp.status == 200:
                return int(orjson.loads(resp.content)["count"])
        return None


def _shortened_by_server(
    body: dict[str, Any], reply: dict[str, Any], max_model_len: int
) -> int | None:
    """The max_tokens the server really applied, when it cut the request's to fit the context."""
    wanted = body.get("max_tokens") or body.get("max_completion_tokens")
    usage = reply.get("usage")
    prompt = usage.get("prompt_tokens") if isinstance(usage, dict) else None
    if isinstance(wanted, int) and isinstance(prompt, int) and prompt + wanted > max_model_len:
        return max_model_len - prompt
    return None


def _error_from_response(response: Response) -> tuple[ErrorInfo, dict[str, Any] | None]:
    """Read vLLM's error body: ``{"error": {"message", "type", "code"}}`` in current versions,
    ``{"object": "error", "message", "type", "code"}`` in older ones; anything else verbatim."""
    status = response.status
    try:
        parsed = orjson.loads(response.content)
    except orjson.JSONDecodeError:
        text = response.content[:500].decode("utf-8", "replace").strip()
        return ErrorInfo(f"http_{status}", text or f"HTTP {status}", status), None
    if not isinstance(parsed, dict):
        return ErrorInfo(f"http_{status}", str(parsed)[:500], status), None
    inner = parsed["error"] if isinstance(parsed.get("error"), dict) else parsed
    message = inner.get("message")
    kind = inner.get("type")
    return (
        ErrorInfo(
            kind if isinstance(kind, str) and kind else f"http_{status}",
            message if isinstance(message, str) else orjson.dumps(parsed).decode()[:500],
            status,
        ),
        parsed,
    )
