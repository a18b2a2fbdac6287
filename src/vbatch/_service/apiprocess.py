"""The API's process as the service's process sees it (serve.py): started with the listening
socket the service bound (inherited, so the port printed, ``--port 0``'s included, is the
one served), told its settings on stdin, waited for until it serves, watched, and stopped
(SIGTERM, then SIGKILL past a grace) when the service stops. Should the service's process
die first, the kernel ends it (PR_SET_PDEATHSIG, which the child sets itself: apiserver.py).
"""

from __future__ import annotations

import asyncio
import dataclasses
import signal
import subprocess
import sys
from types import TracebackType

import orjson

from .._config import API_START_TIMEOUT_S, API_STOP_GRACE_S
from .._errors import VbatchError

__all__ = ["READY", "ApiProcess", "ApiSettings"]

READY = b"ready\n"  # what the API's process writes on its stdout once it serves


@dataclasses.dataclass(frozen=True)
class ApiSettings:
    """What the API's process needs, sent on its stdin as JSON (argv is anyone's to read)."""

    fd: int  # the listening socket, inherited
    parent: int  # the service's pid: the API's process ends if that is not its parent
    database: str
    data_dir: str
    key_digests: list[str]  # the keys as auth.py holds them; never the keys
    max_file_bytes: int

    def encode(self) -> bytes:
        return orjson.dumps(dataclasses.asdict(self))

    @classmethod
    def decode(cls, data: bytes) -> ApiSettings:
        return cls(**orjson.loads(data))


class ApiProcess:
    """``async with ApiProcess(settings)``: the API's process while the block runs; ``exited``
    is done (with its exit status) should it end on its own meanwhile."""

    def __init__(self, settings: ApiSettings) -> None:
        self.settings = settings
        self.proc: subprocess.Popen[bytes] | None = None
        self.exited: asyncio.Future[int] | None = None

    async def __aenter__(self) -> ApiProcess:
        # Started from the event loop's thread (the main one): PR_SET_PDEATHSIG fires when
        # the thread that forked the child ends, and this one lives as long as the service.
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "vbatch._service.apiserver"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, pass_fds=(self.settings.fd,),
            start_new_session=True,  # Ctrl-C at a terminal reaches the service, which stops it
        )  # fmt: skip
        self.exited = asyncio.ensure_future(asyncio.to_thread(self.proc.wait))
        try:
            await self._started(self.proc)
        except BaseException:
            await self._stop()
            raise
        return self

    async def _started(self, proc: subprocess.Popen[bytes]) -> None:
        assert proc.stdin is not None and proc.stdout is not None
        with proc.stdin:
            proc.stdin.write(self.settings.encode())
        try:
            said = await asyncio.wait_for(asyncio.to_thread(proc.stdout.readline),
                                          API_START_TIMEOUT_S)  # fmt: skip
        except TimeoutError:
            raise VbatchError(f"the API's process did not serve within "
                              f"{API_START_TIMEOUT_S:.0f} s") from None  # fmt: skip
        if said != READY:  # it ended: its error is on stderr, which it shares with this one
            raise VbatchError(f"the API's process ended as it started (exit status "
                              f"{await self._exit_status()})")  # fmt: skip

    async def _exit_status(self) -> int:
        assert self.exited is not None
        return await asyncio.shield(self.exited)

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self._stop()

    async def _stop(self) -> None:
        """SIGTERM (the requests it holds are answered), SIGKILL past the grace."""
        proc, exited = self.proc, self.exited
        assert proc is not None and exited is not None
        proc.send_signal(signal.SIGTERM)  # nothing, if it has ended
        try:
            await asyncio.wait_for(asyncio.shield(exited), API_STOP_GRACE_S)
        except TimeoutError:
            proc.kill()
            await asyncio.shield(exited)
        finally:
            if proc.stdout is not None:
                proc.stdout.close()
