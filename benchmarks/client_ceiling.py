"""Client-ceiling benchmark: how fast one client process can push requests, side by side.

nginx answers every request instantly with a canned vLLM-shaped completion (pinned to CPU 1);
each client runs pinned to CPU 0, so requests/s is the client's own cost per request. Cases:
  seed     openai.AsyncOpenAI + Semaphore + gather over all rows (the recipe to beat)
  aiohttp  a plain aiohttp worker pool
  vbatch   `vbatch run` on the same rows (validation, output file and resume state included)

  vbatch-before  the same command run from another source tree (``--before-src DIR``, e.g. a
                 ``git worktree`` of the commit before a change): a before/after pair
Then vbatch's memory at two input sizes, and how fast a nearly finished job resumes.

usage: python benchmarks/client_ceiling.py [--n 20000] [--concurrency 500]
                                           [--memory-rows 100000,1000000] [--out FILE]
                                           [--cases seed,aiohttp,vbatch] [--repeat 1]
                                           [--before-src DIR]
Needs nginx (Debian package) and taskset; run from the project root with the project's venv.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson

HERE = Path(__file__).resolve().parent
PORT = 8099
URL = f"http://127.0.0.1:{PORT}/v1"


def write_rows(path: Path, n: int) -> None:
    with open(path, "wb") as f:
        for i in range(n):
            row = {"id": i, "prompt": f"Write about the number {i}. " * 8, "max_tokens": 16}
            f.write(orjson.dumps(row) + b"\n")


def start_nginx(tmp: Path) -> None:
    conf = (HERE / "canned-nginx.conf").read_text()
    conf = conf.replace("PREFIX", str(tmp)).replace("PORT", str(PORT))
    (tmp / "nginx.conf").write_text(conf)
    subprocess.run(["nginx", "-c", str(tmp / "nginx.conf")], check=True)
    time.sleep(0.5)
    workers = subprocess.run(["pgrep", "-f", "nginx: worker"], capture_output=True, text=True)
    for pid in workers.stdout.split():
        subprocess.run(["taskset", "-p", "-c", "1", pid], capture_output=True)


def stop_nginx(tmp: Path) -> None:
    pid_file = tmp / "nginx.pid"
    if pid_file.exists():
        subprocess.run(["kill", pid_file.read_text().strip()])


def measure(
    cmd: list[str], watch: Path | None = None, env: dict[str, str] | None = None
) -> dict[str, Any]:
    """Run cmd pinned to CPU 0: wall and CPU time (wait4), peak RSS from /usr/bin/time (a
    forked child's own ru_maxrss starts at its parent's, so that figure would be ours)."""
    t0 = time.perf_counter()
    timed = ["taskset", "-c", "0", "/usr/bin/time", "-f", "VBATCH_BENCH_RSS_KB=%M", *cmd]
    proc = subprocess.Popen(timed, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    first_growth = None
    if watch is not None:
        size0 = watch.stat().st_size if watch.exists() else 0
        while proc.poll() is None and first_growth is None:
            if watch.exists() and watch.stat().st_size > size0:
                first_growth = time.perf_counter() - t0
            time.sleep(0.005)
    _, status, ru = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    out = proc.stdout.read().decode() if proc.stdout else ""
    err = proc.stderr.read().decode() if proc.stderr else ""
    rss_kb = int(err.rsplit("VBATCH_BENCH_RSS_KB=", 1)[1].split()[0])
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"{cmd} failed with {proc.returncode}: {out}{err}")
    res = {"wall_s": round(wall, 2), "cpu_s": round(ru.ru_utime + ru.ru_stime, 2),
           "max_rss_mb": round(rss_kb / 1024, 1), "stdout": out.strip()}  # fmt: skip
    if watch is not None:
        res["first_result_s"] = round(first_growth, 2) if first_growth is not None else None
    return res


def vbatch_cmd(inp: Path, out: Path, conc: int, *extra: str) -> list[str]:
    return [sys.executable, "-m", "vbatch", "run", str(inp), "-o", str(out), "--base-url", URL,
            "--model", "m", "--concurrency", str(conc), "--quiet", *extra]  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=20000)
    ap.add_argument("--concurrency", type=int, default=500)
    ap.add_argument("--memory-rows", default="100000,1000000")
    ap.add_argument("--cases", default="seed,aiohttp,vbatch")
    ap.add_argument("--out", default=None, help="append result lines (JSONL) here")
    ap.add_argument("--repeat", type=int, default=1, help="run the cases this many times, in turn")
    ap.add_argument("--before-src", default=None,
                    help="source tree (its src/) for the vbatch-before case")  # fmt: skip
    a = ap.parse_args()
    if not shutil.which("nginx"):
        raise SystemExit("nginx is needed: apt-get install -y nginx")
    tmp = Path(tempfile.mkdtemp(prefix="vbatch-bench-"))
    meta = {"date": time.strftime("%Y-%m-%d"), "machine": f"{platform.node()} "
            f"{platform.processor() or platform.machine()} {os.cpu_count()} cores",
            "python": platform.python_version()}  # fmt: skip
    results: list[dict[str, Any]] = []

    def emit(rec: dict[str, Any]) -> None:
        rec = {**rec, **meta}
        results.append(rec)
        print(json.dumps(rec), flush=True)

    start_nginx(tmp)
    try:
        inp = tmp / "rows.jsonl"
        write_rows(inp, a.n)
        cases = [c for c in a.cases.split(",") if c] * a.repeat
        for rnd, case in enumerate(cases):
            if case in ("vbatch", "vbatch-before"):
                env = None
                if case == "vbatch-before":
                    if not a.before_src:
                        raise SystemExit("vbatch-before needs --before-src")
                    src = str(Path(a.before_src).resolve() / "src")
                    env = {**os.environ, "PYTHONPATH": src}
                out = tmp / "out.jsonl"
                metrics = tmp / "metrics.json"
                r = measure(vbatch_cmd(inp, out, a.concurrency, "--overwrite",
                                       "--metrics-json", str(metrics)), env=env)  # fmt: skip
                m = json.loads(metrics.read_text())
                assert m["ok"] == a.n, m
                r["req_s"] = round(a.n / r["wall_s"], 1)
                r["req_s_excl_startup"] = m["requests_per_s"]
            else:
                script = str(HERE / "reference_clients.py")
                r = measure([sys.executable, script, case, str(inp), URL, str(a.concurrency)])
                r.update(json.loads(r["stdout"]))
            r.pop("stdout", None)
            r["cpu_ms_per_req"] = round(1000 * r["cpu_s"] / a.n, 3)
            emit({"bench": "ceiling", "case": case, "round": rnd // max(1, len(cases) // a.repeat),
                  "n": a.n, "concurrency": a.concurrency, **r})  # fmt: skip
        for n in [int(x) for x in a.memory_rows.split(",") if x]:
            inp = tmp / f"rows{n}.jsonl"
            out = tmp / f"out{n}.jsonl"
            write_rows(inp, n)
            r = measure(vbatch_cmd(inp, out, 256, "--overwrite"))
            r.pop("stdout", None)
            emit({"bench": "memory", "case": "vbatch", "n": n, **r})
        if a.memory_rows:
            # Resume: keep all but the last 1,000 results of the biggest run, then run again.
            n = max(int(x) for x in a.memory_rows.split(","))
            out = tmp / f"out{n}.jsonl"
            with open(out, "r+b") as f:  # drop the last 1,000 lines without reading it all in
                ends = [f.tell()]
                for _ in iter(f.readline, b""):
                    ends.append(f.tell())
                f.truncate(ends[-1001])
            r = measure(vbatch_cmd(tmp / f"rows{n}.jsonl", out, 256), watch=out)
            r.pop("stdout", None)
            assert out.read_bytes().count(b"\n") == n
            emit({"bench": "resume", "case": "vbatch", "n": n, "already_done": n - 1000, **r})
    finally:
        stop_nginx(tmp)
        shutil.rmtree(tmp, ignore_errors=True)
    if a.out:
        with open(a.out, "a") as f:
            for rec in results:
                f.write(json.dumps(rec) + "\n")


if __name__ == "__main__":
    main()
