"""Batches through the official openai client against the fake server: the whole life of a
batch, separate output and error files, validation that names lines, cancel, expiry, listing."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import openai
import pytest
from helpers import ServerProcess

from service.apiproc import (
    KEYS,
    batch_lines,
    content_lines,
    upload,
    wait_done,
    write_lines,
)
from service.conftest import StartApi

CHAT = "/v1/chat/completions"


def test_a_batch_completes_with_outputs_and_errors_apart(
    start_api: StartApi, server_process: ServerProcess, tmp_path: Path
) -> None:
    server_process.control(scripts={"r3": [400], "r7": [404]})
    client = start_api().client()
    file_id = upload(client, write_lines(tmp_path / "in.jsonl", batch_lines(20)))
    created = client.batches.create(input_file_id=file_id, endpoint=CHAT,
                                    completion_window="24h", metadata={"team": "a"})  # fmt: skip
    assert created.status == "validating" and created.id.startswith("batch_")
    batch = wait_done(client, created.id)
    assert batch.status == "completed", batch
    assert batch.request_counts is not None
    assert (batch.request_counts.total, batch.request_counts.completed,
            batch.request_counts.failed) == (20, 18, 2)  # fmt: skip
    assert batch.model == "smol" and batch.metadata == {"team": "a"}
    assert batch.created_at <= batch.in_progress_at <= batch.finalizing_at <= batch.completed_at  # type: ignore[operator]
    assert batch.expires_at == batch.created_at + 86400
    outputs = content_lines(client, batch.output_file_id)
    errors = content_lines(client, batch.error_file_id)
    assert sorted(o["custom_id"] for o in outputs) == sorted(f"r{i}" for i in range(20)
                                                              if i not in (3, 7))  # fmt: skip
    assert all(o["response"]["status_code"] == 200 and o["error"] is None for o in outputs)
    statuses = {e["custom_id"]: e["response"]["status_code"] for e in errors}
    assert statuses == {"r3": 400, "r7": 404}
    # OpenAI's shape: an HTTP error's line has error null and the reply (status and body);
    # line ids batch_req_..., request_id a string.
    for line in outputs + errors:
        assert line["id"].startswith("batch_req_") and line["error"] is None
        assert isinstance(line["response"]["request_id"], str) and line["response"]["request_id"]
    assert all("error" in e["response"]["body"] for e in errors)
    usage = batch.usage
    assert usage is not None and usage.output_tokens == 18 * 4
    assert usage.input_tokens == sum(o["response"]["body"]["usage"]["prompt_tokens"]
                                     for o in outputs)  # fmt: skip
    assert usage.total_tokens == usage.input_tokens + usage.output_tokens
    output_file = client.files.retrieve(batch.output_file_id)  # type: ignore[arg-type]
    assert output_file.purpose == "batch_output" and output_file.expires_at is None


def test_a_row_with_no_reply_has_only_an_error_in_its_line(
    start_api: StartApi, server_process: ServerProcess, tmp_path: Path
) -> None:
    # Every try of r1 loses its connection: no HTTP reply, so the line says why in "error".
    server_process.control(scripts={"r1": ["drop"] * 10})
    client = start_api("--max-attempts", "2").client()
    file_id = upload(client, write_lines(tmp_path / "in.jsonl", batch_lines(3)))
    batch = wait_done(client, client.batches.create(input_file_id=file_id, endpoint=CHAT,
                                                    completion_window="24h").id)  # fmt: skip
    assert batch.status == "completed" and batch.request_counts is not None
    assert (batch.request_counts.completed, batch.request_counts.failed) == (2, 1)
    (line,) = content_lines(client, batch.error_file_id)
    assert line["custom_id"] == "r1" and line["response"] is None
    assert line["error"]["code"] and line["error"]["message"]


def test_output_expires_after_sets_the_output_files_expiry(
    start_api: StartApi, tmp_path: Path
) -> None:
    client = start_api().client()
    file_id = upload(client, write_lines(tmp_path / "in.jsonl", batch_lines(2)))
    with pytest.raises(openai.BadRequestError, match="output_expires_after"):
        client.batches.create(
            input_file_id=file_id,
            endpoint=CHAT,
            completion_window="24h",
            output_expires_after={"anchor": "created_at", "seconds": 60},
        )
    batch = client.batches.create(
        input_file_id=file_id,
        endpoint=CHAT,
        completion_window="24h",
        output_expires_after={"anchor": "created_at", "seconds": 7200},
    )
    batch = wait_done(client, batch.id)
    output = client.files.retrieve(batch.output_file_id)  # type: ignore[arg-type]
    assert output.expires_at == output.created_at + 7200


def test_validation_names_every_bad_line_up_to_a_cap(start_api: StartApi, tmp_path: Path) -> None:
    client = start_api().client()
    lines = batch_lines(8)
    del lines[1]["body"]["messages"]  # line 2
    lines[3]["url"] = "/v1/completions"  # line 4: not the batch's endpoint
    lines[4]["custom_id"] = "r0"  # line 5: a duplicate of line 1
    lines[5]["body"]["model"] = "gpt-nothing"  # line 6: a model the fleet does not serve
    lines[6]["method"] = "GET"  # line 7
    file_id = upload(client, write_lines(tmp_path / "bad.jsonl", lines))
    batch = client.batches.create(input_file_id=file_id, endpoint=CHAT, completion_window="24h")
    batch = wait_done(client, batch.id)
    assert batch.status == "failed" and batch.failed_at is not None
    assert batch.errors is not None and batch.errors.data is not None
    by_line = {e.line: e for e in batch.errors.data}
    assert sorted(by_line) == [2, 4, 5, 6, 7]
    assert "messages" in (by_line[2].message or "")
    assert "/v1/completions" in (by_line[4].message or "")
    assert by_line[5].code == "duplicate_custom_id" and "line 1" in (by_line[5].message or "")
    assert "gpt-nothing" in (by_line[6].message or "")
    assert "GET" in (by_line[7].message or "")
    assert batch.output_file_id is None and batch.error_file_id is None
    # Past 100 bad lines, the rest are counted.
    path = tmp_path / "worse.jsonl"
    path.write_text("{bad\n" * 130)
    batch = client.batches.create(input_file_id=upload(client, path), endpoint=CHAT,
                                  completion_window="24h")  # fmt: skip
    batch = wait_done(client, batch.id)
    assert batch.errors is not None and batch.errors.data is not None
    assert [e.line for e in batch.errors.data[:100]] == list(range(1, 101))
    assert "and 30 more bad lines" in (batch.errors.data[100].message or "")


def test_lines_that_are_not_json_do_not_hide_the_rest_and_limits(
    start_api: StartApi, tmp_path: Path
) -> None:
    client = start_api("--max-lines", "5").client()
    lines = [json.dumps(line) for line in batch_lines(5)]
    lines[0] = "{not json"  # line 1
    lines[2] = lines[2].replace('"custom_id"', '"id"')  # line 3: no custom_id
    lines[3] = "[1, 2]"  # line 4: JSON, not an object
    lines[4] = lines[4].replace('"body"', '"payload"')  # line 5: no body
    path = tmp_path / "in.jsonl"
    path.write_text("\n".join(lines) + "\n")
    batch = client.batches.create(input_file_id=upload(client, path), endpoint=CHAT,
                                  completion_window="24h")  # fmt: skip
    batch = wait_done(client, batch.id)
    assert batch.status == "failed" and batch.errors and batch.errors.data
    said = {e.line: e.message or "" for e in batch.errors.data}
    assert sorted(said) == [1, 3, 4, 5]  # every bad line in one answer
    assert "malformed JSON" in said[1] and "JSON object" in said[4]
    assert said[3] == "missing 'custom_id'" and said[5] == "missing 'body'"
    assert not any("--" in message for message in said.values())  # the API's terms, no flags
    many = upload(client, write_lines(tmp_path / "many.jsonl", batch_lines(6)))
    batch = wait_done(client, client.batches.create(input_file_id=many, endpoint=CHAT,
                                                    completion_window="24h").id)  # fmt: skip
    assert batch.status == "failed" and batch.errors and batch.errors.data
    assert batch.errors.data[0].code == "too_many_requests"


def test_bad_requests_are_refused_at_create(start_api: StartApi, tmp_path: Path) -> None:
    client = start_api().client()
    file_id = upload(client, write_lines(tmp_path / "in.jsonl", batch_lines(1)))
    with pytest.raises(openai.BadRequestError, match="endpoint"):
        client.batches.create(input_file_id=file_id, endpoint="/v1/moderations",
                              completion_window="24h")  # fmt: skip
    with pytest.raises(openai.BadRequestError, match="completion_window"):
        client.batches.create(input_file_id=file_id, endpoint=CHAT, completion_window="soon")  # type: ignore[arg-type]
    with pytest.raises(openai.NotFoundError):
        client.batches.create(input_file_id="file-000000000000000000000000", endpoint=CHAT,
                              completion_window="24h")  # fmt: skip
    assert list(client.batches.list()) == []


def test_metadata_is_free_text_and_vbatch_priority_is_read_or_said_ignored(
    start_api: StartApi, tmp_path: Path
) -> None:
    client = start_api().client()
    file_id = upload(client, write_lines(tmp_path / "in.jsonl", batch_lines(1)))
    made = {}
    for name, metadata in [("free", {"priority": "high", "note": "x" * 512}),
                           ("weighted", {"vbatch_priority": "2.5"}),
                           ("ignored", {"vbatch_priority": "lots"})]:  # fmt: skip
        made[name] = client.batches.create(input_file_id=file_id, endpoint=CHAT,
                                           completion_window="24h", metadata=metadata)  # fmt: skip
    assert made["free"].metadata == {"priority": "high", "note": "x" * 512}
    facts = {name: (b.model_extra or {})["vbatch"] for name, b in made.items()}
    assert facts["free"] == {"share_weight": 1.0, "notes": []}
    assert facts["weighted"] == {"share_weight": 2.5, "notes": []}
    assert facts["ignored"]["share_weight"] == 1.0
    assert "['vbatch_priority'] 'lots' is not a number" in facts["ignored"]["notes"][0]
    # Kept with the batch: the same after it ends, read back from the database.
    done = wait_done(client, made["ignored"].id)
    assert done.status == "completed" and (done.model_extra or {})["vbatch"] == facts["ignored"]
    # OpenAI's own limits still hold: 16 keys, keys of 64 characters, values of 512.
    with pytest.raises(openai.BadRequestError, match="metadata"):
        client.batches.create(input_file_id=file_id, endpoint=CHAT, completion_window="24h",
                              metadata={"note": "x" * 513})  # fmt: skip


def test_cancel_stops_sending_and_keeps_what_finished(
    start_api: StartApi, server_process: ServerProcess, tmp_path: Path
) -> None:
    server_process.control(latency=0.2)
    client = start_api("--concurrency", "2").client()
    file_id = upload(client, write_lines(tmp_path / "in.jsonl", batch_lines(200)))
    batch = client.batches.create(input_file_id=file_id, endpoint=CHAT, completion_window="24h")
    while client.batches.retrieve(batch.id).request_counts.completed < 4:  # type: ignore[union-attr]
        time.sleep(0.05)
    cancelling = client.batches.cancel(batch.id)
    assert cancelling.status == "cancelling" and cancelling.cancelling_at is not None
    batch = wait_done(client, batch.id)
    assert batch.status == "cancelled" and batch.cancelled_at is not None
    counts = batch.request_counts
    assert counts is not None and 4 <= counts.completed < 200 and counts.failed == 0
    outputs = content_lines(client, batch.output_file_id)
    assert len(outputs) == counts.completed == len({o["custom_id"] for o in outputs})
    sent = server_process.stats()["generation_requests"]
    assert sent <= counts.completed + 2  # at most the window more was sent, then dropped
    assert client.batches.cancel(batch.id).status == "cancelled"  # again: as it is
    one = upload(client, write_lines(tmp_path / "one.jsonl", batch_lines(1)))
    finished = wait_done(client, client.batches.create(input_file_id=one, endpoint=CHAT,
                                                       completion_window="24h").id)  # fmt: skip
    assert finished.status == "completed"
    with pytest.raises(openai.ConflictError):
        client.batches.cancel(finished.id)


def test_expiry_writes_batch_expired_lines_for_the_rest(
    start_api: StartApi, server_process: ServerProcess, tmp_path: Path
) -> None:
    server_process.control(latency=0.1)
    client = start_api("--concurrency", "2").client()
    file_id = upload(client, write_lines(tmp_path / "in.jsonl", batch_lines(300)))
    # A short window (the service takes "90s", "2m", ...; OpenAI only "24h").
    batch = client.batches.create(input_file_id=file_id, endpoint=CHAT, completion_window="3s")  # type: ignore[arg-type]
    batch = wait_done(client, batch.id)
    assert batch.status == "expired" and batch.expired_at is not None
    outputs = content_lines(client, batch.output_file_id)
    errors = content_lines(client, batch.error_file_id)
    assert 0 < len(outputs) < 300
    assert {e["error"]["code"] for e in errors} == {"batch_expired"}
    ids = [line["custom_id"] for line in outputs + errors]
    assert sorted(ids) == sorted(f"r{i}" for i in range(300))  # each row exactly once
    assert batch.request_counts is not None
    assert (batch.request_counts.completed, batch.request_counts.failed) == (
        len(outputs), len(errors))  # fmt: skip


def test_batches_list_pages_and_owners(start_api: StartApi, tmp_path: Path) -> None:
    api = start_api()
    alice, bob = api.client(KEYS[0]), api.client(KEYS[1])
    file_id = upload(alice, write_lines(tmp_path / "in.jsonl", batch_lines(2)))
    ids = [alice.batches.create(input_file_id=file_id, endpoint=CHAT,
                                completion_window="24h").id for _ in range(5)]  # fmt: skip
    first = alice.batches.list(limit=2)
    assert [b.id for b in first.data] == ids[::-1][:2] and first.has_more
    assert first.first_id == ids[4] and first.last_id == ids[3]
    assert [b.id for b in alice.batches.list(limit=2)] == ids[::-1]  # all pages
    with pytest.raises(openai.BadRequestError):
        alice.batches.list(limit=101)
    assert list(bob.batches.list()) == []
    for call in (bob.batches.retrieve, bob.batches.cancel):
        with pytest.raises(openai.NotFoundError):
            call(ids[0])
    with pytest.raises(openai.NotFoundError):  # bob cannot start a batch on alice's file
        bob.batches.create(input_file_id=file_id, endpoint=CHAT, completion_window="24h")
    with pytest.raises(openai.AuthenticationError):
        api.client("wrong").batches.retrieve(ids[0])
    for batch_id in ids:
        assert wait_done(alice, batch_id).status == "completed"


def test_without_keys_only_loopback(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "vbatch", "api", "--host", "0.0.0.0", "--base-url",
         "http://127.0.0.1:9/v1", "--data-dir", str(tmp_path / "d")],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 2
    assert "loopback" in done.stderr and "VBATCH_API_KEYS" in done.stderr


def test_unknown_routes_and_methods_answer_in_openais_envelope(
    start_api: StartApi, tmp_path: Path
) -> None:
    client = start_api().client()
    file_id = upload(client, write_lines(tmp_path / "in.jsonl", batch_lines(1)))
    batch = client.batches.create(input_file_id=file_id, endpoint=CHAT, completion_window="24h")
    # An id holding a slash (sent as is, or escaped) matches no route: 404 in the envelope, so
    # the client's error has OpenAI's type and code rather than {'detail': 'Not Found'}.
    for bad in ("batch_a/b", "batch_a%2Fb", "batch_x/../../files"):
        with pytest.raises(openai.NotFoundError) as found:
            client.batches.retrieve(bad)
        assert found.value.type == "invalid_request_error", found.value.body
        assert isinstance(found.value.body, dict) and "detail" not in found.value.body
    with pytest.raises(openai.NotFoundError) as found:
        client.get("/no/such/route", cast_to=object)
    assert found.value.code == "unknown_url"
    assert "GET /v1/no/such/route" in str(found.value.body["message"])  # type: ignore[index]
    # A method the route lacks: 405, in the envelope too.
    with pytest.raises(openai.APIStatusError) as wrong:
        client.delete(f"/batches/{batch.id}", cast_to=object)
    assert wrong.value.status_code == 405 and wrong.value.type == "invalid_request_error"
    assert "DELETE" in str(wrong.value.body["message"])  # type: ignore[index]


@pytest.mark.parametrize(
    ("endpoint", "body"),
    [
        ("/v1/responses", {"input": "Tell me something", "max_output_tokens": 5}),
        ("/v1/score", {"queries": "a cat", "documents": ["a cat sat", "stocks fell"]}),
        ("/v1/rerank", {"query": "a cat", "documents": ["a cat sat", "stocks fell"]}),
    ],
)
def test_batches_of_responses_scores_and_reranks(
    start_api: StartApi, tmp_path: Path, endpoint: str, body: dict[str, object]
) -> None:
    client = start_api().client()
    lines = [{"custom_id": f"x{i}", "method": "POST", "url": endpoint, "body": body}
             for i in range(3)]  # fmt: skip
    lines.append({"custom_id": "other", "method": "POST", "url": CHAT,
                  "body": {"messages": [{"role": "user", "content": "hi"}]}})  # fmt: skip
    bad = upload(client, write_lines(tmp_path / "bad.jsonl", lines))
    refused = wait_done(client, client.batches.create(
        input_file_id=bad, endpoint=endpoint, completion_window="24h").id)  # type: ignore[arg-type]  # fmt: skip
    assert refused.status == "failed" and refused.errors and refused.errors.data
    assert [(e.line, endpoint in (e.message or "")) for e in refused.errors.data] == [(4, True)]
    good = upload(client, write_lines(tmp_path / "good.jsonl", lines[:3]))
    batch = wait_done(client, client.batches.create(
        input_file_id=good, endpoint=endpoint, completion_window="24h").id)  # type: ignore[arg-type]  # fmt: skip
    assert batch.status == "completed" and batch.request_counts is not None
    assert batch.request_counts.completed == 3 and batch.endpoint == endpoint
    outputs = content_lines(client, batch.output_file_id)
    assert all(o["response"]["status_code"] == 200 for o in outputs)
    assert batch.usage is not None and batch.usage.input_tokens > 0
    if endpoint == "/v1/responses":
        assert batch.usage.output_tokens == 3 * 5
        assert all(o["response"]["body"]["object"] == "response" for o in outputs)
