"""The library's front door: ``generate`` (sync) and ``agenerate`` (async) over Python data,
``run`` (sync), ``arun`` and ``stream`` (async) over files or data, ``connect``.

Each takes the input (a path, or Python data: a list of prompts, a DataFrame, a Dataset...),
the output path and typed keyword options (``_options.Options``:
request defaults such as ``model`` and ``max_tokens``, where rows keep things, how the job reads
and writes, how to talk to servers, how to start vLLM), or the option groups themselves
(``client=ClientOptions(...)``, ``launch=LaunchOptions(...)``). Where the servers come from:
``base_url`` (servers someone runs), ``ray`` (vLLM on a Ray cluster), a ``dispatcher`` from
``connect`` (shared by several jobs), or else vLLM started on this machine for the job.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import os
from collections.abc import AsyncIterator, Coroutine, Iterable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

from ._client.dispatcher import Dispatcher, dispatcher_for
from ._client.retry import RetryPolicy
from ._config import ClientOptions, LaunchOptions
from ._errors import ConfigError
from ._fleet.factory import FleetFactory, FleetTarget, running
from ._fleet.local import OnLaunch
from ._job import Job, RunSummary
from ._options import OptionGroups, split_options
from ._options import client_options as _client_options
from ._progress import NullProgress, Progress, choose_progress
from ._run.generate import generate as _generate
from ._run.runner import ResultStream, run_job
from ._tasks import run_sync

if TYPE_CHECKING:
    from typing_extensions import Unpack

    from ._options import ClientKeywords, Options

__all__ = ["agenerate", "arun", "connect", "generate", "make_job", "run", "run_sync", "stream"]

T = TypeVar("T")
PathLike = str | os.PathLike[str]
# A path, or rows as Python data (``_input/data.py`` says which kinds).
Input = PathLike | Iterable[Any] | Any


def make_job(input: Input, output: PathLike | None = None, **options: Unpack[Options]) -> Job:
    """A ``Job`` from keyword options (request defaults, fields, job settings only)."""
    groups = split_options(input, output, options)
    if groups.client != _client_options({}) or groups.launch != LaunchOptions():
        raise TypeError("make_job takes the job's options; give client and launch options to "
                        "run/arun/stream")  # fmt: skip
    return groups.job


@contextlib.asynccontextmanager
async def connect(
    base_url: str | Sequence[str],
    *,
    client: ClientOptions | None = None,
    retry: RetryPolicy | None = None,
    **options: Unpack[ClientKeywords],
) -> AsyncIterator[Dispatcher]:
    """A dispatcher for the OpenAI-compatible server(s) at ``base_url`` (``.../v1``), within
    ``async with``; pass it to several ``arun``/``stream`` calls to share one connection pool
    and one in-flight window.

    The key defaults to ``$OPENAI_API_KEY``. Without a ``concurrency`` the window adapts to the
    server's load (vLLM's /metrics). Several URLs (replicas of one model) share the window, each
    request going to the least busy. A server none of whose URLs answers fails at once
    (``FleetError``).
    """
    settings = _client_options(options, client)
    target = FleetTarget.of(base_url, down_timeout_s=settings.down_timeout_s)
    async with (
        FleetFactory(target) as factory,
        running(factory.build().fleet) as fleet,
        dispatcher_for(fleet, settings, retry) as dispatcher,
    ):
        yield dispatcher


def _servers(
    groups: OptionGroups,
    base_url: str | Sequence[str] | None,
    ray: str | None,
    dispatcher: Dispatcher | None,
) -> FleetTarget | Dispatcher:
    if dispatcher is None:
        return FleetTarget.of(base_url, ray, groups.job.defaults.model, groups.launch,
                              groups.client.down_timeout_s)  # fmt: skip
    if base_url or ray is not None or groups.launch.given():
        raise ConfigError("a dispatcher brings its own servers: no base_url, ray or launch "
                          "options beside it")  # fmt: skip
    return dispatcher


async def arun(
    input: Input,
    output: PathLike | None = None,
    *,
    base_url: str | Sequence[str] | None = None,
    ray: str | None = None,
    dispatcher: Dispatcher | None = None,
    progress: Progress | None = None,
    stop_event: asyncio.Event | None = None,
    on_launch: OnLaunch | None = None,
    client: ClientOptions | None = None,
    launch: LaunchOptions | None = None,
    **options: Unpack[Options],
) -> RunSummary:
    """Run a whole job and return its summary.

    Without ``base_url`` (or ``$VBATCH_BASE_URL``), ``ray`` or ``dispatcher``, vLLM is started
    for the job on this machine, sized for its data, and stopped at the end; launch options
    (``max_model_len``, ``replicas``, ``vllm_args``, ...) apply to it. With ``ray``
    (``"auto"``, ``"HOST:PORT"``, ``"ray://HOST:PORT"``; ``""``: ``$RAY_ADDRESS``, a running
    local cluster, else a local instance for this job) the servers run on a Ray cluster: one
    per GPU (``replicas`` per GPU, or one per ``tensor_parallel_size`` GPUs), one per node on
    CPUs; needs ``pip install 'vbatch[ray]'``. Setting ``stop_event`` ends the run early and
    cleanly (``summary.interrupted``).
    """
    groups = split_options(input, output, options, client, launch)
    servers = _servers(groups, base_url, ray, dispatcher)
    return await run_job(groups.job, servers, progress, stop_event, client=groups.client,
                         on_launch=on_launch)  # fmt: skip


def stream(
    input: Input,
    output: PathLike | None = None,
    *,
    base_url: str | Sequence[str] | None = None,
    ray: str | None = None,
    dispatcher: Dispatcher | None = None,
    client: ClientOptions | None = None,
    launch: LaunchOptions | None = None,
    **options: Unpack[Options],
) -> ResultStream:
    """Each ``Result`` as it completes (written to ``output`` first, when given)::

        async with vbatch.stream("in.jsonl", base_url=URL) as results:
            async for result in results:
                ...

    Leaving the block (also by ``break``) releases the output, the connections and any
    servers started for it at once."""
    groups = split_options(input, output, options, client, launch)
    servers = _servers(groups, base_url, ray, dispatcher)
    return ResultStream(groups.job, servers, client=groups.client)


def run(
    input: Input,
    output: PathLike | None = None,
    *,
    base_url: str | Sequence[str] | None = None,
    ray: str | None = None,
    dispatcher: Dispatcher | None = None,
    progress: Progress | None = None,
    stop_event: asyncio.Event | None = None,
    on_launch: OnLaunch | None = None,
    client: ClientOptions | None = None,
    launch: LaunchOptions | None = None,
    **options: Unpack[Options],
) -> RunSummary:
    """Synchronous ``arun``: run the job to the end and return its summary."""
    return run_sync(arun(input, output, base_url=base_url, ray=ray, dispatcher=dispatcher,
                         progress=progress, stop_event=stop_event, on_launch=on_launch,
                         client=client, launch=launch, **options))  # fmt: skip


async def agenerate(
    data: Any,
    output: PathLike | None = None,
    *,
    base_url: str | Sequence[str] | None = None,
    ray: str | None = None,
    dispatcher: Dispatcher | None = None,
    progress: Progress | bool = True,
    stop_event: asyncio.Event | None = None,
    on_launch: OnLaunch | None = None,
    client: ClientOptions | None = None,
    launch: LaunchOptions | None = None,
    **options: Unpack[Options],
) -> Any:
    """Generate for every row of ``data`` and return the results in its shape and order.

    ``data``: a list (or any iterable, a generator too) of prompt strings, message lists or
    row dicts (the JSONL row shapes: ``prompt``, ``messages``, OpenAI Batch lines, ``input`` for
    embeddings); a pandas or polars ``DataFrame``; a pyarrow ``Table`` or ``RecordBatchReader``;
    a Hugging Face ``Dataset`` or ``IterableDataset``. ``prompt_field``, ``messages_field`` and
    ``id_field`` name a frame's columns as ``vbatch run``'s flags do.

    Returns a list of ``RowResult`` for a list or an iterable; for the others the same kind of
    value with columns added: ``text``, ``finish_reason``, ``prompt_tokens``,
    ``completion_tokens``, ``error`` (``embedding``, ``prompt_tokens``, ``error`` for
    ``endpoint="embeddings"``); a ``RecordBatchReader`` gives a ``Table``. A row that failed
    has its ``error`` and no text: it never raises for one row. With ``output`` (``.jsonl``, or
    ``.parquet`` with its JSONL log beside it) every result is written as it comes, and a later
    call with the same data sends only the rows not there yet. ``progress``: True shows it in
    a notebook or on a terminal. Servers as for ``arun``.
    """
    if isinstance(data, (str, os.PathLike)):
        raise TypeError("generate takes rows as Python data (a list, a DataFrame, a Dataset): "
                        "put one prompt in a list, and give a file to vbatch.run")  # fmt: skip
    groups = split_options(data, output, options, client, launch)
    servers = _servers(groups, base_url, ray, dispatcher)
    shown: Progress
    if isinstance(progress, bool):
        shown = choose_progress(lines=False) if progress else NullProgress()
    else:
        shown = progress
    return await _generate(groups.job, servers, shown, stop_event, client=groups.client,
                           on_launch=on_launch)  # fmt: skip


def generate(
    data: Any,
    output: PathLike | None = None,
    *,
    base_url: str | Sequence[str] | None = None,
    ray: str | None = None,
    dispatcher: Dispatcher | None = None,
    progress: Progress | bool = True,
    stop_event: asyncio.Event | None = None,
    on_launch: OnLaunch | None = None,
    client: ClientOptions | None = None,
    launch: LaunchOptions | None = None,
    **options: Unpack[Options],
) -> Any:
    """Synchronous ``agenerate`` (in a notebook, whose loop is running, ``await agenerate``
    or call this: it runs on a loop of its own in a thread then)."""
    coro = agenerate(data, output, base_url=base_url, ray=ray, dispatcher=dispatcher,
                     progress=progress, stop_event=stop_event, on_launch=on_launch,
                     client=client, launch=launch, **options)  # fmt: skip
    return _run_anywhere(coro)


def _run_anywhere(coro: Coroutine[Any, Any, T]) -> T:
    """``run_sync``, or where a loop already runs in this thread (Jupyter's), in a thread."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return run_sync(coro)
    with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="vbatch") as pool:
        return pool.submit(run_sync, coro).result()
