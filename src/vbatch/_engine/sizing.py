"""What a job needs of a model: its prompts' lengths in the model's tokens.

``--max-model-len`` comes from the data: the longest prompt in tokens plus the largest
``max_tokens`` any row asks for, capped by the model's ``max_position_embeddings``. Prompts are
counted with the model's own tokenizer (``tokenizer.json``, of a local folder or from the Hugging
Face Hub), in batches the Rust tokenizer spreads over the cores, skipping those whose UTF-8
length cannot beat the longest found so far (a byte-level BPE token is at least one byte). Chat
rows add a bound for the chat template's tokens. An embeddings row is its ``input`` (the longest
of a list: each item is its own sequence) and asks for no output tokens.

The launch plan also wants what a typical row holds (how many sequences fit a KV cache, how
much of the prompt is its own rather than a prefix shared with other rows, how many completions
``n`` it asks for), so the first ``SAMPLE_ROWS`` rows are all counted and their means kept.
The launcher plans from those first rows alone (``limit``) and starts vLLM, then measures the
rest while vLLM starts: English text has several bytes a token, so the byte bound rarely skips
a long prompt, and counting every prompt of a big job takes seconds that vLLM's start-up can
hide. Measured: docs/benchmarks.md §1 ("Sizing a self-launched server") and §4.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .._models import CHAT, EMBEDDINGS, POOLING, RERANK, RESPONSES, SCORE, PreparedRequest

__all__ = ["InputMeasure", "measure_requests", "shared_prefixes"]

# Chat template tokens around the messages: role markers, a default system prompt (SmolLM2's
# is ~20 tokens), the generation prompt. A bound, not a count.
CHAT_OVERHEAD_TOKENS = 64
CHAT_TOKENS_PER_MESSAGE = 8
# Prompts counted per call to the tokenizer (it spreads each batch over the cores).
TOKENIZE_BATCH = 4096
# Rows counted in full for the means (prompt tokens, max_tokens): a few tokenizer batches.
SAMPLE_ROWS = 2048


@dataclass
class InputMeasure:
    rows: int = 0
    complete: bool = True  # False: measured only the first ``rows`` (there are more)
    max_prompt_tokens: int = 0
    max_needed_tokens: int = 0  # prompt + max_tokens, over rows (0: some row has no max_tokens)
    unbounded_rows: int = 0  # rows with no max_tokens at all
    # The first SAMPLE_ROWS rows, all counted: their prompt tokens and max_tokens, summed.
    sampled_rows: int = 0
    sampled_prompt_tokens: int = 0
    sampled_output_tokens: int = 0
    sampled_unbounded: int = 0  # of them, rows with no max_tokens
    sampled_completions: int = 0  # their ``n`` summed (completions asked for)
    sampled_shared_tokens: int = 0  # prompt tokens that begin another sampled row's too

    @property
    def mean_row(self) -> tuple[float, float] | None:
        """(prompt tokens, max_tokens) of the sample's average row; None without a sample, or
        where a sampled row may generate to the end of the context."""
        if not self.sampled_rows or self.sampled_unbounded:
            return None
        n = self.sampled_rows
        return self.sampled_prompt_tokens / n, self.sampled_output_tokens / n

    @property
    def mean_completions(self) -> float:
        """The sample's mean ``n``: sequences a row becomes in the engine."""
        return self.sampled_completions / self.sampled_rows if self.sampled_rows else 1.0

    @property
    def mean_unique_prompt(self) -> float | None:
        """Prompt tokens of the sample's average row that no other sampled row begins with:
        what prefill computes once prefix caching has the shared parts."""
        if not self.sampled_rows:
            return None
        return (self.sampled_prompt_tokens - self.sampled_shared_tokens) / self.sampled_rows


def shared_prefixes(texts: list[str]) -> list[int]:
    """For each text, the length of the longest prefix it shares with another of ``texts``.

    Sorted, a text's longest shared prefix is with a neighbour; each is found by a binary
    search on slices compared in C, as a character loop in Python would take seconds for
    2,048 prompts of 20 KB."""
    order = sorted(range(len(texts)), key=texts.__getitem__)
    shared = [0] * len(texts)
    for a, b in itertools.pairwise(order):
        x, y = texts[a], texts[b]
        lo, hi = 0, min(len(x), len(y))
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if x[:mid] == y[:mid]:
                lo = mid
            else:
                hi = mid - 1
        shared[a] = max(shared[a], lo)
        shared[b] = max(shared[b], lo)
    return shared


def _load_tokenizer(model_dir: Path | None) -> Callable[[list[str]], list[int]] | None:
    """Token counts of many texts at once (the Rust tokenizer spreads a batch over the cores,
    which one text at a time does not; measured: docs/benchmarks.md §1, "Sizing a
    self-launched server")."""
    if model_dir is None or not (model_dir / "tokenizer.json").exists():
        return None
    try:
        from tokenizers import Tokenizer
    except ImportError:
        return None
    tok = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    # encode_batch_fast skips the character offsets, which counting does not need.
    encode = getattr(tok, "encode_batch_fast", tok.encode_batch)
    return lambda texts: [len(e.ids) for e in encode(texts, add_special_tokens=True)]


def _longest_input(value: str | list[Any]) -> str | list[int]:
    """The sequence of an embeddings ``input`` that needs the most context: the input itself,
    or of a list of texts (or of token-id lists) the longest by UTF-8 bytes (or ids)."""
    if isinstance(value, str) or not value or type(value[0]) is int:
        return value
    longest: str | list[int] = max(
        value, key=lambda v: len(v.encode("utf-8")) if isinstance(v, str) else len(v)
    )
    return longest


def _strings(value: Any) -> list[str]:
    """The texts in a score or response input: a string, a list of them, or content parts."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        text = value.get("text", value.get("content"))
        return _strings(text) if text is not None else []
    if isinstance(value, list):
        return [s for item in value for s in _strings(item)]
    return []


def _longest(value: Any) -> str:
    return max(_strings(value), key=lambda s: len(s.encode("utf-8")), default="")


def _text_of(body: dict[str, Any], endpoint: str) -> tuple[str | list[int], int]:
    """(text to count, fixed overhead tokens) of one request body."""
    if endpoint == EMBEDDINGS:
        return _longest_input(body["input"]), 0
    if endpoint in (SCORE, RERANK):
        # Each pair is its own sequence: the longest query with the longest document.
        query = next((body[k] for k in ("queries", "query", "data_1", "text_1") if k in body), "")
        docs = next((body[k] for k in ("documents", "items", "data_2", "text_2") if k in body), "")
        return _longest(query) + "\n" + _longest(docs), CHAT_TOKENS_PER_MESSAGE
    if endpoint == RESPONSES:
        texts = _strings(body.get("input")) + _strings(body.get("instructions"))
        return "\n".join(texts), CHAT_OVERHEAD_TOKENS + CHAT_TOKENS_PER_MESSAGE * len(texts)
    if endpoint != CHAT:
        return body["prompt"], 0
    messages = body["messages"]
    parts = []
    for m in messages:
        content = m.get("content")
        if isinstance(content, list):  # content parts: count the text ones
            content = " ".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
        parts.append(str(content or ""))
    overhead = CHAT_OVERHEAD_TOKENS + CHAT_TOKENS_PER_MESSAGE * len(messages)
    return "\n".join(parts), overhead


def measure_requests(
    requests: Iterable[PreparedRequest],
    model_dir: Path | None,
    default_max_tokens: int | None,
    limit: int | None = None,
    fits: int | None = None,
    keep_sample: bool = True,
) -> InputMeasure:
    """One streaming pass: the longest prompt in tokens and the most any row needs in total
    (over the first ``limit`` rows only, when given). With ``fits`` (a planned context), rows
    whose UTF-8 length plus ``max_tokens`` fits it are not counted: they cannot need more.
    ``keep_sample`` False: no sample kept (the pass over the rows after the first)."""
    count = _load_tokenizer(model_dir)
    m = InputMeasure()
    # Rows to count: (text, overhead, max_tokens, n, in the sample, max_tokens a re-send may
    # reach).
    batch: list[tuple[str, int, int | None, int, bool, int]] = []
    # The sample's prompts with their token counts, for the prefixes they share.
    sample: list[tuple[str, int]] = []

    def add(
        tokens: int, wanted: int | None, n: int, sampled: bool, text: str | None = None,
        reach: int = 0,
    ) -> None:  # fmt: skip
        m.max_prompt_tokens = max(m.max_prompt_tokens, tokens)
        if isinstance(wanted, int):
            m.max_needed_tokens = max(m.max_needed_tokens, tokens + max(wanted, reach))
        else:
            m.unbounded_rows += 1
        if sampled:
            m.sampled_rows += 1
            m.sampled_prompt_tokens += tokens
            m.sampled_output_tokens += wanted or 0
            m.sampled_unbounded += wanted is None
            m.sampled_completions += n
            if text:
                sample.append((text, tokens))

    def count_batch() -> None:
        assert count is not None
        counts = count([row[0] for row in batch])
        for tokens, (text, overhead, wanted, n, sampled, reach) in zip(counts, batch,
                                                                       strict=True):  # fmt: skip
            add(tokens + overhead, wanted, n, sampled, text, reach)
        batch.clear()

    for request in requests:
        if limit is not None and m.rows >= limit:
            m.complete = False
            break
        body = request.body
        m.rows += 1
        text, overhead = _text_of(body, request.endpoint)
        wanted = (body.get("max_tokens") or body.get("max_completion_tokens")
                  or body.get("max_output_tokens") or default_max_tokens)  # fmt: skip
        if request.endpoint in POOLING:
            wanted = 0  # an embedding or a score generates nothing: its need is its input
        elif not isinstance(wanted, int):
            wanted = None
        sampled = keep_sample and m.rows <= SAMPLE_ROWS
        n = body.get("n")
        n = n if isinstance(n, int) and n > 1 else 1
        # A reply cut off may go again with up to this many (``_schema.resend_size``): the
        # context must hold it; the working set is sized for the first send.
        reach = (request.schema.resend_up_to or 0) if request.schema is not None else 0
        if isinstance(text, list):
            add(len(text) + overhead, wanted, n, sampled, reach=reach)
            continue
        bound = len(text.encode("utf-8")) + overhead + 2
        if fits is not None and wanted is not None and bound + max(wanted, reach) <= fits:
            continue  # it cannot need more context than ``fits``: no need to count it
        # Cheap skip: even at one token per byte this row can't beat what we have.
        if (
            not sampled
            and bound <= m.max_prompt_tokens
            and (wanted is None or bound + max(wanted, reach) <= m.max_needed_tokens)
        ):
            if wanted is None:
                m.unbounded_rows += 1
            continue
        if count is None:
            add(bound, wanted, n, sampled, text, reach)
            continue
        batch.append((text, overhead, wanted, n, sampled, reach))
        if len(batch) >= TOKENIZE_BATCH:
            count_batch()
    if batch:
        count_batch()
    if sample:
        shared = shared_prefixes([text for text, _ in sample])
        m.sampled_shared_tokens = sum(
            tokens * chars // len(text)
            for (text, tokens), chars in zip(sample, shared, strict=True)
        )
    return m
