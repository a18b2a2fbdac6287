"""What a run does when servers die under it, and when two runs share an output: `vbatch run`
in a subprocess against fake servers in their own processes (so they can be SIGKILLed)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

from helpers import ServerProcess, cli, count_lines, prompt_rows, read_jsonl, write_jsonl

ROWS = 1500


def _run_args(urls: list[str], inp: Path, out: Path, *extra: str) -> list[str]:
    return [str(inp), "-o", str(out), *[a for u in urls for a in ("--base-url", u)],
            "--model", "smol", "--concurrency", "16", "--max-tokens", "4",
            "--max-attempts", "2", *extra]  # fmt: skip


def _wait_lines(out: Path, n: int, proc: subprocess.Popen[str], timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while count_lines(out) < n:
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "no progress"
        time.sleep(0.01)


def test_a_server_killed_and_brought_back_loses_nothing(tmp_path: Path) -> None:
    a, b = ServerProcess.start(), ServerProcess.start()
    inp = write_jsonl(tmp_path / "in.jsonl", prompt_rows(ROWS))
    out, metrics = tmp_path / "out.jsonl", tmp_path / "metrics.json"
    args = _run_args([a.base_url, b.base_url], inp, out, "--metrics-json", str(metrics))
    run = subprocess.Popen([sys.executable, "-m", "vbatch", "run", *args],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        _wait_lines(out, 200, run)
        a.kill()  # mid-run, with requests in flight on it
        done_at_kill = count_lines(out)
        _wait_lines(out, done_at_kill + 300, run)  # b carries the job meanwhile
        a = ServerProcess.start(port=a.port)  # back on its port: re-admitted
        _, stderr = run.communicate(timeout=120)
    finally:
        a.stop()
        b.stop()
    assert run.returncode == 0, stderr
    records = read_jsonl(out)
    assert sorted(r["id"] for r in records) == sorted(r["id"] for r in prompt_rows(ROWS))
    assert all(r["error"] is None and r["attempts"] == 1 for r in records)  # none charged
    summary = json.loads(metrics.read_text())
    assert summary["failed"] == 0 and summary["requeued"] >= 1


def test_every_server_down_waits_then_stops_keeping_what_is_done(tmp_path: Path) -> None:
    a = ServerProcess.start()
    inp = write_jsonl(tmp_path / "in.jsonl", prompt_rows(ROWS))
    out = tmp_path / "out.jsonl"
    run = subprocess.Popen(
        [sys.executable, "-m", "vbatch", "run", *_run_args([a.base_url], inp, out,
                                                           "--down-timeout", "3")],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        _wait_lines(out, 100, run)
        a.kill()
        _, stderr = run.communicate(timeout=60)
    finally:
        a.stop()
    assert run.returncode == 3, stderr
    assert "no server has answered for 3s" in stderr and "Traceback" not in stderr
    records = read_jsonl(out)
    assert records and all(r["error"] is None for r in records)  # no error records for it
    # The same command against a server that is back finishes the rest.
    again = ServerProcess.start(port=a.port)
    try:
        proc = cli(*_run_args([again.base_url], inp, out))
    finally:
        again.stop()
    assert proc.returncode == 0, proc.stderr
    assert len(read_jsonl(out)) == ROWS


def test_no_server_answering_at_the_start_is_exit_3_and_nothing_written(tmp_path: Path) -> None:
    inp = write_jsonl(tmp_path / "in.jsonl", prompt_rows(3))
    out = tmp_path / "out.jsonl"
    proc = cli(*_run_args(["http://127.0.0.1:9/v1"], inp, out))
    assert proc.returncode == 3, proc.stderr
    assert "no server answers at http://127.0.0.1:9/v1" in proc.stderr
    # No results; the output may exist, empty, with the job's state: the scan records the
    # job's fingerprint as soon as it is known, which can come before the fleet's failure.
    assert not out.exists() or out.read_bytes() == b""


def test_a_second_writer_is_refused_and_a_killed_one_leaves_no_stale_lock(
    tmp_path: Path,
) -> None:
    server = ServerProcess.start()
    inp = write_jsonl(tmp_path / "in.jsonl", prompt_rows(3000))
    out = tmp_path / "out.jsonl"
    args = _run_args([server.base_url], inp, out, "--concurrency", "8")
    first = subprocess.Popen([sys.executable, "-m", "vbatch", "run", *args],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        _wait_lines(out, 50, first)
        second = cli(*args)
        assert second.returncode == 2
        assert f"being written by another vbatch run (pid {first.pid} on " in second.stderr
        assert first.poll() is None  # the first run goes on, unaffected
        first.send_signal(signal.SIGKILL)
        first.wait()
        third = cli(*args)  # the kernel dropped the lock with its holder
        assert third.returncode == 0, third.stderr
    finally:
        if first.poll() is None:
            first.kill()
        server.stop()
    records = read_jsonl(out)
    assert sorted(r["id"] for r in records) == sorted(r["id"] for r in prompt_rows(3000))


def test_a_job_the_server_rejects_wholesale_exits_2_after_the_first_replies(
    tmp_path: Path,
) -> None:
    server = ServerProcess.start(latency="0")
    try:
        server.control(fail_every=1, fail_status=404)  # e.g. an endpoint the server lacks
        inp = write_jsonl(tmp_path / "in.jsonl", prompt_rows(ROWS))
        out = tmp_path / "out.jsonl"
        proc = cli(*_run_args([server.base_url], inp, out))
        sent = server.stats()["generation_requests"]
    finally:
        server.stop()
    assert proc.returncode == 2, proc.stderr
    assert "the first 50 requests were all rejected with HTTP 404" in proc.stderr
    assert sent < 2 * 50  # what was in flight or answered while it decided: not the file
    assert len(read_jsonl(out)) == 50  # those 50 are kept as error records; no others


def test_an_openai_batch_file_for_another_model_runs_with_model(tmp_path: Path) -> None:
    server = ServerProcess.start(latency="0")
    lines = [{"custom_id": f"c{i}", "method": "POST", "url": "/v1/chat/completions",
              "body": {"model": "meta-llama/Meta-Llama-3-8B-Instruct", "max_tokens": 4,
                       "messages": [{"role": "user", "content": f"c{i} hello"}]}}
             for i in range(5)]  # fmt: skip
    inp = write_jsonl(tmp_path / "in.jsonl", lines)
    out = tmp_path / "out.jsonl"
    try:
        refused = cli(str(inp), "-o", str(out), "--base-url", server.base_url)
        assert refused.returncode == 2
        assert "in.jsonl:1: model 'meta-llama/Meta-Llama-3-8B-Instruct' is not served" in (
            refused.stderr
        )
        assert server.stats()["generation_requests"] == 0
        proc = cli(str(inp), "-o", str(out), "--base-url", server.base_url, "--model", "smol")
    finally:
        server.stop()
    assert proc.returncode == 0, proc.stderr
    assert all(r["response"]["status_code"] == 200 for r in read_jsonl(out))
