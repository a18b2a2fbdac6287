"""The clients vbatch is measured against, each sending every row of a JSONL file to /completions.

  seed     the recipe users are told to follow: openai.AsyncOpenAI, asyncio.Semaphore(C), one
           task per row created up front, asyncio.gather
  aiohttp  a plain aiohttp worker pool: C workers pulling rows from one iterator, json in/out

Prints one JSON line: case, n, wall_s, req_s, cpu_s, max_rss_mb.
usage: python reference_clients.py {seed,aiohttp} INPUT.jsonl BASE_URL CONCURRENCY
"""

from __future__ import annotations

import asyncio
import json
import resource
import sys
import time
from typing import Any


def load(path: str) -> list[dict[str, Any]]:
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


async def seed(rows: list[dict[str, Any]], url: str, conc: int) -> int:
    from openai import AsyncOpenAI

    client = AsyncOpenAI(base_url=url, api_key="x", max_retries=2)
    sem = asyncio.Semaphore(conc)

    async def one(row: dict[str, Any]) -> int:
        async with sem:
            r = await client.completions.create(
                model="m", prompt=row["prompt"], max_tokens=row.get("max_tokens", 16)
            )
            return r.usage.completion_tokens if r.usage else 0

    return sum(await asyncio.gather(*[one(r) for r in rows]))


async def pool(rows: list[dict[str, Any]], url: str, conc: int) -> int:
    import aiohttp

    it = iter(rows)
    total = 0
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as s:

        async def worker() -> None:
            nonlocal total
            for row in it:
                body = {"model": "m", "prompt": row["prompt"], "max_tokens": 16}
                async with s.post(url + "/completions", json=body) as r:
                    total += (await r.json())["usage"]["completion_tokens"]

        await asyncio.gather(*[worker() for _ in range(conc)])
    return total


def main() -> None:
    case, path, url, conc = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    t0 = time.perf_counter()
    rows = load(path)
    tokens = asyncio.run({"seed": seed, "aiohttp": pool}[case](rows, url, conc))
    wall = time.perf_counter() - t0
    ru = resource.getrusage(resource.RUSAGE_SELF)
    print(json.dumps({
        "case": case, "n": len(rows), "concurrency": conc, "wall_s": round(wall, 2),
        "req_s": round(len(rows) / wall, 1), "cpu_s": round(ru.ru_utime + ru.ru_stime, 2),
        "max_rss_mb": round(ru.ru_maxrss / 1024, 1), "tokens": tokens,
    }))  # fmt: skip


if __name__ == "__main__":
    main()
