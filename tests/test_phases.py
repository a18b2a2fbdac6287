"""A run's phases, in order (prepare -> plan -> scan -> send) and what each promises: an output
that cannot be used ends the run before any server exists; the input is read once to check it
and once to send it; a stream's block releases everything when left; options are typed."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

import pytest
from fakeserver import FakeServer
from helpers import prompt_rows, read_jsonl, write_jsonl

import vbatch
from vbatch import InputError, OutputError
from vbatch._engine.plan import LaunchPlan
from vbatch._fleet.base import FleetStatus
from vbatch._fleet.local import OnLaunch, Settle
from vbatch._options import GROUPS, Options
from vbatch._output.lock import OutputLock

# -- a stand-in for the servers vbatch would start ------------------------------------------------

OPENED: dict[str, int] = {}


def _count_opens(event: str, args: tuple[Any, ...]) -> None:
    if event == "open" and isinstance(args[0], str) and args[0] in OPENED:
        OPENED[args[0]] += 1


sys.addaudithook(_count_opens)  # cannot be removed: it counts only the paths a test names


class StubFleet:
    """Takes the place of ``LocalFleet``: "starts" by waiting as vLLM's start-up would (until
    ``release`` is set), then serves from a fake server. Records what was asked of it."""

    instances: ClassVar[list[StubFleet]] = []
    url: ClassVar[str] = ""
    hold: ClassVar[bool] = False  # start "starting", until the test sets ``release``

    def __init__(self, plan: LaunchPlan, on_launch: OnLaunch | None = None,
                 max_restarts: int = 0, settle: Settle | None = None) -> None:  # fmt: skip
        self.plan, self.settle = plan, settle
        self.started = self.stopped = False
        self.up_at: float | None = None
        self.release = asyncio.Event()
        if not StubFleet.hold:
            self.release.set()
        StubFleet.instances.append(self)

    async def start(self) -> None:
        self.started = True
        if self.settle is not None:
            await self.settle()
        await self.release.wait()
        self.up_at = time.monotonic()

    def endpoints(self) -> Sequence[str]:
        return (StubFleet.url,) if self.up_at and not self.stopped else ()

    async def suspect(self, url: str) -> bool:
        return False

    async def wait_up(self) -> None:
        pass

    async def models(self) -> Mapping[str, int | None] | None:
        return {self.plan.served_model: self.plan.spec.max_model_len}

    def status(self) -> FleetStatus:
        return FleetStatus(1, 1 if self.up_at else 0)

    async def stop(self) -> None:
        self.stopped = True


@pytest.fixture
def model(tmp_path: Path) -> str:
    """A model folder vbatch can plan for (config only: prompts are bounded by their bytes)."""
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"max_position_embeddings": 4096}))
    return str(folder)


@pytest.fixture
def launched(monkeypatch: pytest.MonkeyPatch, model: str) -> Iterator[FakeServer]:
    """vbatch "launches" ``StubFleet``s serving from a fake server of ``model``."""
    server = FakeServer(model=model).start()
    StubFleet.instances, StubFleet.url, StubFleet.hold = [], server.base_url, False
    monkeypatch.setattr("vbatch._fleet.factory.LocalFleet", StubFleet)
    try:
        yield server
    finally:
        server.stop()


# -- prepare: nothing launched for an output that cannot be used -----------------------------------


def test_a_locked_output_fails_before_any_server_is_planned(
    launched: FakeServer, model: str, tmp_path: Path
) -> None:
    inp = write_jsonl(tmp_path / "in.jsonl", prompt_rows(5))
    out = tmp_path / "out.jsonl"
    holder = OutputLock(str(out))
    holder.acquire()
    try:
        with pytest.raises(OutputError, match="being written by another vbatch run"):
            vbatch.run(inp, out, model=model, max_tokens=4)
    finally:
        holder.release()
    with pytest.raises(OutputError, match="does not exist"):
        vbatch.run(inp, tmp_path / "nope" / "out.jsonl", model=model, max_tokens=4)
    assert StubFleet.instances == []  # not built, so never started (nor stopped)


def test_the_cli_refuses_a_locked_output_before_vllm_or_the_model_is_touched(
    tmp_path: Path,
) -> None:
    """The embedded default: exit 2 at once, no server log written, the model not converted."""
    inp = write_jsonl(tmp_path / "in.jsonl", prompt_rows(5))
    out = tmp_path / "out.jsonl"
    home = tmp_path / "home"
    holder = OutputLock(str(out))
    holder.acquire()
    try:
        for output in (out, tmp_path / "nope" / "out.jsonl"):
            t0 = time.monotonic()
            done = subprocess.run(
                [sys.executable, "-m", "vbatch", "run", str(inp), "-o", str(output)],
                capture_output=True, text=True, env={"VBATCH_HOME": str(home), "PATH": ""},
            )  # fmt: skip
            assert done.returncode == 2, done.stderr
            assert "vbatch: error:" in done.stderr
            assert time.monotonic() - t0 < 30
    finally:
        holder.release()
    assert not home.exists()  # no model converted, no server log


# -- plan + scan while the servers start; bad input never starts them ------------------------------


def test_the_scan_runs_while_the_servers_start_and_bad_input_never_starts_them(
    launched: FakeServer, model: str, tmp_path: Path
) -> None:
    inp = write_jsonl(tmp_path / "in.jsonl", prompt_rows(30))
    out = tmp_path / "out.jsonl"

    async def job() -> vbatch.RunSummary:
        StubFleet.hold = True  # vLLM still starting ...
        run = asyncio.ensure_future(vbatch.arun(inp, out, model=model, max_tokens=4))
        while not StubFleet.instances:
            await asyncio.sleep(0.01)
        fleet = StubFleet.instances[0]
        for _ in range(500):
            if Path(f"{out}.vbatch.ids").exists():
                break  # ... while the input was checked and indexed
            await asyncio.sleep(0.01)
        assert Path(f"{out}.vbatch.ids").exists() and fleet.up_at is None
        fleet.release.set()
        StubFleet.hold = False
        return await run

    summary = vbatch._api.run_sync(job())
    assert summary.stats.ok == 30 and len(read_jsonl(out)) == 30
    assert [f.started and f.stopped for f in StubFleet.instances] == [True]

    bad = tmp_path / "bad.jsonl"
    bad.write_text(inp.read_text() + "{not json\n")
    with pytest.raises(InputError, match=r"bad\.jsonl:31: malformed JSON"):
        vbatch.run(bad, tmp_path / "bad.out.jsonl", model=model, max_tokens=4)
    assert len(StubFleet.instances) == 1  # the bad file's run planned no server


# -- the input is read once to check it, once to send it ---------------------------------------


def _opens(path: Path, call: Any) -> int:
    OPENED[str(path)] = 0
    try:
        call()
        return OPENED[str(path)]
    finally:
        del OPENED[str(path)]


def test_input_opens_against_a_server(server: FakeServer, tmp_path: Path) -> None:
    inp = write_jsonl(tmp_path / "in.jsonl", prompt_rows(200))
    out = tmp_path / "out.jsonl"

    def run(**kw: Any) -> None:
        vbatch.run(inp, out, base_url=server.base_url, model="smol", **kw)

    assert _opens(inp, run) == 2  # the scan (checks, ids, digest), the send
    lines = out.read_bytes().splitlines(keepends=True)
    out.write_bytes(b"".join(lines[:120]))  # a run that stopped part-way
    assert _opens(inp, run) == 2  # the digest (same job?), the send of what is left
    assert len(read_jsonl(out)) == 200
    assert _opens(inp, run) == 1  # all done: only the digest


def test_input_opens_when_vbatch_launches(launched: FakeServer, model: str, tmp_path: Path) -> None:
    inp = write_jsonl(tmp_path / "in.jsonl", prompt_rows(3000))  # past the first-rows plan
    out = tmp_path / "out.jsonl"

    def run() -> None:
        vbatch.run(inp, out, model=model, max_tokens=4)

    assert _opens(inp, run) == 2  # the scan (plan on its first rows, then size the rest), send
    lines = out.read_bytes().splitlines(keepends=True)
    out.write_bytes(b"".join(lines[:1000]))
    assert _opens(inp, run) == 3  # the digest, sizing what is left, the send
    assert len(read_jsonl(out)) == 3000 and len(StubFleet.instances) == 2
    assert _opens(inp, run) == 1  # nothing left: the digest, and no server
    assert len(StubFleet.instances) == 2


# -- send: a stream's block releases everything when left --------------------------------------


async def test_break_out_of_a_stream_then_run_again_on_the_same_output(
    server: FakeServer, tmp_path: Path
) -> None:
    inp = write_jsonl(tmp_path / "in.jsonl", prompt_rows(100))
    out = tmp_path / "out.jsonl"
    async with vbatch.stream(inp, out, base_url=server.base_url, model="smol",
                             concurrency=4) as results:  # fmt: skip
        async for _ in results:
            break
    summary = await vbatch.arun(inp, out, base_url=server.base_url, model="smol")
    assert summary.previous.resumed and summary.stats.failed == 0
    assert sorted(r["id"] for r in read_jsonl(out)) == sorted(f"r{i}" for i in range(100))


async def test_a_stream_must_be_entered(server: FakeServer, tmp_path: Path) -> None:
    inp = write_jsonl(tmp_path / "in.jsonl", prompt_rows(3))
    with pytest.raises(TypeError, match=r"async with vbatch\.stream"):
        async for _ in vbatch.stream(inp, base_url=server.base_url, model="smol"):
            pass


# -- options: one typed path -------------------------------------------------------------------


def test_every_option_group_field_is_a_typed_keyword() -> None:
    assert set(Options.__annotations__) == set().union(*GROUPS.values())


def test_a_misspelt_option_is_a_type_error_and_a_runtime_error(tmp_path: Path) -> None:
    with pytest.raises(TypeError, match=r"unknown option.*max_tokenz"):
        vbatch.run("in.jsonl", "out.jsonl", max_tokenz=5)  # type: ignore[call-arg]
    snippet = tmp_path / "snippet.py"
    snippet.write_text('import vbatch\n\nvbatch.run("in.jsonl", "out.jsonl", max_tokenz=5)\n'
                       'vbatch.run("in.jsonl", "out.jsonl", max_tokens="5")\n')  # fmt: skip
    from mypy import api

    cache = Path(__file__).parents[1] / ".mypy_cache"
    report, _, status = api.run(["--strict", "--cache-dir", str(cache), str(snippet)])
    assert status == 1
    assert 'Unexpected keyword argument "max_tokenz"' in report
    assert 'Argument "max_tokens" to "run" has incompatible type "str"' in report
