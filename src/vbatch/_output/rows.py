"""One row's outcome as ``vbatch.generate`` returns it: the same from a ``Result`` just received
and from a line an earlier run wrote (a resumed job's finished rows come back from its output).
Its fields are the columns ``generate`` adds to a frame, a table or a dataset (``shape.py``)."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from .._batchline import is_output_line, output_line_status
from .._input.ids import id_key
from .._models import Result, body_texts, usage_tokens
from .._schema import Schema
from .records import body_embeddings

__all__ = ["FIELDS", "ResultColumns", "RowResult", "read_rows"]


@dataclass(frozen=True, slots=True)
class RowResult:
    """A row's text (a list of them for ``n`` > 1) and why it ended, its token counts, or why it
    failed (``error``: ``"code: message"``, the text then None); ``embedding`` for an
    embeddings job (a list of vectors where the row's input was a list). A row of a job with a
    schema has ``parsed`` (the JSON value, or the pydantic model's instance; a list for
    ``n`` > 1) or ``schema_error`` (``"code: message"``: ``cut_off``, ``invalid_json``,
    ``schema_mismatch``), its text kept."""

    id: str | int
    text: Any = None
    finish_reason: Any = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    error: str | None = None
    embedding: Any = None
    parsed: Any = None
    schema_error: str | None = None

    @property
    def ok(self) -> bool:
        """It succeeded, and its reply fits its schema where it had one."""
        return self.error is None and self.schema_error is None

    @classmethod
    def from_result(cls, result: Result) -> RowResult:
        if result.error is not None:
            return cls(result.id, error=f"{result.error.code}: {result.error.message}")
        row = cls._from_body(result.id, result.body or {})
        checked = result.checked
        if checked is None:
            return row
        error = checked.error
        return replace(
            row,
            parsed=checked.parsed,
            schema_error=None if error is None else f"{error.code}: {error.message}",
        )

    def typed(self, schema: Schema | None) -> RowResult:
        """This row with ``parsed`` as ``schema`` gives it (a pydantic model's instance)."""
        if schema is None or schema.model is None or self.parsed is None:
            return self
        return replace(self, parsed=schema.instance(self.parsed, many=isinstance(self.text, list)))

    @classmethod
    def from_line(cls, line: dict[str, Any]) -> RowResult:
        """From an output line: vbatch's record, or an OpenAI Batch output line."""
        if is_output_line(line):
            row_id, ok = output_line_status(line)
            response = line.get("response") or {}
            if ok:
                return cls._from_body(row_id, response.get("body") or {})
            error = line.get("error") or _body_error(response)
            return cls(row_id, error=f"{error.get('code')}: {error.get('message')}")
        if line.get("error") is not None:
            error = line["error"]
            return cls(line["id"], error=f"{error.get('code')}: {error.get('message')}")
        usage = line.get("usage") or {}
        schema_error = line.get("schema_error")
        return cls(line["id"], line.get("text"), line.get("finish_reason"),
                   int(usage.get("prompt_tokens") or 0),
                   int(usage.get("completion_tokens") or 0), None,
                   line.get("embedding"), line.get("parsed"),
                   None if schema_error is None
                   else f"{schema_error.get('code')}: {schema_error.get('message')}")  # fmt: skip

    @classmethod
    def _from_body(cls, row_id: str | int, body: dict[str, Any]) -> RowResult:
        prompt, completion = usage_tokens(body)
        if "data" in body and "choices" not in body:  # embeddings
            vectors = body_embeddings(body)
            embedding = vectors[0] if len(vectors) == 1 else vectors
            return cls(row_id, prompt_tokens=prompt, embedding=embedding)
        choices: list[Any] = body.get("choices") or []
        texts, reasons = body_texts(body, chat=bool(choices) and "message" in choices[0])
        # A handful of values a million times: one string each ("stop", "length"), not one a row.
        reasons = [_intern(r) for r in reasons]
        one = len(texts) == 1
        return cls(row_id, texts[0] if one else texts, reasons[0] if one else reasons,
                   prompt, completion)  # fmt: skip


FIELDS = tuple(f.name for f in fields(RowResult))


class ResultColumns:
    """Results by row position, one array per field: numpy arrays, which the garbage collector
    does not walk (a million ``RowResult`` objects, or lists of a million values, it walks at
    every full collection: ~10% of a million-row ``generate``, docs/benchmarks.md §1).
    ``size`` None: the rows' number is learnt as they come (an input read once)."""

    _INTS = ("prompt_tokens", "completion_tokens")

    def __init__(self, size: int | None) -> None:
        self._size = size or 0
        self._grows = size is None
        self._arrays = {name: self._empty(name, max(self._size, 1024 if self._grows else 0))
                        for name in FIELDS}  # fmt: skip
        self._filled = np.zeros(len(self._arrays["id"]), dtype=bool)

    def _empty(self, name: str, size: int) -> np.ndarray:
        return np.zeros(size, np.int64) if name in self._INTS else np.full(size, None, object)

    def __len__(self) -> int:
        return self._size

    def put(self, index: int, row: RowResult) -> None:
        if index >= self._size:
            if not self._grows:
                raise IndexError(index)
            self._size = index + 1
            if self._size > len(self._filled):
                capacity = max(2 * len(self._filled), self._size)
                for name, array in self._arrays.items():
                    grown = self._empty(name, capacity)
                    grown[: len(array)] = array
                    self._arrays[name] = grown
                filled = np.zeros(capacity, dtype=bool)
                filled[: len(self._filled)] = self._filled
                self._filled = filled
        for name, array in self._arrays.items():
            array[index] = getattr(row, name)
        self._filled[index] = True

    def any_checked(self) -> bool:
        """Some row was checked against a schema (its own, where the job has none)."""
        size = self._size
        return any(value is not None for name in ("parsed", "schema_error")
                   for value in self._arrays[name][:size])  # fmt: skip

    def missing(self) -> np.ndarray:
        """True for each row without a result yet."""
        return ~self._filled[: self._size]

    def values(self, name: str) -> list[Any]:
        return list(self._arrays[name][: self._size].tolist())

    def rows(self) -> list[RowResult]:
        columns = [self.values(name) for name in FIELDS]
        return [RowResult(*values) for values in zip(*columns, strict=True)]


def _intern(value: Any) -> Any:
    return sys.intern(value) if isinstance(value, str) else value


def _body_error(response: dict[str, Any]) -> dict[str, Any]:
    body = response.get("body") or {}
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, dict):
        return {"code": error.get("code") or error.get("type"), "message": error.get("message")}
    return {"code": f"http_{response.get('status_code')}", "message": str(body)[:500]}


def read_rows(path: str | Path) -> Iterator[tuple[bytes, RowResult]]:
    """(id key, row) of every whole line of an output file (``id_key``: 5 and "5" are one)."""
    with open(path, "rb") as f:
        for raw in f:
            try:
                line = orjson.loads(raw)
            except orjson.JSONDecodeError:
                continue  # a torn last line: the run that resumed it wrote the row again
            row = RowResult.from_line(line)
            yield id_key(row.id), row
