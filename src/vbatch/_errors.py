"""One exception tree. Everything vbatch raises on purpose is a ``VbatchError``; the CLI turns
each kind into its exit code, and anything else is a bug (a traceback, exit 1).
User-facing messages name the file, line and problem."""

from __future__ import annotations

__all__ = [
    "ConfigError",
    "InputError",
    "LaunchError",
    "OutputError",
    "ResumeError",
    "TransportError",
    "VbatchError",
]


class VbatchError(Exception):
    """Base class of every error vbatch raises on purpose."""


class ConfigError(VbatchError):
    """Options that cannot go together or are out of range; raised before any request is sent."""


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


class LaunchError(VbatchError):
    """A vLLM server could not be started (or vLLM is not installed)."""


class TransportError(VbatchError):
    """No usable HTTP reply: ``code`` is connect_error, server_disconnected or timeout. The
    dispatcher retries these and, once out of attempts, records them as the row's error."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
