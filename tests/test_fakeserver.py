"""The fake server itself: the other tests trust its shapes, counters and knobs."""

from __future__ import annotations

import json
from typing import Any

import aiohttp
from fakeserver import FakeServer, completion_text, error_body, overflow_message

from vbatch._overflow import parse_overflow


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
    assert [c["text"] for c in reply["choices"]] == [
        completion_text("k1 a b", i, 2) for i in (0, 1)
    ]
    assert reply["usage"] == {
        "prompt_tokens": 3,
        "completion_tokens": 6,
        "total_tokens": 9,
        "prompt_tokens_details": None,
    }

    status, reply = await _post(
        server.base_url + "/chat/completions", {"messages": [{"role": "user", "content": "k2 hi"}]}
    )
    assert status == 200 and reply["object"] == "chat.completion"
    message = reply["choices"][0]["message"]
    assert message["content"] == "echo: k2 hi" and message["tool_calls"] == []

    status, tok = await _post(server.root_url + "/tokenize", {"prompt": "one two  three"})
    assert tok == {"count": 3, "max_model_len": 2048, "tokens": [0, 1, 2]}

    status, reply = await _post(server.base_url + "/completions", {"model": "nope", "prompt": "x"})
    assert status == 404
    assert reply == {
        "error": {
            "message": "The model `nope` does not exist.",
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


async def test_overflow_messages_are_what_vbatch_parses(server: FakeServer) -> None:
    status, reply = await _post(
        server.base_url + "/completions", {"prompt": "a b c", "max_tokens": 2046}
    )
    assert status == 400
    message = reply["error"]["message"]
    assert message == overflow_message(3, 2046, 2048)
    assert message == (
        "'max_tokens' or 'max_completion_tokens' is too large: 2046. This model's maximum "
        "context length is 2048 tokens and your request has 3 input tokens (2046 > 2048 - 3)."
    )
    assert reply == error_body(400, message)
    parsed = parse_overflow(message)
    assert parsed is not None and parsed.fitting_max_tokens() == 2045

    status, reply = await _post(server.base_url + "/completions", {"prompt": "w " * 3000})
    assert status == 400
    assert reply["error"]["message"] == (
        "This model's maximum context length is 2048 tokens. However, your request has 3000 "
        "input tokens. Please reduce the length of the input messages."
    )
    parsed = parse_overflow(reply["error"]["message"])
    assert parsed is not None and parsed.fitting_max_tokens() is None


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
