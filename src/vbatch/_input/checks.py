"""Whether a row's id, payload and model are acceptable: the checks the request builder runs on
every row, apart from building its body.

The served-model check can also wait: a builder made without the server's model list records
which models the rows ask for, and ``check_served`` later raises the error building with the
list would have raised, for the same row.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Any, Generic, TypeVar, overload

from .._config import MAX_RECORDED_MODELS
from .._errors import InputError
from .sources import RawRow

__all__ = ["MAX_RECORDED_MODELS", "RowChecks", "Setting"]

T = TypeVar("T")


class RowChecks:
    """Checks one input file's rows; raises ``InputError`` naming the line."""

    def __init__(
        self,
        path: str,
        require_model: bool = True,
        model_hint: str = "",
        served: Collection[str] | None = None,
        api_terms: bool = False,
    ) -> None:
        """``api_terms``: messages for the Batch API's users (the line's ``body``, no CLI
        flags)."""
        self.path = path
        self.api_terms = api_terms
        self.require_model = require_model
        self.model_hint = model_hint
        self.served = served
        # Served list unknown yet: each model name rows ask for -> the first line asking for it.
        self.asked: dict[str, int] = {}
        self.more_asked = False  # names past MAX_RECORDED_MODELS went unrecorded
        self.unnamed: int | None = None  # the first line of a row naming no model, when allowed
        self._odd: tuple[Any, int] | None = None  # first non-string model: never served

    def error(self, row: RawRow, message: str) -> InputError:
        return InputError(self.path, row.line, message)

    def row_id(self, row: RawRow, field: str) -> str | int:
        """The row's id, kept in ``field``; the line number when it has none."""
        value = row.data.get(field)
        if value is None:
            return row.line
        if isinstance(value, bool) or not isinstance(value, (str, int)):
            raise self.error(row, f"{field!r} must be a string or an integer, got {value!r}")
        return value

    def payload(self, row: RawRow, key: str, value: Any, where: str = "") -> None:
        """``value``, the row's ``key`` ("input", "prompt" or "messages"), is one vLLM takes;
        ``where`` is what holds it, for the messages ("body." in a Batch line)."""
        name = f"'{where}{key}'"
        if key == "input":
            if not _embeddable(value):
                raise self.error(
                    row, f"{name} must be a non-empty string, a list of them, or token ids "
                         "(a list of ints, or a list of such lists)")  # fmt: skip
            return
        if key == "prompt":
            if isinstance(value, str):
                if not value:
                    raise self.error(row, f"{name} is empty")
                return
            if isinstance(value, list) and value and all(type(t) is int for t in value):
                return  # token ids
            raise self.error(row, f"{name} must be a non-empty string or a list of token ids")
        if not isinstance(value, list) or not value:
            raise self.error(row, f"{name} must be a non-empty list")
        for i, message in enumerate(value):
            if not isinstance(message, dict) or not isinstance(message.get("role"), str):
                raise self.error(row, f"'{where}messages[{i}]' must be an object with a string "
                                      "'role'")  # fmt: skip

    def model(self, row: RawRow, body: dict[str, Any]) -> None:
        """The body names a model (unless none is required), and one the server serves when
        its list is known (else the name is recorded for ``check_served``)."""
        model = body.get("model")
        if not model:
            if not self.require_model:
                self.unnamed = self.unnamed or row.line  # see ``check_named``
                return
            raise self.error(row, self._no_model())
        # A named model is checked even when none is required: a scan that cannot yet say
        # which model rows without one get still learns which names they ask for.
        if self.served is None:
            self._record(model, row.line)
        elif not _is_served(model, self.served):
            raise self.error(row, self._unserved(model, self.served))

    def check_served(self, served: Collection[str]) -> None:
        """Raise, for the first row checked so far that names a model not in ``served``, the
        ``InputError`` checking it with ``served`` would have raised; from now on rows are
        checked against ``served``. Names past ``MAX_RECORDED_MODELS`` (``more_asked``) are not
        checked: rows naming them fail as requests, as when the list is never known."""
        self.served = served
        unserved = [
            (line, model) for model, line in self.asked.items() if not _is_served(model, served)
        ]
        if self._odd is not None:
            unserved.append((self._odd[1], self._odd[0]))
        if unserved:
            line, model = min(unserved, key=lambda found: found[0])
            raise InputError(self.path, line, self._unserved(model, served))

    def check_named(self) -> None:
        """After a pass that did not require a model: raise the "no model" error for the first
        row that named none (for when no default model came of the servers' list)."""
        if self.unnamed is not None:
            raise InputError(self.path, self.unnamed, self._no_model())

    def _no_model(self) -> str:
        hint = f" ({self.model_hint})" if self.model_hint else ""
        if self.api_terms:
            return f"no model: give 'body' a 'model'{hint}"
        return f"no model: pass --model or give the row a 'model'{hint}"

    def _unserved(self, model: Any, served: Collection[str]) -> str:
        where = "'body.model'" if self.api_terms else "model"
        said = (f"{where} {model!r} is not served here (the server serves "
                f"{', '.join(map(repr, served))})")  # fmt: skip
        return said if self.api_terms else f"{said}; --model NAME sends every row to NAME"

    def _record(self, model: Any, line: int) -> None:
        if not isinstance(model, str):  # may be unhashable; none is served, so the first will do
            if self._odd is None:
                self._odd = (model, line)
        elif model in self.asked:
            return
        elif len(self.asked) < MAX_RECORDED_MODELS:
            self.asked[model] = line
        else:
            self.more_asked = True


class Setting(Generic[T]):
    """A builder attribute its ``RowChecks`` (``builder.checks``) keeps: read and set on the
    builder as before the checks moved out, one value for both."""

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    @overload
    def __get__(self, builder: None, owner: type) -> Setting[T]: ...
    @overload
    def __get__(self, builder: object, owner: type | None = None) -> T: ...
    def __get__(self, builder: object, owner: type | None = None) -> Setting[T] | T:
        if builder is None:
            return self
        value: T = getattr(builder.checks, self.name)  # type: ignore[attr-defined]
        return value

    def __set__(self, builder: object, value: T) -> None:
        setattr(builder.checks, self.name, value)  # type: ignore[attr-defined]


def _is_served(model: Any, served: Collection[str]) -> bool:
    # A non-string (a list, say) is never a served name, and a set of names cannot hash it.
    return isinstance(model, str) and model in served


def _embeddable(value: Any) -> bool:
    """What vLLM's /v1/embeddings takes as ``input``: str | list[str] | list[int] |
    list[list[int]], none of them empty."""
    if isinstance(value, str):
        return bool(value)
    if not isinstance(value, list) or not value:
        return False
    if all(type(v) is int for v in value):
        return True
    if all(isinstance(v, str) and v != "" for v in value):
        return True
    return all(isinstance(v, list) and v and all(type(t) is int for t in v) for v in value)
