"""Array jobs: ``vbatch run --shard I/N`` runs one part of the input into its own output, and
``vbatch merge`` puts the parts together only when every input row is there exactly once."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from fakeserver import FakeServer
from helpers import CLI_TIMEOUT_S, cli, prompt_rows, read_jsonl, run_args, write_jsonl

import vbatch
from vbatch._input.ids import DigestList
from vbatch._input.shard import Shard

ROWS = 60
SHARDS = 3


def merge_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "vbatch", "merge", *args],
                          capture_output=True, text=True, timeout=CLI_TIMEOUT_S)  # fmt: skip


def content(record: dict[str, Any]) -> tuple[Any, ...]:
    """What a record says about its row (not how long it took)."""
    return record["id"], record["text"], record["finish_reason"], record["usage"], record["error"]


@pytest.fixture
def inp(tmp_path: Path) -> Path:
    return write_jsonl(tmp_path / "in.jsonl", prompt_rows(ROWS))


def shard_path(tmp_path: Path, i: int) -> Path:
    return tmp_path / f"out.shard-{i}.jsonl"


def run_shards(server: FakeServer, inp: Path, tmp_path: Path) -> list[Path]:
    paths = []
    for i in range(SHARDS):
        path = shard_path(tmp_path, i)
        proc = cli(*run_args(server.base_url, inp, path, "--shard", f"{i}/{SHARDS}"))
        assert proc.returncode == 0, proc.stderr
        paths.append(path)
    return paths


def test_three_shards_merged_are_the_rows_of_a_single_run(
    server: FakeServer, inp: Path, tmp_path: Path
) -> None:
    single = tmp_path / "single.jsonl"
    assert cli(*run_args(server.base_url, inp, single)).returncode == 0
    paths = run_shards(server, inp, tmp_path)
    assert server.generation_requests == 2 * ROWS  # each row sent once by the shards together
    parts = [{r["id"] for r in read_jsonl(p)} for p in paths]
    assert all(parts), "a shard of 60 rows in 3 came out empty"
    assert sum(map(len, parts)) == ROWS and set().union(*parts) == {f"r{i}" for i in range(ROWS)}

    merged = tmp_path / "merged.jsonl"
    proc = merge_cli(*map(str, reversed(paths)), "-o", str(merged), "--order", "input")
    assert proc.returncode == 0, proc.stderr
    assert f"{ROWS} rows from {SHARDS} shards" in proc.stderr
    records = read_jsonl(merged)
    assert [r["id"] for r in records] == [f"r{i}" for i in range(ROWS)]  # input order
    assert sorted(map(content, records)) == sorted(map(content, read_jsonl(single)))
    # The merged output resumes as a single run's does: nothing left to send.
    again = cli(*run_args(server.base_url, inp, merged))
    assert again.returncode == 0, again.stderr
    assert server.generation_requests == 2 * ROWS
    assert read_jsonl(merged) == records


def test_a_missing_row_fails_the_merge_naming_it_and_its_shard_resumes(
    server: FakeServer, inp: Path, tmp_path: Path
) -> None:
    paths = run_shards(server, inp, tmp_path)
    lines = paths[1].read_bytes().splitlines(keepends=True)
    lost = read_jsonl(paths[1])[-1]["id"]
    paths[1].write_bytes(b"".join(lines[:-1]))  # as if shard 1 was stopped before its last row
    merged = tmp_path / "merged.jsonl"

    proc = merge_cli(*map(str, paths), "-o", str(merged), "--input", str(inp))
    assert proc.returncode == 2
    line = int(lost.removeprefix("r")) + 1
    assert f"id '{lost}' ({inp}:{line})" in proc.stderr, proc.stderr
    assert f"shard 1/{SHARDS} ({paths[1]})" in proc.stderr
    assert not merged.exists()
    without_input = merge_cli(*map(str, paths), "-o", str(merged))
    assert without_input.returncode == 2
    assert f"input row {line}" in without_input.stderr

    sent = server.generation_requests
    resumed = cli(*run_args(server.base_url, inp, paths[1], "--shard", f"1/{SHARDS}"))
    assert resumed.returncode == 0, resumed.stderr
    assert server.generation_requests == sent + 1  # only the missing row
    assert merge_cli(*map(str, paths), "-o", str(merged)).returncode == 0
    assert len(read_jsonl(merged)) == ROWS


def test_a_row_written_twice_fails_the_merge_naming_both_places(
    server: FakeServer, inp: Path, tmp_path: Path
) -> None:
    paths = run_shards(server, inp, tmp_path)
    twice = paths[0].read_bytes().splitlines(keepends=True)[0]
    with open(paths[2], "ab") as f:
        f.write(twice)
    row_id = read_jsonl(paths[0])[0]["id"]
    proc = merge_cli(*map(str, paths), "-o", str(tmp_path / "merged.jsonl"))
    assert proc.returncode == 2
    assert "written more than once" in proc.stderr
    assert f"{paths[0]}:1 (id '{row_id}')" in proc.stderr
    lines = len(read_jsonl(paths[2]))
    assert f"{paths[2]}:{lines} (id '{row_id}')" in proc.stderr


def test_merge_refuses_a_missing_shard_and_shards_of_other_jobs(
    server: FakeServer, inp: Path, tmp_path: Path
) -> None:
    paths = run_shards(server, inp, tmp_path)
    proc = merge_cli(str(paths[0]), str(paths[2]), "-o", str(tmp_path / "m.jsonl"))
    assert proc.returncode == 2
    assert f"shard 1/{SHARDS} not given" in proc.stderr
    before = paths[0].read_bytes()
    proc = merge_cli(*map(str, paths), "-o", str(paths[0]))
    assert proc.returncode == 2 and "is one of the shards" in proc.stderr
    assert paths[0].read_bytes() == before

    other = tmp_path / "other.shard-1.jsonl"
    args = run_args(server.base_url, inp, other, "--shard", f"1/{SHARDS}", "--temperature", "1")
    assert cli(*args).returncode == 0
    proc = merge_cli(str(paths[0]), str(other), str(paths[2]), "-o", str(tmp_path / "m.jsonl"))
    assert proc.returncode == 2
    assert "shards of different jobs" in proc.stderr and "request_defaults" in proc.stderr

    edited = write_jsonl(tmp_path / "edited.jsonl", prompt_rows(ROWS + 1))
    proc = merge_cli(*map(str, paths), "-o", str(tmp_path / "m.jsonl"), "--input", str(edited))
    assert proc.returncode == 2
    assert "is not the input these shards ran" in proc.stderr


def test_a_shard_output_resumes_only_as_the_same_shard(
    server: FakeServer, inp: Path, tmp_path: Path
) -> None:
    path = shard_path(tmp_path, 0)
    assert cli(*run_args(server.base_url, inp, path, "--shard", "0/3")).returncode == 0
    proc = cli(*run_args(server.base_url, inp, path, "--shard", "1/3"))
    assert proc.returncode == 2
    assert "changed: shard" in proc.stderr


@pytest.mark.parametrize("value", ["3/3", "-1/3", "1", "a/b", "0/0"])
def test_a_bad_shard_exits_2(server: FakeServer, inp: Path, tmp_path: Path, value: str) -> None:
    proc = cli(*run_args(server.base_url, inp, tmp_path / "o.jsonl", f"--shard={value}"))
    assert proc.returncode == 2
    assert "--shard" in proc.stderr and "I/N" in proc.stderr
    assert server.generation_requests == 0


def test_shard_and_merge_from_python(server: FakeServer, inp: Path, tmp_path: Path) -> None:
    paths = []
    for i in range(2):
        path = tmp_path / f"py.shard-{i}.jsonl"
        summary = vbatch.run(str(inp), str(path), base_url=server.base_url, model="smol",
                             max_tokens=4, shard=(i, 2))  # fmt: skip
        assert summary.exit_code == 0
        assert summary.stats.total == len(read_jsonl(path))
        paths.append(str(path))
    merged = vbatch.merge(paths, str(tmp_path / "all.jsonl"))
    assert (merged.rows, merged.failed) == (ROWS, 0)
    with pytest.raises(vbatch.MergeError, match="shard 1/2 not given"):
        vbatch.merge(paths[:1], str(tmp_path / "all.jsonl"))


def test_the_split_is_stable_and_covers_every_row() -> None:
    digests = DigestList()
    for i in range(1000):
        digests.append(f"row-{i}")
    masks = [Shard(i, 4).mask(digests.to_numpy()) for i in range(4)]
    assert sum(int(m.sum()) for m in masks) == 1000
    assert all(150 < m.sum() < 350 for m in masks)
    # The same id lands in the same shard in any process: blake2b, not Python's salted hash.
    code = "from vbatch._input.ids import id_digest; print(id_digest('row-7') % 4)"
    runs = {subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                           env={**os.environ, "PYTHONHASHSEED": seed}, check=True).stdout
            for seed in ("1", "2")}  # fmt: skip
    assert len(runs) == 1
