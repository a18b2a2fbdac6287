"""Batches become the core's jobs, all on one shared dispatcher (one window, shared in turn
between them: ``_client/fairqueue.py``).

Each batch's progress is the core's: its rows go through ``iter_results`` with a
``SplitResultWriter`` (crash-safe output and error files) and its job state in SQLite
(``DbStateStore``), so a service killed at any point and started again resumes every batch
where its files end: no row is sent into them twice and none is lost. A batch's status moves
validating -> in_progress -> finalizing -> completed, or to failed, cancelling -> cancelled,
or expired; each step is saved before the next begins, and ``resume`` picks every unfinished
batch up from the step it was on.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .._client.dispatcher import Dispatcher
from .._client.stats import Stats
from .._config import OverflowPolicy
from .._errors import TransportError, VbatchError
from .._output.writer import OutputState
from .._tasks import cancel_and_wait
from .batchjob import batch_writer, run_rows
from .filestore import FileStore
from .finalize import tally, write_expired
from .objects import TERMINAL, batch_error
from .outputs import register_outputs
from .statestore import DbStateStore
from .store import Store
from .validation import validate_batch

__all__ = ["ActiveBatch", "BatchRunner"]

log = logging.getLogger("vbatch.api")
SAVE_INTERVAL_S = 2.0  # live request_counts reach the database this often


@dataclass
class ActiveBatch:
    owner: str
    doc: dict[str, Any]
    stop: asyncio.Event = field(default_factory=asyncio.Event)
    stats: Stats | None = None
    previous: OutputState | None = None
    task: asyncio.Task[None] | None = None

    def live_counts(self) -> dict[str, int]:
        counts = dict(self.doc["request_counts"])
        if self.stats is not None and self.previous is not None:
            counts["completed"] = self.previous.ok + self.stats.ok
            counts["failed"] = self.previous.failed + self.stats.failed
        return counts


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
        self.dispatcher = dispatcher
        self.max_lines = max_lines
        self.on_overflow: OverflowPolicy = on_overflow
        self.notify = notify or (lambda doc: None)
        self.clock = clock
        self.tick_s = tick_s
        self.active: dict[str, ActiveBatch] = {}
        self._ticker: asyncio.Task[None] | None = None

    # -- lifecycle -------------------------------------------------------------------------------

    def resume(self) -> None:
        """Pick up every batch a previous run of the service left unfinished."""
        unfinished = ("validating", "in_progress", "finalizing", "cancelling")
        for owner, doc in self.store.batches_in(unfinished):
            log.info("resuming %s (%s)", doc["id"], doc["status"])
            self._start(ActiveBatch(owner, doc))
        self._ticker = asyncio.create_task(self._tick())

    async def aclose(self) -> None:
        """Stop every batch where it is (its files closed whole); they resume at next start."""
        await cancel_and_wait(self._ticker, *(a.task for a in self.active.values()))

    def submit(self, owner: str, doc: dict[str, Any], output_ttl_s: int | None = None) -> None:
        self.store.add_batch(owner, doc, output_ttl_s)
        self._start(ActiveBatch(owner, doc))

    def cancel(self, owner: str, batch_id: str) -> dict[str, Any] | None:
        active = self.active.get(batch_id)
        if active is None or active.owner != owner:
            return self.store.batch(owner, batch_id)  # finished (or not there): as it is
        if active.doc["status"] in ("validating", "in_progress"):
            self._set(active, "cancelling")
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

    def _set(self, active: ActiveBatch, status: str, **fields: Any) -> None:
        doc = active.doc
        doc.update(fields)
        doc["status"] = status
        doc[f"{status}_at"] = int(self.clock())
        doc["request_counts"] = active.live_counts()
        self.store.save_batch(doc)
        if status in TERMINAL:
            self.notify(doc)

    def _expired(self, active: ActiveBatch) -> bool:
        return self.clock() >= int(active.doc["expires_at"])

    async def _drive(self, active: ActiveBatch) -> None:
        doc = active.doc
        try:
            if doc["status"] == "validating" and not self._expired(active):
                await self._validate(active)
            if doc["status"] == "in_progress" and not self._expired(active):
                await self._run(active)
                if doc["status"] == "in_progress" and not self._expired(active):
                    self._set(active, "finalizing")
            if doc["status"] == "validating":  # expired before it was checked: nothing to run
                self._set(active, "expired")
            elif doc["status"] == "in_progress":  # its window ended first
                await asyncio.to_thread(write_expired, self._input_path(active),
                                        batch_writer(self.files, doc["id"]))  # fmt: skip
                await self._finish(active, "expired")
            elif doc["status"] == "finalizing":
                await self._finish(active, "completed")
            elif doc["status"] == "cancelling":
                await self._finish(active, "cancelled")
        except VbatchError as exc:
            log.warning("batch %s failed: %s", doc["id"], exc)
            await self._finish(active, "failed", [batch_error("batch_failed", str(exc))])
        finally:
            self.active.pop(doc["id"], None)

    def _input_path(self, active: ActiveBatch) -> str:
        row = self.store.file(active.owner, active.doc["input_file_id"])
        if row is None:
            raise VbatchError("the batch's input file was deleted")
        return self.files.path(row.location)

    async def _served(self) -> list[str] | None:
        try:
            return list(await self.dispatcher.server.served())
        except TransportError:
            return None  # the run checks again once a server answers

    async def _validate(self, active: ActiveBatch) -> None:
        doc = active.doc
        served = await self._served()
        checked = await asyncio.to_thread(validate_batch, self._input_path(active),
                                          doc["endpoint"], served, self.max_lines)  # fmt: skip
        if doc["status"] != "validating":
            return  # cancelled meanwhile
        doc["request_counts"] = {"total": checked.rows, "completed": 0, "failed": 0}
        if served is not None and len(served) == 1:
            doc["model"] = served[0]
        if checked.errors:
            self._set(active, "failed", errors={"object": "list", "data": checked.errors})
        else:
            self._set(active, "in_progress")

    async def _run(self, active: ActiveBatch) -> None:
        def ready(stats: Stats, previous: OutputState) -> None:
            active.stats, active.previous = stats, previous

        await run_rows(active.doc, self._input_path(active), self.dispatcher,
                       batch_writer(self.files, active.doc["id"]),
                       DbStateStore(self.store, active.doc["id"]), ready, active.stop,
                       self.on_overflow)  # fmt: skip

    async def _finish(
        self, active: ActiveBatch, status: str, errors: list[dict[str, Any]] | None = None
    ) -> None:
        """Tally the files, make them files of the API and end in ``status``, in one
        transaction: a crash before it leaves the batch to be finished again."""
        doc = active.doc
        batch_id = doc["id"]
        paths = [self.files.path(self.files.output_location(batch_id, kind))
                 for kind in ("output", "errors")]  # fmt: skip
        counts = await asyncio.to_thread(tally, *paths)
        active.stats = None
        fields: dict[str, Any] = {"usage": counts.usage()}
        if errors:
            fields["errors"] = {"object": "list", "data": errors}
        total = doc["request_counts"]["total"]
        doc["request_counts"] = {"total": total, "completed": counts.completed,
                                 "failed": counts.failed}  # fmt: skip
        with self.store.transaction():
            fields.update(register_outputs(self.store, self.files, active.owner, batch_id,
                                           int(self.clock())))  # fmt: skip
            self._set(active, status, **fields)

    async def _tick(self) -> None:
        """Expire batches whose window ended; save live counts now and then."""
        last_save = 0.0
        while True:
            await asyncio.sleep(self.tick_s)
            now = time.monotonic()
            save = now - last_save >= SAVE_INTERVAL_S
            for active in list(self.active.values()):
                if self._expired(active) and active.doc["status"] == "in_progress":
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
            self.files.remove(row.location)
