"""Sizing benchmark: the pass that counts prompts in the model's tokens before vbatch starts vLLM.

Writes N rows of English-like prompts (20-120 words, seeded), then times ``measure_requests`` with
the embedded model's tokenizer, and, for scale, the validating pass over the same rows.

usage: python benchmarks/sizing.py [--rows 1000000]     (from the project root, its venv)
"""

from __future__ import annotations

import argparse
import json
import os
import random
import tempfile
import time
from pathlib import Path

from vbatch import RequestBuilder, make_job
from vbatch._engine.embedded import ensure_embedded_model
from vbatch._engine.sizing import measure_requests
from vbatch._input.sources import open_source
from vbatch._input.validate import validate_input
from vbatch._job import preview_requests

WORDS = [
    "the",
    "quick",
    "brown",
    "fox",
    "jumps",
    "over",
    "a",
    "lazy",
    "dog",
    "and",
    "then",
    "writes",
    "some",
    "text",
    "about",
    "it",
]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=1_000_000)
    a = ap.parse_args()
    rnd = random.Random(1)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "in.jsonl"
        with path.open("w") as f:
            for i in range(a.rows):
                words = " ".join(rnd.choice(WORDS) for _ in range(rnd.randint(20, 120)))
                f.write(json.dumps({"id": i, "prompt": words, "max_tokens": 64}) + "\n")
        job = make_job(str(path), model="m")
        model_dir = ensure_embedded_model()
        t0 = time.perf_counter()
        measure = measure_requests(preview_requests(job), model_dir, 64)
        sizing_s = time.perf_counter() - t0
        source = open_source(job.input, job.input_format)
        builder = RequestBuilder(source.path, job.defaults, job.fields, job.endpoint)
        t0 = time.perf_counter()
        validate_input(source, builder)
        validate_s = time.perf_counter() - t0
    print(json.dumps({"rows": a.rows, "cores": len(os.sched_getaffinity(0)),
                      "sizing_s": round(sizing_s, 2), "validate_s": round(validate_s, 2),
                      "max_prompt_tokens": measure.max_prompt_tokens,
                      "max_needed_tokens": measure.max_needed_tokens}))  # fmt: skip


if __name__ == "__main__":
    main()
