"""Successes and failures in two files, as the OpenAI Batch API returns them: the output file
holds the rows that got an HTTP 200 reply, the error file every other row.

``SplitResultWriter`` is two ``JsonlResultWriter``s of OpenAI Batch lines in OpenAI's style
(an HTTP error's line has ``error: null`` and the reply: ``_batchline``), so each file keeps
the crash-safety contract of ``sink.py`` and resume reads both: a row is done when either file
holds it. The output's lock covers both (one run writes them). The job's state is kept by the
``JobStateStore`` given (the Batch API's is its database), else in files beside the output.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .._errors import OutputError
from .._input.validate import InputIndex
from .._models import Result
from .state import FileStateStore, JobStateStore, StoredJob
from .writer import JsonlResultWriter, OutputState

__all__ = ["SplitResultWriter"]


class SplitResultWriter:
    def __init__(self, output: str, errors: str, state: JobStateStore | None = None) -> None:
        self.name = output
        self._ok = JsonlResultWriter(output, line_style="openai")
        self._failed = JsonlResultWriter(errors, line_style="openai")
        self._state = state or FileStateStore(output)

    def load_state(self) -> StoredJob:
        return self._state.load()

    def save_state(self, parts: dict[str, Any], index: InputIndex) -> None:
        self._state.save(parts, index)

    def lock(self) -> None:
        self._ok.lock()

    def check(self) -> None:
        self._ok.check()
        self._failed.check()

    def holds_results(self) -> bool:
        return self._ok.holds_results() or self._failed.holds_results()

    def reset(self) -> None:
        self._ok.reset()
        self._failed.reset()

    def scan(self, retry_failed: bool) -> OutputState:
        if retry_failed:
            raise OutputError("failed rows of a Batch API batch are not sent again")
        state = OutputState(resumed=True)
        for writer in (self._ok, self._failed):
            if not writer.holds_results():
                continue
            part = writer.scan(False)
            state.ok += part.ok
            state.failed += part.failed
            state.torn_bytes += part.torn_bytes
            state.done = np.concatenate([state.done, part.done])
        state.done = np.sort(state.done)
        return state

    def open(self, batch_lines: bool) -> None:
        if not batch_lines:
            raise OutputError("a split output takes OpenAI Batch lines only")
        self._ok.open(True)
        self._failed.open(True)

    def write(self, result: Result) -> None:
        (self._ok if result.ok and result.status == 200 else self._failed).write(result)

    def flush(self) -> None:
        self._ok.flush()
        self._failed.flush()

    def lines_out(self) -> tuple[int, int]:
        """(output, error) lines written to the files since ``open``: rows a crash keeps."""
        return self._ok.lines_out, self._failed.lines_out

    def close(self) -> None:
        try:
            self._failed.close()
        finally:
            self._ok.close()
