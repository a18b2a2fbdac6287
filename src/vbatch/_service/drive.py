"""One batch from the step it is on to its end: validating -> in_progress -> finalizing ->
completed, or to failed, cancelling -> cancelled, or expired. Each step is saved before the
next begins, so a batch picked up after a restart goes on from the step it was on.

``BatchDriver`` holds what every batch's drive needs (the store, the files, the shared
dispatcher); an ``ActiveBatch`` is one batch while it is driven."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .._client.dispatcher import Dispatcher
from .._client.stats import Stats
from .._config import OverflowPolicy
from .._errors import TransportError, VbatchError
from .._output.split import SplitResultWriter
from .._output.writer import OutputState
from .batchjob import batch_writer, run_rows
from .filestore import FileStore
from .finalize import input_custom_ids, tally, write_expired
from .objects import TERMINAL, batch_error
from .outputs import register_outputs
from .statestore import DbStateStore
from .store import Store
from .validation import validate_batch

__all__ = ["ActiveBatch", "BatchDriver"]

log = logging.getLogger("vbatch.api")


@dataclass
class ActiveBatch:
    owner: str
    doc: dict[str, Any]
    stop: asyncio.Event = field(default_factory=asyncio.Event)
    stats: Stats | None = None
    previous: OutputState | None = None
    writer: SplitResultWriter | None = None
    task: asyncio.Task[None] | None = None

    def live_counts(self) -> dict[str, int]:
        """The counts a client sees: rows in the files (written to the kernel, so a crash keeps
        them), never results still buffered, so that a restart never takes a count back."""
        counts = dict(self.doc["request_counts"])
        if self.writer is not None and self.previous is not None:
            ok, failed = self.writer.lines_out()
            counts["completed"] = self.previous.ok + ok
            counts["failed"] = self.previous.failed + failed
        return counts


class BatchDriver:
    def __init__(
        self,
        store: Store,
        files: FileStore,
        dispatcher: Dispatcher,
        *,
        max_lines: int,
        on_overflow: OverflowPolicy,
        notify: Callable[[dict[str, Any]], None],
        clock: Callable[[], float],
    ) -> None:
        self.store = store
        self.files = files
        self.dispatcher = dispatcher
        self.max_lines = max_lines
        self.on_overflow: OverflowPolicy = on_overflow
        self.notify = notify
        self.clock = clock

    def set(self, active: ActiveBatch, status: str, at: int | None = None, **fields: Any) -> None:
        """Move the batch to ``status`` (at ``at``, else now) and save it (with the live
        counts); an ended batch's cancel request goes with it (m007)."""
        doc = active.doc
        doc.update(fields)
        doc["status"] = status
        doc[f"{status}_at"] = int(self.clock()) if at is None else at
        doc["request_counts"] = active.live_counts()
        with self.store.transaction():
            self.store.save_batch(doc)
            if status in TERMINAL:
                self.store.drop_cancel(doc["id"])
        if status in TERMINAL:
            self.notify(doc)

    def expired(self, active: ActiveBatch) -> bool:
        return self.clock() >= int(active.doc["expires_at"])

    async def drive(self, active: ActiveBatch) -> None:
        """From the step the batch is on to its end (or until the task is cancelled)."""
        doc = active.doc
        try:
            if doc["status"] == "validating" and not self.expired(active):
                await self._validate(active)
            if doc["status"] == "in_progress" and not self.expired(active):
                await self._run(active)
                if doc["status"] == "in_progress" and not self.expired(active):
                    self.set(active, "finalizing")
            if doc["status"] == "validating":  # expired before it was checked: nothing to run
                self.set(active, "expired")
            elif doc["status"] == "in_progress":  # its window ended first
                await self._write_expired(active)
                await self._finish(active, "expired")
            elif doc["status"] == "finalizing":
                await self._finish(active, "completed")
            elif doc["status"] == "cancelling":
                await self._finish(active, "cancelled")
        except VbatchError as exc:
            log.warning("batch %s failed: %s", doc["id"], exc)
            await self._finish(active, "failed", [batch_error("batch_failed", str(exc))])

    def _input_path(self, active: ActiveBatch) -> str:
        location = self.store.batch_input(active.doc["id"])
        if location is None:
            # Only a batch from before vbatch kept running batches' inputs (migration m006)
            # whose input file was deleted then.
            raise VbatchError("the batch's input file was deleted (before this version of "
                              "vbatch, which keeps a running batch's input)")  # fmt: skip
        return self.files.path(location)

    async def _served(self) -> list[str] | None:
        """The models the dispatcher's server serves (None until one answers)."""
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
            self.set(active, "failed", errors={"object": "list", "data": checked.errors})
            return
        with self.store.transaction():  # a batch in progress always has its custom_ids
            self.store.save_custom_ids(doc["id"], checked.custom_ids)
            self.set(active, "in_progress")

    def _writer(self, active: ActiveBatch) -> SplitResultWriter:
        """The batch's output and error files, its job state in the database."""
        batch_id = active.doc["id"]
        return batch_writer(self.files, batch_id, DbStateStore(self.store, batch_id))

    def _result_paths(self, batch_id: str) -> tuple[str, str]:
        """The batch's output and error files."""
        output, errors = (self.files.path(self.files.output_location(batch_id, kind))
                          for kind in ("output", "errors"))  # fmt: skip
        return output, errors

    def durable_counts(self, active: ActiveBatch) -> dict[str, int]:
        """The batch's counts from its files: at a restart, what the last run left whole (the
        counts saved now and then may be older than what clients saw before the crash)."""
        counts = tally(*self._result_paths(active.doc["id"]))
        return {**active.doc["request_counts"], "completed": counts.completed,
                "failed": counts.failed}  # fmt: skip

    async def _run(self, active: ActiveBatch) -> None:
        def ready(stats: Stats, previous: OutputState) -> None:
            active.stats, active.previous, active.writer = stats, previous, writer

        writer = self._writer(active)
        try:
            await run_rows(active.doc, self._input_path(active), self.dispatcher, writer, ready,
                           active.stop, self.on_overflow)  # fmt: skip
        finally:
            active.doc["request_counts"] = active.live_counts()  # the files', now all written
            active.writer = None

    async def _write_expired(self, active: ActiveBatch) -> None:
        """``batch_expired`` lines for the rows never sent, by the custom_ids kept at
        validation (the input's own for a batch validated before they were kept)."""
        batch_id = active.doc["id"]
        custom_ids = self.store.custom_ids(batch_id)
        if custom_ids is None:
            custom_ids = await asyncio.to_thread(input_custom_ids, self._input_path(active))
        await asyncio.to_thread(write_expired, self._writer(active), custom_ids)

    async def _finish(
        self, active: ActiveBatch, status: str, errors: list[dict[str, Any]] | None = None
    ) -> None:
        """Tally the files, make them files of the API and end in ``status``, in one
        transaction: a crash before it leaves the batch to be finished again."""
        doc = active.doc
        batch_id = doc["id"]
        counts = await asyncio.to_thread(tally, *self._result_paths(batch_id))
        active.stats = None
        fields: dict[str, Any] = {"usage": counts.usage()}
        if errors:
            fields["errors"] = {"object": "list", "data": errors}
        total = doc["request_counts"]["total"]
        doc["request_counts"] = {"total": total, "completed": counts.completed,
                                 "failed": counts.failed}  # fmt: skip
        location = self.store.batch_input(batch_id)
        with self.store.transaction():
            cancel_at = self.store.cancel_requested(batch_id)
            if status == "completed" and cancel_at is not None:
                # The API took a cancel as its last rows came back: it showed "cancelling"
                # since (views.py), so it ends cancelled, with every row's result.
                status = "cancelled"
                fields["cancelling_at"] = doc.get("cancelling_at") or cancel_at
            fields.update(register_outputs(self.store, self.files, active.owner, batch_id,
                                           int(self.clock())))  # fmt: skip
            self.store.drop_custom_ids(batch_id)  # an ended batch needs them no more
            self.store.drop_batch_input(batch_id)
            self.set(active, status, **fields)
        if location is not None and not self.store.location_used(location):
            self.files.remove(location)  # its file was deleted while the batch ran
