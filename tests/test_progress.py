"""Progress renders to a StringIO console in tests; plain lines when not a TTY."""

from __future__ import annotations

import io

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
