"""Output state across runs: the job fingerprint kept beside the output, and the scan that tells
which ids an earlier run finished (dropping a torn last line left by a crash)."""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, BinaryIO

import numpy as np
import orjson

from ._errors import OutputError, ResumeError
from ._ids import DigestList
from ._records import read_record_status

__all__ = [
    "InputIndex",
    "OutputState",
    "file_digest",
    "fingerprint",
    "pending_mask",
    "prepare_output",
    "state_path",
]

STATE_VERSION = 1


def state_path(output: str) -> str:
    return output + ".vbatch.json"


def file_digest(path: str) -> str:
    """Content identity of the input: a renamed or touched file still resumes, an edited one not."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()[:32]


def fingerprint(parts: dict[str, Any]) -> str:
    return hashlib.sha256(orjson.dumps(parts, option=orjson.OPT_SORT_KEYS)).hexdigest()[:32]


@dataclass
class OutputState:
    """What the output held when the run began."""

    done: np.ndarray = field(default_factory=lambda: np.zeros(0, np.uint64))  # sorted digests
    ok: int = 0
    failed: int = 0  # error records kept (not being retried)
    dropped_failed: int = 0  # error records removed for --retry-failed
    torn_bytes: int = 0
    resumed: bool = False


@contextlib.contextmanager
def _replacing(path: str) -> Iterator[BinaryIO]:
    """A file that replaces ``path`` whole (fsync + rename) when the block ends without error."""
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".vbatch-", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _atomic_write(path: str, data: bytes) -> None:
    with _replacing(path) as f:
        f.write(data)


def ids_path(output: str) -> str:
    return output + ".vbatch.ids"


@dataclass
class InputIndex:
    """What the validating pass learns that a resumed run needs again: row count, whether the
    rows are OpenAI Batch lines, and each row's id digest (by row index)."""

    rows: int
    batch_lines: bool
    digests: np.ndarray


def _check_writable(output: str) -> None:
    folder = os.path.dirname(os.path.abspath(output)) or "."
    if os.path.isdir(output):
        raise OutputError(f"{output}: is a directory")
    if not os.path.isdir(folder):
        raise OutputError(f"{output}: folder {folder} does not exist")
    existed = os.path.exists(output)
    try:  # only trying tells (root passes os.access checks that the kernel then refuses)
        with open(output, "ab"):
            pass
    except OSError as exc:
        raise OutputError(f"{output}: cannot be written ({exc.strerror})") from None
    if not existed:
        os.unlink(output)  # a run that fails validation leaves nothing behind


def _write_state(output: str, parts: dict[str, Any], index: InputIndex) -> None:
    # The id digests go first: a state file naming them is only ever written once they exist.
    _atomic_write(ids_path(output), index.digests.astype("<u8").tobytes())
    state = {
        "version": STATE_VERSION,
        "fingerprint": fingerprint(parts),
        "rows": index.rows,
        "batch_lines": index.batch_lines,
        "job": parts,
    }
    _atomic_write(state_path(output), orjson.dumps(state, option=orjson.OPT_INDENT_2))


def _cached_index(output: str, state: dict[str, Any]) -> InputIndex | None:
    """The earlier run's validated index, when it is whole; else None (validate again)."""
    rows = state.get("rows")
    try:
        with open(ids_path(output), "rb") as f:
            raw = f.read()
    except OSError:
        return None
    if not isinstance(rows, int) or len(raw) != 8 * rows:
        return None
    digests = np.frombuffer(raw, dtype="<u8").astype(np.uint64)
    return InputIndex(rows, bool(state.get("batch_lines")), digests)


def prepare_output(
    output: str,
    parts: dict[str, Any],
    validate: Callable[[], InputIndex],
    *,
    overwrite: bool = False,
    retry_failed: bool = False,
    force: bool = False,
) -> tuple[OutputState, InputIndex]:
    """Make ``output`` ready to append to; say what it already holds and index the input.

    Re-running into an existing output resumes it when its recorded fingerprint matches this
    job's; it refuses when the job changed (unless ``force``) or when the file was not written by
    vbatch (unless ``overwrite``). ``validate`` (the streaming validation pass) runs before
    anything is written, except on a matching resume, where the earlier run's index is reused:
    the input is byte-for-byte the one already validated.
    """
    _check_writable(output)
    existed = os.path.exists(output) and os.path.getsize(output) > 0
    if overwrite or not existed:
        fresh = validate()
        with open(output, "wb"):
            pass
        _write_state(output, parts, fresh)
        return OutputState(), fresh
    try:
        with open(state_path(output), "rb") as f:
            recorded = orjson.loads(f.read())
    except FileNotFoundError:
        raise ResumeError(
            f"{output} exists but has no {os.path.basename(state_path(output))} beside it, so it "
            "was not written by vbatch; pass --overwrite to replace it or choose another output"
        ) from None
    except orjson.JSONDecodeError:
        corrupt = f"{state_path(output)} is corrupt; pass --overwrite to start again"
        raise ResumeError(corrupt) from None
    index: InputIndex | None = None
    if recorded.get("fingerprint") != fingerprint(parts):
        if not force:
            before = recorded.get("job", {})
            changed = sorted(k for k in set(before) | set(parts) if before.get(k) != parts.get(k))
            raise ResumeError(
                f"{output} was written by a different job (changed: {', '.join(changed)}); "
                "pass --force to resume it anyway, or --overwrite to start again"
            )
    else:
        index = _cached_index(output, recorded)
    if index is None:
        index = validate()
        _write_state(output, parts, index)
    return _scan(output, retry_failed), index


def _scan(output: str, retry_failed: bool) -> OutputState:
    state = OutputState(resumed=True)
    done = DigestList()
    failed_lines = 0
    with open(output, "r+b") as f:
        size = os.fstat(f.fileno()).st_size
        good_end = 0
        for line_no, line in enumerate(f, start=1):
            if not line.endswith(b"\n"):
                break  # torn tail: a crash mid-write
            try:
                record = orjson.loads(line)
                row_id, ok = read_record_status(record)
            except (orjson.JSONDecodeError, KeyError, TypeError):
                raise ResumeError(
                    f"{output}:{line_no}: not a vbatch record; the output is damaged "
                    "(pass --overwrite to start again)"
                ) from None
            good_end += len(line)
            if ok:
                state.ok += 1
                done.append(row_id)
            elif retry_failed:
                failed_lines += 1
            else:
                state.failed += 1
                done.append(row_id)
        if good_end < size:
            state.torn_bytes = size - good_end
            f.truncate(good_end)
    if failed_lines:
        _drop_failed(output)
        state.dropped_failed = failed_lines
    state.done = np.sort(done.to_numpy())
    return state


def _drop_failed(output: str) -> None:
    """Rewrite the output without its error records, atomically (they are about to be redone)."""
    with _replacing(output) as dst, open(output, "rb") as src:
        for line in src:
            if read_record_status(orjson.loads(line))[1]:
                dst.write(line)


def pending_mask(input_digests: np.ndarray, done: np.ndarray) -> np.ndarray:
    """True for each input row (by index) that still has to be sent."""
    if done.size == 0:
        return np.ones(input_digests.size, dtype=bool)
    # ``done`` is sorted: a binary search per row uses far less memory than np.isin's sort.
    slots = np.searchsorted(done, input_digests)
    np.minimum(slots, done.size - 1, out=slots)
    return np.asarray(done[slots] != input_digests)
