"""Batches become the core's jobs, all on one shared dispatcher (one window, shared in turn
between them: ``_client/fairqueue.py``).

Each batch's progress is the core's: its rows go through ``iter_results`` with a
``SplitResultWriter`` (crash-safe output and error files) and its job state in SQLite
(``DbStateStore``), so a service killed at any point and started again resumes every batch
where its files end: no row is sent into them twice and none is lost. ``BatchDriver``
(``drive.py``) takes one batch through its steps; the runner starts a drive for each batch
and ticks: starting the batches the API's process created, applying the cancels it took (both
through the database: serve.py), expiring batches whose window ended, publishing what runs
for the API to read (views.py), saving live counts, removing expired files.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import time
from collections import deque
from collections.abc import Callable, Iterable
from typing import Any

from .._client.dispatcher import Dispatcher
from .._config import RUNNER_TICK_S, OverflowPolicy
from .._tasks import cancel_and_wait
from .drive import ActiveBatch, BatchDriver
from .filestore import FileStore
from .objects import CANCELLABLE, TERMINAL, share_weight
from .store import Store

__all__ = ["ActiveBatch", "BatchRunner"]

log = logging.getLogger("vbatch.api")
SAVE_INTERVAL_S = 2.0  # live request_counts reach the database this often
RATE_SAMPLE_S = 5.0  # output tokens/s are sampled this often for the status page's chart
RATE_SAMPLES = 72  # and kept this many times (6 minutes)


class RateHistory:
    """Output tokens/s over the last minutes, fleet-wide and per batch: each sample is the
    tokens the batches' results brought since the one before, over the time between."""

    def __init__(self, keep: int = RATE_SAMPLES, every_s: float = RATE_SAMPLE_S) -> None:
        self.keep = keep
        self.span_s = keep * every_s  # a batch's history older than this goes (it ended)
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
        ended = [b for b, h in self.batches.items() if not h or h[-1][0] < now - self.span_s]
        for batch_id in ended:
            del self.batches[batch_id]

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
        tick_s: float = RUNNER_TICK_S,
        rate_sample_s: float = RATE_SAMPLE_S,
    ) -> None:
        self.store = store
        self.files = files
        self.clock = clock
        self.tick_s = tick_s
        self.rate_sample_s = rate_sample_s
        self.rates = RateHistory(every_s=rate_sample_s)
        self.driver = BatchDriver(store, files, dispatcher, max_lines=max_lines,
                                  on_overflow=on_overflow, notify=notify or (lambda doc: None),
                                  clock=clock)  # fmt: skip
        self.active: dict[str, ActiveBatch] = {}
        self._started: set[str] = set()  # ids of the batches driven, or ended, in this process
        self._ticker: asyncio.Task[None] | None = None

    # -- lifecycle -------------------------------------------------------------------------------

    def resume(self) -> None:
        """Pick up every batch a previous run of the service left unfinished, publish, tick."""
        self.store.clear_live()  # the previous runner's: nothing of it runs now
        self._pick_up()
        self._apply_cancels()
        self._publish(save=False)
        self._ticker = asyncio.create_task(self._tick())

    async def aclose(self) -> None:
        """Stop every batch where it is (its files closed whole); they resume at next start."""
        await cancel_and_wait(self._ticker, *(a.task for a in self.active.values()))

    # -- what the API's process reads (views.py) -----------------------------------------------

    def _publish(self, save: bool) -> None:
        """Each batch's live facts and the fleet's, for the API's process, in one transaction;
        with ``save``, the running batches' counts into their stored objects too (what a
        restart starts from)."""
        with self.store.transaction():
            if save:
                for active in self.active.values():
                    if active.stats is not None:
                        active.doc["request_counts"] = active.live_counts()
                        self.store.save_batch(active.doc)
            live = {batch_id: {"tokens_per_s": _rounded(history)}
                    for batch_id, history in self.rates.batches.items()}  # fmt: skip
            weights = {batch_id: share_weight(a.doc["metadata"])[0]
                       for batch_id, a in self.active.items()
                       if a.doc["status"] == "in_progress"}  # fmt: skip
            for batch_id, active in self.active.items():
                live[batch_id] = self._live(active, weights)
            self.store.publish_live(live, self._fleet())

    def _live(self, active: ActiveBatch, weights: dict[str, float]) -> dict[str, Any]:
        """A running batch's facts: its flushed counts (never more than its files hold, so
        that a restart never takes a count back), its rate, the time left at that rate, its
        part of the window (its weight over those of every running batch) and its output
        tokens/s over the last minutes."""
        stats, batch_id = active.stats, active.doc["id"]
        mine = weights.get(batch_id)
        return {
            "request_counts": active.live_counts(),
            "requests_per_s": round(stats.requests_per_s, 2) if stats else None,
            "eta_s": round(stats.eta_s, 1) if stats and stats.eta_s is not None else None,
            "share": round(mine / sum(weights.values()), 3) if mine is not None else None,
            "tokens_per_s": _rounded(self.rates.of(batch_id)),
        }

    def _fleet(self) -> dict[str, Any]:
        """The fleet's servers (state, restarts), output tokens/s of every key's batches (the
        fleet is shared), the window and what is in it now."""
        dispatcher = self.driver.dispatcher
        fleet = dispatcher.snapshot().fleet
        health = None
        if fleet is not None:
            health = {"members": fleet.members, "up": fleet.up, "restarts": fleet.restarts,
                      "failure": fleet.failure,
                      "servers": [{"url": s.url, "up": s.up, "restarts": s.restarts}
                                  for s in fleet.servers]}  # fmt: skip
        return {"fleet": health, "tokens_per_s": _rounded(self.rates.fleet),
                "window": dispatcher.concurrency,
                "in_flight": dispatcher.sender.in_flight}  # fmt: skip

    # -- one batch -------------------------------------------------------------------------------

    def _pick_up(self) -> None:
        """Start each unfinished batch this runner has not started: those a previous run
        left, and those the API's process inserted since ("validating"). Once only: a drive
        that ended short of the batch's end (an unforeseen error) waits for the next start."""
        for batch_id in self.store.unfinished_ids():
            found = None if batch_id in self._started else self.store.owned_batch(batch_id)
            if found is None:
                continue
            owner, doc = found
            active = ActiveBatch(owner, doc)
            if doc["status"] != "validating":
                log.info("resuming %s (%s)", batch_id, doc["status"])
                doc["request_counts"] = self.driver.durable_counts(active)
            self._start(active)

    def _apply_cancels(self) -> None:
        """The cancels the API's process accepted: a batch validating or running stops, its
        finished rows kept (one finalizing ends "cancelled" at its end: drive.py)."""
        for batch_id, at in self.store.cancels().items():
            active = self.active.get(batch_id)
            if active is not None and active.doc["status"] in CANCELLABLE:
                self.driver.set(active, "cancelling", at=at)
                active.stop.set()

    def _start(self, active: ActiveBatch) -> None:
        batch_id = active.doc["id"]
        self._started.add(batch_id)
        self.active[batch_id] = active
        active.task = asyncio.create_task(self._drive(active))

    async def _drive(self, active: ActiveBatch) -> None:
        try:
            await self.driver.drive(active)
        finally:
            self.active.pop(active.doc["id"], None)
            if active.doc["status"] in TERMINAL:
                self._started.discard(active.doc["id"])

    # -- the ticker ------------------------------------------------------------------------------

    async def _tick(self) -> None:
        """Start the batches the API created, apply the cancels it took, expire batches whose
        window ended, publish what runs (saving counts now and then), sample output tokens/s
        and remove expired files."""
        last_save = last_sample = 0.0
        while True:
            await asyncio.sleep(self.tick_s)
            now = time.monotonic()
            sample = now - last_sample >= self.rate_sample_s
            save = now - last_save >= SAVE_INTERVAL_S
            last_sample, last_save = (now if sample else last_sample), (now if save else last_save)
            try:
                self._pick_up()
                self._apply_cancels()
                for active in list(self.active.values()):
                    if self.driver.expired(active) and active.doc["status"] == "in_progress":
                        active.stop.set()
                if sample:
                    self.rates.sample(self.clock(), {
                        batch_id: active.stats.completion_tokens
                        for batch_id, active in self.active.items() if active.stats is not None
                    })  # fmt: skip
                self._publish(save)
                if save:
                    self._drop_expired_files()
            except (sqlite3.Error, OSError):  # the database busy past its timeout, say: again
                log.exception("the batch runner's tick failed; it runs again in %s s", self.tick_s)

    def _drop_expired_files(self) -> None:
        for row in self.store.expired_files(int(self.clock())):
            # With the check in one transaction: the API's process may be starting a batch
            # on the file (its own transaction), which then either finds it gone or keeps it.
            with self.store.transaction():
                self.store.delete_file(row.owner, row.id)
                used = self.store.location_used(row.location)  # else a batch still reads it
            if not used:
                self.files.remove(row.location)


def _rounded(history: Iterable[tuple[float, float]]) -> list[list[float]]:
    return [[round(t, 1), round(r, 1)] for t, r in history]
