"""Several servers of one model behind one dispatcher: load spread, metrics summed."""

from __future__ import annotations

import asyncio
from pathlib import Path

from fakeserver import FakeServer
from helpers import prompt_rows, read_jsonl, write_jsonl

import vbatch
from vbatch._client.endpoints import FleetTransport


async def test_requests_spread_over_replicas(tmp_path: Path) -> None:
    a, b = FakeServer().start(), FakeServer().start()
    try:
        a.latency = b.latency = 0.005
        inp = write_jsonl(tmp_path / "in.jsonl", prompt_rows(300))
        out = tmp_path / "out.jsonl"
        async with vbatch.connect([a.base_url, b.base_url], concurrency=16) as d:
            assert isinstance(d.transport, FleetTransport)
            summary = await vbatch.arun(str(inp), str(out), dispatcher=d, model="smol")
            metrics = await d.transport.request("GET", "/metrics")
        assert summary.exit_code == 0
        assert len(read_jsonl(out)) == 300
        assert a.generation_requests + b.generation_requests == 300
        # Least-busy choice with equal latency: neither replica idles.
        assert min(a.generation_requests, b.generation_requests) > 100
        assert metrics.content.count(b"vllm:num_requests_running") >= 2
    finally:
        await asyncio.to_thread(a.stop)
        await asyncio.to_thread(b.stop)
