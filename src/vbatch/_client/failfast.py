"""Stop a job the server rejects wholesale, before the whole file is sent.

If the job's first ``n`` replies are all the same non-retryable HTTP error (the same status and
error type, and for a 400 the same message) — a bad key, a model the server does not serve, an
endpoint it lacks — every other row would get it too. The rows answered so far are kept as
error records; nothing more is sent. One success, or one different reply, and the job runs on.
"""

from __future__ import annotations

from .._errors import RejectedError
from .._models import Result

__all__ = ["FailFast"]

_HINTS = {
    401: "check the API key (--api-key or OPENAI_API_KEY)",
    403: "check the API key's permissions",
    404: "check --model and the server's URL (GET /v1/models lists what it serves)",
}


class FailFast:
    def __init__(self, n: int) -> None:
        self.n = n
        self._seen = 0
        self._first: tuple[int, str, str] | None = None
        self.armed = n > 0

    def see(self, result: Result) -> None:
        """Count one reply; ``RejectedError`` once ``n`` in a row were the same rejection."""
        if not self.armed:
            return
        error = result.error
        status = result.status
        rejected = error is not None and status is not None and 400 <= status < 500
        if not rejected or error is None or status is None:
            self.armed = False
            return
        if error.code == "context_length_exceeded" or status in (408, 409, 429):
            self.armed = False  # one row's own problem, or retried: no verdict on the job
            return
        key = (status, error.code, error.message if status == 400 else "")
        if self._first is None:
            self._first = key
        elif key != self._first:
            self.armed = False
            return
        self._seen += 1
        if self._seen >= self.n:
            hint = _HINTS.get(status, "fix the requests or the server")
            raise RejectedError(
                f"the first {self._seen} requests were all rejected with HTTP {status} "
                f"({error.code}): {error.message[:300]}. Nothing more was sent; {hint}. "
                "Their error records are kept: once fixed, run again with --retry-failed "
                "(--overwrite if the fix changes the command)"
            )
