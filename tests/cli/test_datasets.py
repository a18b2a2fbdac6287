"""``vbatch run`` over datasets given where a path goes: a folder written by ``save_to_disk``
(one split, or several and ``--split``) and ``hf://datasets/NAME`` from the ``datasets`` cache
with the Hub unreachable (``HF_HUB_OFFLINE=1``, as every test runs), built here: no network."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import datasets
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from datasets.packaged_modules.parquet.parquet import Parquet
from fakeserver import FakeServer, completion_text
from helpers import cli, read_jsonl

import vbatch
from vbatch._input.hub import open_dataset

PROMPTS = [f"row{i} asks" for i in range(30)]


def args(server: FakeServer, inp: str, out: Path, *extra: str) -> list[str]:
    return [inp, "-o", str(out), "--base-url", server.base_url, "--max-tokens", "4", "--quiet",
            *extra]  # fmt: skip


def test_a_saved_dataset_runs_and_resumes(server: FakeServer, tmp_path: Path) -> None:
    folder = tmp_path / "saved"
    datasets.Dataset.from_dict({"id": [f"q{i}" for i in range(30)], "prompt": PROMPTS}
                               ).save_to_disk(folder)  # fmt: skip
    out = tmp_path / "out.jsonl"
    proc = cli(*args(server, str(folder), out))
    assert proc.returncode == 0, proc.stderr
    by_id = {r["id"]: r["text"] for r in read_jsonl(out)}
    assert by_id == {f"q{i}": completion_text(p) for i, p in enumerate(PROMPTS)}
    out.write_bytes(b"".join(out.read_bytes().splitlines(keepends=True)[:20]))
    server.reset_counters()
    again = cli(*args(server, str(folder), out, "--resume"))
    assert again.returncode == 0, again.stderr
    assert server.generation_requests == 10 and len(read_jsonl(out)) == 30


def test_a_saved_dataset_dict_needs_its_split(server: FakeServer, tmp_path: Path) -> None:
    folder = tmp_path / "dict"
    datasets.DatasetDict({
        "train": datasets.Dataset.from_dict({"prompt": PROMPTS[:20]}),
        "test": datasets.Dataset.from_dict({"prompt": PROMPTS[20:]}),
    }).save_to_disk(folder)  # fmt: skip
    out = tmp_path / "out.jsonl"
    missing = cli(*args(server, str(folder), out))
    assert missing.returncode == 2 and "the dataset has splits train, test: pass --split" in (
        missing.stderr
    )
    wrong = cli(*args(server, str(folder), out, "--split", "dev"))
    assert wrong.returncode == 2 and "no split 'dev' (it has train, test)" in wrong.stderr
    proc = cli(*args(server, str(folder), out, "--split", "test"))
    assert proc.returncode == 0, proc.stderr
    assert sorted(r["text"] for r in read_jsonl(out)) == sorted(
        completion_text(p) for p in PROMPTS[20:]
    )
    assert server.generation_requests == 10


def _cache_as_the_hub_leaves_it(home: Path, repo: str, split: str, table: pa.Table) -> None:
    """The ``datasets`` cache of ``repo`` as ``load_dataset(repo)`` leaves it once online:
    ``HF_HOME/datasets/OWNER___NAME/default/0.0.0/HASH/NAME-SPLIT.arrow`` and its info."""
    source = home.parent / "hub-files" / f"{split}.parquet"
    source.parent.mkdir(parents=True)
    pq.write_table(table, source)
    owner, name = repo.split("/")
    builder = Parquet(cache_dir=str(home / "datasets"), dataset_name=name, hash="0123abcd",
                      data_files={split: str(source)})  # fmt: skip
    builder.download_and_prepare()
    root = home / "datasets"
    (root / name).rename(root / f"{owner}___{name}")
    for config in (root / f"{owner}___{name}").iterdir():  # named after its data files here
        config.rename(config.with_name("default"))


def test_a_hub_dataset_from_the_cache_offline(
    server: FakeServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    home = tmp_path / "hf"
    _cache_as_the_hub_leaves_it(home, "acme/questions", "train", pa.table({"prompt": PROMPTS}))
    monkeypatch.setenv("HF_HOME", str(home))
    assert os.environ["HF_HUB_OFFLINE"] == "1"
    out = tmp_path / "out.jsonl"
    proc = cli(*args(server, "hf://datasets/acme/questions", out, "--split", "train"))
    assert proc.returncode == 0, proc.stderr
    assert sorted(r["text"] for r in read_jsonl(out)) == sorted(completion_text(p) for p in PROMPTS)
    absent = cli(*args(server, "hf://datasets/acme/unknown", tmp_path / "o2.jsonl"))
    assert absent.returncode == 2
    assert "hf://datasets/acme/unknown: cannot load the dataset" in absent.stderr


def test_split_applies_to_datasets_only(server: FakeServer, tmp_path: Path) -> None:
    inp = tmp_path / "in.jsonl"
    inp.write_text('{"prompt": "a"}\n')
    proc = cli(*args(server, str(inp), tmp_path / "o.jsonl", "--split", "train"))
    assert proc.returncode == 2 and "split applies to a dataset" in proc.stderr


def test_without_the_datasets_library_the_error_names_the_extra(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "datasets", None)  # as if not installed: import fails
    with pytest.raises(vbatch.ConfigError, match=r"pip install 'vbatch\[data\]'"):
        open_dataset("hf://datasets/acme/questions", "train")
