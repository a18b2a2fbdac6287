"""Progress renders to a StringIO console in tests; plain lines when not a TTY."""

from __future__ import annotations

import io
import time

from rich.console import Console

from vbatch import LogProgress, NullProgress, RichProgress, Stats
from vbatch._progress import choose_progress


def stats() -> Stats:
    s = Stats(total=100, done=40, ok=38, failed=2, retries=5, in_flight=8)
    s.completion_tokens = 4000
    s.started_at -= 10.0
    return s


def test_rich_progress_shows_counts_rates_errors() -> None:
    buf = io.StringIO()
    progress = RichProgress(Console(file=buf, width=120, force_terminal=False))
    s = stats()
    progress.start(s)
    progress.refresh(s)
    progress.stop(s)
    text = buf.getvalue()
    assert "40/100" in text
    assert "8 in flight" in text
    assert "2 errors" in text and "5 retries" in text
    assert "ETA 00:1" in text  # 60 rows left at ~4 rows/s


def log_line(s: Stats) -> str:
    buf = io.StringIO()
    LogProgress(buf).refresh(s)
    return buf.getvalue()


def test_log_progress_writes_plain_lines() -> None:
    line = log_line(stats())
    assert line.startswith("vbatch: 40/100 rows | 8 in flight |")
    assert "\x1b[" not in line  # no terminal codes


def test_server_saturation_is_shown_when_known() -> None:
    s = stats()
    s.server_running, s.server_waiting = 256, 12
    assert "256 running, 12 waiting (saturated)" in log_line(s)


def test_a_window_held_by_its_throughput_check_is_not_called_client_bound() -> None:
    s = stats()
    s.server_running, s.server_waiting = 512, 0
    assert "512 running, 0 waiting (client-bound: more in flight would help)" in log_line(s)
    s.window_capped = True
    assert "512 running, 0 waiting (window held: more in flight measured slower)" in log_line(s)


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
    s.servers, s.servers_up = 3, 3
    assert "servers:" not in log_line(s)  # all up, none restarted: nothing to say
    s.servers_up, s.restarts = 2, 1
    assert "servers: 2/3 up, 1 restarted" in log_line(s)
    s.servers_up = 0
    assert "servers: 0/3 up, waiting for one, 1 restarted" in log_line(s)
