"""Input and output at ``http(s)://`` URLs, as vLLM's run_batch takes them (presigned object-store
URLs): the input is fetched (GET) into a local file before the job, the output written to a
local file and sent (PUT) once the job has ended.

The local files live under ``$VBATCH_HOME/remote/``, named by the URL's scheme, host and path
(not its query: a presigned URL's signature changes each time one is made), so running the same
command again resumes the output where it ends, as a local one does. A URL's query is never
printed or written: it is a credential.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import posixpath
import urllib.parse
from pathlib import Path

import aiohttp

from .._config import CONNECT_TIMEOUT_S, DEFAULT_TIMEOUT_S
from .._engine.paths import home
from .._errors import InputError, OutputError
from .._job import Job

__all__ = ["is_url", "local_copy", "localize", "shown", "upload"]

CHUNK_BYTES = 1 << 20


def is_url(path: str | os.PathLike[str] | None) -> bool:
    return isinstance(path, str) and path.startswith(("http://", "https://"))


def shown(url: str) -> str:
    """The URL as messages show it: without its query (a presigned URL's signature)."""
    parts = urllib.parse.urlsplit(url)
    return urllib.parse.urlunsplit((parts.scheme, parts.netloc, parts.path, "", ""))


def local_copy(url: str, kind: str) -> Path:
    """Where the local file of ``url`` is: the same for every query of one object."""
    key = hashlib.sha256(shown(url).encode()).hexdigest()[:16]
    name = posixpath.basename(urllib.parse.urlsplit(url).path) or kind
    folder = home() / "remote" / f"{kind}-{key}"
    folder.mkdir(parents=True, exist_ok=True)
    return folder / name


def _session() -> aiohttp.ClientSession:
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=CONNECT_TIMEOUT_S,
                                    sock_read=DEFAULT_TIMEOUT_S)  # fmt: skip
    return aiohttp.ClientSession(timeout=timeout)


async def fetch(url: str) -> Path:
    """GET ``url`` into its local copy (whole or not at all) and return its path."""
    dest = local_copy(url, "input")
    part = dest.with_name(dest.name + ".part")
    try:
        async with _session() as session, session.get(url) as reply:
            if reply.status != 200:
                raise InputError(shown(url), None, f"GET answered HTTP {reply.status}")
            with open(part, "wb") as f:
                async for chunk in reply.content.iter_chunked(CHUNK_BYTES):
                    f.write(chunk)
    except aiohttp.ClientError as exc:
        raise InputError(shown(url), None, f"cannot fetch it: {type(exc).__name__}") from None
    os.replace(part, dest)
    return dest


async def upload(path: str, url: str) -> None:
    """PUT the file at ``path`` to ``url`` (its length declared, as object stores want)."""
    size = os.path.getsize(path)
    try:
        async with _session() as session:
            with open(path, "rb") as f:
                headers = {"Content-Length": str(size), "Content-Type": "application/jsonl"}
                async with session.put(url, data=f, headers=headers) as reply:
                    if reply.status not in (200, 201, 204):
                        raise OutputError(f"{shown(url)}: PUT answered HTTP {reply.status}; "
                                          f"the output is kept at {path}")  # fmt: skip
    except aiohttp.ClientError as exc:
        raise OutputError(f"{shown(url)}: cannot send the output ({type(exc).__name__}); it is "
                          f"kept at {path}") from None  # fmt: skip


async def localize(job: Job) -> tuple[Job, str | None]:
    """``job`` with local files for its URLs (the input fetched), and the URL its output goes to
    once the job ends (None: a local output)."""
    if isinstance(job.input, str) and is_url(job.input):
        job = dataclasses.replace(job, input=str(await fetch(job.input)))
    send_to = job.output if is_url(job.output) else None
    if send_to is not None:
        job = dataclasses.replace(job, output=str(local_copy(send_to, "output")))
    return job, send_to
