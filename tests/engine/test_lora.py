"""LoRA adapters in the launch plan, without vLLM: the flags that serve them, what a folder
must hold, and the warm fleet that must have them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from vbatch import ConfigError
from vbatch._config import LaunchOptions
from vbatch._engine.lora import MAX_RESIDENT_LORAS, read_adapters
from vbatch._engine.machine import Machine
from vbatch._engine.model import resolve_model
from vbatch._engine.plan import plan_launch


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
