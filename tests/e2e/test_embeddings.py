"""End-to-end against real vLLM serving the embedded SmolLM2-135M-Instruct as an embedding model
(vLLM 0.32: ``--runner pooling --convert embed``): ``vbatch run`` of an OpenAI Batch file of
``/v1/embeddings`` lines, and the fake server's reply shape checked against the real one."""

from __future__ import annotations

import math
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from fakeserver import FakeServer
from helpers import post_json, read_jsonl, write_jsonl

from vbatch._config import LaunchOptions
from vbatch._engine.plan import plan_server
from vbatch._engine.server import VllmServer

from .conftest import MAX_MODEL_LEN

pytestmark = pytest.mark.vllm
POOLING = ("--runner", "pooling", "--convert", "embed")
HIDDEN_SIZE = 576  # SmolLM2-135M's: the converted model's vectors have its hidden size
TEXTS = ["The cat sat on the mat.", "A cat was sitting on a mat.", "Stock prices fell sharply."]


@pytest.fixture(scope="module")
def embedding_server() -> Iterator[VllmServer]:
    plan = plan_server(None, None, LaunchOptions(max_model_len=MAX_MODEL_LEN, vllm_args=POOLING))
    with VllmServer(plan.spec) as server:
        yield server


def _cosine(a: list[float], b: list[float]) -> float:
    dot = sum(x * y for x, y in zip(a, b, strict=True))
    return dot / (math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b)))


def test_a_batch_file_of_embeddings_through_vbatch_run(
    embedding_server: VllmServer, tmp_path: Path
) -> None:
    lines = [{"custom_id": f"t{i}", "method": "POST", "url": "/v1/embeddings",
              "body": {"input": text}} for i, text in enumerate(TEXTS)]  # fmt: skip
    lines.append({"custom_id": "pair", "method": "POST", "url": "/v1/embeddings",
                  "body": {"input": TEXTS[:2]}})  # fmt: skip
    inp = write_jsonl(tmp_path / "in.jsonl", lines)
    out = tmp_path / "out.jsonl"
    proc = subprocess.run(
        [sys.executable, "-m", "vbatch", "run", str(inp), "-o", str(out), "--base-url",
         embedding_server.base_url, "--max-tokens", "64", "--quiet"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    by_id = {r["custom_id"]: r for r in read_jsonl(out)}
    assert set(by_id) == {line["custom_id"] for line in lines}
    vectors = {}
    for custom_id, record in by_id.items():
        assert record["error"] is None and record["response"]["status_code"] == 200
        body = record["response"]["body"]
        assert body["object"] == "list"
        usage = body["usage"]
        assert usage["prompt_tokens"] > 0 and usage["total_tokens"] == usage["prompt_tokens"]
        for item in body["data"]:
            assert len(item["embedding"]) == HIDDEN_SIZE
            assert math.isclose(math.sqrt(sum(x * x for x in item["embedding"])), 1, rel_tol=1e-3)
        vectors[custom_id] = [item["embedding"] for item in body["data"]]
    # The same text gets the same vector in a line of its own and in a list.
    assert _cosine(vectors["pair"][0], vectors["t0"][0]) > 0.999
    assert _cosine(vectors["pair"][1], vectors["t1"][0]) > 0.999
    # And they mean something: the two sentences about a cat are closer than cat and stocks.
    assert _cosine(vectors["t0"][0], vectors["t1"][0]) > _cosine(vectors["t0"][0], vectors["t2"][0])


def test_the_fake_servers_embeddings_reply_has_the_real_shape(
    embedding_server: VllmServer,
) -> None:
    body = {"model": embedding_server.spec.served_model_name, "input": TEXTS[:2]}
    real = post_json(embedding_server.base_url + "/embeddings", body)
    with FakeServer() as fake:
        fake_reply = post_json(fake.base_url + "/embeddings", {"input": TEXTS[:2]})
    assert set(fake_reply) == set(real)
    assert set(fake_reply["data"][0]) == set(real["data"][0])
    assert fake_reply["usage"].keys() == real["usage"].keys()
    assert {k: v for k, v in real["usage"].items() if "tokens" not in k or "details" in k} == {
        k: v for k, v in fake_reply["usage"].items() if "tokens" not in k or "details" in k
    }
    assert (fake_reply["object"], fake_reply["data"][1]["object"], fake_reply["data"][1]["index"]) \
        == (real["object"], real["data"][1]["object"], real["data"][1]["index"])  # fmt: skip
    assert real["usage"]["completion_tokens"] == fake_reply["usage"]["completion_tokens"]


# -- /v1/score and /v1/rerank of the same pooling server (cosine of the two texts' vectors) ----


def test_score_and_rerank_lines_through_vbatch_run(
    embedding_server: VllmServer, tmp_path: Path
) -> None:
    docs = [TEXTS[2], TEXTS[1]]  # stocks, then the cat
    lines = [
        {"custom_id": "score", "method": "POST", "url": "/v1/score",
         "body": {"queries": TEXTS[0], "documents": docs}},
        {"custom_id": "rerank", "method": "POST", "url": "/v1/rerank",
         "body": {"query": TEXTS[0], "documents": docs}},
    ]  # fmt: skip
    inp = write_jsonl(tmp_path / "in.jsonl", lines)
    out = tmp_path / "out.jsonl"
    proc = subprocess.run(
        [sys.executable, "-m", "vbatch", "run", str(inp), "-o", str(out), "--base-url",
         embedding_server.base_url, "--quiet"], capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    by_id = {r["custom_id"]: r["response"]["body"] for r in read_jsonl(out)}
    scores = [d["score"] for d in sorted(by_id["score"]["data"], key=lambda d: d["index"])]
    assert scores[1] > scores[0]  # the cat sentence is closer to the cat sentence
    ranked = by_id["rerank"]["results"]
    assert [r["index"] for r in ranked] == [1, 0]  # best first: the cat sentence
    assert math.isclose(ranked[0]["relevance_score"], scores[1], rel_tol=1e-4)

    # The fake server's replies have the real keys (its scores are hash cosines, not these).
    model = embedding_server.spec.served_model_name
    with FakeServer() as fake:
        for url, body in (("/score", lines[0]["body"]), ("/rerank", lines[1]["body"])):
            real = post_json(embedding_server.base_url + url, {"model": model, **body})
            ours = post_json(fake.base_url + url, body)
            assert set(ours) == set(real), url
            items = "data" if url == "/score" else "results"
            assert set(ours[items][0]) == set(real[items][0]), url
            assert set(ours["usage"]) == set(real["usage"]), url
