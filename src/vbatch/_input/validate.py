"""The validating phase: one streaming pass over the whole input before any request is sent, as
OpenAI's Batch API does. Every row goes through the same builder the run will use, so a row that
passes here cannot fail to build later."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np

from .._config import MAX_REPORTED_ERRORS
from .._errors import InputError
from .._models import PreparedRequest
from .ids import DigestList, id_digest
from .requests import RequestBuilder
from .sources import Digest, Source

__all__ = ["BadRows", "InputIndex", "index_of", "iter_validated", "validate_input"]


@dataclass
class InputIndex:
    """What the validating pass learns that a resumed run needs again: row count, whether the
    rows are OpenAI Batch lines, and each row's id digest (by row index)."""

    rows: int
    batch_lines: bool
    digests: np.ndarray


@dataclass
class BadRows:
    """Bad rows and lines gathered instead of raised (the Batch API names every one in one
    answer): the first ``cap`` kept, the rest counted."""

    cap: int = MAX_REPORTED_ERRORS
    found: list[InputError] = field(default_factory=list)
    more: int = 0

    def add(self, error: InputError) -> None:
        if len(self.found) < self.cap:
            self.found.append(error)
        else:
            self.more += 1


def iter_validated(
    source: Source,
    builder: RequestBuilder,
    ids: DigestList,
    errors: BadRows | None = None,
    digest: Digest | None = None,
) -> Iterator[PreparedRequest]:
    """Build every row, adding its id to ``ids``, and yield its request: the validating pass,
    which a caller may also use for what else it needs of each row (sizing it). Raises
    ``InputError`` at the first bad row or line; with ``errors`` they are gathered there and
    the pass goes on to the end of the input."""
    rows = source.rows(digest=digest, on_bad_line=errors.add if errors is not None else None)
    while True:
        try:
            row = next(rows)
        except StopIteration:
            break
        except InputError as exc:  # the file itself (unreadable): no going on
            if errors is None:
                raise
            errors.add(exc)
            break
        try:
            request = builder.build(row)
        except InputError as exc:
            if errors is None:
                raise
            errors.add(exc)
            continue
        ids.append(request.id)
        yield request


def index_of(
    source: Source,
    builder: RequestBuilder,
    ids: DigestList,
    errors: BadRows | None = None,
) -> InputIndex:
    """The index of a finished validating pass, once no id is there twice."""
    try:
        if len(ids) == 0 and not (errors and errors.found):
            raise InputError(source.path, None, "the input has no rows")
        duplicates = ids.duplicates()
        if duplicates:
            _report_duplicate(source, builder, duplicates, skip_bad=errors is not None)
    except InputError as exc:
        if errors is None:
            raise
        errors.add(exc)
    return InputIndex(len(ids), bool(builder.batch_lines), ids.to_numpy())


def validate_input(
    source: Source, builder: RequestBuilder, errors: BadRows | None = None
) -> InputIndex:
    """Index the input in one validating pass (see ``iter_validated``)."""
    ids = DigestList()
    for _ in iter_validated(source, builder, ids, errors):
        pass
    return index_of(source, builder, ids, errors)


def _report_duplicate(
    source: Source, builder: RequestBuilder, digests: set[int], skip_bad: bool
) -> None:
    """Second pass, only when the digests collide: find the real duplicate and cite both lines
    (past bad lines, with ``skip_bad``: already reported)."""
    first_seen: dict[str, int] = {}
    for row in source.rows(on_bad_line=(lambda _: None) if skip_bad else None):
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
