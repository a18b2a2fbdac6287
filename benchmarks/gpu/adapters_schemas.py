"""Issue 21's GPU figures (docs/benchmarks.md §6), whole commands of `vbatch run`:

  adapters  N LoRA adapters (peft's format, random weights, rank R on q/k/v/o) of --model
  mixed     one job: N x ROWS rows, row i asking for adapter i % N, every adapter --lora'd
  separate  N jobs, one adapter each (its ROWS rows, its own --lora), one after another: what a
            user without multi-adapter jobs runs (each job starts vLLM)
  json      labelling rows with a JSON schema (--json-schema) and the same rows as free text,
            against one warm fleet, alternated free, json, json, free

    python3 benchmarks/gpu/adapters_schemas.py adapters|mixed|separate K..L|json \\
        --model /root/models/llama1b [--vbatch-args "--vllm-arg=--load-format=dummy"]

Every record goes to $OUT/results.jsonl: the command's wall time and the run's own summary.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))
from shapes import LABELS, WORDS

SCHEMA = {
    "type": "object",
    "properties": {"label": {"enum": LABELS}, "confidence": {"enum": ["low", "medium", "high"]}},
    "required": ["label", "confidence"],
    "additionalProperties": False,
}


def _prompt(rng: random.Random) -> str:
    text = " ".join(rng.choice(WORDS) for _ in range(rng.randint(30, 60)))
    return f"Label this review ({', '.join(LABELS)}) and say how sure you are: {text}"


def cmd_adapters(a: argparse.Namespace) -> None:
    """Adapters as peft saves them: adapter_config.json and adapter_model.safetensors with
    base_model.model.<module>.lora_A/B.weight, written with torch (peft is not on the GPU host)."""
    import torch
    from safetensors.torch import save_file

    config = json.loads((Path(a.model) / "config.json").read_text())
    hidden, layers = config["hidden_size"], config["num_hidden_layers"]
    heads = config["num_attention_heads"]
    head_dim = config.get("head_dim") or hidden // heads
    kv = config.get("num_key_value_heads", heads) * head_dim
    shapes = {"q_proj": (hidden, heads * head_dim), "k_proj": (hidden, kv),
              "v_proj": (hidden, kv), "o_proj": (heads * head_dim, hidden)}  # fmt: skip
    for k in range(a.adapters):
        torch.manual_seed(k)
        tensors = {}
        for layer in range(layers):
            for module, (fan_in, fan_out) in shapes.items():
                name = f"base_model.model.model.layers.{layer}.self_attn.{module}"
                tensors[f"{name}.lora_A.weight"] = torch.randn(a.rank, fan_in) * 0.01
                tensors[f"{name}.lora_B.weight"] = torch.randn(fan_out, a.rank) * 0.01
        folder = Path(a.workdir) / "adapters" / f"t{k}"
        folder.mkdir(parents=True, exist_ok=True)
        save_file({n: t.to(torch.bfloat16).contiguous() for n, t in tensors.items()},
                  str(folder / "adapter_model.safetensors"))  # fmt: skip
        (folder / "adapter_config.json").write_text(json.dumps({
            "peft_type": "LORA", "r": a.rank, "lora_alpha": 2 * a.rank, "lora_dropout": 0.0,
            "target_modules": list(shapes), "bias": "none", "task_type": "CAUSAL_LM",
            "base_model_name_or_path": a.model, "fan_in_fan_out": False,
        }))  # fmt: skip
    rng = random.Random(21)
    work = Path(a.workdir)
    with open(work / "mixed.jsonl", "w") as mixed:
        parts = [open(work / f"t{k}.jsonl", "w") for k in range(a.adapters)]  # noqa: SIM115
        for i in range(a.adapters * a.rows):
            row = {"id": i, "prompt": _prompt(rng), "model": f"t{i % a.adapters}"}
            line = json.dumps(row) + "\n"
            mixed.write(line)
            parts[i % a.adapters].write(line)
        for part in parts:
            part.close()
    with open(work / "labels.jsonl", "w") as f:
        for i in range(a.label_rows):
            f.write(json.dumps({"id": i, "prompt": _prompt(rng)}) + "\n")
    (work / "schema.json").write_text(json.dumps(SCHEMA))
    print(f"{a.adapters} adapters of rank {a.rank}, {a.adapters * a.rows} rows", flush=True)


def _lora(a: argparse.Namespace, ks: range) -> list[str]:
    folder = Path(a.workdir) / "adapters"
    return [f for k in ks for f in ("--lora", f"t{k}={folder / f't{k}'}")]


def _run(a: argparse.Namespace, case: str, inp: str, *extra: str) -> dict[str, Any]:
    work = Path(a.workdir)
    metrics = work / f"{case}.metrics.json"
    cmd = [sys.executable, "-m", "vbatch", "run", inp, "-o", str(work / f"{case}.out.jsonl"),
           "--overwrite", "--model", a.model, "--max-tokens", str(a.max_tokens),
           "--temperature", "0", "--metrics-json", str(metrics), *a.vbatch_args.split(),
           *extra]  # fmt: skip
    began = time.monotonic()
    with open(work / f"{case}.stderr", "w") as err:
        code = subprocess.run(cmd, stderr=err, timeout=a.timeout).returncode
    wall = time.monotonic() - began
    m = json.loads(metrics.read_text()) if metrics.exists() else {}
    record = {"case": case, "exit": code, "total_wall_s": round(wall, 1),
              "run_s": m.get("wall_s"), "startup_s": m.get("startup_s"), "rows": m.get("done"),
              "ok": m.get("ok"), "failed": m.get("failed"),
              "schema_errors": m.get("schema_errors"), "requests_per_s": m.get("requests_per_s"),
              "output_tokens": m.get("completion_tokens"),
              "output_tokens_per_s": m.get("output_tokens_per_s"),
              "client_cpu_s": m.get("client_cpu_s"), "at": time.strftime("%Y-%m-%d %H:%M:%S"),
              "servers": [line for line in (work / f"{case}.stderr").read_text().splitlines()
                          if "starting" in line or "using the warm" in line][:1]}  # fmt: skip
    with open(os.path.join(os.environ.get("OUT", "/tmp"), "results.jsonl"), "a") as f:
        f.write(json.dumps(record) + "\n")
    print(json.dumps(record), flush=True)
    if code not in (0, 1):
        print((work / f"{case}.stderr").read_text()[-3000:], flush=True)
    return record


def cmd_mixed(a: argparse.Namespace) -> None:
    _run(a, f"mixed{a.adapters}", str(Path(a.workdir) / "mixed.jsonl"),
         *_lora(a, range(a.adapters)))  # fmt: skip


def cmd_separate(a: argparse.Namespace) -> None:
    first, last = a.range
    for k in range(first, last + 1):
        _run(a, f"separate-t{k}", str(Path(a.workdir) / f"t{k}.jsonl"), *_lora(a, range(k, k + 1)))


def cmd_json(a: argparse.Namespace) -> None:
    labels = str(Path(a.workdir) / "labels.jsonl")
    schema = ("--json-schema", str(Path(a.workdir) / "schema.json"))
    keep = ("--keep-alive", "10m")
    for i, case in enumerate(("free", "json", "json", "free")):
        _run(a, f"{case}{i}", labels, *keep, *(schema if case == "json" else ()))
    subprocess.run([sys.executable, "-m", "vbatch", "stop", "--all"], timeout=120)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("command", choices=["adapters", "mixed", "separate", "json"])
    ap.add_argument("range", nargs="*", type=int, help="separate: first and last adapter")
    ap.add_argument("--model", required=True)
    ap.add_argument("--adapters", type=int, default=8)
    ap.add_argument("--rank", type=int, default=16)
    ap.add_argument("--rows", type=int, default=5000, help="rows per adapter")
    ap.add_argument("--label-rows", type=int, default=20000)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--workdir", default="/root/bench/lora")
    ap.add_argument("--vbatch-args", default="")
    ap.add_argument("--timeout", type=float, default=560)
    a = ap.parse_args()
    Path(a.workdir).mkdir(parents=True, exist_ok=True)
    {"adapters": cmd_adapters, "mixed": cmd_mixed, "separate": cmd_separate,
     "json": cmd_json}[a.command](a)  # fmt: skip


if __name__ == "__main__":
    main()
