"""LoRA adapters and JSON schemas on real vLLM (CPU build, embedded SmolLM2-135M-Instruct).

Two adapters are made here with ``peft`` (random weights, peft's own format), served by one fleet
vbatch launches with ``--lora``; each row's text must be what its adapter gives, which
transformers + peft computes here on its own (greedy, float32: the same tokens vLLM picks). The
fleet is kept warm between the tests (``--keep-alive``), so the schema tests run on it too.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers import read_jsonl, write_jsonl
from pydantic import BaseModel

import vbatch
from vbatch._engine.embedded import ensure_embedded_model

from .conftest import E2E_HOME
from .test_real_vllm import vbatch as vbatch_run

pytestmark = pytest.mark.vllm

PROMPTS = ["Name a colour.", "What is 2+2?", "Say hello."]
NEW_TOKENS = 8
# Kept warm between the tests; float32 as the reference computes (a CPU with bf16 would get it).
KEEP = ("--keep-alive", "10m", "--dtype", "float32")


class Person(BaseModel):
    name: str
    age: int


class Fleet:
    def __init__(self, folder: Path, references: dict[str, dict[str, str]]) -> None:
        self.folder = folder
        self.references = references  # adapter (or "" for the model) -> prompt -> text

    def lora_flags(self) -> list[str]:
        return [flag for name in ("a", "b") for flag in ("--lora", f"{name}={self.folder / name}")]

    def lora(self) -> dict[str, str]:
        return {name: str(self.folder / name) for name in ("a", "b")}


def _make_adapters(model: Path, folder: Path) -> dict[str, dict[str, str]]:
    """Two random LoRA adapters of ``model`` (q and v projections, rank 8), saved by peft, and
    what each (and the model alone) answers each prompt, greedy, by transformers."""
    import torch
    from peft import LoraConfig, PeftModel, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model)
    references: dict[str, dict[str, str]] = {}
    for name, seed in (("a", 1), ("b", 2)):
        torch.manual_seed(seed)
        base = AutoModelForCausalLM.from_pretrained(model, dtype=torch.float32)
        config = LoraConfig(r=8, lora_alpha=16, init_lora_weights=False,
                            target_modules=["q_proj", "v_proj"])  # fmt: skip
        peft_model = get_peft_model(base, config)
        for param_name, param in peft_model.named_parameters():
            if "lora_" in param_name:  # far from the model: every greedy token changes
                torch.nn.init.normal_(param, std=0.5)
        peft_model.save_pretrained(folder / name)
    for name in ("", "a", "b"):
        lm = AutoModelForCausalLM.from_pretrained(model, dtype=torch.float32)
        if name:
            lm = PeftModel.from_pretrained(lm, folder / name)
        lm.eval()
        references[name] = {}
        for prompt in PROMPTS:
            ids = tokenizer.apply_chat_template([{"role": "user", "content": prompt}],
                                                add_generation_prompt=True,
                                                return_tensors="pt", return_dict=True)  # fmt: skip
            with torch.no_grad():
                out = lm.generate(**ids, max_new_tokens=NEW_TOKENS, do_sample=False)
            references[name][prompt] = tokenizer.decode(out[0, ids["input_ids"].shape[1]:],
                                                        skip_special_tokens=True)  # fmt: skip
    return references


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    mp = pytest.MonkeyPatch()
    E2E_HOME.mkdir(parents=True, exist_ok=True)
    mp.setenv("VBATCH_HOME", str(E2E_HOME))
    folder = tmp_path_factory.mktemp("adapters")
    try:
        yield Fleet(folder, _make_adapters(ensure_embedded_model(), folder))
    finally:
        subprocess.run([sys.executable, "-m", "vbatch", "stop", "--all", "--force"],
                       capture_output=True, timeout=120)  # fmt: skip
        mp.undo()


def test_each_row_is_answered_by_the_adapter_it_names(fleet: Fleet, tmp_path: Path) -> None:
    rows: list[dict[str, Any]] = []
    for adapter in ("a", "b", ""):
        for prompt in PROMPTS:
            row: dict[str, Any] = {"id": f"{adapter or 'model'}-{prompt}",
                                   "messages": [{"role": "user", "content": prompt}]}  # fmt: skip
            if adapter == "a":
                row["model"] = "a"  # by its model ...
            elif adapter == "b":
                row["task"] = "b"  # ... or by the --lora-field column
            rows.append(row)
    inp, out = write_jsonl(tmp_path / "in.jsonl", rows), tmp_path / "out.jsonl"
    done = vbatch_run(str(inp), "-o", str(out), "--max-tokens", str(NEW_TOKENS), "--temperature",
                      "0", "--lora-field", "task", *fleet.lora_flags(), *KEEP)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "2 LoRA adapter(s) (a, b), 2 resident at once" in done.stderr
    texts = {r["id"]: r["text"] for r in read_jsonl(out)}
    for adapter in ("a", "b", ""):
        for prompt in PROMPTS:
            assert texts[f"{adapter or 'model'}-{prompt}"] == fleet.references[adapter][prompt]
    # The adapters are not the model: each changed every answer.
    assert all(fleet.references["a"][p] != fleet.references[""][p] != fleet.references["b"][p]
               for p in PROMPTS)  # fmt: skip


def test_a_row_naming_an_adapter_not_served_is_refused_before_sending(
    fleet: Fleet, tmp_path: Path
) -> None:
    rows = [{"id": i, "prompt": "Hi", "model": name} for i, name in enumerate(["a", "b", "c"])]
    inp, out = write_jsonl(tmp_path / "in.jsonl", rows), tmp_path / "out.jsonl"
    done = vbatch_run(str(inp), "-o", str(out), "--max-tokens", "4", *fleet.lora_flags(), *KEEP)
    assert done.returncode == 2, done.stderr
    assert (f"{inp}:3: model 'c' is not served here (the server serves "
            "'SmolLM2-135M-Instruct', 'a', 'b')") in done.stderr  # fmt: skip
    assert not out.exists() or out.read_text() == ""


def test_schema_replies_are_parsed_on_real_vllm(fleet: Fleet, tmp_path: Path) -> None:
    prompts = ["Describe a person as JSON.", "Invent a character with a name and an age."]
    common: dict[str, Any] = {
        "lora": fleet.lora(),
        "keep_alive_s": 600,
        "dtype": "float32",
        "temperature": 0,
    }
    typed = vbatch.generate(prompts, schema=Person, max_tokens=64, endpoint="chat", **common)
    assert all(r.ok and isinstance(r.parsed, Person) for r in typed), typed
    assert all(r.finish_reason == "stop" for r in typed)  # as the fake server says
    # vLLM adds no prompt tokens for a schema: nothing to size for.
    free = vbatch.generate(prompts, max_tokens=4, endpoint="chat", **common)
    assert [r.prompt_tokens for r in typed] == [r.prompt_tokens for r in free]
    cut = vbatch.generate(prompts[:1], schema=Person, max_tokens=3, endpoint="chat", **common)[0]
    assert cut.finish_reason == "length" and cut.parsed is None
    assert cut.schema_error is not None and cut.schema_error.startswith("cut_off: ")
    again = vbatch.generate(prompts[:1], schema=Person, max_tokens=3, resend_cut_off=128,
                            endpoint="chat", **common)[0]  # fmt: skip
    assert again.ok and isinstance(again.parsed, Person)
    # A completions row with the schema from a file, through the CLI, on the same fleet.
    schema = tmp_path / "person.json"
    schema.write_text(json.dumps(Person.model_json_schema()))
    inp = write_jsonl(tmp_path / "in.jsonl", [{"id": 1, "prompt": "A person as JSON:"}])
    out = tmp_path / "out.jsonl"
    done = vbatch_run(str(inp), "-o", str(out), "--max-tokens", "64", "--temperature", "0",
                      "--json-schema", str(schema), *fleet.lora_flags(), *KEEP)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "using the warm fleet" in done.stderr
    (record,) = read_jsonl(out)
    assert Person.model_validate(record["parsed"]) and record["schema_error"] is None
