"""Load test of the Batch API service: 20 batches at once, 50,000 rows in all, against the fake
vLLM server (tests/fakeserver.py, its own process), next to `vbatch run` on the same rows.

Reported for each case: wall seconds from the first request to the last result, requests/s,
and vbatch's CPU milliseconds per request (the service's: its two processes, the runner's
with the shared dispatcher and the API's with uvicorn and the routes, each also on its own;
`vbatch run`'s: the whole command). The openai client polling the service runs in this
process and is not counted.

With ``--pollers N`` the service case runs twice, without and with N clients (one process of
asyncio tasks, raw HTTP) each asking ``GET /v1/batches/{id}`` every ``--poll-s`` and listing
``GET /v1/batches`` every ``--list-s`` while the batches run: the polls' p50/p99 latency, and
the batches' rows/s against the same batches with nobody polling.

``--pin 0:1`` gives each side CPUs of its own (every thread of each process): the batches' side
(the service's runner process and the fake vLLM) the first set, the clients' side (the API's
process, the pollers, this process) the second. On a machine with few cores this asks what the
pollers cost the batches other than the cores they take (locks, SQLite, the network stack).

usage: python benchmarks/api_load.py [--batches 20] [--rows 50000] [--window 256]
       [--latency 0.005,0.02] [--repeat 1] [--out FILE] [--pollers 200 --poll-s 0.1 --list-s 1]
       [--no-run] [--pin CPUS:CPUS]
"""

from __future__ import annotations

import argparse
import asyncio
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


FAKE_PID: list[int] = []  # the fake vLLM server's process, for its CPU time
API_MODULE = "vbatch._service.apiserver"  # the service's API process runs this
PIN: dict[str, set[int]] = {}  # --pin: "batches" and "clients" sides' CPUs


def pin(pid: int, side: str) -> None:
    """Every thread of ``pid`` onto ``side``'s CPUs (threads it starts later inherit them)."""
    if side in PIN:
        for thread in psutil.Process(pid).threads():
            os.sched_setaffinity(thread.id, PIN[side])


def _cpus(text: str) -> set[int]:
    return {int(c) for c in text.split(",")}


def cpu_s(proc: psutil.Process) -> float:
    t = proc.cpu_times()
    return float(t.user + t.system + t.children_user + t.children_system)


async def _poll(
    url: str, key: str, ids: list[str], pollers: int, poll_s: float, list_s: float, out: Path
) -> None:
    """The pollers, until SIGTERM: then their latencies (ms) go to ``out``."""
    import aiohttp

    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    got: dict[str, list[float]] = {"retrieve": [], "list": []}
    headers = {"Authorization": f"Bearer {key}"}

    async def one(session: aiohttp.ClientSession, rng: random.Random) -> None:
        next_list = time.monotonic() + rng.uniform(0, list_s)
        await asyncio.sleep(rng.uniform(0, poll_s))
        while not stop.is_set():
            t0 = time.perf_counter()
            async with session.get(f"{url}/batches/{rng.choice(ids)}") as reply:
                await reply.read()
            got["retrieve"].append(1000 * (time.perf_counter() - t0))
            if time.monotonic() >= next_list:
                next_list += list_s
                t0 = time.perf_counter()
                async with session.get(f"{url}/batches?limit=20") as reply:
                    await reply.read()
                got["list"].append(1000 * (time.perf_counter() - t0))
            await asyncio.sleep(max(0.0, poll_s - (time.perf_counter() - t0)))

    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(headers=headers, connector=connector) as session:
        tasks = [asyncio.create_task(one(session, random.Random(i))) for i in range(pollers)]
        await stop.wait()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    out.write_text(json.dumps(got))


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 2) if ordered else 0.0


def service_case(
    base_url: str,
    files: list[Path],
    window: int,
    tmp: Path,
    pollers: int = 0,
    poll_s: float = 0.1,
    list_s: float = 1.0,
) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "vbatch", "api", "--port", "0", "--base-url", base_url,
           "--concurrency", str(window), "--data-dir", str(tmp / "data")]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        assert proc.stdout is not None
        url = proc.stdout.readline().strip()
        pin(proc.pid, "batches")
        client = OpenAI(base_url=url, api_key="-", max_retries=0)
        ids = []
        for path in files:
            with path.open("rb") as f:
                ids.append(client.files.create(file=f, purpose="batch").id)
        ps = psutil.Process(proc.pid)
        # The API's own process (issue 19), a child of the service's; none before the split.
        api = next((c for c in ps.children() if API_MODULE in " ".join(c.cmdline())), None)
        if api is not None:
            pin(api.pid, "clients")
        fake = psutil.Process(FAKE_PID[0]) if FAKE_PID else None
        fake0 = cpu_s(fake) if fake is not None else 0.0
        api0 = cpu_s(api) if api is not None else 0.0
        cpu0, t0 = cpu_s(ps), time.perf_counter()
        batches = [client.batches.create(input_file_id=i, endpoint="/v1/chat/completions",
                                         completion_window="24h").id for i in ids]  # fmt: skip
        poller = None
        if pollers:
            poller = subprocess.Popen([sys.executable, __file__, "--poll-url", url,
                                       "--poll-ids", ",".join(batches), "--pollers", str(pollers),
                                       "--poll-s", str(poll_s), "--list-s", str(list_s),
                                       "--poll-out", str(tmp / "polls.json")])  # fmt: skip
            pin(poller.pid, "clients")
        finished: dict[str, float] = {}
        while len(finished) < len(batches):
            time.sleep(0.25)
            for b in client.batches.list(limit=100):
                if b.id in batches and b.status == "completed" and b.id not in finished:
                    finished[b.id] = time.perf_counter() - t0
                    assert b.request_counts is not None and b.request_counts.failed == 0
        wall, runner_cpu = time.perf_counter() - t0, cpu_s(ps) - cpu0
        # When each batch went in_progress (whole seconds): a batch picked up late finishes late.
        began = [client.batches.retrieve(b).in_progress_at or 0 for b in batches]
        api_cpu = cpu_s(api) - api0 if api is not None else 0.0
        cpu = runner_cpu + api_cpu
        # Where the machine's cores went: the service (its runner's process and its API's),
        # the fake vLLM, the pollers' process.
        spent = {"service_cpu_s": round(cpu, 2), "runner_cpu_s": round(runner_cpu, 2),
                 "api_cpu_s": round(api_cpu, 2) if api is not None else None,
                 "fake_server_cpu_s": round(cpu_s(fake) - fake0, 2) if fake else None}  # fmt: skip
        polls: dict[str, list[float]] = {}
        if poller is not None:
            spent["pollers_cpu_s"] = round(cpu_s(psutil.Process(poller.pid)), 2)
            poller.send_signal(signal.SIGTERM)
            poller.wait(60)
            polls = json.loads((tmp / "polls.json").read_text())
    finally:
        proc.terminate()
        proc.wait(30)
    rows = sum(p.read_text().count("\n") for p in files)
    seen = {f"{kind}_{name}": value for kind, ms in polls.items() for name, value in
            (("count", len(ms)), ("p50_ms", _percentile(ms, 0.5)),
             ("p99_ms", _percentile(ms, 0.99)))}  # fmt: skip
    pinned = {side: sorted(cpus) for side, cpus in PIN.items()}
    return {"case": f"vbatch api, {pollers} pollers", "pollers": pollers, "pinned": pinned,
            **seen, **spent,
            "rows": rows, "batches": len(files), "wall_s": round(wall, 2),
            "requests_per_s": round(rows / wall), "cpu_ms_per_request":
            round(1000 * cpu / rows, 3), "first_batch_done_s": round(min(finished.values()), 2),
            "last_batch_done_s": round(max(finished.values()), 2),
            "in_progress_spread_s": max(began) - min(began)}  # fmt: skip


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
    ap.add_argument("--pollers", type=int, default=0)
    ap.add_argument("--poll-s", type=float, default=0.1)
    ap.add_argument("--list-s", type=float, default=1.0)
    ap.add_argument("--no-run", action="store_true", help="the service cases only")
    ap.add_argument("--pin", help="CPUS:CPUS, the batches' side's and the clients' (0:1)")
    ap.add_argument("--poll-url", help=argparse.SUPPRESS)  # the pollers' own process
    ap.add_argument("--poll-ids", help=argparse.SUPPRESS)
    ap.add_argument("--poll-out", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.poll_url:
        asyncio.run(_poll(a.poll_url, "-", a.poll_ids.split(","), a.pollers, a.poll_s,
                          a.list_s, Path(a.poll_out)))  # fmt: skip
        return
    if a.pin:
        batches_side, clients_side = a.pin.split(":")
        PIN.update(batches=_cpus(batches_side), clients=_cpus(clients_side))
        pin(os.getpid(), "clients")
    tmp = Path(tempfile.mkdtemp(prefix="vbatch-api-load-"))
    files = []
    for b in range(a.batches):
        path = tmp / f"b{b}.jsonl"
        path.write_text(lines(f"b{b}", a.rows // a.batches))
        files.append(path)
    server = subprocess.Popen([sys.executable, str(FAKESERVER), "--port", "0", "--latency",
                               a.latency], stdout=subprocess.PIPE, text=True)  # fmt: skip
    FAKE_PID.append(server.pid)
    pin(server.pid, "batches")
    try:
        assert server.stdout is not None
        base_url = server.stdout.readline().split()[1] + "/v1"
        cases: list[Any] = [lambda *x: service_case(*x)]
        if a.pollers:
            cases.append(lambda *x: service_case(*x, a.pollers, a.poll_s, a.list_s))
        if not a.no_run:
            cases.append(run_case)
        for n in range(a.repeat):
            for case in cases:
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
