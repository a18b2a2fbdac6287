"""One exception tree. Everything vbatch raises on purpose is a ``VbatchError``; the CLI turns
each kind into its exit code, and anything else is a bug (a traceback, exit 1).
User-facing messages name the file, line and problem."""

from __future__ import annotations

__all__ = [
    "ConfigError",
    "FleetError",
    "InputError",
    "LaunchError",
    "MergeError",
    "OutputError",
    "RejectedError",
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


class FleetError(VbatchError):
    """No server can take requests any more: a server vbatch started kept dying past its restart
    budget, or every server given by URL stayed down too long. Rows finished so far are kept;
    running the same command again resumes."""


class RejectedError(VbatchError):
    """The server rejected the job's first requests all the same way (a bad key, a model it
    does not serve): the rest were not sent."""


class TransportError(VbatchError):
    """No usable HTTP reply: ``code`` is connect_error, server_disconnected or timeout. The
    dispatcher retries these and, once out of attempts, records them as the row's error.
    ``endpoint`` is the server (base URL) it happened with, when one was chosen."""

    def __init__(self, code: str, message: str, endpoint: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.endpoint = endpoint


class MergeError(VbatchError):
    """An array job's shard outputs do not add up to its input (a row missing or written twice,
    a shard missing, shards of different jobs): nothing was written."""
