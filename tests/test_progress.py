"""Progress renders to a StringIO console in tests; plain lines when not a TTY. A display draws
the job's ``Stats`` beside the dispatcher's snapshot, pulled on its timer by ``show_progress``."""

from __future__ import annotations

import asyncio
import io
import time

from rich.console import Console

from vbatch import LogProgress, NullProgress, RichProgress, Stats
from vbatch._client.dispatcher import DispatcherSnapshot
from vbatch._client.metrics import ServerLoad
from vbatch._fleet.base import FleetStatus
from vbatch._progress import RunView, choose_progress, fleet_summary, show_progress


def stats() -> Stats:
    s = Stats(total=100, done=40, ok=38, failed=2, retries=5, in_flight=8)
    s.completion_tokens = 4000
    s.started_at -= 10.0
    return s


def snapshot(
    running: int | None = None,
    waiting: int = 0,
    *,
    window: int = 512,
    held: bool = False,
    fleet: FleetStatus | None = None,
    history: list[tuple[float, int, float]] | None = None,
) -> DispatcherSnapshot:
    load = ServerLoad(running, waiting) if running is not None else None
    return DispatcherSnapshot(window, held or history is not None, held, load, history, fleet)


def test_rich_progress_shows_counts_rates_errors() -> None:
    buf = io.StringIO()
    progress = RichProgress(Console(file=buf, width=120, force_terminal=False))
    view = RunView(stats(), snapshot(256, 12))
    progress.start(view)
    progress.refresh(view)
    progress.stop(view)
    text = buf.getvalue()
    assert "40/100" in text
    assert "8 in flight" in text
    assert "2 errors" in text and "5 retries" in text
    assert "ETA 00:1" in text  # 60 rows left at ~4 rows/s
    assert "256 running, 12 waiting (saturated)" in text


def log_line(s: Stats, snap: DispatcherSnapshot | None = None) -> str:
    buf = io.StringIO()
    LogProgress(buf).refresh(RunView(s, snap))
    return buf.getvalue()


def test_log_progress_writes_plain_lines() -> None:
    line = log_line(stats())
    assert line.startswith("vbatch: 40/100 rows | 8 in flight |")
    assert "server:" not in line  # no snapshot: nothing known of the server
    assert "\x1b[" not in line  # no terminal codes


def test_server_saturation_is_shown_when_known() -> None:
    assert "server:" not in log_line(stats(), snapshot())  # no load read yet
    line = log_line(stats(), snapshot(256, 12))
    assert "server: 256 running, 12 waiting (saturated), window 512" in line


def test_a_window_held_by_its_throughput_check_is_not_called_client_bound() -> None:
    line = log_line(stats(), snapshot(512, 0))
    assert "512 running, 0 waiting (client-bound: more in flight would help)" in line
    line = log_line(stats(), snapshot(512, 0, held=True))
    assert "512 running, 0 waiting (window held: more in flight measured slower)" in line


def test_the_input_run_dry_is_not_called_client_bound() -> None:
    # A 7-row job: 3 done, the other 4 in flight, none waiting in the server.
    s = Stats(total=7, done=3, ok=3, in_flight=4)
    s.started_at -= 1.0
    assert s.input_sent
    line = log_line(s, snapshot(4, 0))
    assert "4 running, 0 waiting (input sent: waiting on the last rows)" in line
    assert "client-bound" not in line
    # A row waiting out a back-off is not left to send either; a resumed job's skipped rows
    # are not left at all.
    s = Stats(total=10, skipped=3, done=3, in_flight=3, retrying=1)
    assert s.input_sent
    # One row not yet sent: more in flight would help again.
    s.in_flight = 2
    assert not s.input_sent
    assert "(client-bound: more in flight would help)" in log_line(s, snapshot(2, 0))
    # Before the rows are counted nothing is known to be sent.
    assert not Stats(in_flight=4).input_sent


def test_choose_progress() -> None:
    assert isinstance(choose_progress(quiet=True), NullProgress)
    assert isinstance(choose_progress(stream=io.StringIO()), LogProgress)


def test_rows_waiting_out_a_back_off_are_counted_and_the_eta_does_not_read_zero() -> None:
    s = Stats(total=100, done=99, ok=99, in_flight=0, retrying=1)
    s.started_at -= 10.0  # ~10 rows/s: the last row alone would read 00:00
    s.backoff_until = time.monotonic() + 20.0
    line = log_line(s)
    assert "0 in flight, 1 retrying" in line
    assert s.eta_s is not None and s.eta_s > 19
    s.retrying = 0
    assert s.eta_s == 1.0  # never under a second while rows remain
    s.done = 100
    assert s.eta_s == 0.0


def test_servers_down_and_restarts_are_shown() -> None:
    s = stats()
    assert "servers:" not in log_line(s, snapshot(fleet=FleetStatus(3, 3)))  # nothing to say
    line = log_line(s, snapshot(100, 0, fleet=FleetStatus(3, 2, restarts=1)))
    assert "server: 100 running" in line and "| servers: 2/3 up, 1 restarted" in line
    # None up: the last load read is stale, so only the fleet is shown.
    line = log_line(s, snapshot(100, 0, fleet=FleetStatus(3, 0, restarts=1)))
    assert "servers: 0/3 up, waiting for one, 1 restarted" in line
    assert "running" not in line


class Recorder:
    """A display that keeps what it was asked to draw."""

    interval_s = 0.01

    def __init__(self) -> None:
        self.calls: list[tuple[str, RunView]] = []

    def start(self, view: RunView) -> None:
        self.calls.append(("start", view))

    def refresh(self, view: RunView) -> None:
        self.calls.append(("refresh", view))

    def stop(self, view: RunView) -> None:
        self.calls.append(("stop", view))


async def test_show_progress_pulls_a_fresh_snapshot_each_look_and_stops_when_cancelled() -> None:
    progress, s = Recorder(), stats()
    looks: list[DispatcherSnapshot] = []

    def take() -> DispatcherSnapshot:
        looks.append(snapshot(len(looks)))
        return looks[-1]

    task = asyncio.create_task(show_progress(progress, s, take))
    while len(progress.calls) < 4:
        await asyncio.sleep(0.01)
    task.cancel()
    await asyncio.wait([task])
    assert task.cancelled()
    kinds = [kind for kind, _ in progress.calls]
    assert kinds[0] == "start" and kinds[-1] == "stop"
    assert set(kinds[1:-1]) == {"refresh"}
    # Every look drew the job's own counters and the snapshot taken for it, the last one too.
    assert all(view.stats is s for _, view in progress.calls)
    assert [view.snapshot for _, view in progress.calls] == looks


async def test_show_progress_keeps_the_last_snapshot_once_the_dispatcher_is_gone() -> None:
    progress, s = Recorder(), stats()
    looks: list[DispatcherSnapshot | None] = [None, snapshot(7, 0)]  # none before sending

    def take() -> DispatcherSnapshot | None:
        return looks.pop(0) if looks else None  # then the run closed its dispatcher

    task = asyncio.create_task(show_progress(progress, s, take))
    while len(progress.calls) < 3:
        await asyncio.sleep(0.01)
    task.cancel()
    await asyncio.wait([task])
    drawn = [view.snapshot for _, view in progress.calls]
    assert drawn[0] is None
    assert drawn[1] is not None and drawn[1].load == ServerLoad(7, 0)
    assert all(snap is drawn[1] for snap in drawn[1:])  # the stop view included


async def test_show_progress_without_a_dispatcher_draws_the_counters() -> None:
    buf = io.StringIO()
    progress = LogProgress(buf, interval_s=0.01)
    task = asyncio.create_task(show_progress(progress, stats(), lambda: None))
    await asyncio.sleep(0.05)
    task.cancel()
    await asyncio.wait([task])
    lines = buf.getvalue().splitlines()
    assert len(lines) >= 2  # refreshes, then the last line from stop
    assert all(line.startswith("vbatch: 40/100 rows") for line in lines)


def test_fleet_summary_gives_the_run_summary_the_servers_side() -> None:
    history = [(0.0, 512, 0.0), (12.5, 1024, 26800.0)]
    why = (
        "vLLM at http://127.0.0.1:1 exited with code -9 (log: a.log)",
        "vLLM at http://127.0.0.1:2 stopped answering /health (3 probes in a row) (log: b.log)",
    )
    fleet = FleetStatus(3, 3, restarts=2, restart_reasons=why)
    snap = snapshot(window=1024, fleet=fleet, history=history)
    assert fleet_summary(snap) == {"restarts": 2, "restart_reasons": list(why), "window": 1024,
                                   "window_history": history}  # fmt: skip
    assert fleet_summary(snapshot(window=64)) == {
        "restarts": 0, "restart_reasons": [], "window": 64, "window_history": None,
    }  # fmt: skip
    assert fleet_summary(None) == {"restarts": 0, "restart_reasons": [], "window": None,
                                   "window_history": None}  # fmt: skip
    # The job's own summary counts the job only; the two together are the run's.
    job = stats().summary()
    assert not {"restarts", "restart_reasons", "window", "window_history"} & job.keys()
    assert {**job, **fleet_summary(snap)}["restarts"] == 2
