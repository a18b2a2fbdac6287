"""Instructions per request, counted by callgrind: a noise-free before/after pair for the client.

Timings on a shared VM swing by 5-10% between runs; instruction counts do not. For each source
tree, `vbatch run` is run under ``valgrind --tool=callgrind`` against the canned nginx of
``client_ceiling.py`` at two row counts, and the difference divided by the extra rows is the
cost of one request, start-up excluded.

usage: python benchmarks/instructions.py --before-src DIR [--rows 3000,9000]
Needs nginx and valgrind (Debian packages); run from the project root with the project's venv.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from client_ceiling import URL, start_nginx, stop_nginx, write_rows


def instructions(src: Path, inp: Path, out: Path) -> int:
    env = {**os.environ, "PYTHONPATH": str(src)}
    cmd = ["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null", sys.executable,
           "-m", "vbatch", "run", str(inp), "-o", str(out), "--base-url", URL, "--model", "m",
           "--concurrency", "256", "--quiet", "--overwrite"]  # fmt: skip
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
    return int(re.findall(r"Collected : (\d+)", proc.stderr)[-1])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--before-src", required=True, help="the other tree (its src/ is used)")
    ap.add_argument("--rows", default="3000,9000")
    a = ap.parse_args()
    small, big = (int(x) for x in a.rows.split(","))
    here = Path(__file__).resolve().parents[1] / "src"
    trees = {"before": Path(a.before_src).resolve() / "src", "after": here}
    tmp = Path(tempfile.mkdtemp(prefix="vbatch-instr-"))
    start_nginx(tmp)
    try:
        per_request = {}
        for n in (small, big):
            write_rows(tmp / f"rows{n}.jsonl", n)
        for label, src in trees.items():
            counts = {n: instructions(src, tmp / f"rows{n}.jsonl", tmp / "out.jsonl")
                      for n in (small, big)}  # fmt: skip
            per_request[label] = (counts[big] - counts[small]) / (big - small)
            print(json.dumps({"bench": "instructions", "case": label, "rows": counts,
                              "per_request": round(per_request[label]),
                              "date": time.strftime("%Y-%m-%d")}), flush=True)  # fmt: skip
        ratio = per_request["after"] / per_request["before"]
        print(json.dumps({"bench": "instructions", "after_over_before": round(ratio, 4)}))
    finally:
        stop_nginx(tmp)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
