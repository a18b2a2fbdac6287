"""The library end to end (``vbatch.arun``/``stream``) against the fake vLLM server: the in-flight
window, ordering, retries, overflow handling, error records and OpenAI Batch lines."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from fakeserver import FakeServer, completion_text, error_body, error_type, request_key
from helpers import FastRetry, prompt_rows, read_jsonl, write_jsonl

import vbatch

MAX_LEN = 2048


def _by_id(records: list[dict[str, Any]]) -> dict[Any, dict[str, Any]]:
    out: dict[Any, dict[str, Any]] = {}
    for record in records:
        key = record.get("custom_id", record.get("id"))
        assert key not in out, f"id {key!r} written twice"
        out[key] = record
    return out


async def _run_with(
    server: FakeServer, retry: FastRetry, inp: Path, out: Path, concurrency: int = 4, **options: Any
) -> vbatch.RunSummary:
    """``arun`` through a dispatcher whose retries record their delays instead of sleeping."""
    async with vbatch.connect(server.base_url, concurrency=concurrency, retry=retry.policy) as d:
        return await vbatch.arun(str(inp), str(out), dispatcher=d, **options)


# -- the window and ordering --------------------------------------------------------------------


async def test_2000_rows_each_once_window_respected(server: FakeServer, tmp_path: Path) -> None:
    server.latency = (0.0, 0.003)
    rows = prompt_rows(2000)
    inp = write_jsonl(tmp_path / "in.jsonl", rows)
    out = tmp_path / "out.jsonl"

    summary = await vbatch.arun(
        str(inp), str(out), base_url=server.base_url, concurrency=8, model="smol", max_tokens=4
    )

    assert summary.exit_code == 0
    assert (summary.stats.ok, summary.stats.failed, summary.stats.total) == (2000, 0, 2000)
    records = read_jsonl(out)
    assert len(records) == 2000
    by_id = _by_id(records)
    assert set(by_id) == {r["id"] for r in rows}
    for row in rows:
        record = by_id[row["id"]]
        assert record["error"] is None
        assert record["text"] == completion_text(row["prompt"])
        assert record["finish_reason"] == "length"
        assert record["usage"]["completion_tokens"] == 4
        assert record["attempts"] == 1
    assert server.generation_requests == 2000
    assert server.peak_in_flight <= 8, "more requests in flight than --concurrency"
    assert server.peak_in_flight >= 2, "requests never overlapped"
    # Random latency reorders completions, which is what makes the input-order test meaningful.
    assert [r["id"] for r in records] != [r["id"] for r in rows]
    assert summary.stats.prompt_tokens == sum(len(r["prompt"].split()) for r in rows)
    assert summary.stats.completion_tokens == 2000 * 4


async def test_2000_rows_input_order(server: FakeServer, tmp_path: Path) -> None:
    server.latency = (0.0, 0.003)
    rows = prompt_rows(2000)
    inp = write_jsonl(tmp_path / "in.jsonl", rows)
    out = tmp_path / "out.jsonl"

    summary = await vbatch.arun(
        str(inp), str(out), base_url=server.base_url, concurrency=8, model="smol", order="input"
    )

    assert summary.exit_code == 0
    records = read_jsonl(out)
    assert [r["id"] for r in records] == [r["id"] for r in rows]
    assert all(
        rec["text"] == completion_text(row["prompt"])
        for rec, row in zip(records, rows, strict=True)
    )
    assert 2 <= server.peak_in_flight <= 8


async def test_input_order_with_a_slow_row(server: FakeServer, tmp_path: Path) -> None:
    """A row that needs retries finishes late; the rows after it still come out behind it."""
    retry = FastRetry()
    rows = prompt_rows(200)
    server.script("r3", [503, 503, 503, 200])
    inp = write_jsonl(tmp_path / "in.jsonl", rows)
    out = tmp_path / "out.jsonl"

    summary = await _run_with(server, retry, inp, out, concurrency=8, model="smol", order="input")

    assert summary.exit_code == 0
    records = read_jsonl(out)
    assert [r["id"] for r in records] == [r["id"] for r in rows]
    assert records[3]["attempts"] == 4


async def test_shared_dispatcher_one_window(server: FakeServer, tmp_path: Path) -> None:
    """Two jobs on one dispatcher share its window: together they never exceed it."""
    server.latency = (0.0, 0.003)
    a = write_jsonl(tmp_path / "a.jsonl", prompt_rows(300, prefix="a"))
    b = write_jsonl(tmp_path / "b.jsonl", prompt_rows(300, prefix="b"))
    async with vbatch.connect(server.base_url, concurrency=6) as d:
        sa, sb = await asyncio.gather(
            vbatch.arun(str(a), str(tmp_path / "a.out"), dispatcher=d, model="smol"),
            vbatch.arun(str(b), str(tmp_path / "b.out"), dispatcher=d, model="smol"),
        )
    assert (sa.stats.ok, sb.stats.ok) == (300, 300)
    assert len(read_jsonl(tmp_path / "a.out")) == len(read_jsonl(tmp_path / "b.out")) == 300
    assert 2 <= server.peak_in_flight <= 6


async def test_stream_yields_every_result(server: FakeServer, tmp_path: Path) -> None:
    rows = prompt_rows(50)
    inp = write_jsonl(tmp_path / "in.jsonl", rows)
    seen = {}
    async with vbatch.stream(
        str(inp), base_url=server.base_url, concurrency=4, model="smol"
    ) as results:
        async for result in results:
            assert result.ok
            seen[result.id] = result.body["choices"][0]["text"]  # type: ignore[index]
    assert seen == {r["id"]: completion_text(r["prompt"]) for r in rows}


# -- retries ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("steps", "attempts", "error_status"),
    [
        pytest.param([503, 503, 200], 3, None, id="503-503-200"),
        pytest.param([500, 502, 200], 3, None, id="500-502-200"),
        pytest.param(["drop", "drop", 200], 3, None, id="dropped-connection"),
        pytest.param(["malformed", 200], 2, None, id="malformed-json"),
        pytest.param([400, 200], 1, 400, id="400-not-retried"),
        pytest.param([422, 200], 1, 422, id="422-not-retried"),
        pytest.param([503] * 10, 4, 503, id="attempts-exhausted"),
    ],
)
async def test_retries(
    server: FakeServer,
    fast_retry: FastRetry,
    tmp_path: Path,
    steps: list[Any],
    attempts: int,
    error_status: int | None,
) -> None:
    rows = prompt_rows(5)
    server.script("r2", steps)
    inp = write_jsonl(tmp_path / "in.jsonl", rows)
    out = tmp_path / "out.jsonl"

    summary = await _run_with(server, fast_retry, inp, out, model="smol")

    by_id = _by_id(read_jsonl(out))
    assert len(by_id) == 5
    record = by_id["r2"]
    assert record["attempts"] == attempts
    assert server.attempts["r2"] == attempts
    assert summary.stats.retries == attempts - 1 == len(fast_retry.delays)
    for other in ("r0", "r1", "r3", "r4"):
        assert by_id[other]["error"] is None and by_id[other]["attempts"] == 1
    if error_status is None:
        assert record["error"] is None
        assert record["text"] == completion_text(rows[2]["prompt"])
        assert summary.exit_code == 0
    else:
        assert record["text"] is None
        assert record["error"]["status"] == error_status
        assert record["error"]["code"] == error_type(error_status)
        assert f"scripted failure {error_status}" in record["error"]["message"]
        assert summary.exit_code == 1
        assert summary.stats.failed == 1


async def test_retry_after_is_honoured(
    server: FakeServer, fast_retry: FastRetry, tmp_path: Path
) -> None:
    server.script("r1", [(429, {"Retry-After": "2"}), 200])
    server.script("r3", [(503, {"Retry-After": "7"}), (429, {}), 200])
    inp = write_jsonl(tmp_path / "in.jsonl", prompt_rows(5))
    out = tmp_path / "out.jsonl"

    summary = await _run_with(server, fast_retry, inp, out, model="smol")

    assert summary.exit_code == 0
    by_id = _by_id(read_jsonl(out))
    assert by_id["r1"]["attempts"] == 2
    assert by_id["r3"]["attempts"] == 3
    # The backoff is 0.001 s; the server's Retry-After wins when longer.
    assert sorted(fast_retry.delays) == [0.001, 2.0, 7.0]


async def test_timeout_is_retried(
    server: FakeServer, fast_retry: FastRetry, tmp_path: Path
) -> None:
    server.script("r0", [(200, {}, None, 1.0), 200])
    inp = write_jsonl(tmp_path / "in.jsonl", prompt_rows(2))
    out = tmp_path / "out.jsonl"
    async with vbatch.connect(
        server.base_url, concurrency=2, retry=fast_retry.policy, timeout_s=0.3
    ) as d:
        summary = await vbatch.arun(str(inp), str(out), dispatcher=d, model="smol")
    assert summary.exit_code == 0
    assert _by_id(read_jsonl(out))["r0"]["attempts"] == 2
    assert server.attempts["r0"] == 2


async def test_timeout_exhausted_gives_timeout_record(server: FakeServer, tmp_path: Path) -> None:
    retry = FastRetry(max_attempts=2)
    server.script("r0", [(200, {}, None, 1.0)] * 2)
    inp = write_jsonl(tmp_path / "in.jsonl", prompt_rows(2))
    out = tmp_path / "out.jsonl"
    async with vbatch.connect(
        server.base_url, concurrency=2, retry=retry.policy, timeout_s=0.2
    ) as d:
        summary = await vbatch.arun(str(inp), str(out), dispatcher=d, model="smol")
    assert summary.exit_code == 1
    error = _by_id(read_jsonl(out))["r0"]["error"]
    assert error["code"] == "timeout"
    assert error["status"] is None


async def test_global_failure_knobs(server: FakeServer, tmp_path: Path) -> None:
    """Dropped connections, malformed replies and every-k-th failures, one row at a time so the
    counts are exact."""
    retry = FastRetry(max_attempts=5)
    server.drop_next = 2
    server.malformed_next = 1
    server.fail_every = 5
    inp = write_jsonl(tmp_path / "in.jsonl", prompt_rows(30))
    out = tmp_path / "out.jsonl"

    summary = await _run_with(server, retry, inp, out, concurrency=1, model="smol")

    assert summary.exit_code == 0
    records = read_jsonl(out)
    assert len(records) == 30 and all(r["error"] is None for r in records)
    # Requests 1-2 dropped, 3 malformed, 4 answered (all row r0); 5 fails (r1), 6 answers...
    assert records[0]["id"] == "r0" and records[0]["attempts"] == 4
    assert records[1]["id"] == "r1" and records[1]["attempts"] == 2
    failures = server.generation_requests - 30
    assert failures == summary.stats.retries == len(retry.delays) > 3
    assert sum(r["attempts"] - 1 for r in records) == failures


# -- overflow -----------------------------------------------------------------------------------


PROMPT_TOKENS = 10  # every overflow row's prompt but "huge": its id and nine more words
ROOM = MAX_LEN - PROMPT_TOKENS


def _overflow_rows() -> list[dict[str, Any]]:
    """vLLM 0.32 answers "long" and "chat" with a shortened output (prompt + max_tokens is over
    the context, each alone fits), rejects "over" and "chat_over" (max_tokens > max_model_len)
    and "huge" (the prompt alone is over the context)."""
    nine = " ".join(f"x{k}" for k in range(9))

    def chat(key: str, max_tokens: int) -> dict[str, Any]:
        messages = [{"role": "user", "content": f"{key} {nine}"}]
        return {"id": key, "messages": messages, "max_tokens": max_tokens}

    return [
        {"id": "fits", "prompt": f"fits {nine}", "max_tokens": 8},
        {"id": "long", "prompt": f"long {nine}", "max_tokens": MAX_LEN - 5},  # 10 + 2043 > 2048
        {"id": "huge", "prompt": "huge " + "y " * (MAX_LEN + 10), "max_tokens": 8},
        chat("chat", MAX_LEN),  # 10 + 2048 > 2048
        {"id": "over", "prompt": f"over {nine}", "max_tokens": 4000},  # 4000 > 2048
        chat("chat_over", MAX_LEN + 1),
    ]


SHORTENED = ("long", "chat")  # the server answers, with a shorter output
TOO_MANY_TOKENS = ("over", "chat_over")  # HTTP 400: max_tokens > max_model_len


def _sent(server: FakeServer, key: str) -> list[int]:
    """The max_tokens of each request the server got for row ``key``."""
    return [b["max_tokens"] for b in server.bodies if request_key(b) == key]


def _assert_shortened_by_the_server(server: FakeServer, record: dict[str, Any]) -> None:
    """A row the server answered with fewer tokens than asked: marked as clamped by vbatch,
    from the usage and the max_model_len it learnt from /v1/models, without asking again."""
    key = record["id"]
    assert record["error"] is None, record
    assert record["clamped_max_tokens"] == ROOM, key
    assert record["usage"]["prompt_tokens"] == PROMPT_TOKENS
    assert record["usage"]["completion_tokens"] == ROOM
    assert record["finish_reason"] == "length"
    assert record["attempts"] == 1 == server.attempts[key]
    assert len(_sent(server, key)) == 1


async def _run_overflow_rows(
    server: FakeServer, tmp_path: Path, policy: str
) -> tuple[vbatch.RunSummary, dict[str, dict[str, Any]]]:
    """Run the overflow rows under ``policy``; check what both policies do alike (the row that
    fits, the rows the server shortens itself); the records by id."""
    inp = write_jsonl(tmp_path / "in.jsonl", _overflow_rows())
    out = tmp_path / "out.jsonl"
    summary = await vbatch.arun(
        str(inp), str(out), base_url=server.base_url, model="smol", on_overflow=policy
    )
    by_id = _by_id(read_jsonl(out))
    assert by_id["fits"]["error"] is None
    assert by_id["fits"]["clamped_max_tokens"] is None
    for key in SHORTENED:
        _assert_shortened_by_the_server(server, by_id[key])
    return summary, by_id


async def test_overflow_error(server: FakeServer, tmp_path: Path) -> None:
    summary, by_id = await _run_overflow_rows(server, tmp_path, "error")
    for key in TOO_MANY_TOKENS:
        record = by_id[key]
        error = record["error"]
        assert error["code"] == "context_length_exceeded", key
        assert error["status"] == 400
        assert "cannot be greater than max_model_len=2048" in error["message"]
        assert record["attempts"] == 1 == server.attempts[key]
        assert record["clamped_max_tokens"] is None
    huge = by_id["huge"]
    assert huge["error"]["code"] == "context_length_exceeded"
    assert huge["error"]["status"] == 400
    assert "maximum context length is 2048" in huge["error"]["message"]
    assert huge["attempts"] == 1 and huge["clamped_max_tokens"] is None
    assert server.path_counts["/tokenize"] == 0
    assert server.generation_requests == 6
    assert (summary.stats.ok, summary.stats.failed, summary.stats.clamped) == (3, 3, 2)
    assert summary.exit_code == 1


async def test_overflow_clamp(server: FakeServer, tmp_path: Path) -> None:
    summary, by_id = await _run_overflow_rows(server, tmp_path, "clamp")
    for key, asked in zip(TOO_MANY_TOKENS, (4000, MAX_LEN + 1), strict=True):
        # The 400 does not say how long the prompt is: one /tokenize each, then one retry.
        record = by_id[key]
        assert record["error"] is None, record
        assert record["clamped_max_tokens"] == ROOM
        assert record["usage"]["completion_tokens"] == ROOM
        assert _sent(server, key) == [asked, ROOM]
        assert record["attempts"] == 2 == server.attempts[key]
    assert server.path_counts["/tokenize"] == len(TOO_MANY_TOKENS)
    # A prompt that alone exceeds the context cannot be clamped.
    huge = by_id["huge"]
    assert huge["error"]["code"] == "context_length_exceeded"
    assert "maximum context length is 2048" in huge["error"]["message"]
    assert huge["attempts"] == 1 and huge["clamped_max_tokens"] is None
    assert (summary.stats.ok, summary.stats.failed, summary.stats.clamped) == (5, 1, 4)
    assert summary.exit_code == 1


async def test_overflow_clamp_asks_the_server_when_the_message_lacks_numbers(
    server: FakeServer, tmp_path: Path
) -> None:
    """An (older vLLM) overflow message without the numbers: the room comes from /v1/models and
    /tokenize."""
    terse = "'max_tokens' or 'max_completion_tokens' is too large: 5000."
    server.script("long", [(400, {}, error_body(400, terse))])
    rows = [{"id": "long", "prompt": "long a b c d e f g h i j k", "max_tokens": 5000}]
    inp = write_jsonl(tmp_path / "in.jsonl", rows)
    out = tmp_path / "out.jsonl"

    summary = await vbatch.arun(
        str(inp), str(out), base_url=server.base_url, model="smol", on_overflow="clamp"
    )

    record = read_jsonl(out)[0]
    assert record["error"] is None, record
    assert record["clamped_max_tokens"] == MAX_LEN - 12
    assert server.path_counts["/tokenize"] == 1
    assert server.path_counts["/v1/models"] >= 1
    assert summary.exit_code == 0


OLD_OVERFLOW_MESSAGES = [
    pytest.param(
        "'max_tokens' or 'max_completion_tokens' is too large: 2043. This model's maximum "
        "context length is 2048 tokens and your request has 10 input tokens (2043 > 2048 - 10).",
        id="too-large",
    ),
    pytest.param(
        "This model's maximum context length is 2048 tokens. However, you requested 2053 tokens "
        "(10 in the messages, 2043 in the completion). Please reduce the length of the messages "
        "or completion.",
        id="you-requested",
    ),
]


@pytest.mark.parametrize("message", OLD_OVERFLOW_MESSAGES)
@pytest.mark.parametrize("policy", ["error", "clamp"])
async def test_older_vllm_rejecting_prompt_plus_max_tokens(
    server: FakeServer, tmp_path: Path, message: str, policy: str
) -> None:
    """Older vLLMs reject prompt + max_tokens > max_model_len with a 400 that states both
    numbers: an error under "error"; under "clamp" one retry with the room, no /tokenize."""
    server.script("long", [(400, {}, error_body(400, message))])
    rows = [{"id": "long", "prompt": f"long {' '.join('x' * 9)}", "max_tokens": MAX_LEN - 5}]
    inp = write_jsonl(tmp_path / "in.jsonl", rows)
    out = tmp_path / "out.jsonl"

    summary = await vbatch.arun(
        str(inp), str(out), base_url=server.base_url, model="smol", on_overflow=policy
    )

    record = read_jsonl(out)[0]
    if policy == "error":
        assert record["error"]["code"] == "context_length_exceeded"
        assert record["error"]["message"] == message
        assert record["attempts"] == 1
        assert summary.exit_code == 1
    else:
        assert record["error"] is None, record
        assert record["clamped_max_tokens"] == ROOM
        assert _sent(server, "long") == [MAX_LEN - 5, ROOM]
        assert record["attempts"] == 2
        assert summary.exit_code == 0
    assert server.path_counts["/tokenize"] == 0


# -- error records ------------------------------------------------------------------------------


async def test_a_model_the_server_does_not_serve_is_refused_before_sending(
    server: FakeServer, tmp_path: Path
) -> None:
    rows = [*prompt_rows(3), {"id": "x", "prompt": "x y", "model": "nope"}]
    inp = write_jsonl(tmp_path / "in.jsonl", rows)
    with pytest.raises(vbatch.InputError, match=r"in.jsonl:4: model 'nope' is not served here "
                       r"\(the server serves 'smol'\)"):  # fmt: skip
        await vbatch.arun(str(inp), str(tmp_path / "out.jsonl"), base_url=server.base_url)
    assert server.generation_requests == 0
    # --model sends every row to one model, the row's own included.
    summary = await vbatch.arun(str(inp), str(tmp_path / "out.jsonl"),
                                base_url=server.base_url, model="smol")  # fmt: skip
    assert summary.exit_code == 0 and {b["model"] for b in server.bodies} == {"smol"}


async def test_a_job_the_server_rejects_wholesale_stops_after_the_first_replies(
    server: FakeServer, tmp_path: Path
) -> None:
    server.fail_every, server.fail_status = 1, 401  # a bad key: every request refused
    inp = write_jsonl(tmp_path / "in.jsonl", prompt_rows(400))
    out = tmp_path / "out.jsonl"
    with pytest.raises(vbatch.RejectedError, match=r"first 50 requests were all rejected with "
                       r"HTTP 401 .*check the API key"):  # fmt: skip
        await vbatch.arun(str(inp), str(out), base_url=server.base_url, concurrency=4)
    # What was in flight, or answered while the verdict was reached, at most: not the file.
    assert 50 <= server.generation_requests < 2 * 50
    records = read_jsonl(out)
    assert len(records) == 50 and all(r["error"]["status"] == 401 for r in records)


async def test_one_success_among_the_first_replies_lets_the_job_run(
    server: FakeServer, tmp_path: Path
) -> None:
    server.fail_every, server.fail_status = 2, 404  # half of them: not the job, some rows
    inp = write_jsonl(tmp_path / "in.jsonl", prompt_rows(120))
    summary = await vbatch.arun(str(inp), str(tmp_path / "out.jsonl"),
                                base_url=server.base_url, concurrency=4)  # fmt: skip
    assert summary.stats.done == 120 and summary.stats.failed == 60


async def test_model_defaults_to_the_servers_only_model(server: FakeServer, tmp_path: Path) -> None:
    inp = write_jsonl(tmp_path / "in.jsonl", prompt_rows(5))
    out = tmp_path / "out.jsonl"

    summary = await vbatch.arun(str(inp), str(out), base_url=server.base_url)

    assert summary.exit_code == 0
    assert server.path_counts["/v1/models"] == 1
    assert [b["model"] for b in server.bodies] == ["smol"] * 5


async def test_n_choices_become_a_list(server: FakeServer, tmp_path: Path) -> None:
    rows = prompt_rows(4)
    inp = write_jsonl(tmp_path / "in.jsonl", rows)
    out = tmp_path / "out.jsonl"

    summary = await vbatch.arun(
        str(inp), str(out), base_url=server.base_url, model="smol", n=3, max_tokens=2
    )

    assert summary.exit_code == 0
    by_id = _by_id(read_jsonl(out))
    for row in rows:
        record = by_id[row["id"]]
        assert record["text"] == [completion_text(row["prompt"], i, 3) for i in range(3)]
        assert record["finish_reason"] == ["length"] * 3
        assert record["usage"]["completion_tokens"] == 6
    assert all(b["n"] == 3 for b in server.bodies)


async def test_chat_rows_and_system(server: FakeServer, tmp_path: Path) -> None:
    rows = [
        {"id": i, "messages": [{"role": "user", "content": f"c{i} hello there"}]} for i in range(5)
    ]
    inp = write_jsonl(tmp_path / "in.jsonl", rows)
    out = tmp_path / "out.jsonl"

    summary = await vbatch.arun(
        str(inp), str(out), base_url=server.base_url, model="smol", system="be brief"
    )

    assert summary.exit_code == 0
    by_id = _by_id(read_jsonl(out))
    assert set(by_id) == set(range(5)), "integer ids must stay integers"
    for i in range(5):
        assert by_id[i]["text"] == completion_text(f"c{i} hello there")
        assert by_id[i]["usage"]["prompt_tokens"] == 5  # 2 system words + 3 user words
    assert server.path_counts["/v1/chat/completions"] == 5
    assert all(b["messages"][0] == {"role": "system", "content": "be brief"} for b in server.bodies)


# -- OpenAI Batch lines -------------------------------------------------------------------------


def _batch_line(custom_id: str, chat: bool = True) -> dict[str, Any]:
    text = f"{custom_id} tell me a story"
    if chat:
        body: dict[str, Any] = {
            "model": "smol",
            "max_tokens": 3,
            "messages": [{"role": "user", "content": text}],
        }
        url = "/v1/chat/completions"
    else:
        body = {"model": "smol", "max_tokens": 3, "prompt": text}
        url = "/v1/completions"
    return {"custom_id": custom_id, "method": "POST", "url": url, "body": body}


async def test_openai_batch_lines(
    server: FakeServer, fast_retry: FastRetry, tmp_path: Path
) -> None:
    lines = [_batch_line(f"req-{i}", chat=i % 2 == 0) for i in range(6)]
    server.script("req-4", [400])
    server.script("req-5", ["drop"] * 10)
    inp = write_jsonl(tmp_path / "in.jsonl", lines)
    out = tmp_path / "out.jsonl"

    summary = await _run_with(server, fast_retry, inp, out)

    records = read_jsonl(out)
    assert len(records) == 6
    assert all(set(r) == {"id", "custom_id", "response", "error"} for r in records)
    assert len({r["id"] for r in records}) == 6
    assert all(isinstance(r["id"], str) and r["id"] != r["custom_id"] for r in records)
    by_id = _by_id(records)
    for i in range(4):
        record = by_id[f"req-{i}"]
        response = record["response"]
        assert record["error"] is None
        assert response["status_code"] == 200
        assert response["request_id"] == response["body"]["id"]
        body = response["body"]
        expected = completion_text(f"req-{i} tell me a story")
        if i % 2 == 0:
            assert body["object"] == "chat.completion"
            assert body["choices"][0]["message"]["content"] == expected
        else:
            assert body["object"] == "text_completion"
            assert body["choices"][0]["text"] == expected
    rejected = by_id["req-4"]
    assert rejected["response"]["status_code"] == 400
    assert rejected["response"]["body"]["error"]["type"] == "BadRequestError"
    lost = by_id["req-5"]  # no reply at all: no response, an error
    assert lost["response"] is None
    assert lost["error"]["code"] == "server_disconnected"
    assert summary.exit_code == 1


async def test_openai_batch_line_keeps_the_reply_when_retries_run_out(
    server: FakeServer, fast_retry: FastRetry, tmp_path: Path
) -> None:
    """A row whose every attempt got HTTP 503 did get a reply: like a 400, its batch line carries
    ``response.status_code`` and the error body (``format_batch_line``: "A reply from the server
    (success or HTTP error) goes under ``response``"; ``Result.body``: "the error body on failure,
    when there was one")."""
    server.script("req-0", [503] * 10)
    inp = write_jsonl(tmp_path / "in.jsonl", [_batch_line("req-0")])
    out = tmp_path / "out.jsonl"

    await _run_with(server, fast_retry, inp, out)

    record = read_jsonl(out)[0]
    assert record["error"] is not None
    assert record["response"] is not None, "the 503 reply was dropped from the batch line"
    assert record["response"]["status_code"] == 503
    assert record["response"]["body"]["error"]["type"] == "ServiceUnavailableError"


# -- cancellation -------------------------------------------------------------------------------


async def test_cancelling_arun_propagates(server: FakeServer, tmp_path: Path) -> None:
    """A caller's timeout or cancellation must reach the caller: ``asyncio.timeout`` around
    ``arun`` raises TimeoutError (today run_job swallows the CancelledError and returns an
    "interrupted" summary, so the timeout silently looks like a normal return). What finished
    before is on disk as whole lines either way."""
    server.latency = 0.05
    inp = write_jsonl(tmp_path / "in.jsonl", prompt_rows(200))
    out = tmp_path / "out.jsonl"
    returned: vbatch.RunSummary | None = None
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.3):
            returned = await vbatch.arun(
                str(inp), str(out), base_url=server.base_url, model="smol", concurrency=2
            )
    assert returned is None
    records = read_jsonl(out)
    assert 0 < len(records) < 200
