"""Run by test_local_instance.py in a process of its own, as ``vbatch`` would be (Ray is
joined or started once per process): enters ``ray_session(ADDRESS)`` and prints, as JSON, what
it found inside (the session, the nodes, the Ray processes it started, any socket off
loopback) and what was left once it was out."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import ipaddress
import json
import os
import sys
from typing import Any

import psutil

RAY_PROCESSES = ("raylet", "gcs_server")


def _off_loopback(processes: list[psutil.Process]) -> set[str]:
    found = set()
    for proc in processes:
        with contextlib.suppress(psutil.Error):
            for conn in proc.net_connections(kind="inet"):
                for addr in (conn.laddr, conn.raddr):
                    ip = addr.ip.removeprefix("::ffff:") if addr else "127.0.0.1"
                    if not ipaddress.ip_address(ip).is_loopback:
                        found.add(f"{proc.name()} {conn.status} {ip}")
    return found


async def probe(address: str) -> dict[str, Any]:
    import ray

    from vbatch._fleet.ray import ray_session

    me = psutil.Process()
    async with ray_session(address) as session:
        started = [p for p in me.children(recursive=True) if p.name() in RAY_PROCESSES]
        facts: dict[str, Any] = {
            "session": dataclasses.asdict(session),
            "nodes": sorted(n["NodeManagerAddress"] for n in ray.nodes() if n["Alive"]),
            "cpus": ray.cluster_resources().get("CPU", 0),
            "started": sorted(p.name() for p in started),
            "off_loopback": sorted(_off_loopback([me, *me.children(recursive=True)])),
            "ray_tmpdir": sorted(os.listdir(os.environ["RAY_TMPDIR"])),
        }
    _, alive = psutil.wait_procs(started, timeout=20)
    facts["left"] = [p.name() for p in alive if p.status() != psutil.STATUS_ZOMBIE]
    facts["ray_tmpdir_after"] = sorted(os.listdir(os.environ["RAY_TMPDIR"]))
    facts["joined_after"] = ray.is_initialized()
    return facts


if __name__ == "__main__":
    print(json.dumps(asyncio.run(probe(sys.argv[1]))))
