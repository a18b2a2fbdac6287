"""Typed results: a job's JSON schema (a dict, a pydantic model, ``--json-schema``, a row's own
``schema`` column or ``response_format``) is sent, each reply parsed and checked, and a reply
that does not fit is named per row with its text kept; cut-off replies go again on request."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pandas as pd
import polars as pl
import pyarrow.parquet as pq
import pytest
from fakeserver import FakeServer
from helpers import cli, preview_requests, read_jsonl, run_args, write_jsonl
from pydantic import BaseModel

import vbatch
from vbatch._engine.sizing import measure_requests
from vbatch._schema import Checked, Schema, resend_size

PERSON = {
    "type": "object",
    "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
    "required": ["name", "age"],
}


class Person(BaseModel):
    name: str
    age: int


# -- the parts that decide -------------------------------------------------------------------------


def test_check_names_each_way_a_reply_can_miss_its_schema() -> None:
    schema = Schema(PERSON)
    ok = schema.check(['{"name": "Ava", "age": 3}'], ["stop"])
    assert ok == Checked({"name": "Ava", "age": 3}, None)
    cut = schema.check(['{"name": "Av'], ["length"])
    assert cut.parsed is None and cut.error is not None and cut.error.code == "cut_off"
    prose = schema.check(["Ava is three"], ["stop"])
    assert prose.error is not None and prose.error.code == "invalid_json"
    wrong = schema.check(['{"name": "Ava", "age": "three"}'], ["stop"])
    assert wrong.error is not None and wrong.error.code == "schema_mismatch"
    assert wrong.error.message == "$.age: 'three' is not of type 'integer'"
    # n > 1: a value per choice, the first failing choice named.
    two = schema.check(['{"name": "A", "age": 1}', '{"name": "B"}'], ["stop", "stop"])
    assert two.parsed == [{"name": "A", "age": 1}, None]
    assert two.error is not None and two.error.message.startswith("choice 1: $: 'age' is a")


def test_a_pydantic_model_checks_and_builds_its_instances() -> None:
    schema = Schema.given(Person)
    assert schema.response_format()["json_schema"]["name"] == "Person"
    assert schema.response_format()["json_schema"]["schema"]["required"] == ["name", "age"]
    wrong = schema.check(['{"name": "Ava", "age": "old"}'], ["stop"])
    assert wrong.error is not None and wrong.error.message.startswith("$.age: Input should be")
    assert schema.instance({"name": "Ava", "age": 3}) == Person(name="Ava", age=3)
    assert schema.instance([{"name": "A", "age": 1}, None], many=True) == [Person(name="A", age=1),
                                                                          None]  # fmt: skip


def test_resend_size_doubles_max_tokens_up_to_the_policy_ceiling() -> None:
    cut = Checked(None, vbatch.ErrorInfo("cut_off", "..."))
    policy = Schema(PERSON, resend_up_to=100)
    assert resend_size(cut, {"max_tokens": 16}, policy) == 32
    assert resend_size(cut, {"max_tokens": 64}, policy) == 100
    assert resend_size(cut, {"max_tokens": 100}, policy) is None  # the ceiling reached
    assert resend_size(cut, {"max_tokens": 16}, Schema(PERSON)) is None  # no policy: kept
    mismatch = Checked(None, vbatch.ErrorInfo("schema_mismatch", "..."))
    assert resend_size(mismatch, {"max_tokens": 16}, policy) is None  # more tokens won't help


def test_a_schema_that_is_not_one_is_refused_before_anything_is_sent(server: FakeServer) -> None:
    with pytest.raises(vbatch.ConfigError, match="schema: not a valid JSON schema"):
        vbatch.generate(["x"], base_url=server.base_url, schema={"type": "objekt"})
    assert server.bodies == []


# -- through a run -------------------------------------------------------------------------------


def test_records_carry_parsed_values_and_cut_off_rows_are_named(
    server: FakeServer, tmp_path: Path
) -> None:
    rows = [{"id": i, "prompt": f"w{i} a b", "max_tokens": 16} for i in range(5)]
    rows[3]["max_tokens"] = 3  # '{"name":"w3","age":3}' is 6 tokens: cut off
    inp, out = write_jsonl(tmp_path / "in.jsonl", rows), tmp_path / "out.jsonl"
    summary = vbatch.run(inp, out, base_url=server.base_url, schema=PERSON)
    assert summary.stats.schema_errors == 1 and summary.stats.ok == 4 and summary.exit_code == 1
    assert server.bodies[0]["response_format"] == {
        "type": "json_schema", "json_schema": {"name": "output", "schema": PERSON}}  # fmt: skip
    records = {r["id"]: r for r in read_jsonl(out)}
    assert records[0]["parsed"] == {"name": "w0", "age": 3} and records[0]["schema_error"] is None
    assert records[0]["text"] == '{"name":"w0","age":3}'
    cut = records[3]
    assert cut["parsed"] is None and cut["schema_error"]["code"] == "cut_off"
    assert cut["text"] == '{"name":"w3"' and cut["finish_reason"] == "length"  # kept


def test_cut_off_rows_go_again_with_max_tokens_doubled_under_the_policy(
    server: FakeServer, tmp_path: Path
) -> None:
    rows = [{"id": "short", "prompt": "w a b", "max_tokens": 2},
            {"id": "fits", "prompt": "v a b", "max_tokens": 16}]  # fmt: skip
    inp, out = write_jsonl(tmp_path / "in.jsonl", rows), tmp_path / "out.jsonl"
    summary = vbatch.run(inp, out, base_url=server.base_url, schema=PERSON, resend_cut_off=64)
    assert summary.exit_code == 0 and summary.stats.schema_errors == 0
    sent = sorted(b["max_tokens"] for b in server.bodies if b["prompt"] == "w a b")
    assert sent == [2, 4, 8]  # 5 tokens needed: 2 and 4 were cut off
    records = {r["id"]: r for r in read_jsonl(out)}
    assert records["short"]["parsed"] == {"name": "w", "age": 3}
    assert records["short"]["attempts"] == 3 and records["fits"]["attempts"] == 1


def test_rows_bring_their_own_schemas_and_a_bad_one_is_named(
    server: FakeServer, tmp_path: Path
) -> None:
    flag = {"type": "object", "properties": {"ok": {"type": "boolean"}}, "required": ["ok"]}
    rows: list[dict[str, Any]] = [
        {"id": "col", "prompt": "a b", "schema": flag, "max_tokens": 16},
        {"id": "text", "prompt": "c d", "schema": orjson.dumps(PERSON).decode(),
         "max_tokens": 16},
        {"id": "fmt", "prompt": "e f", "max_tokens": 16,
         "response_format": {"type": "json_object"}},
        {"id": "free", "prompt": "g h", "max_tokens": 4},
    ]  # fmt: skip
    inp, out = write_jsonl(tmp_path / "in.jsonl", rows), tmp_path / "out.jsonl"
    assert vbatch.run(inp, out, base_url=server.base_url).exit_code == 0
    records = {r["id"]: r for r in read_jsonl(out)}
    assert records["col"]["parsed"] == {"ok": True}
    assert records["text"]["parsed"] == {"name": "c", "age": 2}
    assert records["fmt"]["parsed"] == {"answer": "e"}
    assert "parsed" not in records["free"]  # free text stays as it was
    bad = [*rows, {"id": "bad", "prompt": "x", "schema": {"type": 5}}]
    inp = write_jsonl(tmp_path / "bad.jsonl", bad)
    with pytest.raises(vbatch.InputError, match=r"bad.jsonl:5: the row's schema .*not a valid"):
        vbatch.run(inp, tmp_path / "bad.out.jsonl", base_url=server.base_url)


def test_a_reply_against_its_schema_is_named_and_retry_failed_sends_it_again(
    server: FakeServer, tmp_path: Path
) -> None:
    reply = {"id": "cmpl-1", "object": "text_completion", "model": server.model,
             "choices": [{"index": 0, "text": '{"name": 7, "age": 1}', "finish_reason": "stop"}],
             "usage": {"prompt_tokens": 2, "completion_tokens": 3, "total_tokens": 5}}  # fmt: skip
    server.script("odd", [(200, {}, reply)])
    rows = [{"id": 1, "prompt": "odd one", "max_tokens": 16},
            {"id": 2, "prompt": "even one", "max_tokens": 16}]  # fmt: skip
    inp, out = write_jsonl(tmp_path / "in.jsonl", rows), tmp_path / "out.jsonl"
    schema_file = tmp_path / "person.json"
    schema_file.write_bytes(orjson.dumps(PERSON))
    done = cli(*run_args(server.base_url, inp, out, "--json-schema", str(schema_file)))
    assert done.returncode == 1, done.stderr
    assert "1 of the errors replies not fitting the schema" in done.stderr
    odd = next(r for r in read_jsonl(out) if r["id"] == 1)
    assert odd["schema_error"] == {"code": "schema_mismatch",
                                   "message": "$.name: 7 is not of type 'string'"}  # fmt: skip
    assert odd["text"] == '{"name": 7, "age": 1}'
    again = cli(*run_args(server.base_url, inp, out, "--json-schema", str(schema_file),
                                 "--retry-failed"))  # fmt: skip
    assert again.returncode == 0, again.stderr
    assert {r["id"]: r["parsed"] for r in read_jsonl(out)} == {
        1: {"name": "odd", "age": 2}, 2: {"name": "even", "age": 2}}  # fmt: skip
    missing = cli(*run_args(server.base_url, inp, out, "--json-schema", "nope.json"))
    assert missing.returncode == 2 and "cannot read nope.json" in missing.stderr


def test_a_rows_own_schema_is_resent_under_the_policy_too(server: FakeServer) -> None:
    flag = {"type": "object", "properties": {"ok": {"type": "boolean"}}, "required": ["ok"]}
    rows = [{"prompt": "a b", "schema": flag, "max_tokens": 1}]
    (cut,) = vbatch.generate(rows, base_url=server.base_url)
    assert cut.schema_error is not None and cut.schema_error.startswith("cut_off")
    (whole,) = vbatch.generate(rows, base_url=server.base_url, resend_cut_off=8)
    assert whole.ok and whole.parsed == {"ok": True}  # '{"ok":true}': 1, 2, then 4 tokens


# -- generate: values in Python, columns in frames and Parquet -----------------------------------


def test_generate_with_a_pydantic_model_gives_its_instances(server: FakeServer) -> None:
    prompts = ["ann says hi", "bob", "cy is here now"]
    results = vbatch.generate(prompts, base_url=server.base_url, schema=Person, max_tokens=16)
    assert [r.parsed for r in results] == [Person(name="ann", age=3), Person(name="bob", age=1),
                                           Person(name="cy", age=4)]  # fmt: skip
    assert all(r.ok and r.schema_error is None for r in results)
    cut = vbatch.generate(["dee"], base_url=server.base_url, schema=Person, max_tokens=2)[0]
    assert not cut.ok and cut.parsed is None and cut.schema_error is not None
    assert cut.schema_error.startswith("cut_off: ") and cut.text == '{"name":'


def test_frames_get_parsed_and_schema_error_columns(server: FakeServer, tmp_path: Path) -> None:
    frame = pd.DataFrame({"prompt": ["ann a", "bob b c", "cy"], "max_tokens": [16, 16, 2]})
    out = vbatch.generate(frame, tmp_path / "out.parquet", base_url=server.base_url,
                          schema=PERSON)  # fmt: skip
    assert list(out.columns)[-2:] == ["parsed", "schema_error"]
    assert out["parsed"].tolist() == [{"name": "ann", "age": 2}, {"name": "bob", "age": 3}, None]
    assert out["schema_error"].isna().tolist() == [True, True, False]
    assert out["schema_error"][2].startswith("cut_off")
    # The Parquet file holds the rows as they finished (ids are positions from 1).
    rows = sorted(pq.read_table(tmp_path / "out.parquet").to_pylist(), key=lambda r: int(r["id"]))
    assert [orjson.loads(r["parsed"][0]) if r["parsed"][0] else None for r in rows] == \
        out["parsed"].tolist()  # fmt: skip
    assert [r["schema_error_code"] for r in rows] == [None, None, "cut_off"]
    # Called again: every row read back from the output, typed as before.
    again = vbatch.generate(frame, tmp_path / "out.parquet", base_url=server.base_url,
                            schema=PERSON)  # fmt: skip
    assert again["parsed"].tolist() == out["parsed"].tolist()
    typed = vbatch.generate(pl.from_pandas(frame), base_url=server.base_url, schema=Person)
    assert typed["parsed"].to_list()[:2] == out["parsed"].tolist()[:2]  # values, not instances
    rows = vbatch.generate(["ann a"], tmp_path / "p.jsonl", base_url=server.base_url,
                           schema=Person, max_tokens=16)  # fmt: skip
    resumed = vbatch.generate(["ann a"], tmp_path / "p.jsonl", base_url=server.base_url,
                              schema=Person, max_tokens=16)  # fmt: skip
    assert resumed[0].parsed == rows[0].parsed == Person(name="ann", age=2)


def test_the_context_planned_holds_a_resent_reply(tmp_path: Path) -> None:
    inp = write_jsonl(tmp_path / "in.jsonl", [{"prompt": "x" * 40, "max_tokens": 64}])
    plain = measure_requests(preview_requests(vbatch.make_job(str(inp), schema=PERSON)), None, None)
    job = vbatch.make_job(str(inp), schema=PERSON, resend_cut_off=1024)
    resent = measure_requests(preview_requests(job), None, None)
    assert resent.max_needed_tokens == plain.max_needed_tokens - 64 + 1024
    assert resent.sampled_output_tokens == plain.sampled_output_tokens == 64  # the working set


def test_the_fast_check_passes_only_what_jsonschema_passes() -> None:
    """fastjsonschema's check where it knows the keywords; what it refuses, and every schema of
    later keywords, jsonschema decides (formats: annotations only, as jsonschema reads them)."""
    dated = {"type": "object", "properties": {"d": {"type": "string", "format": "date"}}}
    assert Schema(dated)._fast is not None
    assert Schema(dated).check(['{"d": "not a date"}'], ["stop"]).error is None
    later = {"type": "array", "prefixItems": [{"type": "integer"}]}
    assert Schema(later)._fast is None
    wrong = Schema(later).check(['["x"]'], ["stop"])
    assert wrong.error is not None and wrong.error.message == "$[0]: 'x' is not of type 'integer'"
    draft = {"$schema": "https://json-schema.org/draft/2020-12/schema", "type": "integer"}
    assert Schema(draft)._fast is None and Schema({**PERSON})._fast is not None
