"""GPU benchmark: vbatch against vLLM's offline engine and the seed recipe, side by side.

Runs ON the GPU machine (see run_*.sh beside this file and docs/benchmarks.md). Each case
appends one JSON line to --out: case, model, max_tokens, n, wall_s, out_tok_s, req_s,
client_cpu_s (+ details). The prompts are the baseline's (shared/gpu/baseline/prompts.py, same
seed), written once as a vbatch JSONL input.

  prompts          write the input file
  offline          vllm.LLM(...).generate over the prompts (engine settings as JSON)
  server           start vLLM's OpenAI server in its own session (it outlives this command)
  seed             the seed recipe (openai client + Semaphore + gather) against --url
  vbatch           `vbatch run` against --url (its default, adaptive window)
  vbatch-launch    `vbatch run --model ...`: vbatch starts and sizes vLLM itself

With ``--shape NAME`` (shapes.py: decode, prefix, chat, short, long, n4), ``offline`` and
``vbatch-launch`` run that job shape and time the whole command as a user waits for it:
``total_wall_s`` from the process's start (offline: imports, ``LLM(model)`` with vLLM's
defaults, ``generate``/``chat``, no warm-up) or from the command's launch (vbatch: sizing,
vLLM's start, the run, the stop), beside
``wall_s``, the run alone.
"""

from __future__ import annotations

import time

T_PROCESS = time.perf_counter()  # before the heavy imports: offline's whole command starts here

import argparse  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import re  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import threading  # noqa: E402
import urllib.request  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import shapes  # noqa: E402

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
IGNORE_EOS = {"ignore_eos": True, "temperature": 0}


class ServerCpu:
    """CPU seconds of vLLM's processes (API servers, engine cores; the offline process itself)
    from now on, sampled from /proc every second: which one is busy all the time is the
    bottleneck. A server that was already running counts from now, not from its start."""

    def __init__(self, include_self: bool = False) -> None:
        self.include_self = include_self
        self.cpu: dict[int, tuple[str, float]] = {}
        self.base: dict[int, float] = {}
        self.stop = threading.Event()
        self._sample()
        self.t0 = time.perf_counter()
        self.thread = threading.Thread(target=self._loop, daemon=True)
        self.thread.start()

    def _sample(self) -> None:
        tick = os.sysconf("SC_CLK_TCK")
        for d in os.listdir("/proc"):
            if not d.isdigit():
                continue
            try:
                cmd = Path(f"/proc/{d}/cmdline").read_bytes().replace(b"\0", b" ").decode()
                stat = Path(f"/proc/{d}/stat").read_text()
            except OSError:
                continue
            comm = stat[stat.index("(") + 1 : stat.rindex(")")]
            mine = self.include_self and int(d) == os.getpid()
            if not (mine or comm.startswith("VLLM") or "vllm.entrypoints" in cmd):
                continue
            fields = stat[stat.rindex(")") + 2 :].split()
            name = "api_server" if "vllm.entrypoints" in cmd else ("offline" if mine else comm)
            used = (int(fields[11]) + int(fields[12])) / tick
            self.cpu[int(d)] = (name, used - self.base.setdefault(int(d), used))

    def _loop(self) -> None:
        while not self.stop.wait(1.0):
            self._sample()

    def result(self) -> dict[str, Any]:
        self._sample()
        self.stop.set()
        wall = time.perf_counter() - self.t0
        busiest = sorted(self.cpu.values(), key=lambda v: -v[1])[:6]
        return {"wall_s": round(wall, 1),
                "busiest": [[n, round(c, 1), round(c / wall, 2)] for n, c in busiest]}  # fmt: skip


def record(out: str, **kw: Any) -> None:
    line = json.dumps(kw)
    print("RESULT " + line, flush=True)
    with open(out, "a") as f:
        f.write(line + "\n")


def run_child(
    cmd: list[str],
    timeout: float,
    watch: Path | None = None,
    env: dict[str, str] | None = None,
    stderr: Any = None,
) -> tuple[float, float | None, str]:
    """(wall s, seconds until ``watch`` first had data (None without one), stdout); stderr
    passes through unless given."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, env=env, stderr=stderr)
    first = None
    if watch is not None:
        watch.unlink(missing_ok=True)
        while proc.poll() is None and time.perf_counter() - t0 < timeout:
            if watch.exists() and watch.stat().st_size > 0:
                first = time.perf_counter() - t0
                break
            time.sleep(0.05)
    try:
        out, _ = proc.communicate(timeout=max(1.0, timeout - (time.perf_counter() - t0)))
    except subprocess.TimeoutExpired:
        proc.kill()
        raise
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"{cmd[:4]} failed ({proc.returncode}): {out[-2000:]}")
    return wall, first, out


def cmd_prompts(a: argparse.Namespace) -> None:
    sys.path.insert(0, a.baseline)
    from prompts import make_prompts

    with open(a.input, "w") as f:
        for i, p in enumerate(make_prompts(a.n)):
            f.write(json.dumps({"id": i, "prompt": p}) + "\n")


def cmd_offline_shape(a: argparse.Namespace) -> None:
    """A user's offline script for the shape: vLLM's defaults, the whole job, no warm-up."""
    rows = shapes.rows(a.shape)[: a.rows or None]
    import vllm
    from vllm import LLM, SamplingParams

    t0 = time.perf_counter()
    llm = LLM(model=a.model, seed=0, load_format="dummy", **json.loads(a.engine))
    startup = time.perf_counter() - t0
    n = shapes.SHAPES[a.shape].n
    # vLLM refuses n > 1 with greedy sampling; ignore_eos still makes every completion full.
    sp = SamplingParams(max_tokens=a.max_tokens, ignore_eos=True, temperature=1.0 if n > 1 else 0,
                        n=n)  # fmt: skip
    t0 = time.perf_counter()
    cpu = ServerCpu(include_self=True)
    if "messages" in rows[0]:
        outs = llm.chat([r["messages"] for r in rows], sp, use_tqdm=False)
    else:
        outs = llm.generate([r["prompt"] for r in rows], sp, use_tqdm=False)
    wall = time.perf_counter() - t0
    server_cpu = cpu.result()
    tokens = sum(len(c.token_ids) for o in outs for c in o.outputs)
    prompt_tokens = sum(len(o.prompt_token_ids or ()) for o in outs)
    record(a.out, case=a.case, shape=a.shape, model=a.label, max_tokens=a.max_tokens,
           n=len(outs), wall_s=round(wall, 2), out_tok_s=round(tokens / wall, 1),
           req_s=round(len(outs) / wall, 2), startup_s=round(startup, 1),
           total_wall_s=round(time.perf_counter() - T_PROCESS, 1),
           mean_prompt_tokens=round(prompt_tokens / len(outs), 1), engine=json.loads(a.engine),
           vllm=vllm.__version__, server_cpu=server_cpu)  # fmt: skip


def cmd_offline(a: argparse.Namespace) -> None:
    if a.shape:
        cmd_offline_shape(a)
        return
    sys.path.insert(0, a.baseline)
    import vllm
    from prompts import make_prompts
    from vllm import LLM, SamplingParams

    engine = json.loads(a.engine)
    t0 = time.perf_counter()
    llm = LLM(model=a.model, seed=0, load_format="dummy", **engine)
    startup = time.perf_counter() - t0
    sp = SamplingParams(max_tokens=a.max_tokens, ignore_eos=True, temperature=0)
    prompts = make_prompts(a.n)
    llm.generate(prompts[:256], sp, use_tqdm=False)  # warm-up, not timed
    t0, c0 = time.perf_counter(), time.process_time()
    cpu = ServerCpu(include_self=True)
    outs = llm.generate(prompts, sp, use_tqdm=False)
    wall = time.perf_counter() - t0
    server_cpu = cpu.result()
    tokens = sum(len(o.outputs[0].token_ids) for o in outs)
    record(a.out, case=a.case, model=a.label, max_tokens=a.max_tokens, n=len(outs),
           wall_s=round(wall, 2), out_tok_s=round(tokens / wall, 1),
           req_s=round(len(outs) / wall, 2), client_cpu_s=None,
           frontend_cpu_s=round(time.process_time() - c0, 2), startup_s=round(startup, 1),
           engine=engine, vllm=vllm.__version__, server_cpu=server_cpu)  # fmt: skip


def wait_health(url: str, pid: int, timeout: float) -> float:
    t0 = time.time()
    while time.time() - t0 < timeout:
        try:
            if urllib.request.urlopen(url + "/health", timeout=2).status == 200:
                return time.time() - t0
        except OSError:
            pass
        try:
            os.kill(pid, 0)
        except OSError:
            raise SystemExit("server died") from None
        time.sleep(1)
    raise SystemExit("server not healthy in time")


def cmd_server(a: argparse.Namespace) -> None:
    engine = json.loads(a.engine)
    args = []
    for k, v in engine.items():
        flag = "--" + k.replace("_", "-")
        args += [flag] if v is True else ([f"--no-{flag[2:]}"] if v is False else [flag, str(v)])
    log = open(a.log, "ab")  # noqa: SIM115 - the server keeps it after we exit
    proc = subprocess.Popen(
        [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", a.model,
         "--served-model-name", a.label, "--host", "127.0.0.1", "--port", str(a.port),
         "--load-format", "dummy", *args],
        stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    took = wait_health(f"http://127.0.0.1:{a.port}", proc.pid, a.timeout)
    print(f"server {a.label} healthy after {took:.0f}s (pid {proc.pid})", flush=True)


def _client_record(a: argparse.Namespace, wall: float, stats: dict[str, Any], **kw: Any) -> None:
    tokens = stats["tokens"]
    record(a.out, case=a.case, model=a.label, max_tokens=a.max_tokens, n=stats["n"],
           wall_s=round(wall, 2), out_tok_s=round(tokens / wall, 1),
           req_s=round(stats["n"] / wall, 2), client_cpu_s=stats["cpu_s"],
           client_cpu_ms_per_req=round(1000 * stats["cpu_s"] / stats["n"], 3), **kw)  # fmt: skip


def cmd_seed(a: argparse.Namespace) -> None:
    cmd = [sys.executable, str(ROOT / "benchmarks" / "reference_clients.py"), "seed", a.input,
           a.url + "/v1", str(a.concurrency), "--model", a.label, "--max-tokens", str(a.max_tokens),
           "--extra", json.dumps(IGNORE_EOS)]  # fmt: skip
    cpu = ServerCpu()
    _, _, out = run_child(cmd, a.timeout)
    stats = json.loads(out.strip().splitlines()[-1])
    _client_record(a, stats["wall_s"], stats, concurrency=a.concurrency, server_cpu=cpu.result())


def _vbatch(a: argparse.Namespace, *extra: str) -> None:
    out = Path(a.workdir) / f"{a.case}.jsonl"
    metrics = Path(a.workdir) / f"{a.case}.metrics.json"
    cmd = [sys.executable, "-m", "vbatch", "run", a.input, "-o", str(out), "--overwrite",
           "--max-tokens", str(a.max_tokens), "--temperature", "0",
           "--extra-body", json.dumps({"ignore_eos": True}), "--metrics-json", str(metrics),
           *extra]  # fmt: skip
    if a.shape and shapes.SHAPES[a.shape].n > 1:  # not greedy: vLLM refuses n > 1 with it
        cmd += ["--n", str(shapes.SHAPES[a.shape].n), "--temperature", "1.0"]
    env = None
    if a.src:  # another tree's vbatch (a before/after pair in one lease)
        env = {**os.environ, "PYTHONPATH": f"{a.src}:{os.environ.get('PYTHONPATH', '')}"}
    cpu = ServerCpu()
    log = Path(a.workdir) / f"{a.case}.stderr"
    began = time.time()
    with open(log, "w") as err:
        total, first, _ = run_child(cmd, a.timeout, watch=out, env=env, stderr=err)
    timeline = server_timeline(Path(os.environ.get("VBATCH_HOME", "/root/vbhome")) / "logs", began)
    server_cpu = cpu.result()  # over the whole command: start-up included when vbatch launches
    m = json.loads(metrics.read_text())
    assert m["ok"] == m["total"], m
    said = [line for line in log.read_text().splitlines() if "starting" in line]
    stats = {"n": m["done"], "tokens": m["completion_tokens"], "cpu_s": m["client_cpu_s"]}
    _client_record(a, m["wall_s"], stats, total_wall_s=round(total, 1),
                   startup_s=round(total - m["wall_s"], 1), args=list(extra),
                   first_result_s=None if first is None else round(first, 1),
                   restarts=m.get("restarts"), src=a.src or "this tree",
                   window=m.get("window"), window_history=m.get("window_history"),
                   shape=a.shape or None, launched=said[0] if said else None,
                   prompt_tokens=m.get("prompt_tokens"), server_cpu=server_cpu,
                   timeline=timeline,
                   mp_method=os.environ.get("VLLM_WORKER_MULTIPROC_METHOD"))  # fmt: skip


# Where each server vbatch launched was in its start, from its log (vLLM's lines carry the
# time to the second): what the gap to offline's start is made of.
MARKS = {
    "args": "non-default args",  # the API process has imported vLLM and parsed its flags
    "engine": "Initializing a V1 LLM engine",  # the engine process is up (forked or spawned)
    "graphs": "Graph capturing finished",
    "init_done": "init engine (profile, create kv cache",
    "serving": "Starting vLLM server on",
}
_STAMP = re.compile(r"(\d\d)-(\d\d) (\d\d):(\d\d):(\d\d)")


def server_timeline(logs: Path, since: float) -> list[dict[str, float]]:
    """Seconds from ``since`` (a time.time()) to each of MARKS, per server log written since."""
    year = time.localtime(since).tm_year
    found = []
    for log in sorted(logs.glob("vllm-*.log")):
        if log.stat().st_mtime < since:
            continue
        marks: dict[str, float] = {}
        for line in log.read_text(errors="replace").splitlines():
            for name, text in MARKS.items():
                if name not in marks and text in line and (m := _STAMP.search(line)):
                    mo, d, h, mi, sec = (int(x) for x in m.groups())
                    at = time.mktime((year, mo, d, h, mi, sec, 0, 0, -1))
                    marks[name] = round(at - since, 1)
        found.append(marks)
    return found


def cmd_vbatch(a: argparse.Namespace) -> None:
    _vbatch(a, "--base-url", a.url + "/v1", "--model", a.label, "--quiet", *a.vbatch_args.split())


def cmd_vbatch_launch(a: argparse.Namespace) -> None:
    if a.shape:  # the shape's rows, written before the command starts: the user's data
        path = Path(a.workdir) / f"shape_{a.shape}.jsonl"
        a.input = str(shapes.write_input(a.shape, path, a.rows or None))
    # Not --quiet: the plan's line ("starting 3 replicas of vLLM ...") is kept in the record.
    _vbatch(a, "--model", a.model, "--vllm-arg=--load-format=dummy", *a.vbatch_args.split())


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("command", choices=["prompts", "offline", "server", "seed", "vbatch",
                                        "vbatch-launch"])  # fmt: skip
    ap.add_argument("--case", default="")
    ap.add_argument("--label", default="smol")
    ap.add_argument("--model", default="/root/models/smol")
    ap.add_argument("--n", type=int, default=20000)
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--input", default="/root/bench/prompts.jsonl")
    ap.add_argument("--baseline", default=str(ROOT / ".gpu" / "gpu" / "baseline"))
    ap.add_argument("--engine", default="{}")
    ap.add_argument("--url", default="http://127.0.0.1:8000")
    ap.add_argument("--port", type=int, default=8000)
    ap.add_argument("--log", default="/root/logs/server.log")
    ap.add_argument("--concurrency", type=int, default=500)
    ap.add_argument("--timeout", type=float, default=560)
    ap.add_argument("--workdir", default="/root/bench")
    ap.add_argument("--out", default=os.path.join(os.environ.get("OUT", "/tmp"), "results.jsonl"))
    ap.add_argument("--vbatch-args", default="", help="more `vbatch run` flags, one string")
    ap.add_argument("--src", default="", help="run vbatch from this src/ instead")
    ap.add_argument("--shape", default="", choices=["", *shapes.SHAPES], help="a job shape")
    ap.add_argument("--rows", type=int, default=0, help="the shape's first N rows (a dry run)")
    a = ap.parse_args()
    if a.shape:
        a.max_tokens = shapes.SHAPES[a.shape].max_tokens
    Path(a.workdir).mkdir(parents=True, exist_ok=True)
    Path(a.log).parent.mkdir(parents=True, exist_ok=True)
    a.case = a.case or a.command
    {"prompts": cmd_prompts, "offline": cmd_offline, "server": cmd_server, "seed": cmd_seed,
     "vbatch": cmd_vbatch, "vbatch-launch": cmd_vbatch_launch}[a.command](a)  # fmt: skip


if __name__ == "__main__":
    main()
