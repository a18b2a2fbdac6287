"""Exceptions a caller can act on. User-facing messages name the file, line and problem."""

from __future__ import annotations

__all__ = ["InputError", "OutputError", "ResumeError", "VbatchError"]


class VbatchError(Exception):
    """Base class of every error vbatch raises on purpose."""


class InputError(VbatchError):
    """The input cannot be used as it is; raised before any request is sent."""

    def __init__(self, path: str, line: int | None, message: str) -> None:
        self.path = path
        self.line = line
        self.message = message
        where = f"{path}:{line}" if line is not None else path
        super().__init__(f"{where}: {message}")


class OutputError(VbatchError):
    """The output cannot be written; raised before any request is sent."""


class ResumeError(VbatchError):
    """The existing output belongs to a different job (or to no vbatch job at all)."""
