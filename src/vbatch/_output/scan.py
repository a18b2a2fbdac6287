"""Reading a record file back (resume, merge, the Batch API's tally), one way for all: its whole
lines from the start, each with its line number and byte offset, up to a torn tail (a crash
mid-write leaves at most the last line without its newline: ``sink.py``). ``end`` says where
the whole lines end, so the caller can cut the tail off; a line that is not a record raises
the caller's error, naming ``file:line``."""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import orjson

from .._errors import ResumeError, VbatchError
from .records import read_record_status

__all__ = ["Record", "RecordScan"]


@dataclass(frozen=True, slots=True)
class Record:
    line_no: int  # from 1
    offset: int  # of the line's first byte
    line: bytes  # newline included
    data: dict[str, Any]  # the line, parsed
    id: Any
    ok: bool


class RecordScan:
    """One pass over the record file ``path``; ``error`` is what a line that is not a record
    raises (``advice`` after its message says what to do about it)."""

    def __init__(self, path: str, error: type[VbatchError] = ResumeError, advice: str = "") -> None:
        self.path = path
        self.error = error
        self.advice = advice
        self.size = 0  # of the file when the pass began
        self.end = 0  # where the whole lines read so far end
        self.lines = 0  # whole lines read so far

    @property
    def torn_bytes(self) -> int:
        """Bytes after the last whole line (once the pass has gone through the file)."""
        return self.size - self.end

    def whole_lines(self) -> Iterator[tuple[int, int, bytes]]:
        """(line number, offset, line) of each whole line."""
        with open(self.path, "rb") as f:
            self.size = os.fstat(f.fileno()).st_size
            for line in f:
                if not line.endswith(b"\n"):
                    return  # torn tail: only the last line can lack its newline
                offset = self.end
                self.lines += 1
                self.end += len(line)
                yield self.lines, offset, line

    def records(self) -> Iterator[Record]:
        for line_no, offset, line in self.whole_lines():
            try:
                data = orjson.loads(line)
                row_id, ok = read_record_status(data)
            except (orjson.JSONDecodeError, KeyError, TypeError):
                advice = f"; {self.advice}" if self.advice else ""
                raise self.error(f"{self.path}:{line_no}: not a vbatch record{advice}") from None
            yield Record(line_no, offset, line, data, row_id, ok)

    def cut_torn_tail(self) -> int:
        """Truncate the file where its whole lines end (after the pass); the bytes cut."""
        torn = self.torn_bytes
        if torn:
            os.truncate(self.path, self.end)
        return torn
