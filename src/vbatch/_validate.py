"""The validating phase: one streaming pass over the whole input before any request is sent, as
OpenAI's Batch API does. Every row goes through the same builder the run will use, so a row that
passes here cannot fail to build later."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ._errors import InputError
from ._ids import DigestList, id_digest
from ._models import CHAT
from ._requests import RequestBuilder
from ._sources import Source

__all__ = ["InputSummary", "validate_input"]


@dataclass
class InputSummary:
    rows: int = 0
    chat_rows: int = 0
    batch_lines: bool = False
    rows_without_model: int = 0
    max_prompt_chars: int = 0  # longest prompt (text of all messages for chat), in characters
    max_requested_tokens: int | None = None  # largest max_tokens any row asks for
    digests: np.ndarray = field(default_factory=lambda: np.zeros(0, np.uint64))  # by row index


def validate_input(source: Source, builder: RequestBuilder) -> InputSummary:
    summary = InputSummary()
    ids = DigestList()
    for row in source.rows():
        request = builder.build(row)
        ids.append(request.id)
        body = request.body
        summary.rows += 1
        if request.endpoint == CHAT:
            summary.chat_rows += 1
            chars = sum(len(str(m.get("content") or "")) for m in body["messages"])
        else:
            chars = len(body["prompt"])
        summary.max_prompt_chars = max(summary.max_prompt_chars, chars)
        if not body.get("model"):
            summary.rows_without_model += 1
        wanted = body.get("max_tokens") or body.get("max_completion_tokens")
        if isinstance(wanted, int) and wanted > (summary.max_requested_tokens or 0):
            summary.max_requested_tokens = wanted
    if summary.rows == 0:
        raise InputError(source.path, None, "the input has no rows")
    summary.batch_lines = bool(builder.batch_lines)
    duplicates = ids.duplicates()
    if duplicates:
        _report_duplicate(source, builder, duplicates)
    summary.digests = ids.to_numpy()
    return summary


def _report_duplicate(source: Source, builder: RequestBuilder, digests: set[int]) -> None:
    """Second pass, only when the digests collide: find the real duplicate and cite both lines."""
    first_seen: dict[str, int] = {}
    for row in source.rows():
        request = builder.build(row)
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
