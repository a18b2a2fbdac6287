"""A batch's input checked line by line before any request is sent: the core's streaming
validation pass (``_input/validate.py``, the same request builder the run uses) collecting
every bad line instead of stopping at the first, plus the Batch API's own rules: OpenAI Batch
lines only, all on the batch's endpoint, within the line limit. A valid batch's custom_ids come
back too (by row), for the service to keep."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from .._config import EndpointMode
from .._errors import InputError
from .._input.requests import RequestBuilder
from .._input.sources import RawRow, open_source
from .._input.validate import BadRows, validate_input
from .._models import PreparedRequest, RequestDefaults
from .objects import batch_error

__all__ = ["ENDPOINTS", "IdKeepingBuilder", "Validation", "default_model", "validate_batch"]

# The endpoints a batch may name, as the core's --endpoint modes.
ENDPOINTS: dict[str, EndpointMode] = {
    "/v1/chat/completions": "chat",
    "/v1/completions": "completions",
    "/v1/embeddings": "embeddings",
    "/v1/responses": "responses",
    "/v1/score": "score",
    "/v1/rerank": "rerank",
}


@dataclass
class Validation:
    rows: int = 0
    errors: list[dict[str, Any]] = field(default_factory=list)  # BatchError objects
    custom_ids: list[str] = field(default_factory=list)  # by row, when there are no errors


def default_model(served: Sequence[str] | None) -> RequestDefaults:
    """Lines without a model go to the fleet's model when it serves one (as the core does)."""
    if served is not None and len(served) == 1:
        return RequestDefaults(model=served[0])
    return RequestDefaults()


class IdKeepingBuilder(RequestBuilder):
    """The run's request builder, keeping each row's id as it builds it (the first ``limit``
    + 1: past ``limit`` rows the batch fails anyway), for the batch's custom_ids."""

    def __init__(self, path: str, endpoint: str, served: Sequence[str] | None, limit: int):
        hint = f"the service serves {', '.join(served)}" if served else ""
        super().__init__(path, default_model(served), endpoint=ENDPOINTS[endpoint],
                         served=served, model_hint=hint, batch_only=True)  # fmt: skip
        self.limit = limit
        self.ids: list[str] = []

    def build(self, row: RawRow) -> PreparedRequest:
        request = super().build(row)
        if len(self.ids) <= self.limit:
            self.ids.append(str(request.id))
        return request


def validate_batch(
    path: str, endpoint: str, served: Sequence[str] | None, max_lines: int
) -> Validation:
    """Every bad line of the input at ``path`` (one streaming pass; blocking: run it in a
    thread)."""
    builder = IdKeepingBuilder(path, endpoint, served, max_lines)
    problems = BadRows()
    try:
        index = validate_input(open_source(path, "jsonl"), builder, problems)
    except InputError as exc:  # the file itself
        problems.add(exc)
        index = None
    result = Validation(rows=index.rows if index is not None else 0)
    for problem in problems.found:
        code = "duplicate_custom_id" if "duplicate id" in problem.message else "invalid_request"
        result.errors.append(batch_error(code, problem.message, line=problem.line))
    if problems.more:
        result.errors.append(batch_error(
            "invalid_request", f"and {problems.more:,} more bad lines; the first "
            f"{problems.cap} are named"))  # fmt: skip
    if result.rows > max_lines:
        result.errors.append(batch_error(
            "too_many_requests", f"the input has {result.rows:,} lines; a batch takes at most "
            f"{max_lines:,}"))  # fmt: skip
    if not result.errors:
        result.custom_ids = builder.ids
    return result
