"""``merge``: put an array job's shard outputs (``--shard I/N``) together into one output,
having checked that every input row is there exactly once.

What a merge knows comes from the shards' own state files (``OUT.vbatch.json`` and
``OUT.vbatch.ids`` beside each): the job each ran (its fingerprint parts, shard included), the
input's content digest, and the id digest of every input row in input order. So the merge needs
no input file, and runs wherever the shard outputs were gathered; given the input as well, it
checks that it is the one the shards ran and names a missing row by its id and line instead of
by its row number.

Refused, with nothing written: shards of different jobs or splits, a shard missing or given
twice, a row missing (its shard has not finished it: running that shard again resumes it), a
row written twice or not in the input. The merged output gets the state files a single run
would have left, so ``vbatch run IN -o OUT`` on it resumes with nothing left to send.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from .._config import ENDPOINT_MODES, ORDERS, Order, check_choice
from .._errors import MergeError, ResumeError
from .._input.ids import DigestList, id_digest
from .._input.requests import FieldMap, RequestBuilder
from .._input.sources import open_source
from .._input.validate import InputIndex
from .._models import RequestDefaults
from .files import replacing
from .lock import OutputLock
from .resume import pending_mask
from .scan import Record, RecordScan
from .state import FileStateStore, StoredJob, file_digest

__all__ = ["MergeSummary", "merge"]


@dataclass(frozen=True)
class MergeSummary:
    output: str
    rows: int
    failed: int  # error records among them (written as the shards wrote them)


@dataclass
class _Shard:
    path: str
    index: int
    job: StoredJob


@dataclass
class _Records:
    """Every record of the shards: its id digest, which shard file holds it, where."""

    digests: np.ndarray
    files: np.ndarray
    offsets: np.ndarray
    lengths: np.ndarray
    failed: int


def merge(
    shards: Sequence[str],
    output: str,
    *,
    order: Order = "completion",
    input: str | None = None,
) -> MergeSummary:
    """Write ``output`` from the shard outputs ``shards`` (any order); ``order="input"`` writes
    the records in input order, else shard after shard. ``MergeError`` when they do not add up."""
    check_choice("order", order, ORDERS)
    if os.path.abspath(output) in {os.path.abspath(path) for path in shards}:
        raise MergeError(f"{output} is one of the shards: merge into another file")
    parts, index, ordered = _check_jobs(shards)
    if input is not None and file_digest(input) != parts["input"]:
        raise MergeError(f"{input} is not the input these shards ran (its content differs)")
    records = _scan([s.path for s in ordered])
    _check_rows(records, index, ordered, parts, input)
    lock = OutputLock(output)
    lock.acquire()
    try:
        with replacing(output) as dst:
            for chunk in _merged(records, index, [s.path for s in ordered], order):
                dst.write(chunk)
        FileStateStore(output).save(parts, index)  # as a single run of the job leaves it
    finally:
        lock.release()
    return MergeSummary(output, index.rows, records.failed)


def _check_jobs(shards: Sequence[str]) -> tuple[dict[str, object], InputIndex, list[_Shard]]:
    """One job split N ways, every shard given once: (the unsharded job's parts, the input's
    index, the shards by index)."""
    if not shards:
        raise MergeError("no shard outputs given")
    loaded: list[_Shard] = []
    for path in shards:
        if not os.path.isfile(path):
            raise MergeError(f"{path}: no such file")
        try:
            job = FileStateStore(path).load()
        except ResumeError:
            raise MergeError(f"{path}: no readable vbatch state beside it (it was not written "
                             "by vbatch run --shard)") from None  # fmt: skip
        shard = job.parts.get("shard")
        if not isinstance(shard, list) or len(shard) != 2:
            raise MergeError(f"{path} was not written by a sharded run (vbatch run --shard I/N)")
        loaded.append(_Shard(path, int(shard[0]), job))
    first = loaded[0]
    count = int(first.job.parts["shard"][1])
    common = {k: v for k, v in first.job.parts.items() if k != "shard"}
    by_index: dict[int, _Shard] = {}
    for s in loaded:
        parts = {k: v for k, v in s.job.parts.items() if k != "shard"}
        if parts != common:
            changed = sorted(k for k in set(parts) | set(common) if parts.get(k) != common.get(k))
            raise MergeError(f"{s.path} and {first.path} are shards of different jobs (they "
                             f"differ in: {', '.join(changed)})")  # fmt: skip
        if int(s.job.parts["shard"][1]) != count:
            raise MergeError(f"{s.path} is a shard of {s.job.parts['shard'][1]}, {first.path} "
                             f"of {count}: one split at a time")  # fmt: skip
        if s.index in by_index:
            raise MergeError(f"{s.path} and {by_index[s.index].path} are both shard "
                             f"{s.index}/{count}")  # fmt: skip
        by_index[s.index] = s
    missing = [f"{i}/{count}" for i in range(count) if i not in by_index]
    if missing:
        raise MergeError(f"shard {', '.join(missing)} not given (the merge needs all {count})")
    if first.job.index is None:
        raise MergeError(f"{first.path}: its input index (.vbatch.ids) is missing or damaged; "
                         "run that shard again to rebuild it")  # fmt: skip
    return common, first.job.index, [by_index[i] for i in range(count)]


def _records(path: str) -> Iterator[Record]:
    """Each record of a shard output; a torn last line fails the merge."""
    scan = RecordScan(path, MergeError)
    yield from scan.records()
    if scan.torn_bytes:
        raise MergeError(f"{path}:{scan.lines + 1}: torn last line (the shard was killed "
                         "while writing); run that shard again: it repairs, resumes")  # fmt: skip


def _scan(paths: list[str]) -> _Records:
    digests = DigestList()
    files: list[int] = []
    offsets: list[int] = []
    lengths: list[int] = []
    failed = 0
    for file_no, path in enumerate(paths):
        for record in _records(path):
            digests.append(record.id)
            failed += not record.ok
            files.append(file_no)
            offsets.append(record.offset)
            lengths.append(len(record.line))
    return _Records(digests.to_numpy().astype(np.uint64), np.array(files, np.int32),
                    np.array(offsets, np.int64), np.array(lengths, np.int64), failed)  # fmt: skip


def _where(paths: list[str], digest: int) -> list[str]:
    """``path:line (id ...)`` of each record with this id digest (named only on failure)."""
    found = []
    for path in paths:
        for record in _records(path):
            if id_digest(record.id) == digest:
                found.append(f"{path}:{record.line_no} (id {record.id!r})")
    return found


def _check_rows(
    records: _Records,
    index: InputIndex,
    shards: list[_Shard],
    parts: dict[str, object],
    input: str | None,
) -> None:
    paths = [s.path for s in shards]
    written = np.sort(records.digests)
    twice = np.unique(written[1:][written[1:] == written[:-1]])
    if twice.size:
        raise MergeError(f"{twice.size} row(s) written more than once; the first: "
                         f"{' and '.join(_where(paths, int(twice[0])))}")  # fmt: skip
    extra = written[pending_mask(written, np.sort(index.digests))]
    if extra.size:
        raise MergeError(f"{extra.size} record(s) of rows not in the input; the first: "
                         f"{_where(paths, int(extra[0]))[0]}")  # fmt: skip
    absent = np.flatnonzero(pending_mask(index.digests, written))
    if not absent.size:
        return
    row = int(absent[0])
    shard = shards[int(index.digests[row] % np.uint64(len(shards)))]
    raise MergeError(
        f"{absent.size} input row(s) in no shard output; the first: "
        f"{_name_row(row, parts, input)}, of shard {shard.index}/{len(shards)} "
        f"({shard.path}): run that shard again (it resumes), then merge"
    )


def _name_row(row: int, parts: dict[str, object], input: str | None) -> str:
    """Row ``row`` (from 0) by its id and line when the input is at hand, else by number."""
    if input is None:
        return f"input row {row + 1} (pass --input to name it by id)"
    source = open_source(input)
    fields = parts.get("fields")
    endpoint = parts.get("endpoint")
    builder = RequestBuilder(source.path, RequestDefaults(),
                             FieldMap(**fields) if isinstance(fields, dict) else None,
                             endpoint if endpoint in ENDPOINT_MODES else "auto",
                             require_model=False)  # fmt: skip
    for raw in source.rows():
        if raw.index == row:
            return f"id {builder.build(raw).id!r} ({input}:{raw.line})"
    return f"input row {row + 1}"


def _merged(records: _Records, index: InputIndex, paths: list[str], order: Order
            ) -> Iterator[bytes]:  # fmt: skip
    """The records to write, shard after shard or in input order."""
    if order == "completion":
        for path in paths:
            with open(path, "rb") as f:
                while chunk := f.read(1 << 20):
                    yield chunk
        return
    by_digest = np.argsort(index.digests)
    sorted_digests = index.digests[by_digest]
    position = by_digest[np.searchsorted(sorted_digests, records.digests)]
    with contextlib.ExitStack() as stack:
        fds = [stack.enter_context(open(path, "rb")).fileno() for path in paths]
        for k in np.argsort(position, kind="stable"):
            yield os.pread(fds[records.files[k]], int(records.lengths[k]), int(records.offsets[k]))
