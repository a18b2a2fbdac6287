"""Reading a record file back (``RecordScan``): whole lines with their numbers and offsets, a
torn tail left out and cut off on request, a line that is not a record named by file:line with
the caller's error; and the merge, which refuses a shard with either."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from vbatch import ErrorInfo, MergeError, OutputError, Result, ResumeError
from vbatch._input.ids import id_digest
from vbatch._input.validate import InputIndex
from vbatch._models import COMPLETIONS
from vbatch._output.merge import merge
from vbatch._output.records import format_batch_line, format_record
from vbatch._output.scan import RecordScan
from vbatch._output.state import FileStateStore

TORN = b'{"id": "c", "te'
BODY = {"choices": [{"index": 0, "text": "hi", "finish_reason": "stop"}], "usage": {}}


def ok_result(row_id: str) -> Result:
    return Result(0, row_id, COMPLETIONS, 200, BODY, None, 1, 0.5)


def err_result(row_id: str) -> Result:
    return Result(1, row_id, COMPLETIONS, 400, None, ErrorInfo("BadRequestError", "bad"), 1, 0.1)


def test_whole_lines_with_numbers_and_offsets_up_to_a_torn_tail(tmp_path: Path) -> None:
    path = tmp_path / "o.jsonl"
    a, b = format_record(ok_result("a")), format_batch_line(err_result("b"))
    path.write_bytes(a + b + TORN)
    scan = RecordScan(str(path))
    records = list(scan.records())
    assert [(r.line_no, r.offset, r.line) for r in records] == [(1, 0, a), (2, len(a), b)]
    assert [(r.id, r.ok) for r in records] == [("a", True), ("b", False)]
    assert records[1].data["custom_id"] == "b"  # a Batch output line, parsed
    assert (scan.lines, scan.end, scan.torn_bytes) == (2, len(a) + len(b), len(TORN))
    assert path.read_bytes().endswith(TORN)  # reading cuts nothing
    assert scan.cut_torn_tail() == len(TORN)
    assert path.read_bytes() == a + b


def test_a_whole_file_has_no_tail_to_cut(tmp_path: Path) -> None:
    path = tmp_path / "o.jsonl"
    path.write_bytes(format_record(ok_result("a")))
    scan = RecordScan(str(path))
    assert [r.id for r in scan.records()] == ["a"]
    assert scan.torn_bytes == 0 and scan.cut_torn_tail() == 0
    empty = tmp_path / "empty.jsonl"
    empty.write_bytes(b"")
    scan = RecordScan(str(empty))
    assert list(scan.records()) == [] and scan.torn_bytes == 0


def test_whole_lines_are_not_parsed(tmp_path: Path) -> None:
    path = tmp_path / "o.jsonl"
    path.write_bytes(b"anything\n\nelse\nto")
    scan = RecordScan(str(path))
    assert list(scan.whole_lines()) == [(1, 0, b"anything\n"), (2, 9, b"\n"), (3, 10, b"else\n")]
    assert scan.torn_bytes == 2


@pytest.mark.parametrize("bad", [b"garbage\n", b"[1, 2]\n", b'{"text": "no id"}\n', b"\n"])
def test_a_line_that_is_not_a_record_raises_the_callers_error(tmp_path: Path, bad: bytes) -> None:
    path = tmp_path / "o.jsonl"
    path.write_bytes(format_record(ok_result("a")) + bad + format_record(ok_result("b")))
    with pytest.raises(ResumeError, match=r"o.jsonl:2: not a vbatch record$"):
        list(RecordScan(str(path)).records())
    with pytest.raises(OutputError, match=r"o.jsonl:2: not a vbatch record; start again$"):
        list(RecordScan(str(path), OutputError, "start again").records())


def _shard(tmp_path: Path, body: bytes) -> Path:
    """A one-shard job's output holding ``body``, with the state files a shard run leaves."""
    path = tmp_path / "o.shard-0.jsonl"
    path.write_bytes(body)
    digests = np.array([id_digest(x) for x in ("a", "b")], dtype=np.uint64)
    FileStateStore(str(path)).save({"input": "x", "shard": [0, 1]}, InputIndex(2, False, digests))
    return path


def test_merge_refuses_a_torn_shard_naming_its_line(tmp_path: Path) -> None:
    whole = format_record(ok_result("a")) + format_record(err_result("b"))
    shard = _shard(tmp_path, whole + TORN)
    with pytest.raises(MergeError, match=r"o.shard-0.jsonl:3: torn last line .* run that shard"):
        merge([str(shard)], str(tmp_path / "merged.jsonl"))
    assert not (tmp_path / "merged.jsonl").exists()
    shard.write_bytes(whole)
    summary = merge([str(shard)], str(tmp_path / "merged.jsonl"))
    assert (summary.rows, summary.failed) == (2, 1)
    assert (tmp_path / "merged.jsonl").read_bytes() == whole


def test_merge_refuses_a_shard_line_that_is_not_a_record(tmp_path: Path) -> None:
    shard = _shard(tmp_path, format_record(ok_result("a")) + b"garbage\n")
    with pytest.raises(MergeError, match=r"o.shard-0.jsonl:2: not a vbatch record$"):
        merge([str(shard)], str(tmp_path / "merged.jsonl"))
