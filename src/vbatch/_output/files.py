"""File helpers of the output side: whole-file replacement and the writability check."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from typing import BinaryIO

from .._errors import OutputError

__all__ = ["atomic_write", "check_writable", "replacing"]


@contextlib.contextmanager
def replacing(path: str) -> Iterator[BinaryIO]:
    """A file that replaces ``path`` whole (fsync + rename) when the block ends without error."""
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".vbatch-", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write(path: str, data: bytes) -> None:
    with replacing(path) as f:
        f.write(data)


def check_writable(path: str) -> None:
    """Refuse a file that cannot be written before anything is sent, not after the whole run.

    Only trying tells: root passes ``os.access`` checks that the kernel then refuses (a
    read-only mount, an immutable file). A file created by the try is removed again, so a run
    that fails later leaves nothing behind."""
    folder = os.path.dirname(os.path.abspath(path)) or "."
    if os.path.isdir(path):
        raise OutputError(f"{path}: is a directory")
    if not os.path.isdir(folder):
        raise OutputError(f"{path}: folder {folder} does not exist")
    existed = os.path.exists(path)
    try:
        with open(path, "ab"):
            pass
    except OSError as exc:
        raise OutputError(f"{path}: cannot be written ({exc.strerror})") from None
    if not existed:
        os.unlink(path)
