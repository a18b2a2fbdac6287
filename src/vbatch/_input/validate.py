"""The validating phase: one streaming pass over the whole input before any request is sent, as
OpenAI's Batch API does. Every row goes through the same builder the run will use, so a row that
passes here cannot fail to build later."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from .._config import MAX_REPORTED_ERRORS
from .._errors import InputError
from .._models import PreparedRequest
from .ids import DigestList, id_digest
from .requests import RequestBuilder
from .sources import Digest, Source

__all__ = ["InputIndex", "index_of", "iter_validated", "validate_input"]


@dataclass
class InputIndex:
    """What the validating pass learns that a resumed run needs again: row count, whether the
    rows are OpenAI Batch lines, and each row's id digest (by row index)."""

    rows: int
    batch_lines: bool
    digests: np.ndarray


def iter_validated(
    source: Source,
    builder: RequestBuilder,
    ids: DigestList,
    errors: list[InputError] | None = None,
    max_errors: int = MAX_REPORTED_ERRORS,
    digest: Digest | None = None,
) -> Iterator[PreparedRequest]:
    """Build every row, adding its id to ``ids``, and yield its request: the validating pass,
    which a caller may also use for what else it needs of each row (sizing it). Raises
    ``InputError`` at the first bad row; with ``errors`` (the Batch API names every bad line)
    bad rows are added there instead and the pass goes on, up to ``max_errors`` of them or a
    line that is not JSON at all."""
    rows = source.rows(digest=digest)
    while True:
        try:
            row = next(rows)
        except StopIteration:
            break
        except InputError as exc:  # the file itself (a line that is not JSON): no going on
            if errors is None:
                raise
            errors.append(exc)
            break
        try:
            request = builder.build(row)
        except InputError as exc:
            if errors is None:
                raise
            errors.append(exc)
            if len(errors) >= max_errors:
                break
            continue
        ids.append(request.id)
        yield request


def index_of(
    source: Source,
    builder: RequestBuilder,
    ids: DigestList,
    errors: list[InputError] | None = None,
) -> InputIndex:
    """The index of a finished validating pass, once no id is there twice."""
    try:
        if len(ids) == 0 and not errors:
            raise InputError(source.path, None, "the input has no rows")
        duplicates = ids.duplicates()
        if duplicates:
            _report_duplicate(source, builder, duplicates)
    except InputError as exc:
        if errors is None:
            raise
        errors.append(exc)
    return InputIndex(len(ids), bool(builder.batch_lines), ids.to_numpy())


def validate_input(
    source: Source,
    builder: RequestBuilder,
    errors: list[InputError] | None = None,
    max_errors: int = MAX_REPORTED_ERRORS,
) -> InputIndex:
    """Index the input in one validating pass (see ``iter_validated``)."""
    ids = DigestList()
    for _ in iter_validated(source, builder, ids, errors, max_errors):
        pass
    return index_of(source, builder, ids, errors)


def _report_duplicate(source: Source, builder: RequestBuilder, digests: set[int]) -> None:
    """Second pass, only when the digests collide: find the real duplicate and cite both lines."""
    first_seen: dict[str, int] = {}
    for row in source.rows():
        try:
            request = builder.build(row)
        except InputError:
            continue  # already reported (errors collected): not a duplicate
        if id_digest(request.id) not in digests:
            continue
        key = str(request.id)
        if key in first_seen:
            raise InputError(
                source.path,
                row.line,
                f"duplicate id {request.id!r} (first seen on line {first_seen[key]})",
            )
        first_seen[key] = row.line
