"""The send phase: the pending rows through the dispatcher, each result written (crash-safely)
before it is yielded; a job whose first replies are all the same refusal stops there."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Iterator, Sequence

import numpy as np

from .._client.dispatcher import Dispatcher
from .._client.failfast import FailFast
from .._client.stats import Stats
from .._config import FAIL_FAST_REPLIES, FLUSH_INTERVAL_S
from .._errors import InputError
from .._input.requests import RequestBuilder
from .._input.sources import Source
from .._job import Job
from .._models import ErrorInfo, PreparedRequest, Result
from .._output.writer import ResultWriter

__all__ = ["flush_periodically", "send"]


async def send(
    job: Job,
    dispatcher: Dispatcher,
    builder: RequestBuilder,
    source: Source,
    passes: Sequence[np.ndarray] | None,
    writer: ResultWriter | None,
    stats: Stats,
    weight: float = 1.0,
) -> AsyncGenerator[Result]:
    """``passes``: which rows to send, pass after pass over the input (None: all, once)."""
    masks: Sequence[np.ndarray | None] = passes if passes is not None else [None]
    requests = (
        _checked(builder, source)
        if source.one_pass
        else (builder.build(row) for mask in masks for row in source.rows(mask))
    )
    fail_fast = FailFast(FAIL_FAST_REPLIES)
    async for result in dispatcher.stream(requests, stats, ordered=job.order == "input",
                                          on_overflow=job.on_overflow,
                                          weight=weight):  # fmt: skip
        if writer is not None:
            writer.write(result)
        yield result
        fail_fast.see(result)


def _checked(builder: RequestBuilder, source: Source) -> Iterator[PreparedRequest]:
    """An input read once, checked as it is sent: a bad row becomes its own error result
    (``invalid_row``, the message naming it), the rows around it go on."""
    refused: list[InputError] = []

    def refuse(error: InputError) -> PreparedRequest:
        index = (error.line or 1) - 1  # a data source's rows: line = position + 1
        return PreparedRequest(index, error.line or 0, "", {},
                               ErrorInfo("invalid_row", str(error)))  # fmt: skip

    for row in source.rows(on_bad_line=refused.append):
        while refused:
            yield refuse(refused.pop(0))
        try:
            request = builder.build(row)
        except InputError as exc:
            request = refuse(exc)
        yield request
    for error in refused:
        yield refuse(error)


async def flush_periodically(writer: ResultWriter) -> None:
    """Results that trickle in slowly still reach the output within ``FLUSH_INTERVAL_S``."""
    while True:
        await asyncio.sleep(FLUSH_INTERVAL_S)
        writer.flush()
