"""The same job through ``LocalFleet`` (``--replicas N``) and ``RayFleet`` (``--ray``, N members),
alternating, side by side in one run: what Ray's placement costs the data path.

Both fleets start the same vLLM servers and the one dispatcher feeds them over HTTP, so the
run phase should match; Ray adds its own start (joining the cluster, placing the actors). Each
case is the user's whole ``vbatch run`` command; reported: the run phase's output tokens/s
(``--metrics-json``), its start-up and the whole command.

On a machine without GPUs (this dev VM) the Ray cluster is local (a head offering no CPU and
N worker nodes of one CPU each, all on 127.0.0.1, as in tests/onray), one CPU server per node,
and ``--replicas N`` starts N CPU servers on the same cores: a proxy for the H200 comparison
of issue 13 (benchmarks/gpu/suite.sh ``launch-r3``/``ray-r3``), not that comparison.

usage: python benchmarks/ray_vs_local.py [--servers 2] [--rows 400] [--max-tokens 32]
       [--pairs 2] [--out FILE]
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


def run_case(args: list[str], inp: Path, tmp: Path, env: dict[str, str]) -> dict[str, Any]:
    out, metrics = tmp / "out.jsonl", tmp / "metrics.json"
    for stale in tmp.glob("out.jsonl*"):
        stale.unlink()
    cmd = [sys.executable, "-m", "vbatch", "run", str(inp), "-o", str(out), "--overwrite",
           "--temperature", "0", "--extra-body", '{"ignore_eos": true}', "--quiet",
           "--metrics-json", str(metrics), *args]  # fmt: skip
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    total = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"{cmd} failed:\n{proc.stderr}")
    m = json.loads(metrics.read_text())
    return {"total_s": round(total, 1), "startup_s": m["startup_s"], "run_s": m["wall_s"],
            "output_tok_s": round(m["completion_tokens"] / m["wall_s"], 1),
            "failed": m["failed"]}  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--servers", type=int, default=2)
    ap.add_argument("--rows", type=int, default=400)
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--pairs", type=int, default=2)
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    from ray.cluster_utils import Cluster

    tmp = Path(tempfile.mkdtemp(prefix="vbray-"))
    inp = tmp / "in.jsonl"
    with open(inp, "w") as f:
        for i in range(a.rows):
            row = {"id": i, "prompt": f"Write a line about the number {i}.",
                   "max_tokens": a.max_tokens}  # fmt: skip
            f.write(json.dumps(row) + "\n")
    # Loopback only, no usage stats, the cluster's files (and its address note) in tmp.
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "RAY_TMPDIR": str(tmp)}
    os.environ.update(env)
    (tmp / "ray").mkdir()
    node: dict[str, Any] = {"node_ip_address": "127.0.0.1", "temp_dir": str(tmp)}
    head = {**node, "num_cpus": 0, "include_dashboard": False}
    cluster = Cluster(initialize_head=True, head_node_args=head)
    try:
        for _ in range(a.servers):
            cluster.add_node(**node, num_cpus=1)
        cases = {"local": ["--replicas", str(a.servers)], "ray": [f"--ray={cluster.address}"]}
        meta = {"date": time.strftime("%Y-%m-%d %H:%M"), "rows": a.rows,
                "max_tokens": a.max_tokens, "servers": a.servers,
                "machine": f"{platform.node()} {os.cpu_count()} cores"}  # fmt: skip
        lines = []
        for k in range(a.pairs):
            order = ["local", "ray"] if k % 2 == 0 else ["ray", "local"]
            for case in order:
                rec = {"bench": "ray_vs_local", "case": case, "pair": k + 1,
                       **run_case(cases[case], inp, tmp, env), **meta}  # fmt: skip
                print(json.dumps(rec), flush=True)
                lines.append(rec)
        if a.out:
            with open(a.out, "a") as f:
                f.writelines(json.dumps(r) + "\n" for r in lines)
    finally:
        cluster.shutdown()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
