"""Resume: whether an existing output may be continued, what is left to send.

Re-running into an existing output resumes it when its recorded fingerprint matches this job's;
it refuses when the job changed (unless ``force``) or when the output was not written by vbatch
(unless ``overwrite``). The streaming validation pass runs before anything is written, except on
a matching resume, where the earlier run's index is reused: the input is byte-for-byte the one
already validated.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from .._errors import ResumeError
from .._input.validate import InputIndex
from .state import JobStateStore, fingerprint
from .writer import OutputState, ResultWriter

__all__ = ["pending_mask", "prepare_output"]


def prepare_output(
    writer: ResultWriter,
    store: JobStateStore,
    parts: dict[str, Any],
    validate: Callable[[], InputIndex],
    *,
    overwrite: bool = False,
    retry_failed: bool = False,
    force: bool = False,
) -> tuple[OutputState, InputIndex]:
    """Make the output ready to append to; say what it already holds and index the input."""
    writer.check()
    if overwrite or not writer.holds_results():
        fresh = validate()
        writer.reset()
        store.save(parts, fresh)
        return OutputState(), fresh
    stored = store.load()
    index: InputIndex | None = None
    if stored.fingerprint != fingerprint(parts):
        if not force:
            before = stored.parts
            changed = sorted(k for k in set(before) | set(parts) if before.get(k) != parts.get(k))
            raise ResumeError(
                f"{writer.name} was written by a different job (changed: {', '.join(changed)}); "
                "pass --force to resume it anyway, or --overwrite to start again"
            )
    else:
        index = stored.index
    if index is None:
        index = validate()
        store.save(parts, index)
    return writer.scan(retry_failed), index


def pending_mask(input_digests: np.ndarray, done: np.ndarray) -> np.ndarray:
    """True for each input row (by index) that still has to be sent."""
    if done.size == 0:
        return np.ones(input_digests.size, dtype=bool)
    # ``done`` is sorted: a binary search per row uses far less memory than np.isin's sort.
    slots = np.searchsorted(done, input_digests)
    np.minimum(slots, done.size - 1, out=slots)
    return np.asarray(done[slots] != input_digests)
