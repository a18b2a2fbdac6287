"""Task lifetimes, the same way everywhere: a task group whose failure is the error itself,
cancelling a block when an event is set (Ctrl-C), ending background tasks (cancel them,
then wait until each has run its clean-up), and a coroutine run on a loop of its own."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Coroutine
from typing import Any, TypeVar

__all__ = ["CancelledOn", "cancel_and_wait", "run_sync", "task_group"]

T = TypeVar("T")


def run_sync(coro: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine on a fresh event loop, uvloop's when installed (less CPU per request)."""
    try:
        import uvloop

        factory = uvloop.new_event_loop
    except ImportError:  # pragma: no cover - uvloop is a dependency off Windows
        factory = None
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(coro)


async def cancel_and_wait(*tasks: asyncio.Future[Any] | None) -> None:
    live = [task for task in tasks if task is not None]
    for task in live:
        task.cancel()
    for task in live:
        with contextlib.suppress(asyncio.CancelledError):
            await task


@contextlib.asynccontextmanager
async def task_group() -> AsyncIterator[asyncio.TaskGroup]:
    """An ``asyncio.TaskGroup`` whose failure is the exception itself, not a group of one: the
    caller's ``except LaunchError`` (and the CLI's exit code for it) still works. Several at
    once give the first that is not a cancellation."""
    try:
        async with asyncio.TaskGroup() as group:
            yield group
    except BaseExceptionGroup as failed:
        errors = [e for e in failed.exceptions if not isinstance(e, asyncio.CancelledError)]
        if errors:
            raise errors[0] from None
        raise


class CancelledOn:
    """``async with CancelledOn(event):`` runs the block until ``event`` is set, then cancels it
    (as ``asyncio.timeout`` does at its deadline) and goes on after the block; ``fired`` says
    whether it did. The CLI's Ctrl-C sets such an event."""

    def __init__(self, event: asyncio.Event | None) -> None:
        self._event = event
        self._task: asyncio.Task[Any] | None = None
        self._watch: asyncio.Task[None] | None = None
        self.fired = False

    async def __aenter__(self) -> CancelledOn:
        self._task = asyncio.current_task()
        if self._event is not None:
            self._watch = asyncio.create_task(self._wait(self._event))
        return self

    async def _wait(self, event: asyncio.Event) -> None:
        await event.wait()
        self.fired = True
        assert self._task is not None
        self._task.cancel()

    async def __aexit__(self, kind: type[BaseException] | None, *rest: object) -> bool:
        if self._watch is not None:
            self._watch.cancel()  # not awaited: it holds nothing
        if self.fired and kind is asyncio.CancelledError:
            assert self._task is not None
            return self._task.uncancel() == 0  # ours: swallowed; another's goes on
        return False
