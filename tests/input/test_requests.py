"""Request builder: shapes, overrides, templates, and the errors that name a line."""

from __future__ import annotations

import pytest

from vbatch import FieldMap, InputError, RequestBuilder, RequestDefaults
from vbatch._input.sources import RawRow
from vbatch._models import CHAT, COMPLETIONS

DEFAULTS = RequestDefaults(model="smol", max_tokens=16, temperature=0.7)


def build(data: dict, line: int = 1, **kw: object) -> object:
    builder = RequestBuilder("in.jsonl", kw.pop("defaults", DEFAULTS), **kw)  # type: ignore[arg-type]
    return builder.build(RawRow(line - 1, line, data))


def test_prompt_row_goes_to_completions_with_defaults() -> None:
    req = build({"id": "a", "prompt": "hi", "category": "meta"})
    assert req.endpoint == COMPLETIONS
    assert req.id == "a"
    assert req.body == {"model": "smol", "max_tokens": 16, "temperature": 0.7, "prompt": "hi"}


def test_row_fields_override_defaults_and_metadata_is_not_sent() -> None:
    req = build({"id": 1, "prompt": "hi", "max_tokens": 3, "seed": 5, "label": "x"})
    assert req.body["max_tokens"] == 3
    assert req.body["seed"] == 5
    assert "label" not in req.body
    assert req.id == 1


def test_messages_row_goes_to_chat_with_system() -> None:
    defaults = RequestDefaults(model="smol", system="be brief")
    req = build({"messages": [{"role": "user", "content": "hi"}]}, line=7, defaults=defaults)
    assert req.endpoint == CHAT
    assert req.id == 7  # no id: the line number
    assert req.body["messages"][0] == {"role": "system", "content": "be brief"}


def test_chat_endpoint_wraps_prompt() -> None:
    req = build({"prompt": "hi"}, endpoint="chat")
    assert req.endpoint == CHAT
    assert req.body["messages"] == [{"role": "user", "content": "hi"}]


def test_template_builds_prompt_from_columns() -> None:
    req = build({"text": "chat"}, fields=FieldMap(template="Translate: {text}"))
    assert req.body["prompt"] == "Translate: chat"


def test_template_missing_column_names_the_line() -> None:
    with pytest.raises(InputError, match=r"in.jsonl:4: .*'text'"):
        build({"other": 1}, line=4, fields=FieldMap(template="{text}"))


def test_openai_batch_line() -> None:
    line = {
        "custom_id": "req-1",
        "method": "POST",
        "url": "/v1/chat/completions",
        "body": {"model": "m2", "messages": [{"role": "user", "content": "hi"}]},
    }
    builder = RequestBuilder("in.jsonl", DEFAULTS)
    req = builder.build(RawRow(0, 1, line))
    assert builder.batch_lines and req.endpoint == CHAT and req.id == "req-1"
    assert req.body["model"] == "m2"  # the line's body wins over --model
    assert req.body["max_tokens"] == 16  # defaults fill in what it lacks


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"id": "a"}, "neither 'prompt' nor 'messages'"),
        ({"id": "a", "prompt": ""}, "'prompt' is empty"),
        ({"id": "a", "prompt": 5}, "'prompt' must be"),
        ({"id": "a", "messages": []}, "'messages' must be a non-empty list"),
        ({"id": "a", "messages": [{"content": "x"}]}, "messages\\[0\\]"),
        ({"id": [1], "prompt": "x"}, "'id' must be"),
        (
            {"custom_id": "x", "method": "GET", "url": "/v1/completions", "body": {}},
            "'method' must be",
        ),
        ({"custom_id": "x", "url": "/v1/moderations", "body": {}}, "'url' must be one of"),
        ({"custom_id": "x", "url": "/v1/rerank", "body": {"query": "q"}}, "needs 'query' and"),
        ({"custom_id": "x", "url": "/v1/completions", "body": {}}, "needs 'prompt'"),
    ],
)
def test_bad_rows_name_the_line(data: dict, message: str) -> None:
    with pytest.raises(InputError, match=rf"in.jsonl:3: .*{message}"):
        build(data, line=3)


def test_mixing_batch_lines_and_rows_is_an_error() -> None:
    builder = RequestBuilder("in.jsonl", DEFAULTS)
    builder.build(RawRow(0, 1, {"id": "a", "prompt": "x"}))
    line = {"custom_id": "b", "url": "/v1/completions", "body": {"prompt": "y"}}
    with pytest.raises(InputError, match=r"in\.jsonl:2: this row is an OpenAI Batch line"):
        builder.build(RawRow(1, 2, line))


def test_missing_model_is_an_error_only_when_required() -> None:
    with pytest.raises(InputError, match="no model"):
        build({"prompt": "x"}, defaults=RequestDefaults())
    req = build({"prompt": "x"}, defaults=RequestDefaults(), require_model=False)
    assert "model" not in req.body
