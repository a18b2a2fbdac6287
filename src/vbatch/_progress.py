"""Progress displays. They only read ``Stats``; the job calls ``refresh`` on a timer.

``RichProgress`` draws a live panel on a terminal; ``LogProgress`` writes a plain line every few
seconds (logs, CI, pipes); ``NullProgress`` is ``--quiet``.
"""

from __future__ import annotations

import sys
from typing import IO, Protocol

from rich.console import Console, Group
from rich.live import Live
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from ._client.stats import Stats

__all__ = ["LogProgress", "NullProgress", "Progress", "RichProgress", "choose_progress"]


class Progress(Protocol):
    interval_s: float

    def start(self, stats: Stats) -> None: ...
    def refresh(self, stats: Stats) -> None: ...
    def stop(self, stats: Stats) -> None: ...


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "--:--"
    seconds = int(seconds)
    hours, rest = divmod(seconds, 3600)
    clock = f"{rest // 60:02d}:{rest % 60:02d}"
    return f"{hours}:{clock}" if hours else clock


def _count(stats: Stats) -> str:
    done = stats.skipped + stats.done
    return f"{done:,}/{stats.total:,}" if stats.total is not None else f"{done:,}"


def _in_flight(stats: Stats) -> str:
    retrying = f", {stats.retrying:,} retrying" if stats.retrying else ""
    return f"{stats.in_flight:,} in flight{retrying}"


def _fleet(stats: Stats) -> str:
    """How many servers are up, once one is not or one was restarted."""
    if stats.servers is None:
        return ""
    up, total = stats.servers_up or 0, stats.servers
    if up == total and not stats.restarts:
        return ""
    parts = [f"servers: {up}/{total} up"]
    if not up:
        parts.append("waiting for one")
    if stats.restarts:
        parts.append(f"{stats.restarts} restarted")
    return ", ".join(parts)


def _server(stats: Stats) -> str:
    """Is the server saturated (requests queue in it) or is the client holding it back?"""
    fleet = _fleet(stats)
    if stats.server_running is None:
        return fleet
    waiting = stats.server_waiting or 0
    if waiting > 0:
        state = "saturated"
    elif stats.window_capped:
        state = "window held: more in flight measured slower"
    else:
        state = "client-bound: more in flight would help"
    window = f", window {stats.window}" if stats.window else ""
    load = f"server: {stats.server_running} running, {waiting} waiting ({state}){window}"
    return f"{load} | {fleet}" if fleet else load


class NullProgress:
    interval_s = 3600.0

    def start(self, stats: Stats) -> None:
        pass

    def refresh(self, stats: Stats) -> None:
        pass

    def stop(self, stats: Stats) -> None:
        pass


class LogProgress:
    """One line every ``interval_s`` seconds on ``stream`` (stderr by default)."""

    def __init__(self, stream: IO[str] | None = None, interval_s: float = 10.0) -> None:
        self.stream = stream
        self.interval_s = interval_s

    def _write(self, text: str) -> None:
        stream = self.stream or sys.stderr
        stream.write(text + "\n")
        stream.flush()

    def start(self, stats: Stats) -> None:
        pass

    def refresh(self, stats: Stats) -> None:
        line = (
            f"vbatch: {_count(stats)} rows | {_in_flight(stats)} | "
            f"{stats.requests_per_s:.1f} req/s | {stats.output_tokens_per_s:,.0f} tok/s | "
            f"{stats.failed} errors | {stats.retries} retries | ETA {_duration(stats.eta_s)}"
        )
        server = _server(stats)
        self._write(line + (f" | {server}" if server else ""))

    def stop(self, stats: Stats) -> None:
        self.refresh(stats)


class RichProgress:
    """A live panel: bar, done/total, in flight, rates, errors, retries, ETA."""

    interval_s = 0.25

    def __init__(self, console: Console | None = None) -> None:
        self.console = console or Console(stderr=True)
        self._live: Live | None = None

    def _render(self, stats: Stats) -> Group:
        done = stats.skipped + stats.done
        bar = ProgressBar(total=stats.total or None, completed=done, width=40)
        table = Table.grid(padding=(0, 2))
        table.add_row(
            bar,
            Text(_count(stats), style="bold"),
            Text(f"ETA {_duration(stats.eta_s)}", style="cyan"),
        )
        line = Text.assemble(
            (_in_flight(stats), "bold"), "  ",
            (f"{stats.requests_per_s:,.1f}", "bold"), " req/s  ",
            (f"{stats.output_tokens_per_s:,.0f}", "bold"), " out tok/s  ",
            (f"{stats.failed}", "bold red" if stats.failed else "bold"), " errors  ",
            (f"{stats.retries}", "bold yellow" if stats.retries else "bold"), " retries",
        )  # fmt: skip
        parts: list[Table | Text] = [table, line]
        server = _server(stats)
        if server:
            parts.append(Text(server, style="dim"))
        return Group(*parts)

    def start(self, stats: Stats) -> None:
        self._live = Live(
            self._render(stats), console=self.console, auto_refresh=False, transient=False
        )
        self._live.start()

    def refresh(self, stats: Stats) -> None:
        if self._live is not None:
            self._live.update(self._render(stats), refresh=True)

    def stop(self, stats: Stats) -> None:
        if self._live is not None:
            self._live.update(self._render(stats), refresh=True)
            self._live.stop()
            self._live = None


def choose_progress(quiet: bool = False, stream: IO[str] | None = None) -> Progress:
    """Rich on a terminal, plain log lines otherwise, nothing with ``quiet``."""
    if quiet:
        return NullProgress()
    stream = stream or sys.stderr
    if stream.isatty():
        return RichProgress(Console(file=stream))
    return LogProgress(stream)
