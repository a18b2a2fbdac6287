"""What the API shows of a batch, made in the API's process from what the database holds
(``ShownBatch``): the stored object, a cancel accepted over it and the runner's live facts
(counts, rate, ETA, share, output tokens/s), which the runner publishes each tick (runner.py),
so a view is at most a tick old. The API's process reads no other state of the runner's."""

from __future__ import annotations

from typing import Any

from .objects import TERMINAL
from .store import ShownBatch

__all__ = ["batch_view", "progress", "status_doc"]


def batch_view(shown: ShownBatch) -> dict[str, Any]:
    """The Batch object a client gets."""
    doc = shown.doc
    if doc["status"] in TERMINAL:
        return doc  # its end's counts are the files' tally: the last word
    if shown.cancel_at is not None:
        # The runner applies a cancel on its tick and may save the batch "in_progress" before
        # it does: an accepted cancel shows over any status short of the batch's end.
        doc = {**doc, "status": "cancelling",
               "cancelling_at": doc.get("cancelling_at") or shown.cancel_at}  # fmt: skip
    live = (shown.live or {}).get("request_counts")
    if live is not None:
        # The larger of the saved and the published counts, field by field: both are the
        # flushed counts (drive.py's ``live_counts``) sampled at different times, so the
        # larger is the newer and a poll never sees a count go back.
        stored = doc["request_counts"]
        doc = {**doc, "request_counts": {k: max(v, live.get(k, 0)) for k, v in stored.items()}}
    return doc


def progress(shown: ShownBatch) -> dict[str, Any]:
    """What the status page shows of a batch: its counts and times, its files; while it runs
    its rate, the time left at that rate, its share of the window and its output tokens/s
    over the last minutes."""
    view, live = batch_view(shown), shown.live or {}
    return {
        "id": view["id"], "status": view["status"], "created_at": view["created_at"],
        "in_progress_at": view.get("in_progress_at"),
        "ended_at": next((view.get(f"{s}_at") for s in ("completed", "failed", "expired",
                          "cancelled") if view.get(f"{s}_at")), None),
        "metadata": view["metadata"], "request_counts": view["request_counts"],
        "requests_per_s": live.get("requests_per_s"), "eta_s": live.get("eta_s"),
        "share": live.get("share") if view["status"] == "in_progress" else None,
        "tokens_per_s": live.get("tokens_per_s", []),
        "output_file_id": view.get("output_file_id"),
        "error_file_id": view.get("error_file_id"),
    }  # fmt: skip


def status_doc(shown: list[ShownBatch], fleet: dict[str, Any] | None, now: float) -> dict[str, Any]:
    """The status page's data: the key's batches; the fleet as the runner last published it
    (its servers, output tokens/s of every key's batches, the window and what is in it)."""
    fleet = fleet or {}
    return {
        "now": now,
        "batches": [progress(s) for s in shown],
        "fleet": fleet.get("fleet"),
        "tokens_per_s": fleet.get("tokens_per_s", []),
        "window": fleet.get("window"),
        "in_flight": fleet.get("in_flight"),
    }
