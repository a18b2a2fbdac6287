"""Input readers: stream rows from JSONL, CSV or Parquet without holding the file in memory
(Python data, a list or a DataFrame, is ``data.py``'s source of the same kind).

A source yields ``RawRow(index, line, data)``: ``index`` counts rows from 0, ``line`` is what error
messages cite (the file's line for JSONL and CSV, the 1-based row number for Parquet and data).
"""

from __future__ import annotations

import codecs
import hashlib
import itertools
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import orjson

from .._config import InputFormat
from .._errors import InputError

__all__ = [
    "Digest",
    "FileSource",
    "RawRow",
    "Source",
    "detect_format",
    "file_digest",
    "open_source",
]


class Digest(Protocol):
    """What ``hashlib`` objects offer: the input's digest is taken while it is read."""

    def update(self, data: bytes, /) -> None: ...

    def hexdigest(self) -> str: ...


def new_digest() -> Digest:
    return hashlib.sha256()


def finish_digest(digest: Digest) -> str:
    return digest.hexdigest()[:32]


def file_digest(path: str) -> str:
    """Content identity of the input: a renamed or touched file still resumes, an edited one not."""
    with open(path, "rb") as f:
        return finish_digest(hashlib.file_digest(f, "sha256"))


_EXTENSIONS = {
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".json": "jsonl",
    ".csv": "csv",
    ".parquet": "parquet",
    ".pq": "parquet",
}
_BATCH_ROWS = 4096


@dataclass(slots=True)
class RawRow:
    index: int
    line: int
    data: dict[str, Any]


def detect_format(path: str, fmt: InputFormat = "auto") -> str:
    if fmt != "auto":
        return fmt
    name = path.lower()
    for ext in (".gz", ".zst"):
        if name.endswith(ext):
            raise InputError(path, None, "compressed input is not supported; decompress it first")
    suffix = os.path.splitext(name)[1]
    if suffix in _EXTENSIONS:
        return _EXTENSIONS[suffix]
    raise InputError(
        path,
        None,
        f"unknown input format (extension {suffix or 'none'!r}); "
        "use .jsonl, .csv or .parquet, or pass --input-format",
    )


class Source:
    """Where rows come from. ``path`` names it in messages; ``rows()`` streams it from the start
    again on each call, except for a ``one_pass`` source (a generator), which the run reads
    once, as it sends."""

    path: str
    format: str
    one_pass: bool = False

    def rows(
        self,
        pending: np.ndarray | None = None,
        digest: Digest | None = None,
        limit: int | None = None,
        on_bad_line: Callable[[InputError], None] | None = None,
    ) -> Iterator[RawRow]:
        raise NotImplementedError

    @property
    def reads_digest(self) -> bool:
        """Whether ``rows(digest=...)`` feeds the digest; else ``digest()`` reads it apart."""
        return False

    def digest(self) -> str:
        """The input's identity for resuming: a changed input must not resume (one pass)."""
        raise NotImplementedError


class FileSource(Source):
    """A re-readable input file. Each ``rows()`` call streams it again from the start."""

    def __init__(self, path: str, fmt: str) -> None:
        self.path = path
        self.format = fmt

    def rows(
        self,
        pending: np.ndarray | None = None,
        digest: Digest | None = None,
        limit: int | None = None,
        on_bad_line: Callable[[InputError], None] | None = None,
    ) -> Iterator[RawRow]:
        """Stream the rows; with ``pending`` (a bool mask by row index) skip the others cheaply.

        Skipped JSONL lines are not even parsed, which is what makes resuming a nearly finished
        million-row job start sending within seconds. ``digest`` is fed every byte of a JSONL
        file as it is read (``reads_digest``), so the pass that reads rows also names the
        input; after ``limit`` rows the rest is only hashed, not parsed. A JSONL line that is
        not a JSON object raises ``InputError``, or with ``on_bad_line`` is handed to it and
        skipped (it is no row), so that a pass can name every bad line.
        """
        if self.format == "jsonl":
            return self._jsonl(pending, digest, limit, on_bad_line)
        if self.format == "csv":
            rows = self._arrow(self._csv_batches(), pending, line_offset=2)
        else:
            rows = self._arrow(self._parquet_batches(), pending, line_offset=1)
        return rows if limit is None else itertools.islice(rows, limit)

    @property
    def reads_digest(self) -> bool:
        return self.format == "jsonl"

    def digest(self) -> str:
        return file_digest(self.path)

    def _jsonl(
        self,
        pending: np.ndarray | None,
        digest: Digest | None,
        limit: int | None,
        on_bad_line: Callable[[InputError], None] | None = None,
    ) -> Iterator[RawRow]:
        index = 0
        yielded = 0
        with open(self.path, "rb") as f:
            bom = f.read(len(codecs.BOM_UTF8))
            if bom != codecs.BOM_UTF8:  # as Windows tools write them
                f.seek(0)
            elif digest is not None:
                digest.update(bom)
            for line_no, line in enumerate(f, start=1):
                if digest is not None:
                    digest.update(line)
                if limit is not None and yielded >= limit:
                    if digest is None:
                        return
                    continue  # hashed, not parsed
                if not line.strip():
                    continue
                if pending is not None and not pending[index]:
                    index += 1
                    continue
                try:
                    data = orjson.loads(line)
                    bad = None
                except orjson.JSONDecodeError as exc:
                    bad = InputError(self.path, line_no, f"malformed JSON: {exc}")
                if bad is None and not isinstance(data, dict):
                    kind = type(data).__name__
                    bad = InputError(self.path, line_no, f"expected a JSON object, got {kind}")
                if bad is not None:
                    if on_bad_line is None:
                        raise bad
                    on_bad_line(bad)
                    continue
                yield RawRow(index, line_no, data)
                index += 1
                yielded += 1

    def _csv_batches(self) -> Iterator[Any]:
        import pyarrow as pa
        import pyarrow.csv as pacsv

        # Every column as text: a prompt column of digits must stay the string the user wrote.
        try:
            with open(self.path, "rb") as probe:
                header = probe.readline()
            names = pacsv.read_csv(
                pa.py_buffer(header), read_options=pacsv.ReadOptions(block_size=1 << 20)
            ).column_names
            reader = pacsv.open_csv(
                self.path,
                read_options=pacsv.ReadOptions(block_size=1 << 22),
                convert_options=pacsv.ConvertOptions(
                    column_types={n: pa.string() for n in names},
                    strings_can_be_null=False,
                ),
            )
            yield from reader
        except (pa.ArrowInvalid, OSError) as exc:
            raise InputError(self.path, None, f"cannot read CSV: {exc}") from None

    def _parquet_batches(self) -> Iterator[Any]:
        import pyarrow as pa
        import pyarrow.parquet as pq

        try:
            yield from pq.ParquetFile(self.path).iter_batches(batch_size=_BATCH_ROWS)
        except (pa.ArrowInvalid, OSError) as exc:
            raise InputError(self.path, None, f"cannot read Parquet: {exc}") from None

    @staticmethod
    def _arrow(
        batches: Iterator[Any], pending: np.ndarray | None, line_offset: int
    ) -> Iterator[RawRow]:
        index = 0
        for batch in batches:
            if pending is not None and not pending[index : index + batch.num_rows].any():
                index += batch.num_rows
                continue
            for data in batch.to_pylist():
                if pending is None or pending[index]:
                    yield RawRow(index, index + line_offset, data)
                index += 1


def open_source(path: str, fmt: InputFormat = "auto") -> Source:
    detected = detect_format(path, fmt)
    if not os.path.isfile(path):
        raise InputError(path, None, "no such file")
    if not os.access(path, os.R_OK):
        raise InputError(path, None, "file is not readable")
    return FileSource(path, detected)
