"""The clients vbatch is measured against, each sending every row of a JSONL file to /completions.

  seed     the recipe users are told to follow: openai.AsyncOpenAI, asyncio.Semaphore(C), one
           task per row created up front, asyncio.gather
  aiohttp  a plain aiohttp worker pool: C workers pulling rows from one iterator, json in/out

Prints one JSON line: case, n, wall_s, req_s, cpu_s, max_rss_mb, tokens.
usage: python reference_clients.py {seed,aiohttp} INPUT.jsonl BASE_URL CONCURRENCY
           [--model M] [--max-tokens N] [--extra JSON]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import time
from typing import Any


def load(path: str) -> list[dict[str, Any]]:
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


async def seed(rows: list[dict[str, Any]], a: argparse.Namespace) -> int:
    from openai import AsyncOpenAI

    client = AsyncOpenAI(base_url=a.url, api_key="x", max_retries=2, timeout=3600)
    sem = asyncio.Semaphore(a.concurrency)

    async def one(row: dict[str, Any]) -> int:
        async with sem:
            r = await client.completions.create(
                model=a.model,
                prompt=row["prompt"],
                max_tokens=row.get("max_tokens", a.max_tokens),
                extra_body=a.extra,
            )
            return r.usage.completion_tokens if r.usage else 0

    return sum(await asyncio.gather(*[one(r) for r in rows]))


async def pool(rows: list[dict[str, Any]], a: argparse.Namespace) -> int:
    import aiohttp

    it = iter(rows)
    total = 0
    timeout = aiohttp.ClientTimeout(total=3600)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0), timeout=timeout) as s:

        async def worker() -> None:
            nonlocal total
            for row in it:
                body = {"model": a.model, "prompt": row["prompt"],
                        "max_tokens": row.get("max_tokens", a.max_tokens), **a.extra}  # fmt: skip
                async with s.post(a.url + "/completions", json=body) as r:
                    total += (await r.json())["usage"]["completion_tokens"]

        await asyncio.gather(*[worker() for _ in range(a.concurrency)])
    return total


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("case", choices=["seed", "aiohttp"])
    ap.add_argument("input")
    ap.add_argument("url")
    ap.add_argument("concurrency", type=int)
    ap.add_argument("--model", default="m")
    ap.add_argument("--max-tokens", type=int, default=16)
    ap.add_argument("--extra", type=json.loads, default={})
    a = ap.parse_args()
    rows = load(a.input)
    t0 = time.perf_counter()
    tokens = asyncio.run({"seed": seed, "aiohttp": pool}[a.case](rows, a))
    wall = time.perf_counter() - t0
    ru = resource.getrusage(resource.RUSAGE_SELF)
    print(json.dumps({
        "case": a.case, "n": len(rows), "concurrency": a.concurrency, "wall_s": round(wall, 2),
        "req_s": round(len(rows) / wall, 1), "cpu_s": round(ru.ru_utime + ru.ru_stime, 2),
        "max_rss_mb": round(ru.ru_maxrss / 1024, 1), "tokens": tokens,
    }))  # fmt: skip


if __name__ == "__main__":
    main()
