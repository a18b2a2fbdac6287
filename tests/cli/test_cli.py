"""The ``vbatch run`` command in a subprocess against the fake server: exit codes, bad input and
output caught before anything is sent, the key kept secret, metrics, resume and its guards."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
from fakeserver import FakeServer, completion_text
from helpers import cli, prompt_rows, read_jsonl, run_args, write_jsonl

from vbatch import Stats
from vbatch._cli.report import print_summary
from vbatch._job import RunSummary
from vbatch._output.writer import OutputState

ROWS = 20
SECRET = "sk-vbatch-TEST-9f2e7c41d0b3-do-not-print"


@pytest.fixture
def inp(tmp_path: Path) -> Path:
    return write_jsonl(tmp_path / "in.jsonl", prompt_rows(ROWS))


@pytest.fixture
def out(tmp_path: Path) -> Path:
    return tmp_path / "out.jsonl"


def _assert_complete(out: Path, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The output holds exactly one successful, correct record per input row."""
    records = read_jsonl(out)
    ids = [r["id"] for r in records]
    assert len(ids) == len(set(ids)), "an id was written twice"
    assert set(ids) == {r["id"] for r in rows}
    prompts = {r["id"]: r["prompt"] for r in rows}
    for record in records:
        assert record["error"] is None, record
        assert record["text"] == completion_text(prompts[record["id"]])
    return records


# -- exit codes ---------------------------------------------------------------------------------


def test_all_ok_exits_0(server: FakeServer, inp: Path, out: Path) -> None:
    proc = cli(*run_args(server.base_url, inp, out))
    assert proc.returncode == 0, proc.stderr
    _assert_complete(out, prompt_rows(ROWS))
    assert server.generation_requests == ROWS
    assert "results in" in proc.stderr
    assert proc.stdout == ""


def test_some_error_records_exit_1(server: FakeServer, inp: Path, out: Path) -> None:
    server.script("r3", [400])
    proc = cli(*run_args(server.base_url, inp, out))
    assert proc.returncode == 1, proc.stderr
    records = read_jsonl(out)
    assert len(records) == ROWS
    failed = [r for r in records if r["error"] is not None]
    assert [r["id"] for r in failed] == ["r3"]
    assert failed[0]["error"]["status"] == 400
    assert "--retry-failed" in proc.stderr


def test_csv_with_template(server: FakeServer, tmp_path: Path, out: Path) -> None:
    csv = tmp_path / "in.csv"
    csv.write_text("id,text\n" + "".join(f"{i},word{i} more words\n" for i in range(5)))
    proc = cli(*run_args(server.base_url, csv, out, "--template", "t{id} Translate: {text}"))
    assert proc.returncode == 0, proc.stderr
    by_id = {r["id"]: r["text"] for r in read_jsonl(out)}
    assert by_id == {
        str(i): completion_text(f"t{i} Translate: word{i} more words") for i in range(5)
    }


def test_launch_options_need_a_started_server(server: FakeServer, inp: Path, out: Path) -> None:
    proc = cli(*run_args(server.base_url, inp, out, "--max-model-len", "512"))
    assert proc.returncode == 2
    assert "(--max-model-len) applies only to a server vbatch starts" in proc.stderr
    assert server.generation_requests == 0


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--replicas", "2", "--port", "8123"], "--port names one port"),
        (["--base-url", "localhost:8000/v1"], "base URL must start with http://"),
    ],
)
def test_options_that_cannot_work_exit_2_with_the_reason(
    inp: Path, out: Path, args: list[str], expected: str
) -> None:
    proc = cli(str(inp), "-o", str(out), *args)
    assert proc.returncode == 2, proc.stderr
    assert f"vbatch: error: {expected}" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_a_bug_is_a_traceback_not_a_usage_error(
    monkeypatch: pytest.MonkeyPatch, inp: Path, out: Path
) -> None:
    from click.testing import CliRunner

    from vbatch._cli import commands as cli_main

    async def broken(*args: Any, **kwargs: Any) -> None:
        raise ValueError("a bug, not the user's mistake")

    monkeypatch.setattr(cli_main, "arun", broken)
    args = ["run", str(inp), "-o", str(out), "--base-url", "http://127.0.0.1:9/v1", "-q"]
    result = CliRunner().invoke(cli_main.cli, args)
    assert result.exit_code == 1
    assert isinstance(result.exception, ValueError)


# -- bad input and output: exit 2, nothing sent ---------------------------------------------------

GOOD = json.dumps({"id": "a", "prompt": "a b c"})


@pytest.mark.parametrize(
    ("name", "content", "expected"),
    [
        pytest.param(
            "in.jsonl",
            [GOOD, GOOD.replace('"a"', '"b"'), '{"id": "c", "prompt": '],
            ["in.jsonl:3", "malformed JSON"],
            id="malformed-json",
        ),
        pytest.param(
            "in.jsonl",
            [GOOD, json.dumps({"id": "b", "text": "x"})],
            ["in.jsonl:2", "neither"],
            id="no-prompt-nor-messages",
        ),
        pytest.param(
            "in.jsonl",
            [GOOD, '{"id": "b", "prompt": "x"}', "", GOOD],
            ["in.jsonl:4", "duplicate id 'a'", "line 1"],
            id="duplicate-id",
        ),
        pytest.param("in.jsonl", [GOOD, "[1, 2]"], ["in.jsonl:2", "JSON object"], id="not-object"),
        pytest.param(
            "in.jsonl",
            [GOOD, '{"id": "b", "prompt": ""}'],
            ["in.jsonl:2", "empty"],
            id="empty-prompt",
        ),
        pytest.param(
            "in.jsonl",
            [GOOD, '{"id": "b", "messages": []}'],
            ["in.jsonl:2", "messages"],
            id="empty-messages",
        ),
        pytest.param(
            "in.jsonl", [GOOD, '{"id": true, "prompt": "x"}'], ["in.jsonl:2", "'id'"], id="bool-id"
        ),
        pytest.param("in.jsonl", [], ["in.jsonl", "no rows"], id="empty-file"),
        pytest.param("in.txt", [GOOD], ["in.txt", "unknown input format"], id="txt-format"),
        pytest.param("in.jsonl.gz", [GOOD], ["in.jsonl.gz", "compressed"], id="gzip"),
    ],
)
def test_bad_input_exits_2_and_sends_nothing(
    server: FakeServer,
    tmp_path: Path,
    out: Path,
    name: str,
    content: list[str],
    expected: list[str],
) -> None:
    path = tmp_path / name
    path.write_text("".join(line + "\n" for line in content))
    proc = cli(*run_args(server.base_url, path, out))
    assert proc.returncode == 2, proc.stderr
    for text in expected:
        assert text in proc.stderr
    assert proc.stderr.startswith("vbatch: error:")
    assert "Traceback" not in proc.stderr
    assert server.generation_requests == 0
    assert not out.exists() or out.stat().st_size == 0


def test_missing_input_exits_2(server: FakeServer, tmp_path: Path, out: Path) -> None:
    proc = cli(*run_args(server.base_url, tmp_path / "nope.jsonl", out))
    assert proc.returncode == 2
    assert "nope.jsonl" in proc.stderr and "no such file" in proc.stderr
    assert server.total_requests == 0


@pytest.mark.parametrize(
    "output",
    [
        pytest.param("/proc/vbatch-no-such-dir/out.jsonl", id="proc-missing-dir"),
        pytest.param("/proc/vbatch-out.jsonl", id="proc-unwritable"),
        pytest.param("{tmp}/missing/out.jsonl", id="missing-dir"),
        pytest.param("{tmp}", id="a-directory"),
    ],
)
def test_unusable_output_exits_2_and_sends_nothing(
    server: FakeServer, tmp_path: Path, inp: Path, output: str
) -> None:
    target = output.format(tmp=tmp_path)
    proc = cli(*run_args(server.base_url, inp, Path(target)))
    assert proc.returncode == 2, proc.stderr
    assert target in proc.stderr
    assert "Traceback" not in proc.stderr
    assert server.generation_requests == 0


def test_bad_extra_body_exits_2(server: FakeServer, inp: Path, out: Path) -> None:
    proc = cli(*run_args(server.base_url, inp, out, "--extra-body", "{not json"))
    assert proc.returncode == 2
    assert "--extra-body" in proc.stderr
    assert server.total_requests == 0


# -- the key ------------------------------------------------------------------------------------


def test_api_key_never_printed_or_written(server: FakeServer, inp: Path, out: Path) -> None:
    metrics = out.with_suffix(".metrics.json")
    server.script("r5", [401] * 10)
    server.script("r6", ["drop"] * 10)
    proc = cli(
        *run_args(
            server.base_url,
            inp,
            out,
            "--api-key",
            SECRET,
            "--metrics-json",
            str(metrics),
            "--max-attempts",
            "2",
        )
    )
    assert proc.returncode == 1, proc.stderr
    assert server.auth_headers == {f"Bearer {SECRET}"}, "the key was not sent"
    # An error before any request must not echo it either.
    bad = cli(*run_args(server.base_url, inp, Path("/proc/x/out.jsonl"), "--api-key", SECRET))
    assert bad.returncode == 2
    texts = [proc.stdout, proc.stderr, bad.stdout, bad.stderr]
    files = [p for p in out.parent.iterdir() if p.is_file()]
    assert {out, metrics, Path(str(out) + ".vbatch.json")} <= set(files)
    blobs = [t.encode() for t in texts] + [p.read_bytes() for p in files if p.name != "in.jsonl"]
    for blob in blobs:
        assert SECRET.encode() not in blob
        assert SECRET[8:20].encode() not in blob


def test_api_key_from_environment(
    server: FakeServer, inp: Path, out: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    proc = cli(*run_args(server.base_url, inp, out))
    assert proc.returncode == 0, proc.stderr
    assert server.auth_headers == {f"Bearer {SECRET}"}
    assert SECRET not in proc.stderr + proc.stdout + out.read_text()


def test_without_a_key_no_authorization_header(server: FakeServer, inp: Path, out: Path) -> None:
    proc = cli(*run_args(server.base_url, inp, out))
    assert proc.returncode == 0, proc.stderr
    assert server.auth_headers == set()


# -- metrics ------------------------------------------------------------------------------------


def test_metrics_json(server: FakeServer, inp: Path, out: Path, tmp_path: Path) -> None:
    metrics = tmp_path / "m.json"
    server.script("r2", [503, 200])
    proc = cli(*run_args(server.base_url, inp, out, "--metrics-json", str(metrics)))
    assert proc.returncode == 0, proc.stderr
    data = json.loads(metrics.read_text())
    assert data["total"] == ROWS
    assert data["done"] == ROWS
    assert data["ok"] == ROWS
    assert data["failed"] == 0
    assert data["retries"] == 1
    assert data["skipped"] == 0
    assert data["resumed"] is False
    assert data["interrupted"] is False
    assert data["output"] == str(out)
    assert data["completion_tokens"] == ROWS * 4
    assert data["prompt_tokens"] == sum(len(r["prompt"].split()) for r in prompt_rows(ROWS))
    assert data["wall_s"] > 0


# -- resume -------------------------------------------------------------------------------------


def test_second_identical_run_sends_nothing(
    server: FakeServer, inp: Path, out: Path, tmp_path: Path
) -> None:
    first = cli(*run_args(server.base_url, inp, out))
    assert first.returncode == 0, first.stderr
    before = out.read_bytes()
    metrics = tmp_path / "m.json"
    second = cli(*run_args(server.base_url, inp, out, "--metrics-json", str(metrics)))
    assert second.returncode == 0, second.stderr
    assert server.generation_requests == ROWS
    assert out.read_bytes() == before
    data = json.loads(metrics.read_text())
    assert (data["resumed"], data["skipped"], data["done"], data["previous_ok"]) == (
        True,
        ROWS,
        0,
        ROWS,
    )


def test_resume_finishes_a_partial_output(server: FakeServer, inp: Path, out: Path) -> None:
    first = cli(*run_args(server.base_url, inp, out))
    assert first.returncode == 0
    lines = out.read_bytes().splitlines(keepends=True)
    out.write_bytes(b"".join(lines[:7]))
    second = cli(*run_args(server.base_url, inp, out))
    assert second.returncode == 0, second.stderr
    assert server.generation_requests == ROWS + ROWS - 7
    _assert_complete(out, prompt_rows(ROWS))


def test_changed_job_refused_unless_force(server: FakeServer, inp: Path, out: Path) -> None:
    first = cli(*run_args(server.base_url, inp, out))
    assert first.returncode == 0
    before = out.read_bytes()
    changed = cli(*run_args(server.base_url, inp, out, "--max-tokens", "5"))
    assert changed.returncode == 2
    assert "different job" in changed.stderr
    assert "--force" in changed.stderr
    assert out.read_bytes() == before
    assert server.generation_requests == ROWS
    forced = cli(*run_args(server.base_url, inp, out, "--max-tokens", "5", "--force"))
    assert forced.returncode == 0, forced.stderr
    assert server.generation_requests == ROWS  # everything was already done
    _assert_complete(out, prompt_rows(ROWS))
    # --force recorded the new job: resuming it again needs no --force.
    again = cli(*run_args(server.base_url, inp, out, "--max-tokens", "5"))
    assert again.returncode == 0, again.stderr


def test_edited_input_is_a_different_job(server: FakeServer, inp: Path, out: Path) -> None:
    assert cli(*run_args(server.base_url, inp, out)).returncode == 0
    write_jsonl(inp, prompt_rows(ROWS + 1))
    proc = cli(*run_args(server.base_url, inp, out))
    assert proc.returncode == 2
    assert "different job" in proc.stderr
    assert server.generation_requests == ROWS


def test_retry_failed(server: FakeServer, inp: Path, out: Path) -> None:
    server.script("r3", [400])
    server.script(
        "r7",
        [
            (
                404,
                {},
                {"error": {"message": "gone", "type": "NotFoundError", "param": None, "code": 404}},
            )
        ],
    )
    first = cli(*run_args(server.base_url, inp, out))
    assert first.returncode == 1
    assert server.generation_requests == ROWS
    # Resuming without --retry-failed keeps the error records and still reports them.
    plain = cli(*run_args(server.base_url, inp, out))
    assert plain.returncode == 1
    assert server.generation_requests == ROWS
    retried = cli(*run_args(server.base_url, inp, out, "--retry-failed"))
    assert retried.returncode == 0, retried.stderr
    assert server.generation_requests == ROWS + 2
    assert server.attempts["r3"] == server.attempts["r7"] == 2
    assert server.attempts["r0"] == 1
    _assert_complete(out, prompt_rows(ROWS))


def test_foreign_output_refused_unless_overwrite(server: FakeServer, inp: Path, out: Path) -> None:
    out.write_text("precious data\n")
    proc = cli(*run_args(server.base_url, inp, out))
    assert proc.returncode == 2
    assert "--overwrite" in proc.stderr
    assert str(out) in proc.stderr
    assert out.read_text() == "precious data\n"
    assert server.generation_requests == 0
    over = cli(*run_args(server.base_url, inp, out, "--overwrite"))
    assert over.returncode == 0, over.stderr
    _assert_complete(out, prompt_rows(ROWS))


def test_damaged_output_refused(server: FakeServer, inp: Path, out: Path) -> None:
    assert cli(*run_args(server.base_url, inp, out)).returncode == 0
    lines = out.read_bytes().splitlines(keepends=True)
    lines[4] = b"garbage\n"
    out.write_bytes(b"".join(lines))
    proc = cli(*run_args(server.base_url, inp, out))
    assert proc.returncode == 2
    assert f"{out}:5" in proc.stderr
    assert server.generation_requests == ROWS


def test_torn_last_line_dropped_and_redone(server: FakeServer, inp: Path, out: Path) -> None:
    assert cli(*run_args(server.base_url, inp, out)).returncode == 0
    lines = out.read_bytes().splitlines(keepends=True)
    torn_id = json.loads(lines[-1])["id"]
    partial = lines[-1][: len(lines[-1]) // 2]
    out.write_bytes(b"".join(lines[:-1]) + partial)
    proc = cli(*run_args(server.base_url, inp, out))
    assert proc.returncode == 0, proc.stderr
    assert "torn" in proc.stderr
    assert server.generation_requests == ROWS + 1
    assert server.attempts[torn_id] == 2
    _assert_complete(out, prompt_rows(ROWS))


def test_output_state_file_written_atomically(server: FakeServer, inp: Path, out: Path) -> None:
    assert cli(*run_args(server.base_url, inp, out)).returncode == 0
    state = json.loads(Path(str(out) + ".vbatch.json").read_text())
    assert state["job"]["model"] == "smol"
    assert state["job"]["request_defaults"]["max_tokens"] == 4
    leftovers = [p.name for p in out.parent.iterdir() if p.name.startswith(".vbatch-")]
    assert leftovers == []
    assert os.access(out, os.R_OK)


def test_unwritable_metrics_json_exits_2_and_sends_nothing(
    server: FakeServer, inp: Path, out: Path
) -> None:
    """--metrics-json is an output like -o: a path that cannot be written is bad usage, found
    before the job runs (exit 2, nothing sent), not a traceback after all the work is done."""
    proc = cli(
        *run_args(server.base_url, inp, out, "--metrics-json", "/proc/vbatch-no-such-dir/m.json")
    )
    assert "Traceback" not in proc.stderr, proc.stderr[-400:]
    assert proc.returncode == 2
    assert "/proc/vbatch-no-such-dir/m.json" in proc.stderr
    assert server.generation_requests == 0


def test_explicit_resume_and_overwrite(server: FakeServer, inp: Path, out: Path) -> None:
    assert cli(*run_args(server.base_url, inp, out)).returncode == 0
    assert cli(*run_args(server.base_url, inp, out, "--resume")).returncode == 0
    assert server.generation_requests == ROWS  # --resume (the default) sent nothing more
    again = cli(*run_args(server.base_url, inp, out, "--overwrite"))
    assert again.returncode == 0, again.stderr
    assert server.generation_requests == 2 * ROWS  # --overwrite started over
    assert len(read_jsonl(out)) == ROWS


def test_the_summary_says_why_each_server_was_restarted(capsys: pytest.CaptureFixture[str]) -> None:
    why = "vLLM at http://127.0.0.1:1 exited with code -9 (log: a.log)"
    servers = {"restarts": 1, "restart_reasons": [why]}
    print_summary(RunSummary("out.jsonl", Stats(total=1, done=1, ok=1), OutputState(), False,
                             servers))  # fmt: skip
    err = capsys.readouterr().err
    assert f"vbatch: restarted: {why}\n" in err and "vbatch: results in out.jsonl" in err
