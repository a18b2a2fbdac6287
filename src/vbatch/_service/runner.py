"""Batches become the core's jobs, all on one shared dispatcher (one window, shared in turn
between them: ``_client/fairqueue.py``).

Each batch's progress is the core's: its rows go through ``iter_results`` with a
``SplitResultWriter`` (crash-safe output and error files) and its job state in SQLite
(``DbStateStore``), so a service killed at any point and started again resumes every batch
where its files end: no row is sent into them twice and none is lost. ``BatchDriver``
(``drive.py``) takes one batch through its steps; the runner starts a drive for each batch,
answers what the API asks of running ones, and ticks: expiring batches whose window ended,
saving live counts, removing expired files.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from .._client.dispatcher import Dispatcher
from .._config import OverflowPolicy
from .._tasks import cancel_and_wait
from .drive import ActiveBatch, BatchDriver
from .filestore import FileStore
from .objects import share_weight
from .store import Store

__all__ = ["ActiveBatch", "BatchRunner"]

log = logging.getLogger("vbatch.api")
SAVE_INTERVAL_S = 2.0  # live request_counts reach the database this often
RATE_SAMPLE_S = 5.0  # output tokens/s are sampled this often for the status page's chart
RATE_SAMPLES = 72  # and kept this many times (6 minutes)


class RateHistory:
    """Output tokens/s over the last minutes, fleet-wide and per batch: each sample is the
    tokens the batches' results brought since the one before, over the time between."""

    def __init__(self, keep: int = RATE_SAMPLES) -> None:
        self.keep = keep
        self.fleet: deque[tuple[float, float]] = deque(maxlen=keep)
        self.batches: dict[str, deque[tuple[float, float]]] = {}
        self._tokens: dict[str, int] = {}
        self._at: float | None = None

    def sample(self, now: float, tokens: dict[str, int]) -> None:
        """``tokens``: each running batch's output tokens so far (its run's)."""
        if self._at is not None and now > self._at:
            span, total = now - self._at, 0
            for batch_id, count in tokens.items():
                added = max(0, count - self._tokens.get(batch_id, 0))
                total += added
                history = self.batches.setdefault(batch_id, deque(maxlen=self.keep))
                history.append((now, added / span))
            self.fleet.append((now, total / span))
        self._tokens, self._at = dict(tokens), now

    def of(self, batch_id: str) -> list[tuple[float, float]]:
        return list(self.batches.get(batch_id, ()))


class BatchRunner:
    def __init__(
        self,
        store: Store,
        files: FileStore,
        dispatcher: Dispatcher,
        *,
        max_lines: int,
        on_overflow: OverflowPolicy = "error",
        notify: Callable[[dict[str, Any]], None] | None = None,
        clock: Callable[[], float] = time.time,
        tick_s: float = 0.5,
        rate_sample_s: float = RATE_SAMPLE_S,
    ) -> None:
        self.store = store
        self.files = files
        self.clock = clock
        self.tick_s = tick_s
        self.rate_sample_s = rate_sample_s
        self.rates = RateHistory()
        self.driver = BatchDriver(store, files, dispatcher, max_lines=max_lines,
                                  on_overflow=on_overflow, notify=notify or (lambda doc: None),
                                  clock=clock)  # fmt: skip
        self.active: dict[str, ActiveBatch] = {}
        self._ticker: asyncio.Task[None] | None = None

    # -- lifecycle -------------------------------------------------------------------------------

    def resume(self) -> None:
        """Pick up every batch a previous run of the service left unfinished."""
        unfinished = ("validating", "in_progress", "finalizing", "cancelling")
        for owner, doc in self.store.batches_in(unfinished):
            log.info("resuming %s (%s)", doc["id"], doc["status"])
            active = ActiveBatch(owner, doc)
            if doc["status"] != "validating":
                doc["request_counts"] = self.driver.durable_counts(active)
            self._start(active)
        self._ticker = asyncio.create_task(self._tick())

    async def aclose(self) -> None:
        """Stop every batch where it is (its files closed whole); they resume at next start."""
        await cancel_and_wait(self._ticker, *(a.task for a in self.active.values()))

    def submit(
        self,
        owner: str,
        doc: dict[str, Any],
        input_location: str,
        output_ttl_s: int | None = None,
    ) -> None:
        self.store.add_batch(owner, doc, input_location, output_ttl_s)
        self._start(ActiveBatch(owner, doc))

    def cancel(self, owner: str, batch_id: str) -> dict[str, Any] | None:
        active = self.active.get(batch_id)
        if active is None or active.owner != owner:
            return self.store.batch(owner, batch_id)  # finished (or not there): as it is
        if active.doc["status"] in ("validating", "in_progress"):
            self.driver.set(active, "cancelling")
            active.stop.set()
        return self.view(active)

    def view(self, active: ActiveBatch) -> dict[str, Any]:
        return {**active.doc, "request_counts": active.live_counts()}

    def progress(self, owner: str, doc: dict[str, Any]) -> dict[str, Any]:
        """What the status page shows of a batch: its counts and times, its files; while it
        runs its rate, the time left at that rate, its share of the window and its output
        tokens/s over the last minutes."""
        active = self.active.get(doc["id"])
        view = self.view(active) if active is not None and active.owner == owner else doc
        stats = active.stats if active is not None else None
        running = view["status"] == "in_progress"
        return {
            "id": view["id"], "status": view["status"], "created_at": view["created_at"],
            "in_progress_at": view.get("in_progress_at"),
            "ended_at": next((view.get(f"{s}_at") for s in ("completed", "failed", "expired",
                              "cancelled") if view.get(f"{s}_at")), None),
            "metadata": view["metadata"], "request_counts": view["request_counts"],
            "requests_per_s": round(stats.requests_per_s, 2) if stats else None,
            "eta_s": round(stats.eta_s, 1) if stats and stats.eta_s is not None else None,
            "share": round(self._share(view), 3) if running else None,
            "tokens_per_s": [[round(t, 1), round(r, 1)] for t, r in self.rates.of(view["id"])],
            "output_file_id": view.get("output_file_id"),
            "error_file_id": view.get("error_file_id"),
        }  # fmt: skip

    def _share(self, doc: dict[str, Any]) -> float:
        """The batch's part of the window: its weight over those of every running batch."""
        weights = [share_weight(a.doc["metadata"])[0] for a in self.active.values()
                   if a.doc["status"] == "in_progress"]  # fmt: skip
        mine = share_weight(doc["metadata"])[0]
        return mine / sum(weights) if weights else 1.0

    def batch(self, owner: str, batch_id: str) -> dict[str, Any] | None:
        active = self.active.get(batch_id)
        if active is not None and active.owner == owner:
            return self.view(active)
        return self.store.batch(owner, batch_id)

    # -- one batch -------------------------------------------------------------------------------

    def _start(self, active: ActiveBatch) -> None:
        self.active[active.doc["id"]] = active
        active.task = asyncio.create_task(self._drive(active))

    async def _drive(self, active: ActiveBatch) -> None:
        try:
            await self.driver.drive(active)
        finally:
            self.active.pop(active.doc["id"], None)

    # -- the ticker ------------------------------------------------------------------------------

    async def _tick(self) -> None:
        """Expire batches whose window ended; save live counts now and then."""
        last_save = last_sample = 0.0
        while True:
            await asyncio.sleep(self.tick_s)
            now = time.monotonic()
            if now - last_sample >= self.rate_sample_s:
                last_sample = now
                self.rates.sample(self.clock(), {
                    batch_id: active.stats.completion_tokens
                    for batch_id, active in self.active.items() if active.stats is not None
                })  # fmt: skip
            save = now - last_save >= SAVE_INTERVAL_S
            for active in list(self.active.values()):
                if self.driver.expired(active) and active.doc["status"] == "in_progress":
                    active.stop.set()
                if save and active.stats is not None:
                    active.doc["request_counts"] = active.live_counts()
                    with contextlib.suppress(Exception):
                        self.store.save_batch(active.doc)
            if save:
                last_save = now
                self._drop_expired_files()

    def _drop_expired_files(self) -> None:
        for row in self.store.expired_files(int(self.clock())):
            self.store.delete_file(row.owner, row.id)
            if not self.store.location_used(row.location):  # else a batch still reads it
                self.files.remove(row.location)
