"""``/v1/embeddings`` through the core: the request builder, the reply as a success, the records
and Batch output lines that carry the vectors, the sizing pass, and whole runs against the fake
server (which answers the way vLLM 0.32 serving a pooling model does)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pyarrow.parquet as pq
import pytest
from fakeserver import EMBEDDING_DIMS, FakeServer, embedding_of
from helpers import cli, preview_requests, read_jsonl, write_jsonl

import vbatch
from vbatch import InputError, RequestBuilder, RequestDefaults
from vbatch._config import LaunchOptions
from vbatch._engine.machine import Machine
from vbatch._engine.plan import plan_server
from vbatch._engine.sizing import measure_requests
from vbatch._input.sources import RawRow
from vbatch._models import EMBEDDINGS

DEFAULTS = RequestDefaults(model="smol", max_tokens=16, temperature=0.7, extra_body={"x": 1})


def embed_line(custom_id: str, value: Any, **body: Any) -> dict[str, Any]:
    return {"custom_id": custom_id, "method": "POST", "url": "/v1/embeddings",
            "body": {"input": value, **body}}  # fmt: skip


def build(data: dict[str, Any], line: int = 1, **kw: Any) -> Any:
    builder = RequestBuilder("in.jsonl", kw.pop("defaults", DEFAULTS), **kw)
    return builder.build(RawRow(line - 1, line, data))


# -- the request builder ------------------------------------------------------------------------


def test_a_batch_line_is_sent_as_is_with_the_model_but_no_sampling_defaults() -> None:
    req = build(embed_line("e1", ["a b", "c"], dimensions=4))
    assert req.endpoint == EMBEDDINGS and req.id == "e1"
    assert req.body == {"model": "smol", "x": 1, "input": ["a b", "c"], "dimensions": 4}


def test_plain_rows_need_endpoint_embeddings_and_embed_input_else_the_prompt_column() -> None:
    row = {"id": "a", "input": "hello there", "temperature": 1.0, "user": "u", "label": "x"}
    req = build(row, endpoint="embeddings")
    assert req.endpoint == EMBEDDINGS
    assert req.body == {"model": "smol", "x": 1, "input": "hello there", "user": "u"}
    fields = vbatch.FieldMap(prompt_field="text")
    req = build({"id": "b", "text": "from a column"}, endpoint="embeddings", fields=fields)
    assert req.body["input"] == "from a column"
    req = build({"t": "x"}, endpoint="embeddings", fields=vbatch.FieldMap(template="doc: {t}"))
    assert req.body["input"] == "doc: x"
    with pytest.raises(InputError, match=r"neither 'prompt'.*pass --endpoint embeddings"):
        build({"id": "a", "input": "x"})  # auto never takes a row for an embedding


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"custom_id": "x", "url": "/v1/embeddings", "body": {"prompt": "p"}}, "needs 'input'"),
        (embed_line("x", ""), "'body.input' must be a non-empty string"),
        (embed_line("x", []), "'body.input' must be"),
        (embed_line("x", ["a", ""]), "'body.input' must be"),
        (embed_line("x", ["a", [1, 2]]), "'body.input' must be"),
        (embed_line("x", {"text": "a"}), "'body.input' must be"),
        ({"id": "a", "input": 5}, "'input' must be"),
        ({"id": "a", "messages": [{"role": "user", "content": "x"}]}, "neither 'input'"),
    ],
)
def test_bad_embedding_rows_name_the_line(data: dict[str, Any], message: str) -> None:
    with pytest.raises(InputError, match=rf"in.jsonl:3: .*{message}"):
        build(data, line=3, endpoint="embeddings")


def test_token_id_inputs_are_taken_and_the_job_endpoint_must_match() -> None:
    assert build(embed_line("t", [1, 2, 3])).body["input"] == [1, 2, 3]
    assert build(embed_line("t", [[1], [2, 3]])).body["input"] == [[1], [2, 3]]
    with pytest.raises(InputError, match=r"this job's endpoint is chat"):
        build(embed_line("t", "x"), endpoint="chat")


# -- sizing and the launch plan -----------------------------------------------------------------


def test_sizing_counts_the_longest_input_and_no_output_tokens(tmp_path: Path) -> None:
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text(json.dumps({"max_position_embeddings": 4096}))
    lines = [embed_line("a", "x" * 100), embed_line("b", ["y" * 10, "z" * 900]),
             embed_line("c", list(range(50)))]  # fmt: skip
    inp = write_jsonl(tmp_path / "in.jsonl", lines)
    job = vbatch.make_job(str(inp), model="smol", max_tokens=500)  # --max-tokens: not for these
    m = measure_requests(preview_requests(job), None, default_max_tokens=500)
    assert (m.rows, m.unbounded_rows) == (3, 0)
    assert m.max_prompt_tokens == 902  # the 900-byte item (bound: a token a byte, + 2)
    assert m.max_needed_tokens == 902  # nothing added for output
    assert m.mean_row == ((102 + 902 + 50) / 3, 0.0)
    machine = Machine("cpu", cores=16, gpu_memory_bytes=None)
    plan = plan_server(str(model), preview_requests(job), LaunchOptions(), 500, machine)
    assert plan.spec.max_model_len == 1024  # 902 in its bucket; with 500 output it would be 2048
    assert not plan.notes


# -- whole runs against the fake server ---------------------------------------------------------


def test_the_fake_server_answers_like_vllm(server: FakeServer) -> None:
    reply = httpx.post(
        server.base_url + "/embeddings", json={"model": "smol", "input": ["a b", "c"]}
    )
    assert reply.status_code == 200
    body = reply.json()
    assert (body["object"], body["model"]) == ("list", "smol") and body["id"].startswith("embd-")
    assert [d["index"] for d in body["data"]] == [0, 1]
    assert all(d["object"] == "embedding" and len(d["embedding"]) == EMBEDDING_DIMS
               for d in body["data"])  # fmt: skip
    assert body["data"][0]["embedding"] == embedding_of("a b")
    assert body["usage"] == {"prompt_tokens": 3, "total_tokens": 3, "completion_tokens": 0,
                             "prompt_tokens_details": None,
                             "completion_tokens_details": None}  # fmt: skip
    missing = httpx.post(server.base_url + "/embeddings", json={"model": "smol"})
    assert missing.status_code == 400 and missing.json()["error"]["param"] == "body.input"


async def test_batch_lines_of_embeddings_come_back_as_batch_output_lines(
    server: FakeServer, tmp_path: Path
) -> None:
    server.max_model_len = 64
    lines = [embed_line(f"e{i}", f"e{i} some text {i}") for i in range(30)]
    lines.append(embed_line("many", ["one", "two words"]))
    lines.append(embed_line("long", " ".join(["w"] * 100)))  # over the context: an error line
    inp = write_jsonl(tmp_path / "in.jsonl", lines)
    out = tmp_path / "out.jsonl"
    summary = await vbatch.arun(str(inp), str(out), base_url=server.base_url, model="smol",
                                max_tokens=8, on_overflow="clamp", concurrency=4)  # fmt: skip
    assert (summary.stats.ok, summary.stats.failed) == (31, 1)
    by_id = {r["custom_id"]: r for r in read_jsonl(out)}
    assert set(by_id) == {line["custom_id"] for line in lines}
    for i in range(30):
        record = by_id[f"e{i}"]
        assert record["error"] is None and record["response"]["status_code"] == 200
        vector = record["response"]["body"]["data"][0]["embedding"]
        assert vector == pytest.approx(embedding_of(f"e{i} some text {i}"))
    assert [d["embedding"] for d in by_id["many"]["response"]["body"]["data"]] == (
        [embedding_of("one"), embedding_of("two words")]
    )
    long = by_id["long"]
    assert long["error"]["code"] == "context_length_exceeded"  # recorded, not clamped
    assert long["response"]["status_code"] == 400
    assert summary.stats.prompt_tokens == sum(4 for _ in range(30)) + 3
    assert summary.stats.completion_tokens == 0
    assert all("max_tokens" not in body and "temperature" not in body for body in server.bodies)


def test_vbatch_run_of_plain_rows_writes_embedding_records_and_parquet(
    server: FakeServer, tmp_path: Path
) -> None:
    rows = [
        {"id": "a", "text": "alpha beta"},
        {"id": 7, "text": "gamma"},
        {"id": "bad", "text": "delta"},
    ]
    server.script("delta", [400])
    inp = write_jsonl(tmp_path / "in.jsonl", rows)
    out, parquet = tmp_path / "out.jsonl", tmp_path / "out.parquet"
    proc = cli(str(inp), "-o", str(out), "--base-url", server.base_url, "--model", "smol",
               "--endpoint", "embeddings", "--prompt-field", "text",
               "--parquet", str(parquet))  # fmt: skip
    assert proc.returncode == 1, proc.stderr  # one row failed
    by_id = {r["id"]: r for r in read_jsonl(out)}
    assert by_id["a"]["embedding"] == pytest.approx(embedding_of("alpha beta"))
    assert by_id["a"]["usage"]["prompt_tokens"] == 2 and by_id["a"]["error"] is None
    assert by_id[7]["embedding"] == pytest.approx(embedding_of("gamma"))
    assert by_id["bad"]["embedding"] is None and by_id["bad"]["error"]["status"] == 400
    table = {r["id"]: r for r in pq.read_table(parquet).to_pylist()}
    assert table["a"]["embedding"][0] == pytest.approx(embedding_of("alpha beta"), rel=1e-6)
    assert table["bad"]["embedding"] is None and table["a"]["text"] is None
