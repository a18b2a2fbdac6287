"""Live counters of one job: its rows, tokens, retries and timing. The dispatcher writes them;
progress displays only read them. The servers' side (their load, the window, the fleet) is the
dispatcher's ``snapshot()``, which a display reads beside these."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from .._models import Result

__all__ = ["Stats"]


@dataclass
class Stats:
    total: int | None = None  # rows in the input (None until counted)
    skipped: int = 0  # rows already done by an earlier run (resume)
    done: int = 0  # rows finished in this run, ok or not
    ok: int = 0
    failed: int = 0  # errors, and replies that did not fit their schema
    schema_errors: int = 0  # of the failed: replies that did not fit their schema
    retries: int = 0
    clamped: int = 0
    in_flight: int = 0
    retrying: int = 0  # rows waiting out a back-off before their next attempt
    backoff_until: float = 0.0  # when the latest of those back-offs ends (monotonic)
    requeued: int = 0  # sends that a dying server lost, sent again without charging the row
    prompt_tokens: int = 0
    completion_tokens: int = 0
    created_at: float = field(default_factory=time.monotonic)
    # When sending began: the run's clock (rates, ETA). Before it, a job checks its input while
    # the fleet starts.
    started_at: float = field(default_factory=time.monotonic)
    finished_at: float | None = None
    cpu_start_s: float = field(default_factory=time.process_time)
    cpu_end_s: float | None = None

    def begin_sending(self) -> None:
        self.started_at = time.monotonic()

    @property
    def startup_s(self) -> float:
        """From the job's start to its first send: the servers' start, where it outlasted the
        input's checks."""
        return self.started_at - self.created_at

    def record(self, result: Result) -> None:
        """Count one finished row."""
        self.done += 1
        if result.error is None:
            self.prompt_tokens += result.prompt_tokens
            self.completion_tokens += result.completion_tokens
            if result.checked is not None and result.checked.error is not None:
                self.schema_errors += 1
                self.failed += 1
            else:
                self.ok += 1
        else:
            self.failed += 1
        if result.clamped_max_tokens is not None:
            self.clamped += 1

    @property
    def remaining(self) -> int | None:
        if self.total is None:
            return None
        return max(0, self.total - self.skipped - self.done)

    @property
    def input_sent(self) -> bool:
        """Every row left is in flight or waiting out a back-off: nothing more to send, so
        fewer in flight than the window is the input's end, not the client holding back."""
        remaining = self.remaining
        return remaining is not None and remaining <= self.in_flight + self.retrying

    @property
    def elapsed_s(self) -> float:
        end = self.finished_at if self.finished_at is not None else time.monotonic()
        return max(end - self.started_at, 1e-9)

    @property
    def requests_per_s(self) -> float:
        return self.done / self.elapsed_s

    @property
    def output_tokens_per_s(self) -> float:
        return self.completion_tokens / self.elapsed_s

    @property
    def eta_s(self) -> float | None:
        """Time left at the rate so far; never under a second while rows remain, nor before
        the back-offs that rows are waiting out end."""
        remaining = self.remaining
        if remaining is None or self.done == 0:
            return None
        if remaining == 0:
            return 0.0
        eta = max(remaining / self.requests_per_s, 1.0)
        if self.retrying:
            eta = max(eta, self.backoff_until - time.monotonic())
        return eta

    def summary(self) -> dict[str, Any]:
        return {
            "total": self.total,
            "skipped": self.skipped,
            "done": self.done,
            "ok": self.ok,
            "failed": self.failed,
            "schema_errors": self.schema_errors,
            "retries": self.retries,
            "requeued": self.requeued,
            "clamped": self.clamped,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "startup_s": round(self.startup_s, 3),
            "wall_s": round(self.elapsed_s, 3),
            "requests_per_s": round(self.requests_per_s, 2),
            "output_tokens_per_s": round(self.output_tokens_per_s, 1),
            "client_cpu_s": round(self.client_cpu_s, 3),
        }

    @property
    def client_cpu_s(self) -> float:
        """CPU time this process spent during the run (all threads)."""
        end = self.cpu_end_s if self.cpu_end_s is not None else time.process_time()
        return end - self.cpu_start_s
