"""Crash-safe JSONL writer.

Records are buffered whole and handed to the kernel with one ``os.write`` per flush on an
``O_APPEND`` descriptor, so a killed process leaves only complete lines (anything still in the
buffer is lost and redone on resume). A power cut can tear the last line; resume detects and drops
it. Flushes happen every ``flush_interval_s`` or ``flush_bytes``; ``fsync`` every
``fsync_interval_s`` and at close, which bounds what a power cut can lose.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable

__all__ = ["JsonlSink"]


class JsonlSink:
    def __init__(
        self,
        path: str,
        *,
        flush_bytes: int = 1 << 16,
        flush_interval_s: float = 0.2,
        fsync_interval_s: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.path = path
        self._fd: int | None = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        self._buf: list[bytes] = []
        self._size = 0
        self.lines_out = 0  # lines handed to the kernel: what a killed process leaves whole
        self._flush_bytes = flush_bytes
        self._flush_interval = flush_interval_s
        self._fsync_interval = fsync_interval_s
        self._clock = clock
        self._last_flush = self._last_fsync = clock()

    def write(self, line: bytes) -> None:
        self._buf.append(line)
        self._size += len(line)
        due = self._clock() - self._last_flush >= self._flush_interval
        if due or self._size >= self._flush_bytes:
            self.flush()

    def flush(self, fsync: bool = False) -> None:
        assert self._fd is not None, "sink is closed"
        now = self._clock()
        if self._buf:
            data = memoryview(b"".join(self._buf))
            lines = len(self._buf)
            self._buf.clear()
            self._size = 0
            while data:
                written = os.write(self._fd, data)
                data = data[written:]
            self.lines_out += lines
        self._last_flush = now
        if fsync or now - self._last_fsync >= self._fsync_interval:
            os.fsync(self._fd)
            self._last_fsync = now

    def close(self) -> None:
        if self._fd is None:
            return
        try:
            self.flush(fsync=True)
        finally:
            os.close(self._fd)
            self._fd = None
