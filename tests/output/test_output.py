"""Output side: record formats, the crash-safe sink, resume scanning and fingerprints."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import orjson
import pytest

from vbatch import ErrorInfo, Result, ResumeError
from vbatch._input.ids import id_digest
from vbatch._input.validate import InputIndex
from vbatch._models import CHAT, COMPLETIONS
from vbatch._output.records import format_batch_line, format_record, read_record_status
from vbatch._output.resume import decide_resume, pending_mask, start_output
from vbatch._output.sink import JsonlSink
from vbatch._output.state import ids_path, state_path
from vbatch._output.writer import JsonlResultWriter, OutputState

BODY = {
    "id": "cmpl-1",
    "choices": [
        {"index": 1, "text": "second", "finish_reason": "stop"},
        {"index": 0, "text": "first", "finish_reason": "length"},
    ],
    "usage": {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7},
}


def ok_result(row_id: str | int = "a", body: dict | None = None, endpoint: str = COMPLETIONS):
    return Result(0, row_id, endpoint, 200, body or BODY, None, 1, 0.5, "cmpl-1")


def err_result(row_id: str | int = "b", status: int | None = 400) -> Result:
    error = ErrorInfo("BadRequestError", "bad", status)
    body = {"error": {"message": "bad", "type": "BadRequestError", "code": 400}} if status else None
    return Result(1, row_id, COMPLETIONS, status, body, error, 1, 0.1)


def test_record_of_n_choices_is_a_list_in_choice_order() -> None:
    rec = orjson.loads(format_record(ok_result()))
    assert rec["text"] == ["first", "second"]
    assert rec["finish_reason"] == ["length", "stop"]
    assert rec["error"] is None and rec["attempts"] == 1
    assert rec["usage"]["completion_tokens"] == 4


def test_chat_record_takes_message_content() -> None:
    body = {"choices": [{"index": 0, "message": {"content": "hi"}, "finish_reason": "stop"}]}
    rec = orjson.loads(format_record(ok_result(body=body, endpoint=CHAT)))
    assert rec["text"] == "hi"


def test_error_record() -> None:
    rec = orjson.loads(format_record(err_result()))
    assert rec["text"] is None
    assert rec["error"] == {"code": "BadRequestError", "message": "bad", "status": 400}
    assert read_record_status(rec) == ("b", False)


def test_batch_line_shapes() -> None:
    ok = orjson.loads(format_batch_line(ok_result("c1")))
    assert ok["custom_id"] == "c1" and ok["error"] is None
    assert ok["response"]["status_code"] == 200 and ok["response"]["body"] == BODY
    assert ok["id"].startswith("vbatch-")
    http_err = orjson.loads(format_batch_line(err_result("c2")))
    assert http_err["response"]["status_code"] == 400
    assert read_record_status(http_err) == ("c2", False)
    lost = orjson.loads(format_batch_line(err_result("c3", status=None)))
    assert lost["response"] is None and lost["error"]["code"] == "BadRequestError"
    assert read_record_status(ok) == ("c1", True)


def test_sink_writes_whole_lines_and_flushes_on_close(tmp_path: Path) -> None:
    now = [0.0]
    sink = JsonlSink(str(tmp_path / "o.jsonl"), flush_bytes=1 << 20, clock=lambda: now[0])
    sink.write(b'{"a":1}\n')
    assert (tmp_path / "o.jsonl").read_bytes() == b""  # buffered
    now[0] = 1.0
    sink.write(b'{"a":2}\n')  # flush interval passed
    assert (tmp_path / "o.jsonl").read_bytes() == b'{"a":1}\n{"a":2}\n'
    sink.write(b'{"a":3}\n')
    sink.close()
    assert (tmp_path / "o.jsonl").read_bytes().count(b"\n") == 3


PARTS = {"input": "abc", "model": "smol"}
IDS = ("a", "b", "c")


class Validator:
    """Stands in for the validating pass; counts how often it ran."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self) -> InputIndex:
        self.calls += 1
        digests = np.array([id_digest(x) for x in IDS], dtype=np.uint64)
        return InputIndex(len(IDS), False, digests)


def prepare_at(
    out: str, parts: dict, validate: Callable[[], InputIndex], **kw: bool
) -> tuple[OutputState, InputIndex]:
    """The resume decision for vbatch's own output (a JSONL file with its state files beside),
    then what a run's scan does: validate where no earlier index stands, and record it."""
    writer = JsonlResultWriter(out)
    resumption = decide_resume(writer, lambda: parts, **kw)
    if resumption is not None and resumption.index is not None:
        return resumption.previous, resumption.index
    index = validate()
    if resumption is None:
        start_output(writer, parts, index, fresh=True)
        return OutputState(), index
    start_output(writer, resumption.parts, index, fresh=False)
    return resumption.previous, index


def prepare(out: str, parts: dict = PARTS, validate: Validator | None = None, **kw: bool):
    return prepare_at(out, parts, validate or Validator(), **kw)[0]


def test_prepare_output_fresh_then_resume(tmp_path: Path) -> None:
    out = str(tmp_path / "o.jsonl")
    validate = Validator()
    state = prepare(out, validate=validate)
    assert not state.resumed and Path(state_path(out)).exists()
    assert Path(ids_path(out)).stat().st_size == 8 * len(IDS)
    with open(out, "ab") as f:
        f.write(format_record(ok_result("a")) + format_record(err_result("b")))
        f.write(b'{"id": "c", "te')  # torn tail
    state, index = prepare_at(out, PARTS, validate)
    assert validate.calls == 1  # the same job resumed: the first run's index is reused
    assert index.rows == 3
    assert state.resumed and state.ok == 1 and state.failed == 1
    assert state.torn_bytes == len(b'{"id": "c", "te')
    assert Path(out).read_bytes().endswith(b"\n")
    digests = np.array([id_digest(x) for x in ("a", "b", "c")], dtype=np.uint64)
    assert pending_mask(digests, state.done).tolist() == [False, False, True]


def test_retry_failed_drops_error_records(tmp_path: Path) -> None:
    out = str(tmp_path / "o.jsonl")
    prepare(out)
    with open(out, "ab") as f:
        f.write(format_record(ok_result("a")) + format_record(err_result("b")))
    state = prepare(out, retry_failed=True)
    assert state.dropped_failed == 1 and state.failed == 0
    assert [orjson.loads(x)["id"] for x in Path(out).read_bytes().splitlines()] == ["a"]


def test_changed_job_refuses_unless_forced(tmp_path: Path) -> None:
    out = str(tmp_path / "o.jsonl")
    prepare(out)
    Path(out).write_bytes(format_record(ok_result("a")))
    with pytest.raises(ResumeError, match=r"different job \(changed: model\)"):
        prepare(out, {**PARTS, "model": "other"})
    validate = Validator()
    state = prepare(out, {**PARTS, "model": "other"}, validate, force=True)
    assert state.ok == 1
    assert validate.calls == 1  # a changed job is validated again


def test_foreign_file_refuses_unless_overwrite(tmp_path: Path) -> None:
    out = tmp_path / "o.jsonl"
    out.write_text("precious\n")
    with pytest.raises(ResumeError, match="not written by vbatch"):
        prepare(str(out))
    assert out.read_text() == "precious\n"
    prepare(str(out), overwrite=True)
    assert out.read_text() == ""


def test_damaged_middle_line_is_reported(tmp_path: Path) -> None:
    out = tmp_path / "o.jsonl"
    prepare(str(out))
    out.write_bytes(b"garbage\n" + format_record(ok_result("a")))
    with pytest.raises(ResumeError, match=r"o.jsonl:1: not a vbatch record"):
        prepare(str(out))


def test_failed_validation_leaves_no_output(tmp_path: Path) -> None:
    out = tmp_path / "o.jsonl"

    def bad() -> InputIndex:
        raise ValueError("bad row")

    with pytest.raises(ValueError):
        prepare_at(str(out), PARTS, bad)
    assert list(tmp_path.iterdir()) == []
