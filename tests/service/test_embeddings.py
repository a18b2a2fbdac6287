"""A batch of ``/v1/embeddings`` lines through the official openai client against the service on
the fake server: upload, create, poll, download; the output lines hold the vectors."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fakeserver import embedding_of
from helpers import ServerProcess

from service.apiproc import content_lines, upload, wait_done, write_lines
from service.conftest import StartApi

EMBEDDINGS = "/v1/embeddings"


def embed_lines(n: int) -> list[dict[str, Any]]:
    """Lines whose input starts with their custom_id (the fake server scripts by that word)."""
    return [{"custom_id": f"e{i}", "method": "POST", "url": EMBEDDINGS,
             "body": {"input": f"e{i} text to embed"}} for i in range(n)]  # fmt: skip


def test_an_embeddings_batch_completes_with_the_vectors(
    start_api: StartApi, server_process: ServerProcess, tmp_path: Path
) -> None:
    server_process.control(scripts={"e4": [400]})
    client = start_api().client()
    file_id = upload(client, write_lines(tmp_path / "in.jsonl", embed_lines(12)))
    created = client.batches.create(input_file_id=file_id, endpoint=EMBEDDINGS,
                                    completion_window="24h")  # fmt: skip
    batch = wait_done(client, created.id)
    assert batch.status == "completed", batch
    assert batch.endpoint == EMBEDDINGS
    assert batch.request_counts is not None
    assert (batch.request_counts.completed, batch.request_counts.failed) == (11, 1)
    outputs = {o["custom_id"]: o for o in content_lines(client, batch.output_file_id)}
    assert set(outputs) == {f"e{i}" for i in range(12) if i != 4}
    for custom_id, line in outputs.items():
        body = line["response"]["body"]
        assert body["object"] == "list" and line["error"] is None
        assert body["data"][0]["embedding"] == embedding_of(f"{custom_id} text to embed")
    errors = content_lines(client, batch.error_file_id)
    assert [(e["custom_id"], e["response"]["status_code"]) for e in errors] == [("e4", 400)]
    assert batch.usage is not None
    assert (batch.usage.input_tokens, batch.usage.output_tokens) == (11 * 4, 0)


def test_an_embeddings_batch_rejects_other_lines_naming_them(
    start_api: StartApi, tmp_path: Path
) -> None:
    client = start_api().client()
    lines = embed_lines(3)
    lines[1] = {"custom_id": "c", "method": "POST", "url": "/v1/completions",
                "body": {"prompt": "hi"}}  # fmt: skip
    lines[2]["body"] = {"input": ""}
    file_id = upload(client, write_lines(tmp_path / "in.jsonl", lines))
    created = client.batches.create(input_file_id=file_id, endpoint=EMBEDDINGS,
                                    completion_window="24h")  # fmt: skip
    batch = wait_done(client, created.id)
    assert batch.status == "failed"
    assert batch.errors is not None and batch.errors.data is not None
    found = {(e.line, e.code) for e in batch.errors.data}
    assert found == {(2, "invalid_request"), (3, "invalid_request")}
    messages = " ".join(e.message or "" for e in batch.errors.data)
    assert "the batch's endpoint is /v1/embeddings" in messages
    assert "'body.input' must be" in messages
