"""Whole command of `make demo`'s job with and without a warm fleet (`--keep-alive`), side by
side in one run: a plain run (starts vLLM, stops it), a first run with --keep-alive (starts a
keeper and leaves its servers up), then runs that attach to them; `vbatch stop` at the end.

Each case is the user's whole command (`vbatch run examples/prompts.jsonl ...` with the embedded
default model), timed from the process start to its exit, with the time to the first line in
the output. Runs on whatever vLLM the venv has (the CPU build on the dev VM).

usage: python benchmarks/warm.py [--repeat 2] [--out FILE]
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


def vbatch(*args: str, env: dict[str, str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-m", "vbatch", *args], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # fmt: skip


def run_case(name: str, out: Path, extra: list[str], env: dict[str, str]) -> dict[str, object]:
    for stale in out.parent.glob(out.name + "*"):
        stale.unlink()
    t0 = time.perf_counter()
    args = ["run", str(ROOT / "examples" / "prompts.jsonl"), "-o", str(out),
            "--max-tokens", "64", "--temperature", "0", "--quiet", *extra]  # fmt: skip
    proc = vbatch(*args, env=env)
    first = None
    while proc.poll() is None:
        if first is None and out.exists() and out.stat().st_size > 0:
            first = time.perf_counter() - t0
        time.sleep(0.02)
    total = time.perf_counter() - t0
    _, err = proc.communicate()
    if proc.returncode != 0:
        raise SystemExit(f"{name} failed ({proc.returncode}): {err.decode()[-2000:]}")
    rows = sum(1 for _ in out.open())
    return {"case": name, "first_result_s": round(first or total, 2),
            "whole_s": round(total, 2), "rows": rows}  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="vbatch-warm-"))
    # A home of its own: the benchmark's keeper neither finds nor stops the user's warm fleets.
    env = {**os.environ, "VBATCH_HOME": str(tmp / "home"), "PYTHONPATH": str(ROOT / "src")}
    env.pop("VBATCH_KEEP_ALIVE", None)
    out = tmp / "out.jsonl"
    commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
                            capture_output=True, text=True).stdout.strip()  # fmt: skip
    meta = {"date": time.strftime("%Y-%m-%d"), "commit": commit,
            "machine": f"{platform.node()} {os.cpu_count()} cores"}  # fmt: skip
    lines: list[dict[str, object]] = []
    try:
        for _ in range(a.repeat):
            lines.append(run_case("plain (no --keep-alive)", out, [], env))
            lines.append(run_case("first, --keep-alive 5m", out, ["--keep-alive", "5m"], env))
            lines.append(run_case("attached", out, [], env))
            lines.append(run_case("attached again", out, [], env))
            t0 = time.perf_counter()
            stop = vbatch("stop", "--all", env=env)
            stop.communicate()
            took = round(time.perf_counter() - t0, 2)
            lines.append({"case": "vbatch stop --all", "whole_s": took, "rc": stop.returncode})
    finally:
        vbatch("stop", "--all", "--force", env=env).communicate()
    for line in lines:
        line.update(meta)
        print(json.dumps(line))
    if a.out:
        with open(a.out, "a") as f:
            for line in lines:
                f.write(json.dumps(line) + "\n")


if __name__ == "__main__":
    main()
