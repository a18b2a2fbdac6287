"""Where a job's results go. A ``ResultWriter`` owns one output across runs: it says whether it
already holds results and which rows they finish (resume), starts it afresh, and writes each
result as it arrives. ``JsonlResultWriter`` is vbatch's own: one JSONL line per row through the
crash-safe sink (``sink.py`` states the contract). (The Batch API service writes successes and
errors to separate files.)
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import orjson

from .._errors import OutputError, ResumeError
from .._input.ids import DigestList
from .._models import Result
from .files import check_writable, replacing
from .lock import OutputLock
from .records import format_batch_line, format_record, read_record_status
from .sink import JsonlSink

__all__ = ["JsonlResultWriter", "OutputState", "ResultWriter"]


@dataclass
class OutputState:
    """What the output held when the run began."""

    done: np.ndarray = field(default_factory=lambda: np.zeros(0, np.uint64))  # sorted digests
    ok: int = 0
    failed: int = 0  # error records kept (not being retried)
    dropped_failed: int = 0  # error records removed for --retry-failed
    torn_bytes: int = 0
    resumed: bool = False


class ResultWriter(Protocol):
    name: str  # what messages call the output (its path)

    def lock(self) -> None:
        """Hold the output for this run (``OutputError`` when another run holds it); ``close``
        lets go. Taken before anything else, so two runs never both write."""
        ...

    def check(self) -> None:
        """Raise ``OutputError`` if the output cannot be written; before anything is sent."""
        ...

    def holds_results(self) -> bool: ...

    def reset(self) -> None:
        """Start the output afresh (empty)."""
        ...

    def scan(self, retry_failed: bool) -> OutputState:
        """Which rows an earlier run finished; repairs what a crash left (a torn last line),
        and drops error records first when they are to be sent again."""
        ...

    def open(self, batch_lines: bool) -> None:
        """Ready to write results of a job whose input is (or is not) OpenAI Batch lines."""
        ...

    def write(self, result: Result) -> None: ...

    def flush(self) -> None: ...

    def close(self) -> None: ...


class JsonlResultWriter:
    """vbatch records, or OpenAI Batch output lines for Batch input, appended to one file."""

    def __init__(self, path: str, include_response: bool = False) -> None:
        self.name = path
        self.include_response = include_response
        self._sink: JsonlSink | None = None
        self._batch_lines = False
        self._lock = OutputLock(path)

    def lock(self) -> None:
        folder = os.path.dirname(os.path.abspath(self.name))
        if not os.path.isdir(folder):  # the lock file goes there: say what is missing
            raise OutputError(f"{self.name}: folder {folder} does not exist")
        self._lock.acquire()

    def check(self) -> None:
        check_writable(self.name)

    def holds_results(self) -> bool:
        return os.path.exists(self.name) and os.path.getsize(self.name) > 0

    def reset(self) -> None:
        with open(self.name, "wb"):
            pass

    def open(self, batch_lines: bool) -> None:
        if batch_lines and self.include_response:
            raise OutputError("--include-response does not apply to OpenAI Batch output")
        self._batch_lines = batch_lines
        self._sink = JsonlSink(self.name)

    def write(self, result: Result) -> None:
        assert self._sink is not None, "open() first"
        if self._batch_lines:
            self._sink.write(format_batch_line(result))
        else:
            self._sink.write(format_record(result, self.include_response))

    def flush(self) -> None:
        if self._sink is not None:
            self._sink.flush()

    def close(self) -> None:
        try:
            if self._sink is not None:
                self._sink.close()
                self._sink = None
        finally:
            self._lock.release()

    def scan(self, retry_failed: bool) -> OutputState:
        state = OutputState(resumed=True)
        done = DigestList()
        failed_lines = 0
        with open(self.name, "r+b") as f:
            size = os.fstat(f.fileno()).st_size
            good_end = 0
            for line_no, line in enumerate(f, start=1):
                if not line.endswith(b"\n"):
                    break  # torn tail: a crash mid-write
                try:
                    row_id, ok = read_record_status(orjson.loads(line))
                except (orjson.JSONDecodeError, KeyError, TypeError):
                    raise ResumeError(
                        f"{self.name}:{line_no}: not a vbatch record; the output is damaged "
                        "(pass --overwrite to start again)"
                    ) from None
                good_end += len(line)
                if ok:
                    state.ok += 1
                    done.append(row_id)
                elif retry_failed:
                    failed_lines += 1
                else:
                    state.failed += 1
                    done.append(row_id)
            if good_end < size:
                state.torn_bytes = size - good_end
                f.truncate(good_end)
        if failed_lines:
            self._drop_failed()
            state.dropped_failed = failed_lines
        state.done = np.sort(done.to_numpy())
        return state

    def _drop_failed(self) -> None:
        """Rewrite the output without its error records, atomically (they are about to be
        redone)."""
        with replacing(self.name) as dst, open(self.name, "rb") as src:
            for line in src:
                if read_record_status(orjson.loads(line))[1]:
                    dst.write(line)
