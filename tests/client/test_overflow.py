"""Recognising vLLM's context-length 400s (wordings of several vLLM versions)."""

from __future__ import annotations

from vbatch._client.overflow import parse_overflow


def test_max_tokens_too_large_new_wording() -> None:
    msg = (
        "'max_tokens' or 'max_completion_tokens' is too large: 4000. This model's maximum "
        "context length is 2048 tokens and your request has 100 input tokens (4000 > 2048 - 100)."
    )
    overflow = parse_overflow(msg)
    assert overflow is not None
    assert (overflow.max_model_len, overflow.prompt_tokens) == (2048, 100)
    assert overflow.fitting_max_tokens() == 1948


def test_old_wording_with_messages_count() -> None:
    msg = (
        "This model's maximum context length is 2048 tokens. However, you requested 4100 tokens "
        "(100 in the messages, 4000 in the completion). Please reduce the length."
    )
    overflow = parse_overflow(msg)
    assert overflow is not None
    assert overflow.fitting_max_tokens() == 1948


def test_prompt_alone_too_long_cannot_be_clamped() -> None:
    msg = (
        "This model's maximum context length is 2048 tokens. However, your request has 3000 "
        "input tokens. Please reduce the length of the input messages."
    )
    overflow = parse_overflow(msg)
    assert overflow is not None
    assert overflow.fitting_max_tokens() is None


def test_other_400s_are_not_overflow() -> None:
    assert parse_overflow("temperature must be non-negative, got -1.0.") is None
    assert parse_overflow("The model `nope` does not exist.") is None


def test_vllm_032_prompt_alone_too_long() -> None:
    msg = (
        "This model's maximum context length is 2048 tokens. However, your prompt contains at "
        "least 2049 input tokens, which exceeds this limit even without any output tokens. "
        "Please reduce the length of the input prompt. (parameter=input_tokens, value=2049)"
    )
    overflow = parse_overflow(msg)
    assert overflow is not None
    assert (overflow.max_model_len, overflow.prompt_tokens) == (2048, 2049)
    assert overflow.fitting_max_tokens() is None


def test_vllm_032_max_tokens_above_max_model_len() -> None:
    msg = (
        "max_tokens=4000 cannot be greater than max_model_len=2048. Please request fewer "
        "output tokens. (parameter=max_tokens, value=4000)"
    )
    overflow = parse_overflow(msg)
    assert overflow is not None
    assert (overflow.max_model_len, overflow.prompt_tokens) == (2048, None)
