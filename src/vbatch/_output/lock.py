"""One writer per output: an exclusive lock held for the whole run.

``fcntl.flock`` on ``OUTPUT.vbatch.lock`` beside the output. The kernel releases it when the
process ends however it ends (``kill -9`` included), so a lock is never stale; the file only
says who holds it (pid, host, since when) for the message the second writer gets. flock locks
belong to an open file, so a second job on the same output in the same process is refused too.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import socket
import time

from .._errors import OutputError

__all__ = ["OutputLock", "lock_path"]


def lock_path(output: str) -> str:
    return output + ".vbatch.lock"


class OutputLock:
    def __init__(self, output: str) -> None:
        self.output = output
        self.path = lock_path(output)
        self._fd: int | None = None

    def acquire(self) -> None:
        if self._fd is not None:
            return
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise OutputError(f"{self.output}: cannot be written ({exc.strerror})") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 512, 0).decode("utf-8", "replace").strip() or "unknown"
            os.close(fd)
            raise OutputError(
                f"{self.output} is being written by another vbatch run ({holder}); wait for it "
                "to finish or stop it, or choose another output"
            ) from None
        stamp = time.strftime("%Y-%m-%d %H:%M:%S")
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}, since {stamp}\n".encode(), 0)
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._fd)  # closing the last descriptor drops the lock
            self._fd = None
