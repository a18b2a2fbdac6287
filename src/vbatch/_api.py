"""The library's front door: ``run`` (sync), ``arun`` and ``stream`` (async), ``connect``.

Each takes the input path, the output path and keyword options; options named like
``RequestDefaults`` fields (model, max_tokens, ...) become request defaults, those named like
``FieldMap`` fields (prompt_field, template, ...) say where rows keep things, the rest are ``Job``
fields (order, on_overflow, ...).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
from collections.abc import AsyncIterator, Callable, Coroutine, Sequence
from typing import Any, TypeVar

from ._dispatcher import DEFAULT_CONCURRENCY, Dispatcher
from ._job import Job, RunSummary, iter_results, run_job
from ._launcher import VllmServer
from ._models import RequestDefaults, Result
from ._plan import LaunchPlan, plan_launch, pop_launch_options
from ._progress import Progress
from ._requests import FieldMap
from ._retry import RetryPolicy
from ._transport import AiohttpTransport, ReplicaTransport

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
    base_url: str | Sequence[str],
    *,
    api_key: str | None = None,
    concurrency: int | None = None,
    timeout_s: float = 600.0,
    max_attempts: int = 5,
    retry: RetryPolicy | None = None,
) -> Dispatcher:
    """A dispatcher for the OpenAI-compatible server at ``base_url`` (``.../v1``).

    The key defaults to ``$OPENAI_API_KEY``. Use it as ``async with`` and pass it to several
    ``arun``/``stream`` calls to share one connection pool and one in-flight window. Without a
    ``concurrency`` the window adapts to the server's load (vLLM's /metrics), starting at
    ``DEFAULT_CONCURRENCY``. Several URLs (replicas of one model) share the window, each request
    going to the least busy.
    """
    key = api_key or os.environ.get("OPENAI_API_KEY")
    urls = [base_url] if isinstance(base_url, str) else list(base_url)
    replicas = [AiohttpTransport(url, api_key=key, timeout_s=timeout_s) for url in urls]
    transport: AiohttpTransport | ReplicaTransport = (
        replicas[0] if len(replicas) == 1 else ReplicaTransport(replicas)
    )
    return Dispatcher(
        transport,
        concurrency=concurrency or DEFAULT_CONCURRENCY,
        adaptive=concurrency is None,
        retry=retry or RetryPolicy.default(max_attempts),
        api_prefix=transport.api_prefix,
    )


@contextlib.asynccontextmanager
async def _session(
    job: Job,
    base_url: str | None,
    dispatcher: Dispatcher | None,
    launch: dict[str, Any],
    on_launch: Callable[[LaunchPlan, list[VllmServer]], None] | None = None,
    stop: asyncio.Event | None = None,
    **connect_kw: Any,
) -> AsyncIterator[tuple[Job, Dispatcher]]:
    """The dispatcher to run ``job`` with: the one given, one for ``base_url``, or one for a
    vLLM server started (and stopped afterwards) for this job when neither is given."""
    if dispatcher is not None:
        yield job, dispatcher
        return
    base_url = base_url or os.environ.get("VBATCH_BASE_URL")
    if base_url:
        if launch:
            raise ValueError(f"{', '.join(sorted(launch))}: only for a server vbatch starts")
        async with connect(base_url, **connect_kw) as disp:
            yield job, disp
        return
    plan = await asyncio.to_thread(plan_launch, job, job.defaults.model, **launch)
    job = dataclasses.replace(
        job, defaults=dataclasses.replace(job.defaults, model=plan.served_model)
    )
    servers = [VllmServer(plan.spec) for _ in range(plan.replicas)]
    try:
        # Together when each has a fixed KV cache; otherwise one after another (plan.py).
        batches = [servers] if plan.start_together else [[s] for s in servers]
        for batch in batches:
            for server in batch:
                await asyncio.to_thread(server.start)
            if on_launch is not None and batch[0] is servers[0]:
                on_launch(plan, servers)
            for server in batch:
                while not await asyncio.to_thread(server.healthy):
                    if stop is not None and stop.is_set():
                        # Ctrl-C while vLLM starts: stop it (below) and end as interrupted.
                        raise KeyboardInterrupt
                    await asyncio.sleep(0.5)
        connect_kw["concurrency"] = connect_kw.get("concurrency") or plan.concurrency
        async with connect([s.base_url for s in servers], **connect_kw) as disp:
            yield job, disp
    finally:
        for server in servers:
            await asyncio.to_thread(server.stop)


async def arun(
    input: str,
    output: str | None = None,
    *,
    base_url: str | None = None,
    dispatcher: Dispatcher | None = None,
    progress: Progress | None = None,
    stop: asyncio.Event | None = None,
    api_key: str | None = None,
    concurrency: int | None = None,
    timeout_s: float = 600.0,
    max_attempts: int = 5,
    on_launch: Callable[[LaunchPlan, list[VllmServer]], None] | None = None,
    **options: Any,
) -> RunSummary:
    """Run a whole job and return its summary.

    Without ``base_url`` (or ``$VBATCH_BASE_URL``) or ``dispatcher``, a vLLM server is started
    for the job, sized for its data, and stopped at the end; launch options (``max_model_len``,
    ``tensor_parallel_size``, ``vllm_args``, ...) apply to it. A ``dispatcher`` passed in is left
    open; setting ``stop`` ends the run early and cleanly (``summary.interrupted``).
    """
    launch = pop_launch_options(options)
    job = make_job(input, output, **options)
    async with _session(job, base_url, dispatcher, launch, on_launch, stop, api_key=api_key,
                        concurrency=concurrency, timeout_s=timeout_s,
                        max_attempts=max_attempts) as (job, disp):  # fmt: skip
        return await run_job(job, disp, progress, stop)


async def stream(
    input: str,
    output: str | None = None,
    *,
    base_url: str | None = None,
    dispatcher: Dispatcher | None = None,
    api_key: str | None = None,
    concurrency: int | None = None,
    timeout_s: float = 600.0,
    max_attempts: int = 5,
    **options: Any,
) -> AsyncIterator[Result]:
    """Yield each ``Result`` as it completes (written to ``output`` first, when given)."""
    launch = pop_launch_options(options)
    job = make_job(input, output, **options)
    async with _session(job, base_url, dispatcher, launch, api_key=api_key,
                        concurrency=concurrency, timeout_s=timeout_s,
                        max_attempts=max_attempts) as (job, disp):  # fmt: skip
        async for result in iter_results(job, disp):
            yield result


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
