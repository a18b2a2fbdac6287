"""OpenAI Batch lines for ``/v1/score``, ``/v1/rerank`` and ``/v1/responses`` (vLLM run_batch's
and OpenAI's other endpoints): their bodies checked, sized, sent as they are, their replies kept
in Batch output lines; against the fake server (real vLLM: tests/e2e)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from fakeserver import FakeServer, completion_text
from helpers import cli, preview_requests, read_jsonl, write_jsonl

import vbatch
from vbatch import InputError
from vbatch._engine.sizing import measure_requests


def line(custom_id: str, url: str, body: dict[str, Any]) -> dict[str, Any]:
    return {"custom_id": custom_id, "method": "POST", "url": url, "body": body}


LINES = [
    line("s", "/v1/score", {"queries": "a cat", "documents": ["a cat sat", "stocks fell"]}),
    line("s-old", "/v1/score", {"text_1": "a cat", "text_2": "a cat sat"}),
    line("r", "/v1/rerank", {"query": "a cat", "documents": ["stocks fell", "a cat sat"]}),
    line("q", "/v1/responses", {"input": "Say hi to the reader"}),
    line(
        "q-items",
        "/v1/responses",
        {"input": [{"role": "user", "content": "Items say hi"}], "max_output_tokens": 3},
    ),
]


def test_a_file_of_the_three_endpoints_through_vbatch_run(
    server: FakeServer, tmp_path: Path
) -> None:
    inp = write_jsonl(tmp_path / "in.jsonl", LINES)
    out = tmp_path / "out.jsonl"
    metrics = tmp_path / "metrics.json"
    proc = cli(str(inp), "-o", str(out), "--base-url", server.base_url, "--model", "smol",
               "--max-tokens", "6", "--temperature", "0",
               "--metrics-json", str(metrics))  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    by_id = {r["custom_id"]: r for r in read_jsonl(out)}
    assert set(by_id) == {x["custom_id"] for x in LINES}
    assert all(r["error"] is None and r["response"]["status_code"] == 200 for r in by_id.values())
    score = by_id["s"]["response"]["body"]
    assert [d["index"] for d in score["data"]] == [0, 1] and score["object"] == "list"
    ranked = by_id["r"]["response"]["body"]["results"]
    scores = [r["relevance_score"] for r in ranked]
    assert scores == sorted(scores, reverse=True) and len(ranked) == 2  # best first
    answer = by_id["q"]["response"]["body"]
    assert answer["object"] == "response"
    assert answer["output"][0]["content"][0]["text"] == completion_text("Say hi to the reader")
    # The job's --max-tokens is a response's max_output_tokens unless the line sets its own;
    # the sampling defaults of the completions APIs reach neither score nor rerank.
    sent = {b.get("query") or b.get("queries") or str(b.get("input")): b for b in server.bodies}
    assert sent["Say hi to the reader"]["max_output_tokens"] == 6
    assert answer["usage"]["output_tokens"] == 6
    assert by_id["q-items"]["response"]["body"]["usage"]["output_tokens"] == 3
    assert all("temperature" not in b and "max_tokens" not in b for b in server.bodies)
    # Usage counted for every kind: responses' input/output_tokens, scores' prompt tokens.
    summary = json.loads(metrics.read_text())
    assert summary["completion_tokens"] == 6 + 3
    assert summary["prompt_tokens"] == sum(
        r["response"]["body"]["usage"].get("prompt_tokens")
        or r["response"]["body"]["usage"].get("input_tokens")
        for r in by_id.values()
    )


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (line("x", "/v1/score", {"queries": "q"}), "needs 'queries' and 'documents' or"),
        (line("x", "/v1/rerank", {"documents": ["d"]}), "needs 'query' and 'documents'"),
        (line("x", "/v1/responses", {"instructions": "be brief"}), "needs 'input'"),
        ({"id": "a", "prompt": "p"}, "must be OpenAI Batch lines"),
    ],
)
def test_bad_lines_name_the_line(tmp_path: Path, data: dict[str, Any], message: str) -> None:
    inp = write_jsonl(tmp_path / "in.jsonl", [data])
    job = vbatch.make_job(str(inp), model="smol", endpoint="rerank" if "id" in data else "auto")
    with pytest.raises(InputError, match=rf"in.jsonl:1: .*{message}"):
        list(preview_requests(job))


def test_sizing_takes_the_longest_pair_and_a_responses_output(tmp_path: Path) -> None:
    lines = [
        line("s", "/v1/score", {"queries": "q" * 10, "documents": ["d" * 50, "d" * 300]}),
        line("r", "/v1/rerank", {"query": "q" * 20, "documents": ["d" * 100]}),
        line("q", "/v1/responses", {"input": "x" * 40, "max_output_tokens": 100}),
    ]
    job = vbatch.make_job(str(write_jsonl(tmp_path / "in.jsonl", lines)), model="smol")
    m = measure_requests(preview_requests(job), None, default_max_tokens=None)
    assert m.unbounded_rows == 0
    # Byte bounds: a score pair is the longest query + "\n" + the longest document (+ 8 + 2);
    # a response its input, with a chat template's bound, and its max_output_tokens.
    assert m.max_prompt_tokens == 10 + 1 + 300 + 8 + 2
    assert m.max_needed_tokens == max(m.max_prompt_tokens, 40 + 64 + 8 + 2 + 100)
