"""LoRA adapters without vLLM: the flags that serve them, what a folder must hold, and rows
sent adapter group by adapter group past what vLLM holds at once."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import numpy as np
import pytest
from fakeserver import FakeServer

import vbatch
from vbatch import ConfigError, RequestBuilder, RequestDefaults
from vbatch._config import LaunchOptions
from vbatch._engine.lora import MAX_RESIDENT_LORAS, adapter_groups, read_adapters
from vbatch._engine.machine import Machine
from vbatch._engine.model import resolve_model
from vbatch._engine.plan import plan_launch
from vbatch._input.data import DataSource, data_input
from vbatch._run.scan import ModelTally
from vbatch._run.send import send


def _adapter(folder: Path, rank: int, **config: object) -> Path:
    folder.mkdir(parents=True)
    (folder / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": rank,
                                                            **config}))  # fmt: skip
    return folder


def _model(tmp_path: Path) -> str:
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text(json.dumps({"max_position_embeddings": 4096}))
    return str(model)


@pytest.mark.parametrize("backend", ["cpu", "gpu"])
def test_adapters_are_served_all_at_once_with_slots_for_the_largest_rank(
    tmp_path: Path, backend: str
) -> None:
    a = _adapter(tmp_path / "a", 8)
    b = _adapter(tmp_path / "b", 12, rank_pattern={"layers.0.q_proj": 24})
    options = LaunchOptions(lora={"a": str(a), "b": str(b)}, vllm_args=("--max-lora-rank", "64"))
    plan = plan_launch(resolve_model(_model(tmp_path)), None, options,
                       Machine(backend, cores=16, gpu_memory_bytes=80 * 2**30))  # fmt: skip
    argv = plan.spec.argv(8000)
    flags = argv[argv.index("--enable-lora") :]
    assert flags[:4] == ["--enable-lora", "--lora-modules", f"a={a}", f"b={b}"]
    # On the CPU one slot more, never filled: rows of the model itself read it (vLLM#48421).
    slots = "2" if backend == "gpu" else "3"
    assert flags[4:10] == ["--max-lora-rank", "32", "--max-loras", slots, "--max-cpu-loras", slots]
    assert argv[-2:] == ["--max-lora-rank", "64"]  # the user's own flag comes last: it wins
    assert plan.served_names == [plan.served_model, "a", "b"]
    assert any("2 LoRA adapter(s) (a, b), 2 resident at once" in n for n in plan.notes)


def test_many_adapters_keep_the_rest_in_host_memory(tmp_path: Path) -> None:
    given = {f"t{i}": str(_adapter(tmp_path / f"t{i}", 16)) for i in range(20)}
    plan = plan_launch(resolve_model(_model(tmp_path)), None, LaunchOptions(lora=given),
                       Machine("cpu"))  # fmt: skip
    argv = plan.spec.argv(8000)
    assert argv[argv.index("--max-loras") + 1] == str(MAX_RESIDENT_LORAS + 1)
    assert argv[argv.index("--max-cpu-loras") + 1] == "20"


def test_what_is_not_an_adapter_is_named(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match=r"--lora x=.*empty: not a LoRA adapter folder"):
        read_adapters([("x", str(tmp_path / "empty"))])
    ia3 = _adapter(tmp_path / "ia3", 8, peft_type="IA3")
    with pytest.raises(ConfigError, match="a IA3 adapter; vLLM serves LoRA ones"):
        read_adapters([("x", str(ia3))])
    a = _adapter(tmp_path / "a", 8)
    with pytest.raises(ConfigError, match="--lora x: the name is given twice"):
        read_adapters([("x", str(a)), ("x", str(a))])
    with pytest.raises(ConfigError, match="--lora m: the name is the model's own"):
        read_adapters([("m", str(a))], base_name="m")
    with pytest.raises(ConfigError, match="--lora takes NAME=FOLDER; got 'nofolder'"):
        LaunchOptions(lora=("nofolder",))  # type: ignore[arg-type]
    assert LaunchOptions(lora=("x=/p",)).lora == LaunchOptions(lora={"x": "/p"}).lora  # type: ignore[arg-type]


def test_an_adapter_beside_a_url_is_an_error(tmp_path: Path) -> None:
    assert LaunchOptions(lora={"a": "/p"}).given() == ["lora"]


def test_past_the_slots_adapters_are_sent_in_groups_of_what_vllm_holds() -> None:
    adapters = [f"t{i}" for i in range(40)]
    assert adapter_groups(["base", "t3", "t1"], adapters) is None  # all fit at once
    asked = ["t5", "base", *(f"t{i}" for i in range(40) if i != 5)]
    groups = adapter_groups(asked, adapters)
    assert groups is not None and [len(g) for g in groups] == [17, 16, 8]
    assert groups[0][:2] == ["t5", "t0"] and groups[0][-1] == "base"  # the model's own: first


def test_rows_go_pass_by_pass_each_adapter_group_in_turn(server: FakeServer) -> None:
    rows = [{"id": i, "prompt": f"r{i} x", "model": f"t{i % 3}"} for i in range(12)]
    source = DataSource(data_input(rows), "prompt", "messages")
    builder = RequestBuilder(source.path, RequestDefaults(max_tokens=2))
    tally = ModelTally()
    requests = list(tally.watch(builder.build(row) for row in source.rows()))
    assert len(requests) == 12 and list(tally.names) == ["t0", "t1", "t2"]
    pending = np.ones(12, dtype=bool)
    pending[4] = False  # done by an earlier run
    masks = [pending & m for m in tally.masks([["t2"], ["t0", "t1"]], 12)]

    async def go() -> list[str]:
        async with vbatch.connect(server.base_url, concurrency=1) as dispatcher:
            job = vbatch.make_job([])
            results = send(job, dispatcher, builder, source, masks, None, vbatch.Stats())
            return [str(r.id) async for r in results]

    assert asyncio.run(go()) == ["2", "5", "8", "11", "0", "1", "3", "6", "7", "9", "10"]
    assert [b["model"] for b in server.bodies][:4] == ["t2"] * 4


def test_against_a_server_with_adapters_rows_name_them_and_the_model_is_the_default(
    server: FakeServer, tmp_path: Path
) -> None:
    server.adapters = ["legal", "medical"]
    rows = [{"id": 1, "prompt": "a b", "model": "legal"}, {"id": 2, "prompt": "c d"},
            {"id": 3, "prompt": "e f", "task": "medical"}]  # fmt: skip
    inp = tmp_path / "in.jsonl"
    inp.write_text("".join(json.dumps(r) + "\n" for r in rows))
    summary = vbatch.run(inp, tmp_path / "out.jsonl", base_url=server.base_url, max_tokens=2,
                         lora_field="task")  # fmt: skip
    assert summary.exit_code == 0
    assert sorted(b["model"] for b in server.bodies) == ["legal", "medical", server.model]
    inp.write_text(json.dumps({"id": 4, "prompt": "x", "model": "tax"}) + "\n")
    said = r"in.jsonl:1: model 'tax' is not served here \(the server serves 'smol', 'legal', 'med"
    with pytest.raises(vbatch.InputError, match=said):
        vbatch.run(inp, tmp_path / "out2.jsonl", base_url=server.base_url, max_tokens=2)
