"""Time to first result of a self-launched job with several replicas: requests flowing as soon
as the first replica is healthy (this tree) against waiting for all of them (another tree, e.g.
a ``git worktree`` of the commit before first-replica-first), side by side in one run.

Each case is the user's whole command, `vbatch run` without --base-url: planning, starting vLLM,
the job, stopping vLLM. Reported: seconds to the first line in the output, and to the end.

usage: python benchmarks/first_result.py --before-src DIR [--replicas 2] [--rows 64]
       [--repeat 1] [--out FILE] [--stop-after-first] [--labels BEFORE,NOW]
With --stop-after-first each case is interrupted (SIGINT, as Ctrl-C) once its first result is
written, for inputs too big to finish on a CPU (the time to first result is the point); rows
then vary in length (5-60 filler words), as real prompts do, so sizing them is real work.
Runs on whatever vLLM the venv has (the CPU build on the dev VM: its replicas start one after
another, which is where waiting for all costs most).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parents[1] / "src"


def run_case(
    src: Path, inp: Path, out: Path, replicas: int, stop_after_first: bool = False
) -> dict[str, float | None]:
    env = {**os.environ, "PYTHONPATH": str(src)}
    cmd = [sys.executable, "-m", "vbatch", "run", str(inp), "-o", str(out), "--overwrite",
           "--replicas", str(replicas), "--max-tokens", "16", "--quiet"]  # fmt: skip
    for stale in out.parent.glob(out.name + "*"):  # the last case's output and state files
        stale.unlink()
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    first = None
    while proc.poll() is None:
        if first is None and out.exists() and out.stat().st_size > 0:
            first = time.perf_counter() - t0
            if stop_after_first:
                proc.send_signal(signal.SIGINT)
        time.sleep(0.05)
    total = time.perf_counter() - t0
    if proc.returncode not in ((0, 130) if stop_after_first else (0,)):
        raise SystemExit(f"{cmd} failed: {proc.stderr.read().decode() if proc.stderr else ''}")
    return {"first_result_s": round(first, 1) if first else None, "total_s": round(total, 1)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--before-src", required=True)
    ap.add_argument("--replicas", type=int, default=2)
    ap.add_argument("--rows", type=int, default=64)
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--out", default=None)
    ap.add_argument("--stop-after-first", action="store_true")
    ap.add_argument("--labels", default="wait-for-all (before),first-replica-first")
    a = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="vbatch-first-"))
    inp = tmp / "in.jsonl"
    rng = random.Random(0)
    with open(inp, "w") as f:
        for i in range(a.rows):
            filler = " word" * rng.randint(5, 60) if a.stop_after_first else ""
            f.write(json.dumps({"id": i, "prompt": f"Write a line about the number {i}."
                                + filler}) + "\n")  # fmt: skip
    before, now = a.labels.split(",")
    trees = {before: Path(a.before_src).resolve() / "src", now: HERE}
    meta = {"date": time.strftime("%Y-%m-%d"), "machine": f"{platform.node()} "
            f"{os.cpu_count()} cores", "rows": a.rows, "replicas": a.replicas}  # fmt: skip
    lines = []
    for _ in range(a.repeat):
        for case, src in trees.items():
            times = run_case(src, inp, tmp / "out.jsonl", a.replicas, a.stop_after_first)
            rec = {"bench": "first_result", "case": case, **times, **meta}
            print(json.dumps(rec), flush=True)
            lines.append(rec)
    if a.out:
        with open(a.out, "a") as f:
            f.writelines(json.dumps(r) + "\n" for r in lines)


if __name__ == "__main__":
    main()
