"""The library's front door: ``run`` (sync), ``arun`` and ``stream`` (async), ``connect``.

Each takes the input path, the output path and keyword options; options named like
``RequestDefaults`` fields (model, max_tokens, ...) become request defaults, those named like
``FieldMap`` fields (prompt_field, template, ...) say where rows keep things, those named like
``LaunchOptions`` fields (max_model_len, replicas, ...) say how to start vLLM, the rest are
``Job`` fields (order, on_overflow, ...).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
from collections.abc import AsyncIterator, Callable, Coroutine, Sequence
from typing import Any, TypeVar

from ._client.dispatcher import Dispatcher
from ._client.endpoints import FleetTransport
from ._client.retry import RetryPolicy
from ._config import (
    DEFAULT_CONCURRENCY,
    DEFAULT_MAX_ATTEMPTS,
    DEFAULT_TIMEOUT_S,
    DOWN_TIMEOUT_S,
    ClientOptions,
    LaunchOptions,
)
from ._engine.plan import LaunchPlan, plan_first_rows, replan
from ._engine.server import VllmServer
from ._errors import ConfigError
from ._fleet.base import Fleet, base_urls
from ._fleet.local import LocalFleet
from ._fleet.static import StaticFleet
from ._input.requests import FieldMap
from ._input.shard import Shard
from ._input.sources import open_source
from ._job import Job, RunSummary, iter_results, preview_requests, run_job
from ._models import RequestDefaults, Result
from ._progress import Progress

__all__ = ["arun", "connect", "make_job", "run", "run_sync", "stream"]

T = TypeVar("T")
OnLaunch = Callable[[LaunchPlan, list[VllmServer]], None]
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
    if options.get("shard") is not None:
        options["shard"] = Shard.parse(options["shard"])  # "I/N", (I, N) or a Shard
    return Job(
        input=os.fspath(input),
        output=os.fspath(output) if output is not None else None,
        defaults=RequestDefaults(**defaults),
        fields=FieldMap(**{k: v for k, v in options.items() if k in _FIELD_KEYS}),
        **{k: v for k, v in options.items() if k in _JOB_KEYS},
    )


def _dispatcher(
    fleet: Fleet,
    client: ClientOptions,
    retry: RetryPolicy | None = None,
    window_per_member: int | None = None,
) -> Dispatcher:
    """A dispatcher over ``fleet``: a fixed window (``client.concurrency``, else
    ``window_per_member`` for each member up), or without either an adaptive one."""
    transport = FleetTransport(fleet, client.api_key, client.timeout_s)
    fixed = client.concurrency or window_per_member
    return Dispatcher(
        transport,
        concurrency=fixed or DEFAULT_CONCURRENCY,
        adaptive=fixed is None,
        retry=retry or RetryPolicy.default(client.max_attempts),
        fleet=fleet,
        window_per_member=None if client.concurrency else window_per_member,
    )


def connect(
    base_url: str | Sequence[str],
    *,
    api_key: str | None = None,
    concurrency: int | None = None,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    max_attempts: int = DEFAULT_MAX_ATTEMPTS,
    down_timeout_s: float = DOWN_TIMEOUT_S,
    retry: RetryPolicy | None = None,
) -> Dispatcher:
    """A dispatcher for the OpenAI-compatible server at ``base_url`` (``.../v1``).

    The key defaults to ``$OPENAI_API_KEY``. Use it as ``async with`` and pass it to several
    ``arun``/``stream`` calls to share one connection pool and one in-flight window. Without a
    ``concurrency`` the window adapts to the server's load (vLLM's /metrics), starting at
    ``DEFAULT_CONCURRENCY``. Several URLs (replicas of one model) share the window, each request
    going to the least busy.
    """
    client = _client_options(api_key, concurrency, timeout_s, max_attempts, down_timeout_s)
    return _dispatcher(StaticFleet(base_urls(base_url), client.down_timeout_s), client, retry)


@contextlib.asynccontextmanager
async def _session(
    job: Job,
    base_url: str | Sequence[str] | None,
    dispatcher: Dispatcher | None,
    launch: LaunchOptions,
    client: ClientOptions,
    on_launch: OnLaunch | None = None,
    stop: asyncio.Event | None = None,
    ray: str | None = None,
) -> AsyncIterator[tuple[Job, Dispatcher]]:
    """The dispatcher to run ``job`` with: the one given, one for ``base_url``, or one for vLLM
    servers started (and stopped afterwards) for this job when neither is given: on this
    machine, or with ``ray`` (an address; "" for ``$RAY_ADDRESS``) on a Ray cluster."""
    if dispatcher is not None:
        yield job, dispatcher
        return
    open_source(job.input, job.input_format)  # a missing input is refused before any server
    base_url = base_url or os.environ.get("VBATCH_BASE_URL")
    fleet: Fleet
    per_member: int | None = None
    if base_url and ray is not None:
        raise ConfigError("--base-url and --ray: servers of one's own, or servers on Ray")
    if base_url:
        if launch.given():
            raise ConfigError(f"{', '.join(launch.given())}: only for a server vbatch starts")
        fleet = StaticFleet(base_urls(base_url), client.down_timeout_s)
    else:
        if ray is not None:
            fleet, plan = await _ray_fleet(ray, job, launch, client, stop)
        else:
            plan, fleet = await _local_fleet(job, launch, on_launch, stop)
        job = dataclasses.replace(
            job, defaults=dataclasses.replace(job.defaults, model=plan.served_model)
        )
        per_member = plan.concurrency // plan.replicas  # the same in a plan for all the rows
    # The dispatcher starts the fleet (for vLLM it launches: requests flow once the first
    # replica is healthy) and stops it at the end.
    async with _dispatcher(fleet, client, window_per_member=per_member) as disp:
        yield job, disp


async def _local_fleet(
    job: Job, launch: LaunchOptions, on_launch: OnLaunch | None, stop: asyncio.Event | None
) -> tuple[LaunchPlan, LocalFleet]:
    """vLLM on this machine, started on the plan of the data's first rows; the rest is read
    while it starts (``replan``)."""
    max_tokens = job.defaults.max_tokens
    plan = await asyncio.to_thread(plan_first_rows, job.defaults.model, preview_requests(job),
                                   launch, max_tokens)  # fmt: skip

    async def settle() -> LaunchPlan | None:
        return await asyncio.to_thread(replan, plan, preview_requests(job), launch, max_tokens)

    return plan, LocalFleet(plan, on_launch, stop, launch.max_restarts, settle=settle)


async def _ray_fleet(
    address: str,
    job: Job,
    launch: LaunchOptions,
    client: ClientOptions,
    stop: asyncio.Event | None,
) -> tuple[Fleet, LaunchPlan]:
    """A fleet on the Ray cluster at ``address`` and the plan of one of its servers."""
    from ._fleet.ray import connect, plan_ray_fleet  # Ray is imported only when asked for

    connect(address or None)
    return await asyncio.to_thread(plan_ray_fleet, job.defaults.model, preview_requests(job),
                                   launch, job.defaults.max_tokens,
                                   client.down_timeout_s, stop)  # fmt: skip


def _client_options(
    api_key: str | None,
    concurrency: int | None,
    timeout_s: float,
    max_attempts: int,
    down_timeout_s: float,
) -> ClientOptions:
    """The key defaults to ``$OPENAI_API_KEY``."""
    key = api_key or os.environ.get("OPENAI_API_KEY")
    return ClientOptions(key, concurrency, timeout_s, max_attempts, down_timeout_s)


async def arun(
    input: str,
    output: str | None = None,
    *,
    base_url: str | Sequence[str] | None = None,
    dispatcher: Dispatcher | None = None,
    progress: Progress | None = None,
    stop: asyncio.Event | None = None,
    api_key: str | None = None,
    concurrency: int | None = None,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    max_attempts: int = DEFAULT_MAX_ATTEMPTS,
    down_timeout_s: float = DOWN_TIMEOUT_S,
    on_launch: OnLaunch | None = None,
    ray: str | None = None,
    **options: Any,
) -> RunSummary:
    """Run a whole job and return its summary.

    Without ``base_url`` (or ``$VBATCH_BASE_URL``) or ``dispatcher``, vLLM is started for the
    job, sized for its data, and stopped at the end; launch options (``max_model_len``,
    ``tensor_parallel_size``, ``vllm_args``, ...) apply to it. A ``dispatcher`` passed in is left
    open; setting ``stop`` ends the run early and cleanly (``summary.interrupted``). With
    ``ray`` (``"auto"``, ``"HOST:PORT"``, ``"ray://HOST:PORT"``; ``""`` for ``$RAY_ADDRESS``)
    the servers run on a Ray cluster instead: one per GPU (``replicas`` per GPU, or one per
    ``tensor_parallel_size`` GPUs), one per node on CPUs; needs ``pip install 'vbatch[ray]'``.
    """
    client = _client_options(api_key, concurrency, timeout_s, max_attempts, down_timeout_s)
    launch = LaunchOptions.pop_from(options)
    job = make_job(input, output, **options)
    async with _session(job, base_url, dispatcher, launch, client, on_launch, stop,
                        ray) as (job, disp):  # fmt: skip
        return await run_job(job, disp, progress, stop)


async def stream(
    input: str,
    output: str | None = None,
    *,
    base_url: str | Sequence[str] | None = None,
    dispatcher: Dispatcher | None = None,
    api_key: str | None = None,
    concurrency: int | None = None,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    max_attempts: int = DEFAULT_MAX_ATTEMPTS,
    down_timeout_s: float = DOWN_TIMEOUT_S,
    ray: str | None = None,
    **options: Any,
) -> AsyncIterator[Result]:
    """Yield each ``Result`` as it completes (written to ``output`` first, when given)."""
    client = _client_options(api_key, concurrency, timeout_s, max_attempts, down_timeout_s)
    launch = LaunchOptions.pop_from(options)
    job = make_job(input, output, **options)
    async with _session(job, base_url, dispatcher, launch, client, ray=ray) as (job, disp):
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
