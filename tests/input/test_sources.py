"""Input readers: JSONL, CSV, Parquet, format detection, lazy skipping."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from vbatch import InputError
from vbatch._input.sources import detect_format, open_source


def test_jsonl_rows_skip_blank_lines_and_count_lines(tmp_path: Path) -> None:
    p = tmp_path / "in.jsonl"
    p.write_text('{"prompt": "a"}\n\n{"prompt": "b"}\n')
    rows = list(open_source(str(p)).rows())
    assert [(r.index, r.line, r.data["prompt"]) for r in rows] == [(0, 1, "a"), (1, 3, "b")]


def test_jsonl_malformed_line_is_named(tmp_path: Path) -> None:
    p = tmp_path / "in.jsonl"
    p.write_text('{"prompt": "a"}\n{"prompt": \n')
    with pytest.raises(InputError, match=r"in.jsonl:2: malformed JSON"):
        list(open_source(str(p)).rows())


def test_jsonl_non_object_line_is_named(tmp_path: Path) -> None:
    p = tmp_path / "in.jsonl"
    p.write_text('["a"]\n')
    with pytest.raises(InputError, match=r"in.jsonl:1: expected a JSON object, got list"):
        list(open_source(str(p)).rows())


def test_pending_mask_skips_without_parsing(tmp_path: Path) -> None:
    p = tmp_path / "in.jsonl"
    p.write_text('{"prompt": "a"}\nNOT JSON but already done\n{"prompt": "c"}\n')
    mask = np.array([True, False, True])
    rows = list(open_source(str(p)).rows(mask))
    assert [r.data["prompt"] for r in rows] == ["a", "c"]
    assert [r.index for r in rows] == [0, 2]


def test_csv_keeps_text_columns_as_strings(tmp_path: Path) -> None:
    p = tmp_path / "in.csv"
    p.write_text('id,prompt\n1,"007"\n2,"hello, world"\n')
    rows = list(open_source(str(p)).rows())
    assert [r.data for r in rows] == [
        {"id": "1", "prompt": "007"},
        {"id": "2", "prompt": "hello, world"},
    ]
    assert [r.line for r in rows] == [2, 3]


def test_parquet_rows_and_mask(tmp_path: Path) -> None:
    p = tmp_path / "in.parquet"
    pq.write_table(pa.table({"id": ["a", "b", "c"], "text": ["x", "y", "z"]}), p)
    rows = list(open_source(str(p)).rows(np.array([False, True, True])))
    assert [(r.index, r.data["id"]) for r in rows] == [(1, "b"), (2, "c")]


def test_unknown_format_and_missing_file(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="unknown input format"):
        detect_format("data.txt")
    with pytest.raises(InputError, match="no such file"):
        open_source(str(tmp_path / "missing.jsonl"))
    assert detect_format("x.txt", "jsonl") == "jsonl"


@pytest.mark.parametrize(
    ("name", "content"),
    [("in.jsonl", '{"id": "a", "prompt": "x"}\n{"id": "b", "prompt": "y"}\n'),
     ("in.csv", "id,prompt\na,x\nb,y\n")],
)  # fmt: skip
def test_a_utf8_byte_order_mark_is_accepted(tmp_path: Path, name: str, content: str) -> None:
    p = tmp_path / name
    p.write_bytes(b"\xef\xbb\xbf" + content.encode())  # as Windows tools write them
    rows = list(open_source(str(p)).rows())
    assert [(r.data["id"], r.data["prompt"]) for r in rows] == [("a", "x"), ("b", "y")]
