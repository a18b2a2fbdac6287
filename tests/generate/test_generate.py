"""``vbatch.generate`` over Python data against the fake vLLM server: every kind of input comes
back in its own shape and order, row errors are values, ``output=`` resumes, a generator is read
as it is sent."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import pandas as pd
import polars as pl
import pyarrow as pa
import pytest
from fakeserver import FakeServer, completion_text
from helpers import read_jsonl

import vbatch

PROMPTS = [f"row{i} says hello" for i in range(40)]


def texts(prompts: list[str]) -> list[str]:
    return [completion_text(p) for p in prompts]


# -- each kind of input, back in its shape --------------------------------------------------------


def test_a_list_of_prompts_gives_a_list_of_results_in_order(server: FakeServer) -> None:
    server.latency = (0.0, 0.01)  # answers out of order
    results = vbatch.generate(PROMPTS, base_url=server.base_url, max_tokens=4, concurrency=8)
    assert [r.text for r in results] == texts(PROMPTS)
    assert all(r.ok and r.finish_reason == "length" and r.completion_tokens == 4 for r in results)
    assert [r.prompt_tokens for r in results] == [3] * len(PROMPTS)


def test_messages_and_row_dicts_mix_in_one_list(server: FakeServer) -> None:
    rows: list[Any] = [
        [{"role": "user", "content": "chat one"}],
        {"messages": [{"role": "user", "content": "chat two"}], "id": "x"},
        {"prompt": "plain three", "max_tokens": 2},
    ]
    results = vbatch.generate(rows, base_url=server.base_url, max_tokens=4)
    assert [r.text for r in results] == texts(["chat one", "chat two", "plain three"])
    assert [r.id for r in results] == [1, "x", 3]
    assert results[2].completion_tokens == 2  # a row's own field wins over the default
    assert [b.get("messages") is not None for b in server.bodies].count(True) == 2


def test_a_pandas_frame_gets_columns_and_keeps_its_index(server: FakeServer) -> None:
    frame = pd.DataFrame({"question": PROMPTS, "n_words": [3] * 40}, index=range(100, 140))
    before = frame.copy()
    out = vbatch.generate(frame, base_url=server.base_url, prompt_field="question", max_tokens=4)
    assert isinstance(out, pd.DataFrame) and list(out.index) == list(range(100, 140))
    assert list(out.columns) == ["question", "n_words", "text", "finish_reason", "prompt_tokens",
                                 "completion_tokens", "error"]  # fmt: skip
    assert list(out["text"]) == texts(PROMPTS)
    assert out["completion_tokens"].dtype == np.int64 and out["error"].isna().all()
    pd.testing.assert_frame_equal(frame, before)  # the input is left as it was


def test_a_polars_frame_an_arrow_table_and_a_reader(server: FakeServer) -> None:
    url = server.base_url
    frame = vbatch.generate(pl.DataFrame({"prompt": PROMPTS}), base_url=url)
    assert isinstance(frame, pl.DataFrame) and frame["text"].to_list() == texts(PROMPTS)
    assert frame.schema["error"] == pl.String and frame.schema["prompt_tokens"] == pl.Int64
    table = vbatch.generate(pa.table({"prompt": PROMPTS}), base_url=url)
    assert isinstance(table, pa.Table) and table.column("text").to_pylist() == texts(PROMPTS)
    assert table.schema.field("error").type == pa.string()
    schema = pa.schema([("prompt", pa.string())])
    batches = [pa.record_batch({"prompt": PROMPTS[i : i + 7]}, schema) for i in range(0, 40, 7)]
    reader = pa.RecordBatchReader.from_batches(schema, batches)
    read = vbatch.generate(reader, base_url=url)
    assert isinstance(read, pa.Table)
    assert read.column("prompt").to_pylist() == PROMPTS
    assert read.column("text").to_pylist() == texts(PROMPTS)


def test_datasets_keep_their_kind_and_order(server: FakeServer) -> None:
    url = server.base_url
    dataset = datasets.Dataset.from_dict({"prompt": PROMPTS, "k": list(range(40))})
    shuffled = dataset.shuffle(seed=1)  # an indices mapping over the Arrow table
    out = vbatch.generate(shuffled, base_url=url)
    assert isinstance(out, datasets.Dataset)
    assert out["text"] == texts(shuffled["prompt"]) and out["k"] == shuffled["k"]

    def rows() -> Iterator[dict[str, Any]]:
        yield from ({"prompt": p} for p in PROMPTS)

    streamed = vbatch.generate(datasets.IterableDataset.from_generator(rows), base_url=url)
    assert isinstance(streamed, datasets.IterableDataset)
    assert [r["text"] for r in streamed] == texts(PROMPTS)


def test_n_above_one_and_embeddings_have_columns_of_one_type(server: FakeServer) -> None:
    frame = pd.DataFrame({"prompt": ["alpha beta", "gamma delta"], "n": [2, 1]})
    out = vbatch.generate(pa.Table.from_pandas(frame), base_url=server.base_url)
    assert out.schema.field("text").type == pa.list_(pa.string())
    assert out.column("text").to_pylist() == [
        [completion_text("alpha beta", 0, 2), completion_text("alpha beta", 1, 2)],
        [completion_text("gamma delta")],
    ]
    embedded = vbatch.generate(pd.DataFrame({"input": ["one", "two"]}),
                               base_url=server.base_url, endpoint="embeddings")  # fmt: skip
    assert list(embedded.columns) == ["input", "embedding", "prompt_tokens", "error"]
    assert all(len(v) > 0 for v in embedded["embedding"])


# -- errors ---------------------------------------------------------------------------------------


def test_a_failed_row_is_a_value_beside_the_others(server: FakeServer) -> None:
    server.script("row3", [400])
    out = vbatch.generate(pd.DataFrame({"prompt": PROMPTS}), base_url=server.base_url)
    failed = out[out["error"].notna()]
    assert list(failed.index) == [3] and failed["text"].isna().all()
    assert failed["error"].iloc[0].startswith("BadRequestError: ")
    assert out["error"].isna().sum() == 39


def test_bad_input_is_named_before_anything_is_sent(server: FakeServer) -> None:
    with pytest.raises(vbatch.InputError, match=r"<list>:3: expected a prompt string, a list of "
                                                r"messages or a row dict, got int"):  # fmt: skip
        vbatch.generate(["a", "b", 3], base_url=server.base_url)
    with pytest.raises(
        vbatch.InputError, match=r"<DataFrame>:2: 'prompt' must be a non-empty string"
    ):
        vbatch.generate(pd.DataFrame({"prompt": ["a", None]}), base_url=server.base_url)
    with pytest.raises(vbatch.ConfigError, match=r"already has column\(s\) text"):
        vbatch.generate(pd.DataFrame({"text": ["a"]}), base_url=server.base_url,
                        prompt_field="text")  # fmt: skip
    with pytest.raises(TypeError, match="put one prompt in a list"):
        vbatch.generate("one prompt", base_url=server.base_url)
    with pytest.raises(TypeError, match="got one dict: put it in a list"):
        vbatch.generate({"prompt": "one"}, base_url=server.base_url)
    with pytest.raises(TypeError, match="expected a path, a list of rows"):
        vbatch.generate(42, base_url=server.base_url)
    with pytest.raises(TypeError, match=r"give a file to vbatch\.run"):
        vbatch.generate(Path("in.jsonl"), base_url=server.base_url)
    assert server.generation_requests == 0


# -- durable: output= and resume ------------------------------------------------------------------


def test_output_resumes_sending_only_the_rows_missing(server: FakeServer, tmp_path: Path) -> None:
    frame = pd.DataFrame({"prompt": PROMPTS})
    out = tmp_path / "results.jsonl"
    first = vbatch.generate(frame, out, base_url=server.base_url, max_tokens=4)
    assert len(read_jsonl(out)) == 40
    lines = out.read_bytes().splitlines(keepends=True)
    out.write_bytes(b"".join(lines[:25]) + lines[25][:10])  # a crash: 25 whole, one torn
    server.reset_counters()
    again = vbatch.generate(frame, out, base_url=server.base_url, max_tokens=4)
    assert server.generation_requests == 15
    pd.testing.assert_frame_equal(again, first)
    server.reset_counters()
    vbatch.generate(frame, out, base_url=server.base_url, max_tokens=4)
    assert server.generation_requests == 0  # all there: nothing sent
    changed = frame.assign(prompt=[*PROMPTS[:-1], "another prompt"])
    with pytest.raises(vbatch.ResumeError, match=r"changed: input"):
        vbatch.generate(changed, out, base_url=server.base_url, max_tokens=4)


def test_ids_from_a_column_and_a_parquet_output(server: FakeServer, tmp_path: Path) -> None:
    frame = pd.DataFrame({"key": [f"k{i}" for i in range(40)], "prompt": PROMPTS})
    out = tmp_path / "results.parquet"
    vbatch.generate(frame, out, base_url=server.base_url, id_field="key")
    log = tmp_path / "results.parquet.jsonl"
    assert sorted(r["id"] for r in read_jsonl(log)) == sorted(frame["key"])  # as they finished
    assert sorted(pd.read_parquet(out)["id"]) == sorted(frame["key"])
    reordered = frame.iloc[::-1]
    with pytest.raises(vbatch.ResumeError, match=r"changed: input"):  # as a reordered file
        vbatch.generate(reordered, out, base_url=server.base_url, id_field="key")
    server.reset_counters()
    again = vbatch.generate(reordered, out, base_url=server.base_url, id_field="key", force=True)
    assert server.generation_requests == 0  # every id is there: results read back by id
    assert list(again["text"]) == texts(PROMPTS[::-1])


# -- one pass -------------------------------------------------------------------------------------


async def test_a_generator_is_read_as_it_is_sent(server: FakeServer) -> None:
    pulled = 0

    def prompts() -> Iterator[str]:
        nonlocal pulled
        for i in range(20_000):
            pulled += 1
            yield f"g{i} go"

    ahead = 0
    async with vbatch.stream(prompts(), base_url=server.base_url, concurrency=16) as results:
        count = 0
        async for result in results:
            count += 1
            ahead = max(ahead, pulled - count)
            assert result.ok
    assert count == 20_000
    # The first rows are read ahead to plan on (2,048) and the rest a chunk at a time: never
    # the whole generator before its results.
    assert ahead < 2_048 + 4_096 + 16 * 2


def test_a_generator_into_an_output_that_holds_results_is_refused(
    server: FakeServer, tmp_path: Path
) -> None:
    out = tmp_path / "r.jsonl"
    vbatch.generate((p for p in PROMPTS), out, base_url=server.base_url)
    assert len(read_jsonl(out)) == 40
    with pytest.raises(vbatch.ResumeError, match="can be read only once"):
        vbatch.generate((p for p in PROMPTS), out, base_url=server.base_url)
    again = vbatch.generate((p for p in PROMPTS), out, base_url=server.base_url, overwrite=True)
    assert [r.text for r in again] == texts(PROMPTS)


def test_a_generator_s_bad_rows_are_values_too(server: FakeServer, tmp_path: Path) -> None:
    """Read once, a generator has no validating pass: a bad row is its own error result, named
    as the validating pass would name it, and the rows around it are sent."""

    def rows() -> Iterator[Any]:
        yield "first row"
        yield 42  # no row at all
        yield {"prompt": "third row"}
        yield {"question": "no prompt"}
        yield "fifth row"

    out = tmp_path / "r.jsonl"
    results = vbatch.generate(rows(), out, base_url=server.base_url)
    assert [r.text for r in results] == [completion_text("first row"), None,
                                         completion_text("third row"), None,
                                         completion_text("fifth row")]  # fmt: skip
    assert results[1].error == ("invalid_row: <iterable>:2: expected a prompt string, a list of "
                                "messages or a row dict, got int")  # fmt: skip
    assert results[3].error is not None
    assert results[3].error.startswith("invalid_row: <iterable>:4: row has neither 'prompt'")
    assert server.generation_requests == 3
    assert sorted(str(r["id"]) for r in read_jsonl(out)) == ["1", "2", "3", "4", "5"]


async def test_generate_called_where_a_loop_runs(server: FakeServer) -> None:
    """As in a notebook's cell: the sync call runs on a loop of its own, in a thread."""
    results = vbatch.generate(PROMPTS[:3], base_url=server.base_url)
    assert [r.text for r in results] == texts(PROMPTS[:3])
    assert [r.text for r in await vbatch.agenerate(PROMPTS[:3], base_url=server.base_url)] == [
        r.text for r in results
    ]
    await asyncio.sleep(0)
