"""The end of a batch: rows never sent get ``batch_expired`` lines when it expired, then its
output and error files are tallied (counts, token usage) and become files of purpose
``batch_output``. Every step can run again after a crash: the expired lines are written only
for rows neither file holds yet, and the tally is read from the files themselves. The rows'
custom_ids come from the service's database (kept at validation), not the input."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .._errors import OutputError
from .._input.ids import DigestList
from .._input.sources import open_source
from .._models import COMPLETIONS, ErrorInfo, Result
from .._output.resume import pending_mask
from .._output.scan import RecordScan
from .._output.split import SplitResultWriter

__all__ = ["EXPIRED", "Tally", "input_custom_ids", "tally", "write_expired"]

EXPIRED = ErrorInfo(
    "batch_expired",
    "This request could not be executed before the completion window expired.",
)


def write_expired(writer: SplitResultWriter, custom_ids: Sequence[str]) -> int:
    """A ``batch_expired`` error line for each of the batch's rows (``custom_ids``, in input
    order) that neither file holds."""
    writer.lock()
    try:
        done = writer.scan(False).done if writer.holds_results() else np.zeros(0, np.uint64)
        ids = DigestList()
        for custom_id in custom_ids:
            ids.append(custom_id)
        pending = pending_mask(ids.to_numpy(), done)
        writer.open(True)
        written = 0
        for index in np.flatnonzero(pending):
            custom_id = custom_ids[index]
            writer.write(Result(int(index), custom_id, COMPLETIONS, None, None, EXPIRED, 0, 0.0))
            written += 1
        return written
    finally:
        writer.close()


def input_custom_ids(input_path: str) -> list[str]:
    """The custom_ids of a batch's input, read from the input itself: for a batch validated
    before the service kept them in its database."""
    return [row.data["custom_id"] for row in open_source(input_path, "jsonl").rows()]


@dataclass
class Tally:
    completed: int = 0
    failed: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cached_tokens: int = 0

    def usage(self) -> dict[str, Any]:
        return {
            "input_tokens": self.input_tokens,
            "input_tokens_details": {"cached_tokens": self.cached_tokens},
            "output_tokens": self.output_tokens,
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": self.input_tokens + self.output_tokens,
        }


def tally(output_path: str, errors_path: str) -> Tally:
    """Counts and token usage, read from the finished files (whole lines only)."""
    result = Tally()
    if os.path.exists(errors_path):
        result.failed = sum(1 for _ in RecordScan(errors_path).whole_lines())
    if not os.path.exists(output_path):
        return result
    for record in RecordScan(output_path, OutputError, "the batch's output is damaged").records():
        result.completed += 1
        body = (record.data.get("response") or {}).get("body") or {}
        usage = body.get("usage") or {}
        # Chat, completions, embeddings, score, rerank: prompt/completion; responses: input/output.
        result.input_tokens += int(usage.get("prompt_tokens") or usage.get("input_tokens") or 0)
        result.output_tokens += int(
            usage.get("completion_tokens") or usage.get("output_tokens") or 0
        )
        details = usage.get("prompt_tokens_details") or usage.get("input_tokens_details") or {}
        result.cached_tokens += int(details.get("cached_tokens") or 0)
    return result
