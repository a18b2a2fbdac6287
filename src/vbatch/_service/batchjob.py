"""One batch's rows through the core: ``iter_results`` over the shared dispatcher, into the
batch's output and error files (``SplitResultWriter``, its job state in the database), until
the rows are done or the batch is told to stop (cancel, expiry, the service stopping)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from .._client.dispatcher import Dispatcher
from .._client.stats import Stats
from .._config import OverflowPolicy
from .._job import Job
from .._output.split import SplitResultWriter
from .._output.state import JobStateStore
from .._output.writer import OutputState
from .._run.runner import iter_results
from .._tasks import CancelledOn
from .filestore import FileStore
from .objects import share_weight
from .validation import ENDPOINTS

__all__ = ["batch_writer", "run_rows"]


def batch_writer(files: FileStore, batch_id: str, state: JobStateStore) -> SplitResultWriter:
    files.batch_folder(batch_id)
    output, errors = (files.path(files.output_location(batch_id, kind))
                      for kind in ("output", "errors"))  # fmt: skip
    return SplitResultWriter(output, errors, state)


async def run_rows(
    doc: dict[str, Any],
    input_path: str,
    dispatcher: Dispatcher,
    writer: SplitResultWriter,
    ready: Callable[[Stats, OutputState], None],
    stop: asyncio.Event,
    on_overflow: OverflowPolicy,
) -> None:
    """Send the batch's pending rows; returns when they are all written or ``stop`` is set
    (then results already back are kept and those in flight dropped). A job's error (the
    fleet gave up, the server refused the rows) is raised."""
    job = Job(input=input_path, input_format="jsonl", endpoint=ENDPOINTS[doc["endpoint"]],
              on_overflow=on_overflow)  # fmt: skip
    weight, _ = share_weight(doc["metadata"])
    async with CancelledOn(stop), iter_results(job, dispatcher, Stats(), ready, writer=writer,
                            weight=weight) as results:  # fmt: skip
        async for _ in results:
            pass
