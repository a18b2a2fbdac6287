"""``generate``'s results in the shape of its input: a list for a list (or any iterable), the
same kind of frame, table or dataset with the result columns added for the others. The input is
not changed: pandas and polars share its columns with the new frame, Arrow and datasets append
to its table without copying it."""

from __future__ import annotations

from typing import Any

import orjson

from .._input.data import DataInput
from .rows import ResultColumns

__all__ = ["COLUMNS", "EMBEDDING_COLUMNS", "result_columns", "shaped"]

COLUMNS = ("text", "finish_reason", "prompt_tokens", "completion_tokens", "error")
EMBEDDING_COLUMNS = ("embedding", "prompt_tokens", "error")
SCHEMA_COLUMNS = ("parsed", "schema_error")  # a job with a schema adds these


def result_columns(embeddings: bool, structured: bool = False) -> tuple[str, ...]:
    if embeddings:
        return EMBEDDING_COLUMNS
    return COLUMNS + SCHEMA_COLUMNS if structured else COLUMNS


def _columns(results: ResultColumns, embeddings: bool, structured: bool) -> dict[str, list[Any]]:
    columns = {name: results.values(name) for name in result_columns(embeddings, structured)}
    if "parsed" in columns:  # a frame holds JSON values, not a pydantic model's instances
        columns["parsed"] = [_json_value(v) for v in columns["parsed"]]
    for name in ("text", "finish_reason"):
        values = columns.get(name)
        if values is not None and any(isinstance(v, list) for v in values):
            # n > 1 somewhere: a list in every row, so that the column has one type.
            columns[name] = [v if isinstance(v, list) or v is None else [v] for v in values]
    return columns


def shaped(given: DataInput, results: ResultColumns, embeddings: bool, structured: bool) -> Any:
    """``structured``: the job had a schema (a ``parsed`` and a ``schema_error`` column; frames
    hold the parsed JSON values, lists the pydantic instances where a model was given)."""
    kind, data = given.kind, given.data
    if kind in ("list", "iterable"):
        return results.rows()
    columns = _columns(results, embeddings, structured)
    if kind == "pandas":
        import pandas as pd

        return data.assign(**{n: pd.Series(v, index=data.index, dtype=_pandas_dtype(n, v))
                              for n, v in columns.items()})  # fmt: skip
    if kind == "polars":
        import polars as pl

        added = pl.from_arrow(_arrow(columns))
        assert isinstance(added, pl.DataFrame)
        return data.hstack(added)
    if kind in ("arrow", "reader"):
        import pyarrow as pa

        table = data if kind == "arrow" else pa.Table.from_batches(given.batches, data.schema)
        for name, array in zip(columns, _arrow(columns).columns, strict=True):
            table = table.append_column(name, array)
        return table
    if kind == "dataset":
        import datasets
        from datasets.table import InMemoryTable

        added = datasets.Dataset(InMemoryTable(_arrow(columns)))
        return datasets.concatenate_datasets([data, added], axis=1)

    def add(row: dict[str, Any], index: int) -> dict[str, Any]:
        return {name: values[index] for name, values in columns.items()}

    return data.map(add, with_indices=True)  # an IterableDataset: read again, results added


def _arrow(columns: dict[str, list[Any]]) -> Any:
    """The result columns as an Arrow table, typed whatever their values (all None included)."""
    import pyarrow as pa

    text = pa.string()
    types = {"prompt_tokens": pa.int64(), "completion_tokens": pa.int64(), "error": text,
             "schema_error": text}  # fmt: skip
    for name in ("text", "finish_reason"):
        if name in columns:
            lists = any(isinstance(v, list) for v in columns[name])
            types[name] = pa.list_(text) if lists else text
    arrays = {n: _parsed_array(v) if n == "parsed" else pa.array(v, type=types.get(n))
              for n, v in columns.items()}  # fmt: skip
    return pa.table(arrays)


def _json_value(value: Any) -> Any:
    if isinstance(value, list):
        return [_json_value(v) for v in value]
    dump = getattr(value, "model_dump", None)
    return dump(mode="json") if callable(dump) else value


def _parsed_array(values: list[Any]) -> Any:
    """Parsed values as Arrow infers them (objects of one shape: a struct column); values of
    shapes no one type holds (a field a number here, a string there): their JSON text."""
    import pyarrow as pa

    try:
        return pa.array(values)
    except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError):
        return pa.array([None if v is None else orjson.dumps(v).decode() for v in values],
                        type=pa.string())  # fmt: skip


def _pandas_dtype(name: str, values: list[Any]) -> str | None:
    if name in ("prompt_tokens", "completion_tokens"):
        return "int64"
    return "object" if any(isinstance(v, list) for v in values) else None
