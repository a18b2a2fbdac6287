"""The output seam: ``iter_results`` writes through any ``ResultWriter``, which keeps the job's
state too (as the Batch API service's does, in its database), and resumes from it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from fakeserver import FakeServer
from helpers import prompt_rows, write_jsonl

import vbatch
from vbatch import Result
from vbatch._input.ids import DigestList
from vbatch._input.validate import InputIndex
from vbatch._output.state import StoredJob, fingerprint
from vbatch._output.writer import OutputState


class MemoryStore:
    def __init__(self) -> None:
        self.saved: list[tuple[dict[str, Any], InputIndex]] = []

    def load(self) -> StoredJob:
        parts, index = self.saved[-1]
        return StoredJob(fingerprint(parts), parts, index)

    def save(self, parts: dict[str, Any], index: InputIndex) -> None:
        self.saved.append((parts, index))


class MemoryWriter:
    """Keeps successes and errors apart, as the Batch API's output and error files do."""

    name = "memory"

    def __init__(self, store: MemoryStore) -> None:
        self.store = store
        self.ok: dict[Any, Result] = {}
        self.failed: dict[Any, Result] = {}
        self.opened = self.closed = 0
        self.locked = False

    def lock(self) -> None:
        assert not self.locked, "one writer at a time"
        self.locked = True

    def check(self) -> None:
        pass

    def holds_results(self) -> bool:
        return bool(self.ok or self.failed)

    def load_state(self) -> StoredJob:
        return self.store.load()

    def save_state(self, parts: dict[str, Any], index: InputIndex) -> None:
        self.store.save(parts, index)

    def reset(self) -> None:
        self.ok.clear()
        self.failed.clear()

    def scan(self, retry_failed: bool) -> OutputState:
        done = DigestList()
        for row_id in self.ok:
            done.append(row_id)
        return OutputState(done=np.sort(done.to_numpy()), ok=len(self.ok), resumed=True)

    def open(self, batch_lines: bool) -> None:
        self.opened += 1

    def write(self, result: Result) -> None:
        (self.ok if result.ok else self.failed)[result.id] = result

    def flush(self) -> None:
        pass

    def close(self) -> None:
        self.closed += 1
        self.locked = False


async def test_results_go_to_the_writer_and_a_rerun_resumes_from_it(
    server: FakeServer, tmp_path: Path
) -> None:
    rows = prompt_rows(40)
    inp = write_jsonl(tmp_path / "in.jsonl", rows)
    server.script("r3", [500, 500])  # r3 fails both attempts: the second run sends it again
    store = MemoryStore()
    writer = MemoryWriter(store)
    job = vbatch.make_job(str(inp), model="smol")
    async with vbatch.connect(server.base_url, concurrency=4, max_attempts=2) as d:
        async with vbatch.iter_results(job, d, writer=writer) as results:
            first = [r async for r in results]
        assert len(first) == 40 and set(writer.failed) == {"r3"} and len(writer.ok) == 39
        assert len(store.saved) == 1 and store.saved[0][1].rows == 40
        async with vbatch.iter_results(job, d, writer=writer) as results:
            again = [r async for r in results]
    assert [r.id for r in again] == ["r3"] and again[0].ok
    assert len(writer.ok) == 40
    assert len(store.saved) == 1  # the same job: its validated index was reused
    assert (writer.opened, writer.closed) == (2, 2)
    assert not (tmp_path / "memory").exists()  # nothing went to a file
