"""Typed replies: what a row's reply must be (JSON, valid against a schema) and what it was.

A request asks vLLM for structured output through ``response_format`` (``json_schema`` or
``json_object``) or ``structured_outputs.json``; ``Schema.of(body)`` reads which. ``check``
reads a reply's texts against it: each choice's parsed value, or why there is none, the raw
text kept either way:

  * ``cut_off``         -- max_tokens ended the reply before its JSON did (the one way guided
                           decoding still yields invalid JSON); ``resend_size`` says whether to
                           send it again with a larger max_tokens;
  * ``invalid_json``    -- not JSON (a server without structured outputs, a ``json_object``);
  * ``schema_mismatch`` -- JSON, not valid against the schema (a keyword vLLM's grammar does
                           not enforce), the first violation named with its JSON path.

Checking is by ``jsonschema`` (every draft; the message of its best match), or by a pydantic
model's own validation where the caller gave one (``generate(..., schema=Model)``), which also
gives the model instance (``instance``). A schema of draft-07's keywords is first checked by
``fastjsonschema``'s code compiled from it (~1 µs a reply against ~18 µs: docs/benchmarks.md §1,
"Typed results"); only a reply it finds wrong goes to ``jsonschema``, whose verdict and message
stand.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from ._errors import ConfigError
from ._models import ErrorInfo

__all__ = ["SCHEMA_ERRORS", "Checked", "Schema", "SchemaInvalid", "resend_size"]

SCHEMA_ERRORS = ("cut_off", "invalid_json", "schema_mismatch")
# OpenAI's rule for a response_format's name.
_NAME = re.compile(r"[^a-zA-Z0-9_-]")
# Keywords of drafts after 7, which fastjsonschema does not know (it would pass them by).
_LATER_KEYWORDS = frozenset({
    "prefixItems", "unevaluatedProperties", "unevaluatedItems", "dependentRequired",
    "dependentSchemas", "$dynamicRef", "$dynamicAnchor", "$recursiveRef", "$recursiveAnchor",
    "minContains", "maxContains", "$anchor", "$vocabulary",
})  # fmt: skip
_EARLIER_DRAFTS = ("draft-04", "draft-06", "draft-07")


class SchemaInvalid(ValueError):
    """A schema that is not one (the request builder names the row that gave it)."""


@dataclass(frozen=True, slots=True)
class Checked:
    """One reply against its schema: the parsed value (a list, one per choice, for ``n`` > 1;
    None for a choice that failed) and the first failing choice's error."""

    parsed: Any
    error: ErrorInfo | None


class Schema:
    """A compiled expectation for replies: JSON, valid against ``json_schema`` where given
    (None: any JSON, as ``json_object`` asks)."""

    def __init__(
        self,
        json_schema: Mapping[str, Any] | None,
        *,
        name: str = "output",
        model: Any = None,
        resend_up_to: int | None = None,
    ) -> None:
        self.json_schema = dict(json_schema) if json_schema is not None else None
        self.name = _NAME.sub("_", name)[:64] or "output"
        self.model = model  # a pydantic model class, or None
        self.resend_up_to = resend_up_to
        self._validator: Any = None
        if self.json_schema is not None and model is None:
            from jsonschema import SchemaError, validators

            cls = validators.validator_for(self.json_schema)
            try:
                cls.check_schema(self.json_schema)
            except SchemaError as exc:
                raise SchemaInvalid(f"not a valid JSON schema: {exc.message}") from None
            self._validator = cls(self.json_schema)
        self._fast = None
        if self._validator is not None and self.json_schema is not None:
            self._fast = _fast_check(self.json_schema)

    @classmethod
    def given(cls, schema: Any, resend_up_to: int | None = None) -> Schema:
        """The job's schema option: a JSON schema (a mapping) or a pydantic model class."""
        if isinstance(schema, type) and hasattr(schema, "model_json_schema"):
            return cls(schema.model_json_schema(), name=schema.__name__, model=schema,
                       resend_up_to=resend_up_to)  # fmt: skip
        if not isinstance(schema, Mapping):
            raise ConfigError(f"schema must be a JSON schema (a dict) or a pydantic model "
                              f"class; got {type(schema).__name__}")  # fmt: skip
        try:
            return cls(schema, name=str(schema.get("title") or "output"),
                       resend_up_to=resend_up_to)  # fmt: skip
        except SchemaInvalid as exc:
            raise ConfigError(f"schema: {exc}") from None

    @classmethod
    def of(cls, body: Mapping[str, Any], resend_up_to: int | None = None) -> Schema | None:
        """The structured output ``body`` asks for, or None (free text); ``SchemaInvalid``
        where what it gives is not a schema."""
        fmt = body.get("response_format")
        if isinstance(fmt, Mapping):
            kind = fmt.get("type")
            if kind == "json_object":
                return cls(None, resend_up_to=resend_up_to)
            if kind == "json_schema":
                spec = fmt.get("json_schema")
                if not isinstance(spec, Mapping) or not isinstance(spec.get("schema"), Mapping):
                    raise SchemaInvalid("'response_format.json_schema.schema' must be an object")
                return cls(spec["schema"], name=str(spec.get("name") or "output"),
                           resend_up_to=resend_up_to)  # fmt: skip
        outputs = body.get("structured_outputs")
        if isinstance(outputs, Mapping) and outputs.get("json") is not None:
            given = outputs["json"]
            if isinstance(given, str):
                try:
                    given = orjson.loads(given)
                except orjson.JSONDecodeError as exc:
                    raise SchemaInvalid(f"'structured_outputs.json' is not JSON: {exc}") from None
            if not isinstance(given, Mapping):
                raise SchemaInvalid("'structured_outputs.json' must be an object")
            return cls(given, resend_up_to=resend_up_to)
        return None

    def response_format(self) -> dict[str, Any]:
        """How a request asks vLLM (and OpenAI) for replies of this schema."""
        if self.json_schema is None:
            return {"type": "json_object"}
        return {"type": "json_schema",
                "json_schema": {"name": self.name, "schema": self.json_schema}}  # fmt: skip

    def check(self, texts: list[Any], reasons: list[Any]) -> Checked:
        """A reply's choices (texts and finish reasons) against the schema."""
        values: list[Any] = []
        first: ErrorInfo | None = None
        for i, (text, reason) in enumerate(zip(texts, reasons, strict=True)):
            value, error = self._one(text, reason)
            values.append(value)
            if error is not None and first is None:
                where = f"choice {i}: " if len(texts) > 1 else ""
                first = ErrorInfo(error.code, where + error.message)
        return Checked(values[0] if len(values) == 1 else values, first)

    def _one(self, text: Any, reason: Any) -> tuple[Any, ErrorInfo | None]:
        if not isinstance(text, str):
            return None, ErrorInfo("invalid_json", "the reply has no text")
        try:
            value = orjson.loads(text)
        except orjson.JSONDecodeError as exc:
            if reason == "length":
                return None, ErrorInfo("cut_off", "max_tokens ended the reply before its JSON "
                                                  "did")  # fmt: skip
            return None, ErrorInfo("invalid_json", f"the reply is not JSON ({exc})")
        message = self._violation(value)
        if message is not None:
            return None, ErrorInfo("schema_mismatch", message)
        return value, None

    def _violation(self, value: Any) -> str | None:
        if self.model is not None:
            from pydantic import ValidationError

            try:
                self.model.model_validate(value)
            except ValidationError as exc:
                first = exc.errors()[0]
                path = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in first["loc"])
                return f"${path}: {first['msg']}"
            return None
        if self._validator is None:
            return None
        if self._fast is not None:
            from fastjsonschema import JsonSchemaException

            try:
                self._fast(value)
                return None
            except JsonSchemaException:
                pass  # jsonschema decides, and says why
        if self._validator.is_valid(value):
            return None
        from jsonschema.exceptions import best_match

        error = best_match(self._validator.iter_errors(value))
        return f"{error.json_path}: {error.message}"

    def instance(self, value: Any, many: bool = False) -> Any:
        """A parsed value as the caller asked for it: the pydantic model's instance (``many``:
        a list of them, one per choice) where a model was given, else the value."""
        if self.model is None or value is None:
            return value
        if many:
            return [None if v is None else self.model.model_validate(v) for v in value]
        return self.model.model_validate(value)


def _fast_check(schema: dict[str, Any]) -> Any:
    """fastjsonschema's check compiled from ``schema``, where it knows every keyword the schema
    uses (draft 7 or earlier, or none said); None otherwise, or where it cannot compile it."""
    declared = str(schema.get("$schema", ""))
    if declared and not any(draft in declared for draft in _EARLIER_DRAFTS):
        return None
    if _uses(schema, _LATER_KEYWORDS):
        return None
    import fastjsonschema

    try:
        return fastjsonschema.compile(schema)
    except Exception:  # any schema it cannot compile: jsonschema alone checks
        return None


def _uses(node: Any, keywords: frozenset[str]) -> bool:
    if isinstance(node, dict):
        return any(k in keywords or _uses(v, keywords) for k, v in node.items())
    if isinstance(node, list):
        return any(_uses(v, keywords) for v in node)
    return False


def resend_size(checked: Checked, body: Mapping[str, Any], schema: Schema) -> int | None:
    """The max_tokens to send a cut-off reply's request again with: double the one it was
    sent with, up to the schema's ``resend_up_to``; None to keep the reply (not cut off, no
    policy, or the policy's ceiling already reached)."""
    cap = schema.resend_up_to
    if cap is None or checked.error is None or checked.error.code != "cut_off":
        return None
    sent = body.get("max_tokens") or body.get("max_completion_tokens")
    if not isinstance(sent, int) or sent >= cap:
        return None
    return min(cap, 2 * sent)
