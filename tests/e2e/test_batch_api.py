"""The Batch API end to end on real vLLM (CPU build, embedded SmolLM2-135M-Instruct): the
official openai client uploads, creates, polls and downloads, and the answers are those
``vbatch run`` gives for the same file."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from helpers import read_jsonl
from service.apiproc import ApiProcess, content_lines, upload, wait_done, write_lines

from vbatch._engine.server import VllmServer

pytestmark = pytest.mark.vllm

QUESTIONS = ["What is the capital of France?", "Name a primary color.", "Say hello.",
             "What is 2 + 2?", "Name an animal.", "What colour is the sky?"]  # fmt: skip


def _lines() -> list[dict[str, object]]:
    lines: list[dict[str, object]] = []
    for i, question in enumerate(QUESTIONS):
        lines.append({"custom_id": f"q{i}", "method": "POST", "url": "/v1/chat/completions",
                      "body": {"messages": [{"role": "user", "content": question}],
                               "max_tokens": 12, "temperature": 0}})  # fmt: skip
    lines.append({"custom_id": "too-long", "method": "POST", "url": "/v1/chat/completions",
                  "body": {"messages": [{"role": "user", "content": "hi"}],
                           "max_tokens": 100_000}})  # fmt: skip
    return lines


def test_the_service_launches_vllm_itself(tmp_path: Path) -> None:
    """`vbatch api` without --base-url: it starts the embedded model (as `vbatch run` does)
    and stops it when it stops. First in this file: the session's server is not up yet, so
    two vLLMs never share the two cores."""
    path = write_lines(tmp_path / "batch.jsonl", _lines()[:3])
    api = ApiProcess(tmp_path / "data", "--max-model-len", "512").start()
    try:
        client = api.client()
        batch = client.batches.create(input_file_id=upload(client, path),
                                      endpoint="/v1/chat/completions",
                                      completion_window="24h")  # fmt: skip
        batch = wait_done(client, batch.id, timeout_s=300)
        assert batch.status == "completed", batch
        assert batch.model == "SmolLM2-135M-Instruct"
        outputs = content_lines(client, batch.output_file_id)
        assert sorted(o["custom_id"] for o in outputs) == ["q0", "q1", "q2"]
        assert all(o["response"]["body"]["choices"][0]["message"]["content"] for o in outputs)
    finally:
        api.stop()
    assert api.proc is not None and api.proc.returncode == 0, api.log()


def test_openai_client_against_the_service_matches_vbatch_run(
    vllm_server: VllmServer, tmp_path: Path
) -> None:
    path = write_lines(tmp_path / "batch.jsonl", _lines())
    api = ApiProcess(tmp_path / "data", "--base-url", vllm_server.base_url).start()
    try:
        client = api.client()
        file_id = upload(client, path)
        batch = client.batches.create(input_file_id=file_id, endpoint="/v1/chat/completions",
                                      completion_window="24h")  # fmt: skip
        batch = wait_done(client, batch.id, timeout_s=300)
        assert batch.status == "completed", batch
        assert batch.model  # the one model the server serves
        outputs = {o["custom_id"]: o for o in content_lines(client, batch.output_file_id)}
        errors = {e["custom_id"]: e for e in content_lines(client, batch.error_file_id)}
    finally:
        api.stop()
    assert sorted(outputs) == [f"q{i}" for i in range(len(QUESTIONS))]
    assert list(errors) == ["too-long"] and errors["too-long"]["response"]["status_code"] == 400
    counts = batch.request_counts
    assert counts is not None and (counts.completed, counts.failed) == (len(QUESTIONS), 1)
    assert batch.usage is not None and batch.usage.output_tokens == sum(
        o["response"]["body"]["usage"]["completion_tokens"] for o in outputs.values())  # fmt: skip

    # The same file through `vbatch run`: the same answers (greedy), the same failure.
    run_out = tmp_path / "run.jsonl"
    done = subprocess.run(
        [sys.executable, "-m", "vbatch", "run", str(path), "-o", str(run_out), "--base-url",
         vllm_server.base_url, "-q"], capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 1, done.stderr  # one row failed
    by_id = {line["custom_id"]: line for line in read_jsonl(run_out)}
    assert set(by_id) == set(outputs) | set(errors)
    for cid, line in outputs.items():
        ours = line["response"]["body"]["choices"][0]["message"]["content"]
        theirs = by_id[cid]["response"]["body"]["choices"][0]["message"]["content"]
        assert ours == theirs, (cid, ours, theirs)
    assert by_id["too-long"]["response"]["status_code"] == 400
    # The same reply in both; the service's line is OpenAI's (error null beside an HTTP reply),
    # the CLI's run_batch's (error set whenever the row failed).
    assert errors["too-long"]["response"]["body"] == by_id["too-long"]["response"]["body"]
    assert errors["too-long"]["error"] is None and by_id["too-long"]["error"]["code"]
