"""The scan phase: one streaming pass over the input while the servers start. It validates every
row through the builder the run will send with, collects the id index and the input's digest,
and sizes the rows still to send: the first ``sizing.SAMPLE_ROWS`` of them are measured in full and
planned on at once (``on_sample`` starts the servers), the rest only where they could need more
context than that plan gives (a row's UTF-8 length bounds its tokens). Where the rows will be
sent adapter by adapter, a ``ModelTally`` notes which model each row asks for."""

from __future__ import annotations

import collections
import dataclasses
import itertools
import threading
from array import array
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .._engine import sizing as _sizing
from .._engine.sizing import InputMeasure, measure_requests
from .._input.ids import DigestList
from .._input.requests import RequestBuilder
from .._input.sources import Source, finish_digest, new_digest
from .._input.validate import InputIndex, index_of, iter_validated
from .._models import PreparedRequest

__all__ = ["ModelTally", "ScanCancelled", "Scanned", "Sizing", "scan"]


class ModelTally:
    """Which model each row asks for, by row index (a small code per row, the names apart): what
    sending the rows group by group needs (``_engine/lora.adapter_groups``)."""

    def __init__(self) -> None:
        self.names: dict[str, int] = {}  # in the order rows first ask for them
        self._rows = array("q")
        self._codes = array("i")

    def watch(self, requests: Iterator[PreparedRequest]) -> Iterator[PreparedRequest]:
        names, rows, codes = self.names, self._rows, self._codes
        for request in requests:
            model = str(request.body.get("model"))
            code = names.get(model)
            if code is None:
                code = names[model] = len(names)
            rows.append(request.index)
            codes.append(code)
            yield request

    def masks(self, groups: Sequence[Sequence[str]], size: int) -> list[np.ndarray]:
        """For each group, the rows (of ``size``) that ask for one of its names."""
        rows = np.frombuffer(self._rows, dtype=np.int64)
        codes = np.frombuffer(self._codes, dtype=np.int32)
        masks = []
        for group in groups:
            mask = np.zeros(size, dtype=bool)
            wanted = [self.names[name] for name in group if name in self.names]
            mask[rows[np.isin(codes, wanted)]] = True
            masks.append(mask)
        return masks


@dataclass(frozen=True)
class Sizing:
    """What sizing the pending rows needs: the model's tokenizer folder and the job's default
    ``max_tokens``; ``on_sample`` is given the first rows' measure (before the rest is read)
    and returns the context its plan gives (None: measure every row)."""

    model_dir: Path | None
    default_max_tokens: int | None
    on_sample: Callable[[InputMeasure], int | None] | None = None


@dataclass(frozen=True)
class Scanned:
    index: InputIndex | None  # None: not validated (a resumption's index stands)
    digest: str | None  # None: not read
    measure: InputMeasure | None  # the pending rows', when sized


def scan(
    source: Source,
    builder: RequestBuilder,
    *,
    validate: bool,
    pending: np.ndarray | None = None,
    digest: bool = False,
    sizing: Sizing | None = None,
    cancelled: threading.Event | None = None,
    tally: ModelTally | None = None,
) -> Scanned:
    """One pass: validate (the id index), digest, size the ``pending`` rows (None: all). A run
    that is over sets ``cancelled``: the pass then stops (``ScanCancelled``) at its next row."""
    hasher = new_digest() if digest and source.reads_digest else None
    ids = DigestList()
    requests: Iterator[PreparedRequest]
    if validate:
        requests = iter_validated(source, builder, ids, digest=hasher)
        if pending is not None:
            requests = (r for r in requests if pending[r.index])
    else:
        requests = (builder.build(row) for row in source.rows(pending, digest=hasher))
    if cancelled is not None:
        requests = _until(cancelled, requests)
    if tally is not None:
        requests = tally.watch(requests)
    measure = None
    if sizing is None:
        collections.deque(requests, maxlen=0)  # the pass itself is the point
    else:
        measure = _size(requests, sizing)
    index = index_of(source, builder, ids) if validate else None
    name = None
    if digest:
        name = finish_digest(hasher) if hasher is not None else source.digest()
    return Scanned(index, name, measure)


class ScanCancelled(Exception):
    """The run the scan was for is over."""


def _until(cancelled: threading.Event, requests: Iterator[PreparedRequest]
           ) -> Iterator[PreparedRequest]:  # fmt: skip
    for request in requests:
        if cancelled.is_set():
            raise ScanCancelled
        yield request


def _size(requests: Iterator[PreparedRequest], sizing: Sizing) -> InputMeasure:
    folder, max_tokens = sizing.model_dir, sizing.default_max_tokens
    first = measure_requests(itertools.islice(requests, _sizing.SAMPLE_ROWS), folder, max_tokens)
    following = next(requests, None)
    first = dataclasses.replace(first, complete=following is None)
    context = sizing.on_sample(first) if sizing.on_sample is not None else None
    if following is None:
        return first
    rest = measure_requests(itertools.chain([following], requests), folder, max_tokens,
                            fits=context, keep_sample=False)  # fmt: skip
    return dataclasses.replace(
        first,
        rows=first.rows + rest.rows,
        complete=True,
        max_prompt_tokens=max(first.max_prompt_tokens, rest.max_prompt_tokens),
        max_needed_tokens=max(first.max_needed_tokens, rest.max_needed_tokens),
        unbounded_rows=first.unbounded_rows + rest.unbounded_rows,
    )
