"""Row checks: the served-model check done while building, and the same check done afterwards
(``check_served``) from the models rows asked for while the server's list was unknown."""

from __future__ import annotations

import json
from collections.abc import Collection
from pathlib import Path
from typing import Any

import pytest

from vbatch import InputError, RequestBuilder, RequestDefaults
from vbatch._input import checks
from vbatch._input.sources import RawRow, open_source
from vbatch._input.validate import validate_input

NO_MODEL = RequestDefaults(max_tokens=8)
SERVED = ["smol", "smol-lora"]


def _file(tmp_path: Path, rows: list[dict[str, Any]]) -> str:
    path = tmp_path / "in.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return str(path)


def _build_all(builder: RequestBuilder, rows: list[dict[str, Any]]) -> None:
    for i, data in enumerate(rows):
        builder.build(RawRow(i, i + 1, data))


def _same_error_both_ways(
    rows: list[dict[str, Any]], served: Collection[str], **kw: Any
) -> InputError:
    """The error building with ``served`` raises, after checking that building without it and
    then ``check_served(served)`` raises the same one."""
    with pytest.raises(InputError) as known:
        _build_all(RequestBuilder("in.jsonl", NO_MODEL, served=served, **kw), rows)
    later = RequestBuilder("in.jsonl", NO_MODEL, **kw)
    _build_all(later, rows)  # nothing to refuse yet
    with pytest.raises(InputError) as after:
        later.check_served(served)
    assert (after.value.path, after.value.line, after.value.message) == (
        known.value.path, known.value.line, known.value.message)  # fmt: skip
    return after.value


def test_a_file_naming_an_unserved_model_on_line_3_fails_the_same_either_way(
    tmp_path: Path,
) -> None:
    path = _file(tmp_path, [
        {"id": 1, "prompt": "a", "model": "smol"},
        {"id": 2, "prompt": "b", "model": "smol-lora"},
        {"id": 3, "prompt": "c", "model": "big"},
        {"id": 4, "prompt": "d", "model": "big"},
    ])  # fmt: skip
    with pytest.raises(InputError) as known:
        validate_input(open_source(path), RequestBuilder(path, NO_MODEL, served=SERVED))
    scan = RequestBuilder(path, NO_MODEL)
    assert validate_input(open_source(path), scan).rows == 4  # the scan passes
    with pytest.raises(InputError) as after:
        scan.check_served(SERVED)
    assert str(after.value) == str(known.value) == (
        f"{path}:3: model 'big' is not served here (the server serves 'smol', 'smol-lora'); "
        "--model NAME sends every row to NAME")  # fmt: skip
    assert after.value.line == known.value.line == 3


def test_the_first_row_naming_any_unserved_model_is_the_one_named() -> None:
    rows = [{"prompt": "x", "model": m} for m in ["smol", "b", "smol", "a", "b", "a"]]
    error = _same_error_both_ways(rows, SERVED)
    assert error.line == 2 and "'b'" in error.message


def test_batch_lines_and_forced_models_are_checked_as_built() -> None:
    line = {"custom_id": "c", "url": "/v1/completions", "body": {"prompt": "x", "model": "m"}}
    rows = [{**line, "custom_id": f"c{i}"} for i in range(3)]
    assert _same_error_both_ways(rows, SERVED).line == 1
    # --model replaces each line's own: the forced model is what is checked.
    forced = RequestDefaults(model="gone")
    builder = RequestBuilder("in.jsonl", forced, force_model=True)
    _build_all(builder, [{"prompt": "x", "model": "smol"}])
    with pytest.raises(InputError, match=r"in\.jsonl:1: model 'gone' is not served"):
        builder.check_served(SERVED)


def test_a_model_that_is_not_a_string_is_refused_the_same_way() -> None:
    rows: list[dict[str, Any]] = [
        {"prompt": "x", "model": "smol"},
        {"prompt": "y", "model": ["smol"]},
    ]
    assert _same_error_both_ways(rows, SERVED).line == 2
    # A set of names cannot hash a list: refused, not a TypeError.
    assert _same_error_both_ways(rows, frozenset(SERVED)).line == 2


def test_served_models_pass_and_later_rows_are_checked_against_them() -> None:
    builder = RequestBuilder("in.jsonl", NO_MODEL)
    _build_all(builder, [{"prompt": "x", "model": "smol"}, {"prompt": "y", "model": "smol-lora"}])
    builder.check_served(SERVED)
    assert builder.served == SERVED
    with pytest.raises(InputError, match=r"in\.jsonl:9: model 'big' is not served"):
        builder.build(RawRow(8, 9, {"prompt": "z", "model": "big"}))


def test_named_models_are_checked_even_when_no_model_is_required() -> None:
    # A scan that cannot yet say which model rows without one get: they pass, names are kept.
    rows = [{"prompt": "x"}, {"prompt": "y", "model": "smol"}, {"prompt": "z", "model": "big"}]
    assert _same_error_both_ways(rows, SERVED, require_model=False).line == 3


def test_recording_stops_at_the_bound_and_says_more_exist(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(checks, "MAX_RECORDED_MODELS", 3)
    rows = [{"prompt": "x", "model": m} for m in ["a", "b", "a", "c", "d", "e"]]
    builder = RequestBuilder("in.jsonl", NO_MODEL)
    _build_all(builder, rows)
    assert builder.checks.asked == {"a": 1, "b": 2, "c": 4}
    assert builder.checks.more_asked
    with pytest.raises(InputError, match=r"in\.jsonl:2: model 'b' is not served"):
        builder.check_served(["a", "c"])
    # Every recorded name served: the unrecorded ones are not checked here.
    builder.check_served(["a", "b", "c"])


def test_attributes_read_and_set_elsewhere_are_still_the_builders() -> None:
    builder = RequestBuilder("in.jsonl", NO_MODEL, require_model=False, model_hint="hint",
                             served=SERVED)  # fmt: skip
    assert (builder.path, builder.require_model, builder.model_hint, builder.served) == (
        "in.jsonl", False, "hint", SERVED)  # fmt: skip
    assert builder.batch_lines is None and builder.force_model is False
    # Set on the builder, they are what its checks use.
    builder.require_model, builder.model_hint = True, "the server serves nothing"
    with pytest.raises(InputError, match=r"no model: .*\(the server serves nothing\)$"):
        builder.build(RawRow(0, 1, {"prompt": "x"}))
    builder.served = ["other"]
    with pytest.raises(InputError, match=r"in\.jsonl:2: model 'smol' is not served"):
        builder.build(RawRow(1, 2, {"prompt": "x", "model": "smol"}))
