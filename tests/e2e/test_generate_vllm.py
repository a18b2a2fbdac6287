"""``vbatch.generate`` over every kind of Python data against real vLLM (the session's CPU
server): each comes back in its own kind, in its rows' order. Each row asks for its own number
of tokens with ``ignore_eos``, so the order shows in ``completion_tokens`` whatever the model
writes."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import datasets
import pandas as pd
import polars as pl
import pyarrow as pa
import pytest

import vbatch
from vbatch._engine.server import VllmServer

pytestmark = pytest.mark.vllm

ROWS = [{"prompt": f"Count to {k}:", "max_tokens": k, "ignore_eos": True} for k in (3, 1, 4, 2)]
WANTED = [3, 1, 4, 2]


def column(out: Any, name: str) -> list[Any]:
    if isinstance(out, list):
        return [getattr(r, name) for r in out]
    if isinstance(out, pa.Table):
        return list(out.column(name).to_pylist())
    if isinstance(out, datasets.IterableDataset):
        return [row[name] for row in out]
    return list(out[name])


def test_every_kind_of_data_in_its_shape(vllm_server: VllmServer) -> None:
    def rows() -> Iterator[dict[str, Any]]:
        yield from ROWS

    frame = pd.DataFrame(ROWS)
    table = pa.Table.from_pandas(frame)
    inputs: list[tuple[Any, type]] = [
        (ROWS, list),
        (rows(), list),
        (frame, pd.DataFrame),
        (pl.from_pandas(frame), pl.DataFrame),
        (table, pa.Table),
        (pa.RecordBatchReader.from_batches(table.schema, table.to_batches()), pa.Table),
        (datasets.Dataset.from_pandas(frame), datasets.Dataset),
        (datasets.IterableDataset.from_generator(rows), datasets.IterableDataset),
    ]
    for data, kind in inputs:
        out = vbatch.generate(data, base_url=vllm_server.base_url, temperature=0,
                              progress=False)  # fmt: skip
        assert isinstance(out, kind), (type(data), type(out))
        assert column(out, "completion_tokens") == WANTED, type(data)
        assert column(out, "error") == [None] * 4, type(data)
        assert all(isinstance(t, str) and t for t in column(out, "text")), type(data)
