"""Job state across runs: the job's fingerprint and its validated input index.

A ``JobStateStore`` keeps them; ``FileStateStore`` keeps them beside the output, in
``OUTPUT.vbatch.json`` (fingerprint, the job's parts, row count) and ``OUTPUT.vbatch.ids`` (each
row's id digest, 8 bytes a row), so an unchanged job resumes without validating again. (The
Batch API service keeps the same in its database.)
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import orjson

from .._errors import ResumeError
from .._input.sources import file_digest
from .._input.validate import InputIndex
from .files import atomic_write

__all__ = [
    "FileStateStore",
    "JobStateStore",
    "StoredJob",
    "file_digest",
    "fingerprint",
    "ids_path",
    "state_path",
]

STATE_VERSION = 1


def fingerprint(parts: dict[str, Any]) -> str:
    return hashlib.sha256(orjson.dumps(parts, option=orjson.OPT_SORT_KEYS)).hexdigest()[:32]


@dataclass(frozen=True)
class StoredJob:
    """What an earlier run recorded: its fingerprint, the parts it was made of (to say what
    changed), and its validated index when that is whole (else None: validate again)."""

    fingerprint: str | None
    parts: dict[str, Any]
    index: InputIndex | None


class JobStateStore(Protocol):
    def load(self) -> StoredJob:
        """The earlier run's state; ``ResumeError`` when there is none or it is unreadable."""
        ...

    def save(self, parts: dict[str, Any], index: InputIndex) -> None: ...


def state_path(output: str) -> str:
    return output + ".vbatch.json"


def ids_path(output: str) -> str:
    return output + ".vbatch.ids"


class FileStateStore:
    """The state files beside an output file."""

    def __init__(self, output: str) -> None:
        self.output = output
        self.state_path = state_path(output)
        self.ids_path = ids_path(output)

    def save(self, parts: dict[str, Any], index: InputIndex) -> None:
        # The id digests go first: a state file naming them is only ever written once they exist.
        atomic_write(self.ids_path, index.digests.astype("<u8").tobytes())
        state = {
            "version": STATE_VERSION,
            "fingerprint": fingerprint(parts),
            "rows": index.rows,
            "batch_lines": index.batch_lines,
            "job": parts,
        }
        atomic_write(self.state_path, orjson.dumps(state, option=orjson.OPT_INDENT_2))

    def load(self) -> StoredJob:
        try:
            with open(self.state_path, "rb") as f:
                recorded = orjson.loads(f.read())
        except FileNotFoundError:
            raise ResumeError(
                f"{self.output} exists but has no {os.path.basename(self.state_path)} beside "
                "it, so it was not written by vbatch; pass --overwrite to replace it or choose "
                "another output"
            ) from None
        except orjson.JSONDecodeError:
            raise ResumeError(
                f"{self.state_path} is corrupt; pass --overwrite to start again"
            ) from None
        return StoredJob(
            recorded.get("fingerprint"), recorded.get("job", {}), self._index(recorded)
        )

    def _index(self, state: dict[str, Any]) -> InputIndex | None:
        rows = state.get("rows")
        try:
            with open(self.ids_path, "rb") as f:
                raw = f.read()
        except OSError:
            return None
        if not isinstance(rows, int) or len(raw) != 8 * rows:
            return None
        digests = np.frombuffer(raw, dtype="<u8").astype(np.uint64)
        return InputIndex(rows, bool(state.get("batch_lines")), digests)
