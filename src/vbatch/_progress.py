"""Progress displays. Each draws a ``RunView``: the job's ``Stats`` and the dispatcher's latest
``snapshot()`` (the servers' load, the window, the fleet), both only read. ``show_progress``
pulls a fresh view on the display's timer.

``RichProgress`` draws a live panel on a terminal; ``LogProgress`` writes a plain line every few
seconds (logs, CI, pipes); ``NotebookProgress`` updates one output of a Jupyter cell;
``NullProgress`` is ``--quiet``.
"""

from __future__ import annotations

import asyncio
import html
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import IO, TYPE_CHECKING, Any, Protocol

from rich.console import Console, Group
from rich.live import Live
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from ._client.stats import Stats

if TYPE_CHECKING:
    from ._client.dispatcher import DispatcherSnapshot
    from ._client.metrics import ServerLoad

__all__ = [
    "LogProgress",
    "NotebookProgress",
    "NullProgress",
    "Progress",
    "RichProgress",
    "RunView",
    "choose_progress",
    "fleet_summary",
    "in_notebook",
    "show_progress",
]


@dataclass(frozen=True)
class RunView:
    """What a display draws: the job's counters and the dispatcher's snapshot taken for this
    look (None where there is no dispatcher to ask)."""

    stats: Stats
    snapshot: DispatcherSnapshot | None = None


class Progress(Protocol):
    interval_s: float

    def start(self, view: RunView) -> None: ...
    def refresh(self, view: RunView) -> None: ...
    def stop(self, view: RunView) -> None: ...


async def show_progress(
    progress: Progress,
    stats: Stats,
    snapshot: Callable[[], DispatcherSnapshot | None],
) -> None:
    """Show a job on ``progress`` until cancelled: ``start``, a ``refresh`` every
    ``progress.interval_s``, then ``stop`` with a last view, also when cancelled (set the
    job's ``finished_at`` first, so that the last view's rates are the run's). Each view holds
    a fresh ``snapshot()``, or the last one taken while it gives None (the run has closed its
    dispatcher already, or has none yet)."""
    latest: DispatcherSnapshot | None = None

    def view() -> RunView:
        nonlocal latest
        taken = snapshot()
        latest = taken if taken is not None else latest
        return RunView(stats, latest)

    progress.start(view())
    try:
        while True:
            await asyncio.sleep(progress.interval_s)
            progress.refresh(view())
    finally:
        progress.stop(view())


def fleet_summary(snapshot: DispatcherSnapshot | None) -> dict[str, Any]:
    """The run summary's keys from the servers' side: restarts and why, the window at the end and
    an adaptive window's changes (``(seconds since start, window, output tok/s it replaced)``)."""
    if snapshot is None:
        return {"restarts": 0, "restart_reasons": [], "window": None, "window_history": None}
    fleet = snapshot.fleet
    return {
        "restarts": fleet.restarts if fleet is not None else 0,
        "restart_reasons": list(fleet.restart_reasons) if fleet is not None else [],
        "window": snapshot.window,
        "window_history": snapshot.window_history,
    }


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


def _load(snapshot: DispatcherSnapshot) -> ServerLoad | None:
    fleet = snapshot.fleet
    if fleet is not None and not fleet.up:
        return None  # no server up: the last look is stale
    return snapshot.load


def _fleet(snapshot: DispatcherSnapshot) -> str:
    """How many servers are up, once one is not or one was restarted."""
    fleet = snapshot.fleet
    if fleet is None:
        return ""
    up, total, restarts = fleet.up, fleet.members, fleet.restarts
    if up == total and not restarts:
        return ""
    parts = [f"servers: {up}/{total} up"]
    if not up:
        parts.append("waiting for one")
    if restarts:
        parts.append(f"{restarts} restarted")
    return ", ".join(parts)


def _server(view: RunView) -> str:
    """Is the server saturated (requests queue in it) or is the client holding it back?"""
    snapshot = view.snapshot
    if snapshot is None:
        return ""
    fleet = _fleet(snapshot)
    load = _load(snapshot)
    if load is None:
        return fleet
    if load.waiting > 0:
        state = "saturated"
    elif view.stats.input_sent:
        # Fewer in flight than the window because no rows are left to send, not held back.
        state = "input sent: waiting on the last rows"
    elif snapshot.window_held:
        state = "window held: more in flight measured slower"
    else:
        state = "client-bound: more in flight would help"
    window = f", window {snapshot.window}" if snapshot.window else ""
    load_text = f"server: {load.running} running, {load.waiting} waiting ({state}){window}"
    return f"{load_text} | {fleet}" if fleet else load_text


class NullProgress:
    interval_s = 3600.0

    def start(self, view: RunView) -> None:
        pass

    def refresh(self, view: RunView) -> None:
        pass

    def stop(self, view: RunView) -> None:
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

    def start(self, view: RunView) -> None:
        pass

    def refresh(self, view: RunView) -> None:
        self._write(_line(view))

    def stop(self, view: RunView) -> None:
        self.refresh(view)


def _line(view: RunView) -> str:
    stats = view.stats
    line = (
        f"vbatch: {_count(stats)} rows | {_in_flight(stats)} | "
        f"{stats.requests_per_s:.1f} req/s | {stats.output_tokens_per_s:,.0f} tok/s | "
        f"{stats.failed} errors | {stats.retries} retries | ETA {_duration(stats.eta_s)}"
    )
    server = _server(view)
    return line + (f" | {server}" if server else "")


class NotebookProgress:
    """A bar and the log line in one output of a Jupyter cell, updated in place (IPython's
    display ids: no widgets to install, no terminal escape codes in the notebook)."""

    interval_s = 0.5

    def __init__(self) -> None:
        self._handle: Any = None

    def _shown(self, view: RunView) -> dict[str, str]:
        stats = view.stats
        done = stats.skipped + stats.done
        bar = (f'<progress value="{done}" max="{stats.total}" style="width:20em"></progress> '
               if stats.total else "")  # fmt: skip
        text = html.escape(_line(view))
        return {"text/plain": _line(view), "text/html": f"<div>{bar}<code>{text}</code></div>"}

    def start(self, view: RunView) -> None:
        from IPython.display import display

        self._handle = display(self._shown(view), raw=True, display_id=True)  # type: ignore[no-untyped-call]

    def refresh(self, view: RunView) -> None:
        if self._handle is not None:
            self._handle.update(self._shown(view), raw=True)

    def stop(self, view: RunView) -> None:
        self.refresh(view)
        self._handle = None


def in_notebook() -> bool:
    """Whether this runs in a Jupyter kernel (IPython's kernel shell, loaded already)."""
    shell = sys.modules.get("IPython")
    if shell is None:
        return False
    get = getattr(shell, "get_ipython", None)
    found = get() if get is not None else None
    return type(found).__name__ == "ZMQInteractiveShell"


class RichProgress:
    """A live panel: bar, done/total, in flight, rates, errors, retries, ETA."""

    interval_s = 0.25

    def __init__(self, console: Console | None = None) -> None:
        self.console = console or Console(stderr=True)
        self._live: Live | None = None

    def _render(self, view: RunView) -> Group:
        stats = view.stats
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
        server = _server(view)
        if server:
            parts.append(Text(server, style="dim"))
        return Group(*parts)

    def start(self, view: RunView) -> None:
        self._live = Live(
            self._render(view), console=self.console, auto_refresh=False, transient=False
        )
        self._live.start()

    def refresh(self, view: RunView) -> None:
        if self._live is not None:
            self._live.update(self._render(view), refresh=True)

    def stop(self, view: RunView) -> None:
        if self._live is not None:
            self._live.update(self._render(view), refresh=True)
            self._live.stop()
            self._live = None


def choose_progress(
    quiet: bool = False, stream: IO[str] | None = None, lines: bool = True
) -> Progress:
    """In a notebook its own display, Rich on a terminal, plain log lines otherwise (none
    without ``lines``), nothing with ``quiet``."""
    if quiet:
        return NullProgress()
    if in_notebook():
        return NotebookProgress()
    stream = stream or sys.stderr
    if stream.isatty():
        return RichProgress(Console(file=stream))
    return LogProgress(stream) if lines else NullProgress()
