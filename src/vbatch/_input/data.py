"""Python data as a source, for ``vbatch.generate`` and ``vbatch.stream``: a list (or any
iterable) of prompt strings, message lists or row dicts in the shapes a JSONL row takes; a pandas
or polars DataFrame; a pyarrow Table or RecordBatchReader; a Hugging Face ``Dataset`` or
``IterableDataset``. Rows are exported a chunk at a time by the library that holds them (Arrow
for tables and datasets), so the data is never copied whole.

Most of these can be read again from the start, as a file can: the run validates every row
before it sends one, and resumes. A generator (any iterator), a ``RecordBatchReader`` and an
``IterableDataset`` are read once, as the rows are sent (``one_pass``): bounded memory whatever
their length, sized on their first rows, and a bad row ends the run where it is.

Nothing here imports pandas, polars or datasets: a value is told apart by its type's module.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any, Literal

import numpy as np
import orjson

from .._errors import ConfigError, InputError
from .sources import Digest, RawRow, Source, finish_digest, new_digest

__all__ = ["DataInput", "DataKind", "DataSource", "check_no_clash", "data_input"]

DataKind = Literal[
    "list", "iterable", "pandas", "polars", "arrow", "reader", "dataset", "iterable_dataset"
]
_ONE_PASS = frozenset({"iterable", "reader", "iterable_dataset"})
_NAMES = {"list": "<list>", "iterable": "<iterable>", "pandas": "<DataFrame>",
          "polars": "<DataFrame>", "arrow": "<Table>", "reader": "<RecordBatchReader>",
          "dataset": "<Dataset>", "iterable_dataset": "<IterableDataset>"}  # fmt: skip
_CHUNK_ROWS = 4096
_DIGEST_OPTIONS = orjson.OPT_SORT_KEYS | orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS


class DataInput:
    """A job's input given as Python data: the value itself and what kind it is. Compared by
    identity (a job holding a DataFrame is not equal to one holding an equal copy)."""

    def __init__(self, data: Any, kind: DataKind) -> None:
        self.data = data
        self.kind: DataKind = kind
        self.batches: list[Any] = []  # a RecordBatchReader's batches as read, for the result

    @property
    def name(self) -> str:
        """What messages call it: ``<DataFrame>:4: ...`` is its fourth row."""
        return _NAMES[self.kind]

    @property
    def one_pass(self) -> bool:
        return self.kind in _ONE_PASS

    def __len__(self) -> int:
        if self.one_pass:
            raise TypeError(f"{self.name} has no length before it is read")
        return len(self.data)

    def columns(self) -> list[str] | None:
        """The column names of a frame, table or dataset (None: a list, or not known)."""
        data, kind = self.data, self.kind
        if kind in ("pandas", "polars"):
            return [str(c) for c in data.columns]
        if kind in ("arrow", "reader"):
            return list(data.schema.names)
        if kind in ("dataset", "iterable_dataset"):
            names = data.column_names
            return list(names) if names is not None else None
        return None

    def __repr__(self) -> str:
        return f"DataInput({self.name})"


def _module(value: Any) -> str:
    return type(value).__module__.split(".")[0]


def data_input(data: Any) -> DataInput:
    """What kind of data ``data`` is; a ``TypeError`` names what is accepted."""
    module, name = _module(data), type(data).__name__
    if module == "pandas" and name == "DataFrame":
        return DataInput(data, "pandas")
    if module == "polars" and name == "DataFrame":
        return DataInput(data, "polars")
    if module == "pyarrow" and name == "Table":
        return DataInput(data, "arrow")
    if module == "pyarrow" and name == "RecordBatchReader":
        return DataInput(data, "reader")
    if module == "datasets" and name == "Dataset":
        return DataInput(data, "dataset")
    if module == "datasets" and name == "IterableDataset":
        return DataInput(data, "iterable_dataset")
    if isinstance(data, (str, bytes, Mapping)):
        raise TypeError(f"expected rows (a list of prompts, messages or row dicts, a "
                        f"DataFrame, a Table or a Dataset), got one {name}: put it in a "
                        "list")  # fmt: skip
    if module in ("pandas", "polars", "pyarrow", "datasets"):
        raise TypeError(f"a {module} {name} is not an input vbatch reads; give a DataFrame, "
                        "Table, RecordBatchReader, Dataset or IterableDataset")  # fmt: skip
    if isinstance(data, Sequence):
        return DataInput(data, "list")
    if isinstance(data, Iterable):
        return DataInput(data, "iterable")
    raise TypeError(f"expected a path, a list of rows, a DataFrame, a Table or a Dataset, "
                    f"got {name}")  # fmt: skip


class DataSource(Source):
    """Rows of a ``DataInput``: a prompt string becomes ``{prompt_field: text}``, a list of
    messages ``{messages_field: messages}``, a dict (a frame's row) is the row itself."""

    format = "data"

    def __init__(self, given: DataInput, prompt_field: str, messages_field: str) -> None:
        self.given = given
        self.path = given.name
        self.one_pass = given.one_pass
        self._prompt_field = prompt_field
        self._messages_field = messages_field
        self._head: list[Any] = []  # a one-pass input's first items, read ahead (``head``)
        self._rest: Iterator[list[Any]] | None = None
        self._read = False

    # -- reading -----------------------------------------------------------------------------

    def rows(
        self,
        pending: np.ndarray | None = None,
        digest: Digest | None = None,
        limit: int | None = None,
        on_bad_line: Callable[[InputError], None] | None = None,
    ) -> Iterator[RawRow]:
        rows = self._rows(pending, digest, on_bad_line)
        return rows if limit is None else itertools.islice(rows, limit)

    @property
    def reads_digest(self) -> bool:
        return True

    def digest(self) -> str:
        hasher = new_digest()
        for _ in self.rows(digest=hasher, on_bad_line=lambda _: None):
            pass
        return finish_digest(hasher)

    def head(self, count: int) -> list[RawRow]:
        """A one-pass input's first ``count`` rows (bad ones left out), read ahead: the run
        plans and names the input on them; ``rows()`` still yields them first."""
        assert self.one_pass and not self._read
        if self._rest is None:
            self._rest = self._chunks()
        while len(self._head) < count:
            chunk = next(self._rest, None)
            if chunk is None:
                break
            self._head.extend(chunk)
        rows = []
        for index, item in enumerate(self._head[:count]):
            row = self._row(index, item)
            if not isinstance(row, InputError):
                rows.append(row)
        return rows

    def _rows(
        self,
        pending: np.ndarray | None,
        digest: Digest | None,
        on_bad_line: Callable[[InputError], None] | None,
    ) -> Iterator[RawRow]:
        index = 0
        for chunk in self._all_chunks(pending):
            for item in chunk:
                if pending is None or pending[index]:
                    row = self._row(index, item)
                    if isinstance(row, InputError):
                        if on_bad_line is None:
                            raise row
                        on_bad_line(row)
                    else:
                        if digest is not None:
                            digest.update(orjson.dumps(row.data, default=str,
                                                       option=_DIGEST_OPTIONS))  # fmt: skip
                        yield row
                index += 1

    def _all_chunks(self, pending: np.ndarray | None) -> Iterator[list[Any]]:
        if not self.one_pass:
            yield from self._chunks(pending)
            return
        if self._read:
            raise InputError(self.path, None, "a one-pass input (a generator, a reader, an "
                             "IterableDataset) can be read only once")  # fmt: skip
        self._read = True
        if self._rest is None:
            self._rest = self._chunks()
        head, self._head = self._head, []
        if head:
            yield head
        yield from self._rest

    def _row(self, index: int, item: Any) -> RawRow | InputError:
        if isinstance(item, str):
            return RawRow(index, index + 1, {self._prompt_field: item})
        if isinstance(item, dict):
            return RawRow(index, index + 1, item)
        if isinstance(item, Mapping):
            return RawRow(index, index + 1, dict(item))
        if isinstance(item, (list, tuple)):
            return RawRow(index, index + 1, {self._messages_field: list(item)})
        return InputError(self.path, index + 1, f"expected a prompt string, a list of messages "
                          f"or a row dict, got {type(item).__name__}")  # fmt: skip

    def _chunks(self, pending: np.ndarray | None = None) -> Iterator[list[Any]]:
        """The data's items a chunk at a time; chunks with no ``pending`` row are not exported
        (a resumption skips what is done without converting it)."""
        data, kind, size = self.given.data, self.given.kind, _CHUNK_ROWS

        def wanted(start: int, count: int) -> bool:
            return pending is None or bool(pending[start : start + count].any())

        if kind == "list":  # a slice costs as much as skipping it
            for start in range(0, len(data), size):
                yield list(data[start : start + size])
        elif kind == "pandas":
            for start in range(0, len(data), size):
                part = data.iloc[start : start + size]
                yield part.to_dict("records") if wanted(start, size) else [None] * len(part)
        elif kind == "polars":
            start = 0
            for part in data.iter_slices(size):
                yield part.to_dicts() if wanted(start, len(part)) else [None] * len(part)
                start += len(part)
        elif kind == "arrow":
            start = 0
            for batch in data.to_batches(max_chunksize=size):
                count = batch.num_rows
                yield batch.to_pylist() if wanted(start, count) else [None] * count
                start += count
        elif kind == "dataset":
            start = 0
            for table in data.with_format("arrow").iter(batch_size=size):
                count = table.num_rows
                yield table.to_pylist() if wanted(start, count) else [None] * count
                start += count
        elif kind == "reader":
            for batch in data:
                self.given.batches.append(batch)
                yield batch.to_pylist()
        elif kind == "iterable_dataset":
            for columns in data.iter(batch_size=size):
                yield [dict(zip(columns, values, strict=True))
                       for values in zip(*columns.values(), strict=True)]  # fmt: skip
        else:
            items = iter(data)
            while chunk := list(itertools.islice(items, size)):
                yield chunk


def check_no_clash(given: DataInput, added: Sequence[str]) -> None:
    """The columns a result adds must not replace the input's own."""
    columns = given.columns() or []
    clash = [c for c in added if c in columns]
    if clash:
        raise ConfigError(f"{given.name} already has column(s) {', '.join(clash)}, which the "
                          "results add: rename them first (a prompt column 'text' to 'prompt', "
                          "say)")  # fmt: skip
