"""Parquet copy of a finished results file, for analysis tools (pandas, DuckDB, Spark).

The JSONL stays the record of truth (crash-safe, resumable); the Parquet file is written from it
in batches once the run is over, and appears whole (written aside, then renamed). Columns are
typed and flat; ``text`` and ``finish_reason`` are lists (one item per choice) so that ``n > 1``
fits the same schema; ``embedding`` likewise holds one vector per input of an embeddings row
(float ones: ``encoding_format`` base64 stays JSONL). A schema job's ``parsed`` values are
their JSON text, one per choice (DuckDB's and Spark's JSON functions read them; no one Arrow
type holds every schema), beside ``schema_error_code`` and ``schema_error_message``.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import orjson

from .._batchline import is_output_line
from .._errors import OutputError

__all__ = ["write_parquet"]

_BATCH = 50_000


def _schema() -> Any:
    import pyarrow as pa

    return pa.schema([
        ("id", pa.string()), ("text", pa.list_(pa.string())),
        ("finish_reason", pa.list_(pa.string())), ("prompt_tokens", pa.int64()),
        ("completion_tokens", pa.int64()), ("error_code", pa.string()),
        ("error_message", pa.string()), ("error_status", pa.int64()), ("attempts", pa.int64()),
        ("latency_s", pa.float64()), ("clamped_max_tokens", pa.int64()),
        ("embedding", pa.list_(pa.list_(pa.float32()))), ("parsed", pa.list_(pa.string())),
        ("schema_error_code", pa.string()), ("schema_error_message", pa.string()),
    ])  # fmt: skip


def _as_list(value: Any) -> list[Any] | None:
    if value is None:
        return None
    return (
        [str(v) if v is not None else None for v in value]
        if isinstance(value, list)
        else [str(value)]
    )


def _rows(path: str) -> Iterator[dict[str, Any]]:
    with open(path, "rb") as f:
        for line_no, line in enumerate(f, start=1):
            rec = orjson.loads(line)
            if is_output_line(rec):
                raise OutputError(f"{path}:{line_no}: --parquet applies to vbatch records; "
                                  "OpenAI Batch output stays JSONL")  # fmt: skip
            usage = rec.get("usage") or {}
            embedding = rec.get("embedding")
            if isinstance(embedding, list) and embedding and not isinstance(embedding[0], list):
                embedding = [embedding]  # one input: one vector
            if embedding is not None and not all(isinstance(v, list) for v in embedding):
                raise OutputError(f"{path}:{line_no}: --parquet holds float embeddings; "
                                  "base64 ones stay JSONL")  # fmt: skip
            error = rec.get("error") or {}
            schema_error = rec.get("schema_error") or {}
            parsed = rec.get("parsed")
            if "parsed" in rec:  # a schema job's row: one JSON text per choice
                choices = parsed if isinstance(rec.get("text"), list) else [parsed]
                parsed = [None if v is None else orjson.dumps(v).decode() for v in choices]
            yield {
                "id": str(rec["id"]),
                "text": _as_list(rec.get("text")),
                "finish_reason": _as_list(rec.get("finish_reason")),
                "prompt_tokens": usage.get("prompt_tokens"),
                "completion_tokens": usage.get("completion_tokens"),
                "error_code": error.get("code"),
                "error_message": error.get("message"),
                "error_status": error.get("status"),
                "attempts": rec.get("attempts"),
                "latency_s": rec.get("latency_s"),
                "clamped_max_tokens": rec.get("clamped_max_tokens"),
                "embedding": embedding,
                "parsed": parsed,
                "schema_error_code": schema_error.get("code"),
                "schema_error_message": schema_error.get("message"),
            }


def write_parquet(results_jsonl: str, parquet_path: str) -> int:
    """Write ``parquet_path`` from a vbatch results file; returns the number of rows."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = _schema()
    tmp = parquet_path + ".partial"
    count = 0
    try:
        with pq.ParquetWriter(tmp, schema) as writer:
            batch: list[dict[str, Any]] = []
            for row in _rows(results_jsonl):
                batch.append(row)
                if len(batch) >= _BATCH:
                    writer.write_table(pa.Table.from_pylist(batch, schema=schema))
                    count += len(batch)
                    batch.clear()
            if batch or count == 0:
                writer.write_table(pa.Table.from_pylist(batch, schema=schema))
                count += len(batch)
        os.replace(tmp, parquet_path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return count
