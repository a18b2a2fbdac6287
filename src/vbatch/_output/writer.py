"""Where a job's results go: the output seam. A ``ResultWriter`` owns one output across runs:
it keeps the job's state (its fingerprint and validated index, ``state.py``), says whether it
already holds results and which rows they finish (resume), starts it afresh, and writes each
result as it arrives. ``JsonlResultWriter`` is vbatch's own: one JSONL line per row through the
crash-safe sink (``sink.py`` states the contract), its state in files beside it. (The Batch API
service writes successes and errors to separate files and keeps its state in its database.)
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from .._batchline import LineStyle
from .._errors import OutputError, ResumeError
from .._input.ids import DigestList
from .._input.validate import InputIndex
from .._models import Result
from .files import check_writable, replacing
from .lock import OutputLock
from .records import format_batch_line, format_record
from .scan import RecordScan
from .sink import JsonlSink
from .state import FileStateStore, JobStateStore, StoredJob

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

    def load_state(self) -> StoredJob:
        """The earlier run's job state; ``ResumeError`` when there is none or it is unreadable."""
        ...

    def save_state(self, parts: dict[str, Any], index: InputIndex) -> None:
        """Record this job's fingerprint parts and validated index, for its resumption."""
        ...

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

    def __init__(
        self,
        path: str,
        include_response: bool = False,
        state: JobStateStore | None = None,
        line_style: LineStyle = "vllm",
    ) -> None:
        """``line_style``: how OpenAI Batch output lines are written (``_batchline``)."""
        self.name = path
        self.include_response = include_response
        self.line_style: LineStyle = line_style
        self._state = state or FileStateStore(path)
        self._sink: JsonlSink | None = None
        self._lines_closed = 0  # what the sink wrote, kept once it is closed
        self._batch_lines = False
        self._lock = OutputLock(path)

    def load_state(self) -> StoredJob:
        return self._state.load()

    def save_state(self, parts: dict[str, Any], index: InputIndex) -> None:
        self._state.save(parts, index)

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
        self._lines_closed = 0

    def write(self, result: Result) -> None:
        assert self._sink is not None, "open() first"
        if self._batch_lines:
            self._sink.write(format_batch_line(result, self.line_style))
        else:
            self._sink.write(format_record(result, self.include_response))

    def flush(self) -> None:
        if self._sink is not None:
            self._sink.flush()

    @property
    def lines_out(self) -> int:
        """Lines written to the file since ``open`` (not those still buffered; after ``close``,
        all it wrote: a count read as the run ends must not fall back to zero)."""
        return self._sink.lines_out if self._sink is not None else self._lines_closed

    def close(self) -> None:
        try:
            if self._sink is not None:
                self._sink.close()
                self._lines_closed = self._sink.lines_out
                self._sink = None
        finally:
            self._lock.release()

    def scan(self, retry_failed: bool) -> OutputState:
        state = OutputState(resumed=True)
        done = DigestList()
        scan = RecordScan(self.name, ResumeError,
                          "the output is damaged (pass --overwrite to start again)")  # fmt: skip
        for record in scan.records():
            if record.ok:
                state.ok += 1
            elif retry_failed:
                state.dropped_failed += 1
                continue  # not done: it is sent again
            else:
                state.failed += 1
            done.append(record.id)
        state.torn_bytes = scan.cut_torn_tail()
        if state.dropped_failed:
            self._drop_failed()
        state.done = np.sort(done.to_numpy())
        return state

    def _drop_failed(self) -> None:
        """Rewrite the output without its error records, atomically (they are about to be
        redone)."""
        with replacing(self.name) as dst:
            for record in RecordScan(self.name).records():
                if record.ok:
                    dst.write(record.line)
