"""``classify``: what one reply means, decided without sending anything."""

from __future__ import annotations

import orjson

from vbatch import Response, TransportError
from vbatch._client.classify import classify
from vbatch._client.retry import RETRYABLE_STATUSES

SENT = {"model": "m", "prompt": "p", "max_tokens": 100}


def outcome(reply: Response | TransportError, max_model_len: int | None = None):  # type: ignore[no-untyped-def]
    return classify(reply, SENT, max_model_len, RETRYABLE_STATUSES)


def completion(prompt_tokens: int) -> bytes:
    usage = {"prompt_tokens": prompt_tokens, "completion_tokens": 3}
    return orjson.dumps({"id": "c1", "choices": [{"index": 0, "text": "t"}], "usage": usage})


def test_a_completion_is_a_success_and_a_server_shortened_one_says_to_what() -> None:
    ok = outcome(Response(200, completion(10)), max_model_len=200)
    assert ok.error is None and ok.status == 200 and ok.body is not None
    assert ok.shortened_to is None  # 10 + 100 fits in 200
    cut = outcome(Response(200, completion(150)), max_model_len=200)
    assert cut.error is None and cut.shortened_to == 50
    assert outcome(Response(200, completion(150))).shortened_to is None  # context unknown


def test_no_reply_and_an_unreadable_200_are_retried() -> None:
    lost = outcome(TransportError("server_disconnected", "gone"))
    assert lost.retryable and lost.status is None and lost.error is not None
    assert lost.error.code == "server_disconnected" and lost.error.message == "gone"
    garbled = outcome(Response(200, b"<html>"))
    assert garbled.retryable and garbled.error is not None
    assert garbled.error.code == "malformed_response" and garbled.error.status == 200


def test_http_errors_keep_the_servers_type_and_retry_after() -> None:
    body = orjson.dumps({"error": {"message": "busy", "type": "ServiceUnavailable", "code": 503}})
    busy = outcome(Response(503, body, {"Retry-After": "7"}))
    assert busy.retryable and busy.retry_after_s == 7.0
    assert busy.error is not None and busy.error.code == "ServiceUnavailable"
    assert busy.body == orjson.loads(body)  # the server's reply is kept for the record
    missing = outcome(Response(404, b"no such route"))
    assert not missing.retryable and missing.body is None
    assert missing.error is not None and missing.error.code == "http_404"


def test_an_overflow_is_recognised_and_not_retried() -> None:
    message = "max_tokens=4000 cannot be greater than max_model_len=2048."
    reply = Response(400, orjson.dumps({"error": {"message": message, "type": "BadRequest"}}))
    over = outcome(reply)
    assert not over.retryable and over.overflow is not None
    assert over.overflow.max_model_len == 2048
    assert over.error is not None and over.error.code == "context_length_exceeded"
