"""Request builder: turn one input row plus the job's defaults into the body vLLM receives.

Three row shapes, detected per file from the first row:
  * ``{"id", "prompt", ...}``            -> POST /completions
  * ``{"id", "messages": [...], ...}``   -> POST /chat/completions
  * ``{"custom_id", "method", "url", "body"}`` (an OpenAI Batch line) -> the line's url
Keys of a prompt/messages row that are request-body fields override the job's defaults for that
row; other keys (metadata columns) are not sent. With ``--endpoint embeddings`` a row's
``input`` (else its prompt column or template) is embedded: POST /embeddings, whose body takes
the job's model and extra body but none of its sampling defaults. Whether a row's id, payload
and model are acceptable is ``checks.RowChecks``'s to say. A request that asks for structured
output (the job's schema, a row's ``schema`` column or its own ``response_format``) carries the
compiled ``Schema`` its reply is checked against (``_schema.py``).
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from typing import Any

import orjson

from .._batchline import INPUT_KEYS, PAYLOAD_KEYS, parse_input_line
from .._config import EndpointMode
from .._errors import InputError
from .._models import (
    CHAT,
    COMPLETIONS,
    EMBEDDINGS,
    RERANK,
    RESPONSES,
    SCORE,
    PreparedRequest,
    RequestDefaults,
)
from .._schema import Schema, SchemaInvalid
from .checks import RowChecks, Setting
from .sources import RawRow

__all__ = ["BODY_FIELDS", "EMBEDDING_FIELDS", "FieldMap", "RequestBuilder"]

# Request-body fields of vLLM's /v1/completions and /v1/chat/completions that a row may set.
BODY_FIELDS = frozenset(
    {
        "model", "max_tokens", "max_completion_tokens", "min_tokens", "temperature", "top_p",
        "top_k", "min_p", "n", "best_of", "seed", "stop", "stop_token_ids",
        "include_stop_str_in_output",
        "ignore_eos", "presence_penalty", "frequency_penalty", "repetition_penalty",
        "length_penalty", "logprobs", "top_logprobs", "prompt_logprobs", "logit_bias",
        "echo", "suffix", "response_format", "structured_outputs", "guided_json",
        "guided_regex", "guided_choice", "guided_grammar", "tools", "tool_choice",
        "parallel_tool_calls", "chat_template", "chat_template_kwargs", "add_generation_prompt",
        "continue_final_message", "add_special_tokens", "skip_special_tokens",
        "spaces_between_special_tokens", "truncate_prompt_tokens", "allowed_token_ids",
        "bad_words", "priority", "user", "request_id", "return_tokens_as_token_ids",
        "vllm_xargs", "kv_transfer_params", "reasoning_effort", "cache_salt", "lora_request",
        "documents", "mm_processor_kwargs",
    }
)  # fmt: skip


# Request-body fields of vLLM's /v1/embeddings that a plain row may set.
EMBEDDING_FIELDS = frozenset(
    {
        "model", "dimensions", "encoding_format", "user", "truncate_prompt_tokens",
        "add_special_tokens", "priority", "request_id", "use_activation", "embed_dtype",
    }
)  # fmt: skip

# A job's --endpoint, where it names one: an OpenAI Batch line must then name it too.
_MODE_ENDPOINTS = {"completions": COMPLETIONS, "chat": CHAT, "embeddings": EMBEDDINGS,
                   "score": SCORE, "rerank": RERANK, "responses": RESPONSES}  # fmt: skip
# Endpoints whose rows must be OpenAI Batch lines (no prompt/messages row builds their body).
_BATCH_ONLY = frozenset({"score", "rerank", "responses"})
# Rows' own schemas compiled at once: most jobs have one, a few per task; past this, it starts
# again (a schema per row is compiled per row).
_SCHEMA_CACHE = 256


@dataclass(frozen=True)
class FieldMap:
    """Where a row keeps its id, prompt and messages, and how to build a prompt from columns."""

    id_field: str | None = None  # None: "id" (or "custom_id" for OpenAI Batch lines)
    prompt_field: str = "prompt"
    messages_field: str = "messages"
    template: str | None = None  # str.format template over the row's columns
    schema_field: str = "schema"  # a row's own JSON schema (an object, or its JSON text)
    lora_field: str | None = None  # a column naming the row's LoRA adapter (its model)


class RequestBuilder:
    """Builds ``PreparedRequest``s for one input file; raises ``InputError`` naming the line."""

    # Kept by the row checks; read and set here as before.
    require_model = Setting[bool]()
    model_hint = Setting[str]()
    served = Setting[Collection[str] | None]()

    def __init__(
        self,
        path: str,
        defaults: RequestDefaults,
        fields: FieldMap | None = None,
        endpoint: EndpointMode = "auto",
        require_model: bool = True,
        model_hint: str = "",
        served: Collection[str] | None = None,
        force_model: bool = False,
        batch_only: bool = False,
    ) -> None:
        """``served``: the models the server serves, when known (a row naming another is an
        error here, not a failed request later; when not, ``check_served`` does it once they
        are). ``force_model``: the defaults' model replaces every row's own, an OpenAI Batch
        line's body model included. ``batch_only``: every row is an OpenAI Batch line (the
        Batch API's input), and messages speak of its parts, not of flags."""
        self.path = path
        self.defaults = defaults
        self.fields = fields or FieldMap()
        self.endpoint = endpoint
        self._base = defaults.body_fields()
        # Sampling defaults mean nothing to an embedding model: only the model and extra body.
        self._embed_base = {k: v for k, v in self._base.items() if k == "model"}
        self._embed_base.update(defaults.extra_body)
        self.checks = RowChecks(path, require_model, model_hint, served, api_terms=batch_only)
        self.force_model = force_model and defaults.model is not None
        self.batch_only = batch_only
        # Decided by the first row, unless every row must be one.
        self.batch_lines: bool | None = True if batch_only else None
        # The job's schema, and the rows' own by their JSON (compiled once each).
        self._schema = defaults.compiled_schema()
        self._schemas: dict[bytes, Schema | None] = {}

    def check_served(self, served: Collection[str]) -> None:
        """The served-model check of the rows built so far without ``served``: raises the
        ``InputError`` building them with it would have raised (see ``RowChecks``)."""
        self.checks.check_served(served)

    def build(self, row: RawRow) -> PreparedRequest:
        data = row.data
        is_batch = self.batch_only or data.keys() >= INPUT_KEYS
        if self.batch_lines is None:
            self.batch_lines = is_batch
        elif is_batch != self.batch_lines:
            shape = "an OpenAI Batch line" if is_batch else "a prompt/messages row"
            first = "OpenAI Batch lines" if self.batch_lines else "prompt/messages rows"
            raise self._error(row, f"this row is {shape} but the file started with {first}")
        if is_batch:
            return self._from_batch_line(row)
        return self._from_row(row)

    def _error(self, row: RawRow, message: str) -> InputError:
        return self.checks.error(row, message)

    def _from_batch_line(self, row: RawRow) -> PreparedRequest:
        try:
            line = parse_input_line(row.data)
        except ValueError as exc:
            raise self._error(row, str(exc)) from None
        wanted = _MODE_ENDPOINTS.get(self.endpoint)
        if wanted is not None and line.endpoint != wanted:
            endpoint = (f"the batch's endpoint is /v1{wanted}" if self.checks.api_terms
                        else f"this job's endpoint is {self.endpoint} (/v1{wanted})")  # fmt: skip
            raise self._error(row, f"'url' is {row.data.get('url')!r} but {endpoint}")
        key = PAYLOAD_KEYS.get(line.endpoint)
        if key is not None:
            self.checks.payload(row, key, line.body[key], where="body.")
        # Sampling defaults are the completions APIs' fields: the other endpoints get the model
        # and the extra body, and a response the max_tokens default as its max_output_tokens.
        base = self._base if line.endpoint in (CHAT, COMPLETIONS) else dict(self._embed_base)
        if line.endpoint == RESPONSES and self.defaults.max_tokens is not None:
            base["max_output_tokens"] = self.defaults.max_tokens
        merged = {**base, **line.body}
        if self.force_model:
            merged["model"] = self.defaults.model
        self.checks.model(row, merged)
        schema = self._schema_for(row, merged) if line.endpoint in (CHAT, COMPLETIONS) else None
        return PreparedRequest(row.index, line.custom_id, line.endpoint, merged, schema=schema)

    def _from_row(self, row: RawRow) -> PreparedRequest:
        if self.endpoint in _BATCH_ONLY:
            raise self._error(row, f"rows for /v1/{self.endpoint} must be OpenAI Batch lines "
                                   "(custom_id, method, url, body)")  # fmt: skip
        data, f = row.data, self.fields
        row_id = self.checks.row_id(row, f.id_field or "id")
        embed = self.endpoint == "embeddings"
        body = dict(self._embed_base if embed else self._base)
        fields = EMBEDDING_FIELDS if embed else BODY_FIELDS
        for key, value in data.items():
            if key in fields:
                body[key] = value
        own = data.get(f.schema_field)
        if own is not None and not embed:
            body["response_format"] = self._row_schema(row, own)
        if self.force_model:
            body["model"] = self.defaults.model
        if f.lora_field is not None:
            adapter = data.get(f.lora_field)
            if adapter not in (None, ""):  # empty: the model itself
                body["model"] = adapter
        if f.template is not None:
            try:
                prompt: Any = f.template.format_map(data)
            except KeyError as exc:
                raise self._error(row, f"--template names column {exc} the row lacks") from None
            except (ValueError, IndexError) as exc:
                raise self._error(row, f"--template cannot be applied: {exc}") from None
            messages = None
        else:
            prompt = data.get(f.prompt_field)
            messages = data.get(f.messages_field)
        if embed:
            text = prompt if f.template is not None else data.get("input", prompt)
            if text is None:
                raise self._error(row, f"row has neither 'input' nor {f.prompt_field!r} to embed")
            self.checks.payload(row, "input", text)
            body["input"] = text
            self.checks.model(row, body)
            return PreparedRequest(row.index, row_id, EMBEDDINGS, body)
        if messages is not None and self.endpoint != "completions":
            self.checks.payload(row, "messages", messages)
            endpoint = CHAT
            body["messages"] = self._with_system(messages)
        elif prompt is not None:
            self.checks.payload(row, "prompt", prompt)
            if self.endpoint == "chat":
                if not isinstance(prompt, str):
                    raise self._error(row, "a prompt sent as a chat message must be a string")
                endpoint = CHAT
                body["messages"] = self._with_system([{"role": "user", "content": prompt}])
            else:
                endpoint = COMPLETIONS
                body["prompt"] = prompt
        else:
            what = f"{f.prompt_field!r}"
            if self.endpoint != "completions":
                what += f" nor {f.messages_field!r}"
            hint = "; to embed its 'input', pass --endpoint embeddings" if "input" in data else ""
            raise self._error(
                row, f"row has neither {what} (nor an OpenAI Batch 'custom_id' and 'body'){hint}"
            )
        self.checks.model(row, body)
        return PreparedRequest(row.index, row_id, endpoint, body,
                               schema=self._schema_for(row, body))  # fmt: skip

    def _row_schema(self, row: RawRow, given: Any) -> dict[str, Any]:
        """A row's ``schema`` column (a JSON schema, or its JSON text) as a response_format;
        ``_schema_for`` compiles it."""
        column = f"{self.fields.schema_field!r}"
        if isinstance(given, str):
            try:
                given = orjson.loads(given)
            except orjson.JSONDecodeError as exc:
                raise self._error(row, f"{column} is not JSON: {exc}") from None
        if not isinstance(given, dict):
            raise self._error(row, f"{column} must be a JSON schema (an object)")
        name = str(given.get("title") or "output")
        return {"type": "json_schema", "json_schema": {"name": name, "schema": given}}

    def _schema_for(self, row: RawRow, body: dict[str, Any]) -> Schema | None:
        """What the request's reply must be: the job's schema, or the one the body names."""
        fmt, outputs = body.get("response_format"), body.get("structured_outputs")
        if fmt is None and outputs is None:
            return None
        if self._schema is not None and fmt is self._base.get("response_format"):
            return self._schema
        try:
            key = orjson.dumps([fmt, outputs], option=orjson.OPT_SORT_KEYS)
        except TypeError:
            key = None
        if key is not None and key in self._schemas:
            return self._schemas[key]
        try:
            schema = Schema.of(body, self.defaults.resend_cut_off)
        except SchemaInvalid as exc:
            where = (
                "'body.response_format'"
                if self.batch_lines
                else f"the row's schema ({self.fields.schema_field!r} or response_format)"
            )
            raise self._error(row, f"{where}: {exc}") from None
        if key is not None:
            if len(self._schemas) >= _SCHEMA_CACHE:
                self._schemas.clear()
            self._schemas[key] = schema
        return schema

    def _with_system(self, messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
        system = self.defaults.system
        if system is None or (messages and messages[0].get("role") == "system"):
            return messages
        return [{"role": "system", "content": system}, *messages]
