"""What checking replies against a JSON schema costs the client: `vbatch run` on the same rows
with and without `--json-schema`, against the fake vLLM server (tests/fakeserver.py, its own
process, pinned to the last CPU; the client to the first), alternated. Reported: the client's
CPU seconds per 1,000 rows (from `--metrics-json`), which does not depend on how fast the fake
server answers, and rows/s.

usage: python benchmarks/schema_client.py [--n 20000] [--repeat 2] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCHEMA = {
    "type": "object",
    "properties": {
        "label": {"enum": ["positive", "negative", "neutral"]},
        "reason": {"type": "string"},
        "score": {"type": "integer"},
        "tags": {"type": "array", "items": {"type": "string"}},
    },
    "required": ["label", "reason", "score", "tags"],
}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=20000)
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    cpus = sorted(os.sched_getaffinity(0))
    work = Path(tempfile.mkdtemp(prefix="vbatch-schema-"))
    inp = work / "in.jsonl"
    with open(inp, "w") as f:
        for i in range(a.n):
            f.write(json.dumps({"id": i, "prompt": f"review {i} of the garden story"}) + "\n")
    (work / "schema.json").write_text(json.dumps(SCHEMA))
    fake = subprocess.Popen(["taskset", "-c", str(cpus[-1]), sys.executable,
                             str(ROOT / "tests" / "fakeserver.py"), "--port", "0",
                             "--latency", "0"], stdout=subprocess.PIPE, text=True)  # fmt: skip
    assert fake.stdout is not None
    url = fake.stdout.readline().split()[-1] + "/v1"
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True, cwd=ROOT).stdout.strip()  # fmt: skip
    try:
        for round_ in range(a.repeat):
            for case in ("free", "json") if round_ % 2 == 0 else ("json", "free"):
                metrics = work / f"{case}.metrics.json"
                extra = ["--json-schema", str(work / "schema.json")] if case == "json" else []
                cmd = ["taskset", "-c", str(cpus[0]), sys.executable, "-m", "vbatch", "run",
                       str(inp), "-o", str(work / f"{case}.jsonl"), "--overwrite", "-q",
                       "--base-url", url, "--max-tokens", "64", "--concurrency", "256",
                       "--metrics-json", str(metrics), *extra]  # fmt: skip
                began = time.monotonic()
                subprocess.run(cmd, check=False)
                whole = time.monotonic() - began
                m = json.loads(metrics.read_text())
                assert m["ok"] == a.n, m
                line = {"case": case, "round": round_, "rows": a.n, "whole_s": round(whole, 2),
                        "run_s": m["wall_s"], "rows_per_s": m["requests_per_s"],
                        "client_cpu_s": m["client_cpu_s"],
                        "client_cpu_ms_per_1k_rows": round(1e6 * m["client_cpu_s"] / a.n, 1),
                        "commit": commit, "machine": platform.node(),
                        "date": time.strftime("%Y-%m-%d %H:%M")}  # fmt: skip
                print(json.dumps(line), flush=True)
                if a.out:
                    with open(a.out, "a") as f:
                        f.write(json.dumps(line) + "\n")
    finally:
        fake.terminate()
        fake.wait(timeout=10)


if __name__ == "__main__":
    main()
