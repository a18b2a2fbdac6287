"""The split writer: successes and failures in two files, resumed from both."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from vbatch import OutputError
from vbatch._input.ids import id_digest
from vbatch._models import CHAT, ErrorInfo, Result
from vbatch._output.split import SplitResultWriter


def _result(i: int, ok: bool) -> Result:
    if ok:
        body = {"choices": [{"index": 0, "message": {"content": "hi"}}], "usage": {}}
        return Result(i, f"r{i}", CHAT, 200, body, None, 1, 0.01)
    error = ErrorInfo("invalid_request", "bad", 400)
    return Result(i, f"r{i}", CHAT, 400, {"error": {"message": "bad"}}, error, 1, 0.01)


def test_rows_go_to_their_file_and_resume_reads_both(tmp_path: Path) -> None:
    out, err = tmp_path / "output.jsonl", tmp_path / "errors.jsonl"
    writer = SplitResultWriter(str(out), str(err))
    writer.lock()
    assert not writer.holds_results()
    writer.open(True)
    for i in range(6):
        writer.write(_result(i, ok=i % 3 != 0))
    assert writer.lines_out() == (0, 0)  # buffered: a crash now keeps none of them
    writer.close()
    # Closed, it still says what it wrote: the service reads the counts as a batch ends (a
    # count that fell to zero there showed a polling client a count going back).
    assert writer.lines_out() == (4, 2)
    ok_lines = [json.loads(x) for x in out.read_text().splitlines()]
    error_lines = [json.loads(x) for x in err.read_text().splitlines()]
    assert [x["custom_id"] for x in ok_lines] == ["r1", "r2", "r4", "r5"]
    assert [x["custom_id"] for x in error_lines] == ["r0", "r3"]
    assert error_lines[0]["response"]["status_code"] == 400
    # A crash tore the error file's last line: resume drops it, and the row is sent again.
    with err.open("ab") as f:
        f.write(b'{"custom_id": "r9", "resp')
    again = SplitResultWriter(str(out), str(err))
    assert again.holds_results()
    state = again.scan(False)
    assert (state.ok, state.failed, state.torn_bytes > 0) == (4, 2, True)
    assert state.done.tolist() == sorted(id_digest(f"r{i}") for i in range(6))
    with pytest.raises(OutputError):
        again.scan(True)  # failed rows of a batch are not sent again
    with pytest.raises(OutputError):
        again.open(False)
