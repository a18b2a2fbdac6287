"""``generate``: a job over Python data, its results gathered by row and handed back in the
data's shape (``_output/shape.py``). With an output file, every result is also written there as
it comes (crash-safe, as ``vbatch run`` writes), and a second call with the same data sends only
the rows still missing: the others are read back from the file."""

from __future__ import annotations

import asyncio
import dataclasses
from typing import Any

import numpy as np

from .._client.dispatcher import Dispatcher
from .._config import ClientOptions
from .._errors import InputError
from .._fleet.factory import FleetTarget
from .._fleet.local import OnLaunch
from .._input.data import DataInput, DataSource, check_no_clash
from .._input.ids import id_key
from .._input.requests import RequestBuilder
from .._job import Job
from .._models import Result
from .._output.parquet import write_parquet
from .._output.rows import ResultColumns, RowResult, read_rows
from .._output.shape import result_columns, shaped
from .._progress import Progress
from .._schema import Schema
from .runner import run_job

__all__ = ["PARQUET_LOG", "generate"]

# An output ending in .parquet is written at the end from a JSONL log kept beside it, which is
# what a later call resumes from.
PARQUET_LOG = ".jsonl"


async def generate(
    job: Job,
    servers: FleetTarget | Dispatcher,
    progress: Progress | None,
    stop: asyncio.Event | None,
    *,
    client: ClientOptions | None,
    on_launch: OnLaunch | None,
) -> Any:
    given = job.input
    assert isinstance(given, DataInput)
    embeddings = job.endpoint == "embeddings"
    schema = job.defaults.compiled_schema()
    check_no_clash(given, result_columns(embeddings, schema is not None))  # before any send
    parquet = None
    if job.output is not None and job.output.endswith(".parquet"):
        parquet, job = job.output, dataclasses.replace(job, output=job.output + PARQUET_LOG)
    results = ResultColumns(None if given.one_pass else len(given))

    def keep(result: Result) -> None:
        results.put(result.index, RowResult.from_result(result).typed(schema))

    summary = await run_job(job, servers, progress, stop, client=client, on_launch=on_launch,
                            on_result=keep)  # fmt: skip
    missing = results.missing()
    if job.output is not None and missing.any():
        await asyncio.to_thread(_read_back, job, given, results, missing, schema)
        missing = results.missing()
    for index in np.flatnonzero(missing):  # a run stopped early (stop_event)
        results.put(int(index), RowResult(int(index) + 1, error="not_run: the run stopped first"))
    if parquet is not None and job.output is not None and not summary.interrupted:
        await asyncio.to_thread(write_parquet, job.output, parquet)
    structured = schema is not None or results.any_checked()
    return shaped(given, results, embeddings, structured)


def _read_back(
    job: Job,
    given: DataInput,
    results: ResultColumns,
    missing: np.ndarray,
    schema: Schema | None,
) -> None:
    """The rows an earlier run finished, from the output it wrote, by their ids."""
    assert job.output is not None
    written = dict(read_rows(job.output))
    source = DataSource(given, job.fields.prompt_field, job.fields.messages_field)
    # The ids results were written under are the request builder's to give.
    builder = RequestBuilder(source.path, job.defaults, job.fields, job.endpoint,
                             require_model=False)  # fmt: skip
    for raw in source.rows(pending=missing, on_bad_line=lambda _: None):
        try:
            row_id = builder.build(raw).id
        except InputError:
            continue  # never sent: it stays missing
        row = written.get(id_key(row_id))
        if row is not None:
            results.put(raw.index, row.typed(schema))
