"""Load test of the Batch API service: 20 batches at once, 50,000 rows in all, against the fake
vLLM server (tests/fakeserver.py, its own process), next to `vbatch run` on the same rows.

Reported for each case: wall seconds from the first request to the last result, requests/s,
and the vbatch process's CPU milliseconds per request (the service's: uvicorn, the routes,
SQLite, the runner and the shared dispatcher; `vbatch run`'s: the whole command). The openai
client polling the service runs in this process and is not counted.

usage: python benchmarks/api_load.py [--batches 20] [--rows 50000] [--window 256]
       [--latency 0.005,0.02] [--repeat 1] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil
from openai import OpenAI

ROOT = Path(__file__).resolve().parents[1]
FAKESERVER = ROOT / "tests" / "fakeserver.py"


def lines(prefix: str, n: int) -> str:
    return "".join(json.dumps({
        "custom_id": f"{prefix}-{i}", "method": "POST", "url": "/v1/chat/completions",
        "body": {"model": "smol", "max_tokens": 8,
                 "messages": [{"role": "user", "content": f"{prefix}-{i} write something"}]},
    }) + "\n" for i in range(n))  # fmt: skip


def cpu_s(proc: psutil.Process) -> float:
    t = proc.cpu_times()
    return float(t.user + t.system + t.children_user + t.children_system)


def service_case(base_url: str, files: list[Path], window: int, tmp: Path) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "vbatch", "api", "--port", "0", "--base-url", base_url,
           "--concurrency", str(window), "--data-dir", str(tmp / "data")]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        assert proc.stdout is not None
        url = proc.stdout.readline().strip()
        client = OpenAI(base_url=url, api_key="-", max_retries=0)
        ids = []
        for path in files:
            with path.open("rb") as f:
                ids.append(client.files.create(file=f, purpose="batch").id)
        ps = psutil.Process(proc.pid)
        cpu0, t0 = cpu_s(ps), time.perf_counter()
        batches = [client.batches.create(input_file_id=i, endpoint="/v1/chat/completions",
                                         completion_window="24h").id for i in ids]  # fmt: skip
        finished: dict[str, float] = {}
        while len(finished) < len(batches):
            time.sleep(0.25)
            for b in client.batches.list(limit=100):
                if b.id in batches and b.status == "completed" and b.id not in finished:
                    finished[b.id] = time.perf_counter() - t0
                    assert b.request_counts is not None and b.request_counts.failed == 0
        wall, cpu = time.perf_counter() - t0, cpu_s(ps) - cpu0
    finally:
        proc.terminate()
        proc.wait(30)
    rows = sum(p.read_text().count("\n") for p in files)
    return {"case": "vbatch api", "rows": rows, "batches": len(files), "wall_s": round(wall, 2),
            "requests_per_s": round(rows / wall), "cpu_ms_per_request":
            round(1000 * cpu / rows, 3), "first_batch_done_s": round(min(finished.values()), 2),
            "last_batch_done_s": round(max(finished.values()), 2)}  # fmt: skip


def run_case(base_url: str, files: list[Path], window: int, tmp: Path) -> dict[str, Any]:
    whole = tmp / "all.jsonl"
    whole.write_text("".join(p.read_text() for p in files))
    out = tmp / "out.jsonl"
    cmd = [sys.executable, "-m", "vbatch", "run", str(whole), "-o", str(out), "--overwrite",
           "--base-url", base_url, "--concurrency", str(window), "--quiet"]  # fmt: skip
    t0 = time.perf_counter()
    proc = psutil.Popen(cmd)
    cpu = 0.0
    while proc.poll() is None:
        try:
            cpu = cpu_s(proc)
        except psutil.NoSuchProcess:
            break
        time.sleep(0.05)
    wall = time.perf_counter() - t0
    assert proc.returncode == 0, proc.returncode
    rows = out.read_text().count("\n")
    return {"case": "vbatch run", "rows": rows, "batches": 1, "wall_s": round(wall, 2),
            "requests_per_s": round(rows / wall),
            "cpu_ms_per_request": round(1000 * cpu / rows, 3)}  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--batches", type=int, default=20)
    ap.add_argument("--rows", type=int, default=50_000)
    ap.add_argument("--window", type=int, default=256)
    ap.add_argument("--latency", default="0.005,0.02")
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="vbatch-api-load-"))
    files = []
    for b in range(a.batches):
        path = tmp / f"b{b}.jsonl"
        path.write_text(lines(f"b{b}", a.rows // a.batches))
        files.append(path)
    server = subprocess.Popen([sys.executable, str(FAKESERVER), "--port", "0", "--latency",
                               a.latency], stdout=subprocess.PIPE, text=True)  # fmt: skip
    try:
        assert server.stdout is not None
        base_url = server.stdout.readline().split()[1] + "/v1"
        for n in range(a.repeat):
            for case in (service_case, run_case):
                work = Path(tempfile.mkdtemp(dir=tmp))
                result = case(base_url, files, a.window, work)
                result.update(repeat=n, window=a.window, latency=a.latency,
                              python=platform.python_version(), cpus=psutil.cpu_count(),
                              date=time.strftime("%Y-%m-%d %H:%M"))  # fmt: skip
                line = json.dumps(result)
                print(line, flush=True)
                if a.out:
                    with open(a.out, "a") as f:
                        f.write(line + "\n")
    finally:
        server.terminate()
        server.wait(30)


if __name__ == "__main__":
    main()
