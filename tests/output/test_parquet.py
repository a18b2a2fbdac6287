"""--parquet: a typed, flat copy of the finished results."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from fakeserver import FakeServer, completion_text
from helpers import cli, write_jsonl


def test_parquet_copy_of_results(server: FakeServer, tmp_path: Path) -> None:
    rows = [
        {"id": "a", "prompt": "alpha beta"},
        {"id": 7, "prompt": "gamma", "n": 2},
        {"id": "bad", "prompt": "delta"},
    ]
    server.script("delta", [400])  # an error record (rows are scripted by their first word)
    inp = write_jsonl(tmp_path / "in.jsonl", rows)
    out, parquet = tmp_path / "out.jsonl", tmp_path / "out.parquet"
    proc = cli(str(inp), "-o", str(out), "--base-url", server.base_url, "--model", "smol",
               "--max-tokens", "4", "--parquet", str(parquet))  # fmt: skip
    assert proc.returncode == 1, proc.stderr
    assert "3 rows also in" in proc.stderr
    table = pq.read_table(parquet)
    assert table.schema.field("text").type == pa.list_(pa.string())
    assert table.schema.field("completion_tokens").type == pa.int64()
    by_id = {r["id"]: r for r in table.to_pylist()}
    assert set(by_id) == {"a", "7", "bad"}
    assert by_id["a"]["text"] == [completion_text("alpha beta")]
    assert by_id["7"]["text"] == [completion_text("gamma", i, 2) for i in range(2)]
    assert by_id["bad"]["error_status"] == 400 and by_id["bad"]["text"] is None
    assert by_id["a"]["attempts"] == 1 and by_id["a"]["error_code"] is None


def test_parquet_refuses_openai_batch_output(server: FakeServer, tmp_path: Path) -> None:
    line = {"custom_id": "c", "method": "POST", "url": "/v1/completions",
            "body": {"model": "smol", "prompt": "hi", "max_tokens": 2}}  # fmt: skip
    inp = write_jsonl(tmp_path / "in.jsonl", [line])
    out, parquet = tmp_path / "out.jsonl", tmp_path / "out.parquet"
    proc = cli(str(inp), "-o", str(out), "--base-url", server.base_url, "--parquet", str(parquet))
    assert proc.returncode == 2
    assert "OpenAI Batch output stays JSONL" in proc.stderr
    assert not parquet.exists() and out.exists()  # the results themselves are kept
