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
from collections.abc import Callable
from typing import Any

from .._client.dispatcher import Dispatcher
from .._config import OverflowPolicy
from .._tasks import cancel_and_wait
from .drive import ActiveBatch, BatchDriver
from .filestore import FileStore
from .store import Store

__all__ = ["ActiveBatch", "BatchRunner"]

log = logging.getLogger("vbatch.api")
SAVE_INTERVAL_S = 2.0  # live request_counts reach the database this often


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
    ) -> None:
        self.store = store
        self.files = files
        self.clock = clock
        self.tick_s = tick_s
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
        """What the status page shows of a batch: its counts, and while it runs its rate and
        the time left at that rate."""
        active = self.active.get(doc["id"])
        view = self.view(active) if active is not None and active.owner == owner else doc
        stats = active.stats if active is not None else None
        return {
            "id": view["id"], "status": view["status"], "created_at": view["created_at"],
            "metadata": view["metadata"], "request_counts": view["request_counts"],
            "requests_per_s": round(stats.requests_per_s, 2) if stats else None,
            "eta_s": round(stats.eta_s, 1) if stats and stats.eta_s is not None else None,
        }  # fmt: skip

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
        last_save = 0.0
        while True:
            await asyncio.sleep(self.tick_s)
            now = time.monotonic()
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
