"""``vbatch.generate`` over Python data against ``vbatch.run`` over the same rows as a JSONL file.

The fake vLLM server (tests/fakeserver.py, no latency: the client's own cost is what shows) runs
pinned to CPU 1; each case is a fresh Python process pinned to CPU 0, timed around the library
call only (the input built first, as a user's program has it), its peak RSS from /usr/bin/time.
Memory: the peak RSS of the whole process, and from inside it the RSS just before the call
(the input built), the peak before it (building the input) and after it. Cases:
  run-file        vbatch.run("rows.jsonl", "out.jsonl")    (validation, output, resume state)
  gen-list        vbatch.generate(list of N prompt strings)
  gen-frame       vbatch.generate(pandas DataFrame of N rows, a "prompt" column)
  gen-frame-out   the same with output="out.jsonl" (every result also written, resumable)
  input-list, input-frame   build the input only: the memory the data itself takes

usage: python benchmarks/generate.py [--n 1000000] [--concurrency 256] [--repeat 1]
                                     [--cases ...] [--out FILE]
Run from the project root with the project's venv (the data extra: pandas).
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
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
FAKESERVER = ROOT / "tests" / "fakeserver.py"
CASES = "input-list,input-frame,run-file,gen-list,gen-frame,gen-frame-out"

# The child: builds the input, then times the call. argv: case n url concurrency folder
CHILD = r"""
import json, sys, time
case, n, url, conc, folder = sys.argv[1:6]
n, conc = int(n), int(conc)
import vbatch
prompts = [f"Write about the number {i}. " * 8 for i in range(n)]
opts = dict(base_url=url, model="smol", max_tokens=16, concurrency=conc)
if case.endswith("frame") or case.endswith("frame-out"):
    import pandas as pd
    data = pd.DataFrame({"prompt": prompts})
    del prompts
else:
    data = prompts
import resource
def rss_mb():
    with open("/proc/self/status") as f:
        return next(int(l.split()[1]) for l in f if l.startswith("VmRSS")) / 1024
before, peak_before = rss_mb(), resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
t0 = time.perf_counter()
if case.startswith("input-"):
    rows = n
elif case == "run-file":
    summary = vbatch.run(f"{folder}/rows.jsonl", f"{folder}/out.jsonl", overwrite=True, **opts)
    rows = summary.stats.ok
elif case == "gen-frame-out":
    out = vbatch.generate(data, f"{folder}/out.jsonl", overwrite=True, progress=False, **opts)
    rows = int(out["error"].isna().sum())
else:
    out = vbatch.generate(data, progress=False, **opts)
    rows = sum(1 for r in out.itertuples() if r.error is None) if case == "gen-frame" else (
        sum(1 for r in out if r.ok))
call_s = time.perf_counter() - t0
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps({"call_s": round(call_s, 2), "rows_ok": rows, "rss_before_mb": round(before, 1),
                  "peak_before_mb": round(peak_before, 1), "peak_after_mb": round(peak, 1)}))
"""


def write_rows(path: Path, n: int) -> None:
    with open(path, "w") as f:
        for i in range(n):
            f.write(json.dumps({"prompt": f"Write about the number {i}. " * 8}) + "\n")


def measure(case: str, n: int, url: str, conc: int, folder: Path) -> dict[str, Any]:
    cmd = ["taskset", "-c", "0", "/usr/bin/time", "-f", "RSS_KB=%M", sys.executable, "-c",
           CHILD, case, str(n), url, str(conc), str(folder)]  # fmt: skip
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"{case} failed: {proc.stdout}{proc.stderr[-3000:]}")
    rss_kb = int(proc.stderr.rsplit("RSS_KB=", 1)[1].split()[0])
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["rows_ok"] == n, result
    call = result["call_s"]
    memory = {k: result[k] for k in ("rss_before_mb", "peak_before_mb", "peak_after_mb")}
    return {"process_s": round(wall, 2), "call_s": call, **memory,
            "req_s": round(n / call, 1) if not case.startswith("input-") else None,
            "max_rss_mb": round(rss_kb / 1024, 1)}  # fmt: skip


def reset(url: str) -> None:
    """Empty the fake server's counters: it keeps every request's body, and a server holding
    millions of them answers slower (its collector walks them), which the later cases paid."""
    request = urllib.request.Request(url.removesuffix("/v1") + "/_control",
                                     data=json.dumps({"reset": True}).encode(),
                                     headers={"Content-Type": "application/json"})  # fmt: skip
    with urllib.request.urlopen(request, timeout=30) as reply:
        reply.read()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--concurrency", type=int, default=256)
    ap.add_argument("--cases", default=CASES)
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--out", default=None, help="append result lines (JSONL) here")
    a = ap.parse_args()
    meta = {"date": time.strftime("%Y-%m-%d %H:%M"), "machine": f"{platform.node()} "
            f"{platform.machine()} {os.cpu_count()} cores", "python": platform.python_version(),
            "n": a.n, "concurrency": a.concurrency}  # fmt: skip
    server = subprocess.Popen(["taskset", "-c", "1", sys.executable, str(FAKESERVER),
                               "--latency", "0"], stdout=subprocess.PIPE, text=True)  # fmt: skip
    assert server.stdout is not None
    url = server.stdout.readline().split()[1] + "/v1"
    records = []
    try:
        with tempfile.TemporaryDirectory(prefix="vbatch-gen-") as tmp:
            folder = Path(tmp)
            write_rows(folder / "rows.jsonl", a.n)
            for round_ in range(a.repeat):
                for case in a.cases.split(","):
                    reset(url)
                    record = {"bench": "generate", "case": case, "round": round_, **meta,
                              **measure(case, a.n, url, a.concurrency, folder)}  # fmt: skip
                    print(json.dumps(record), flush=True)
                    records.append(record)
    finally:
        server.terminate()
        server.wait()
    if a.out:
        with open(a.out, "a") as f:
            for record in records:
                f.write(json.dumps(record) + "\n")


if __name__ == "__main__":
    main()
