"""Resume: whether an existing output may be continued, and what is left to send.

Re-running into an existing output resumes it when its recorded fingerprint matches this job's;
it refuses when the job changed (unless ``force``) or when the output was not written by vbatch
(unless ``overwrite``). This is decided before anything is launched or sent. On a matching
resume the earlier run's validated index is reused (the input is byte for byte the one already
validated); otherwise the run's scan validates, and a fresh output is emptied only once the scan
has passed, so a bad input leaves it as it was.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from .._errors import ResumeError
from .._input.validate import InputIndex
from .state import fingerprint
from .writer import OutputState, ResultWriter

__all__ = ["Resumption", "decide_resume", "pending_mask", "start_output"]


@dataclass(frozen=True)
class Resumption:
    """An output being continued: what it holds, the job's fingerprint parts, and the earlier
    run's index when it may be reused (None: validate again)."""

    previous: OutputState
    parts: dict[str, Any]
    index: InputIndex | None


def decide_resume(
    writer: ResultWriter,
    parts: Callable[[], dict[str, Any]],
    *,
    overwrite: bool = False,
    retry_failed: bool = False,
    force: bool = False,
) -> Resumption | None:
    """None for an output to start afresh; else the resumption of what it holds. ``parts``
    gives this job's fingerprint parts (it reads the input's digest: only called to resume)."""
    writer.check()
    if overwrite or not writer.holds_results():
        return None
    stored = writer.load_state()  # first: an output not written by vbatch is named at once
    now = parts()
    index = stored.index
    if stored.fingerprint != fingerprint(now):
        if not force:
            before = stored.parts
            changed = sorted(k for k in set(before) | set(now) if before.get(k) != now.get(k))
            raise ResumeError(
                f"{writer.name} was written by a different job (changed: {', '.join(changed)}); "
                "pass --force to resume it anyway, or --overwrite to start again"
            )
        index = None
    return Resumption(writer.scan(retry_failed), now, index)


def start_output(writer: ResultWriter, parts: dict[str, Any], index: InputIndex,
                 fresh: bool) -> None:  # fmt: skip
    """Record the job (a scan validated it); a fresh output is emptied first."""
    if fresh:
        writer.reset()
    writer.save_state(parts, index)


def pending_mask(input_digests: np.ndarray, done: np.ndarray) -> np.ndarray:
    """True for each input row (by index) that still has to be sent."""
    if done.size == 0:
        return np.ones(input_digests.size, dtype=bool)
    # ``done`` is sorted: a binary search per row uses far less memory than np.isin's sort.
    slots = np.searchsorted(done, input_digests)
    np.minimum(slots, done.size - 1, out=slots)
    return np.asarray(done[slots] != input_digests)
