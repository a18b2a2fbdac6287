"""A batch's validation: every bad line named, and a valid batch's custom_ids by row (the service
keeps them for its batch_expired lines)."""

from __future__ import annotations

from pathlib import Path

from service.apiproc import batch_lines, write_lines
from vbatch._input.sources import open_source
from vbatch._input.validate import validate_input
from vbatch._service.validation import IdKeepingBuilder, validate_batch

CHAT = "/v1/chat/completions"


def test_a_valid_batch_gives_its_custom_ids_in_input_order(tmp_path: Path) -> None:
    lines = batch_lines(5)[::-1]
    path = write_lines(tmp_path / "in.jsonl", lines)
    checked = validate_batch(str(path), CHAT, ["smol"], 100)
    assert checked.errors == [] and checked.rows == 5
    assert checked.custom_ids == ["r4", "r3", "r2", "r1", "r0"]


def test_a_failed_batch_gives_no_custom_ids(tmp_path: Path) -> None:
    lines = batch_lines(4)
    lines[2]["custom_id"] = "r0"  # twice
    path = write_lines(tmp_path / "in.jsonl", lines)
    checked = validate_batch(str(path), CHAT, ["smol"], 100)
    assert [e["code"] for e in checked.errors] == ["duplicate_custom_id"]
    assert checked.custom_ids == []
    path = write_lines(tmp_path / "big.jsonl", batch_lines(30))
    checked = validate_batch(str(path), CHAT, ["smol"], 10)
    assert [e["code"] for e in checked.errors] == ["too_many_requests"]
    assert checked.rows == 30 and checked.custom_ids == []


def test_ids_past_the_line_limit_are_not_kept(tmp_path: Path) -> None:
    path = write_lines(tmp_path / "big.jsonl", batch_lines(30))
    builder = IdKeepingBuilder(str(path), CHAT, ["smol"], 10)
    validate_input(open_source(str(path), "jsonl"), builder)
    assert builder.ids == [f"r{i}" for i in range(11)]  # enough to know the batch is too big
