"""The library's front door: ``run`` (sync), ``arun`` and ``stream`` (async), ``connect``.

Each takes the input path, the output path and keyword options; options named like
``RequestDefaults`` fields (model, max_tokens, ...) become request defaults, those named like
``FieldMap`` fields (prompt_field, template, ...) say where rows keep things, the rest are ``Job``
fields (order, on_overflow, ...).
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
from collections.abc import AsyncIterator, Coroutine
from typing import Any, TypeVar

from ._dispatcher import DEFAULT_CONCURRENCY, Dispatcher
from ._job import Job, RunSummary, iter_results, run_job
from ._models import RequestDefaults, Result
from ._progress import Progress
from ._requests import FieldMap
from ._retry import RetryPolicy
from ._transport import AiohttpTransport

__all__ = ["arun", "connect", "make_job", "run", "run_sync", "stream"]

T = TypeVar("T")
_DEFAULT_KEYS = {f.name for f in dataclasses.fields(RequestDefaults)}
_FIELD_KEYS = {f.name for f in dataclasses.fields(FieldMap)}
_JOB_KEYS = {f.name for f in dataclasses.fields(Job)} - {"input", "output", "defaults", "fields"}


def make_job(input: str, output: str | None = None, **options: Any) -> Job:
    """Build a ``Job`` from flat keyword options (see the module docstring)."""
    unknown = set(options) - _DEFAULT_KEYS - _FIELD_KEYS - _JOB_KEYS
    if unknown:
        raise TypeError(f"unknown option(s): {', '.join(sorted(unknown))}")
    defaults = {k: v for k, v in options.items() if k in _DEFAULT_KEYS}
    if isinstance(defaults.get("stop"), (list, str)):
        stop = defaults["stop"]
        defaults["stop"] = (stop,) if isinstance(stop, str) else tuple(stop)
    return Job(
        input=os.fspath(input),
        output=os.fspath(output) if output is not None else None,
        defaults=RequestDefaults(**defaults),
        fields=FieldMap(**{k: v for k, v in options.items() if k in _FIELD_KEYS}),
        **{k: v for k, v in options.items() if k in _JOB_KEYS},
    )


def connect(
    base_url: str,
    *,
    api_key: str | None = None,
    concurrency: int = DEFAULT_CONCURRENCY,
    timeout_s: float = 600.0,
    max_attempts: int = 5,
    retry: RetryPolicy | None = None,
) -> Dispatcher:
    """A dispatcher for the OpenAI-compatible server at ``base_url`` (``.../v1``).

    The key defaults to ``$OPENAI_API_KEY``. Use it as ``async with`` and pass it to several
    ``arun``/``stream`` calls to share one connection pool and one in-flight window.
    """
    transport = AiohttpTransport(
        base_url, api_key=api_key or os.environ.get("OPENAI_API_KEY"), timeout_s=timeout_s
    )
    return Dispatcher(
        transport,
        concurrency=concurrency,
        retry=retry or RetryPolicy.default(max_attempts),
        api_prefix=transport.api_prefix,
    )


def _dispatcher_for(base_url: str | None, dispatcher: Dispatcher | None, **kw: Any) -> Dispatcher:
    if dispatcher is not None:
        return dispatcher
    base_url = base_url or os.environ.get("VBATCH_BASE_URL")
    if not base_url:
        raise ValueError("no server: pass base_url (or set VBATCH_BASE_URL)")
    return connect(base_url, **kw)


async def arun(
    input: str,
    output: str | None = None,
    *,
    base_url: str | None = None,
    dispatcher: Dispatcher | None = None,
    progress: Progress | None = None,
    stop: asyncio.Event | None = None,
    api_key: str | None = None,
    concurrency: int = DEFAULT_CONCURRENCY,
    timeout_s: float = 600.0,
    max_attempts: int = 5,
    **options: Any,
) -> RunSummary:
    """Run a whole job and return its summary. A ``dispatcher`` passed in is left open;
    setting ``stop`` ends the run early and cleanly (``summary.interrupted``)."""
    job = make_job(input, output, **options)
    own = dispatcher is None
    disp = _dispatcher_for(base_url, dispatcher, api_key=api_key, concurrency=concurrency,
                           timeout_s=timeout_s, max_attempts=max_attempts)  # fmt: skip
    try:
        return await run_job(job, disp, progress, stop)
    finally:
        if own:
            await disp.aclose()


async def stream(
    input: str,
    output: str | None = None,
    *,
    base_url: str | None = None,
    dispatcher: Dispatcher | None = None,
    api_key: str | None = None,
    concurrency: int = DEFAULT_CONCURRENCY,
    timeout_s: float = 600.0,
    max_attempts: int = 5,
    **options: Any,
) -> AsyncIterator[Result]:
    """Yield each ``Result`` as it completes (written to ``output`` first, when given)."""
    job = make_job(input, output, **options)
    own = dispatcher is None
    disp = _dispatcher_for(base_url, dispatcher, api_key=api_key, concurrency=concurrency,
                           timeout_s=timeout_s, max_attempts=max_attempts)  # fmt: skip
    try:
        async for result in iter_results(job, disp):
            yield result
    finally:
        if own:
            await disp.aclose()


def run_sync(coro: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine on a fresh event loop, uvloop's when installed (less CPU per request)."""
    try:
        import uvloop

        factory = uvloop.new_event_loop
    except ImportError:  # pragma: no cover - uvloop is a dependency off Windows
        factory = None
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(coro)


def run(input: str, output: str | None = None, **kwargs: Any) -> RunSummary:
    """Synchronous ``arun``: run the job to the end and return its summary."""
    return run_sync(arun(input, output, **kwargs))
