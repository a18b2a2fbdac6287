"""Sizing benchmark: counting prompts in the model's tokens before vbatch starts vLLM.

Writes N rows of English-like prompts (20-120 words, seeded), then times, with the embedded
model's tokenizer: ``measure_requests`` over every row (how vbatch sized before its run had
phases: a pass of its own, each row counted), the validating pass alone, and the run's scan
(``_run/scan.py``: validation, ids, digest and sizing in one pass, rows past the first ones
counted only where they could need more context than the first rows' plan gives).

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

from vbatch import LaunchOptions, RequestBuilder, make_job
from vbatch._engine.machine import Machine
from vbatch._engine.model import resolve_model
from vbatch._engine.plan import plan_launch
from vbatch._engine.sizing import InputMeasure, measure_requests
from vbatch._input.sources import open_source
from vbatch._input.validate import validate_input
from vbatch._run.scan import Sizing, scan

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
        files = resolve_model(None)
        model_dir = files.folder
        source = open_source(job.input, job.input_format)

        def builder() -> RequestBuilder:
            return RequestBuilder(source.path, job.defaults, job.fields, job.endpoint)

        t0 = time.perf_counter()
        measure = measure_requests((builder().build(r) for r in source.rows()), model_dir, 64)
        sizing_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        validate_input(source, builder())
        validate_s = time.perf_counter() - t0
        machine = Machine.detect()
        contexts: list[int | None] = []

        def on_sample(sample: InputMeasure) -> int | None:
            contexts.append(plan_launch(files, sample, LaunchOptions(), machine).spec.max_model_len)
            return contexts[0]

        t0 = time.perf_counter()
        scanned = scan(source, builder(), validate=True, digest=True,
                       sizing=Sizing(model_dir, 64, on_sample))  # fmt: skip
        scan_s = time.perf_counter() - t0
    assert scanned.measure is not None
    print(json.dumps({"rows": a.rows, "cores": len(os.sched_getaffinity(0)),
                      "sizing_s": round(sizing_s, 2), "validate_s": round(validate_s, 2),
                      "scan_s": round(scan_s, 2), "planned_context": contexts[0],
                      "max_prompt_tokens": measure.max_prompt_tokens,
                      "max_needed_tokens": measure.max_needed_tokens}))  # fmt: skip


if __name__ == "__main__":
    main()
