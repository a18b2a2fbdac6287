"""Warm fleets (``--keep-alive``): the pure fit decision, the registry's locks and leases, and a
real keeper process holding stand-in servers (helpers.FAKE_VLLM): attach, idle stop, renewal,
replacement, a keeper killed outright, ``vbatch ps`` and ``vbatch stop``. Real vLLM: e2e."""

from __future__ import annotations

import asyncio
import json
import os
import pickle
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import psutil
import pytest
from helpers import FakeSpec

from vbatch import ConfigError, FleetError, LaunchError
from vbatch._config import LaunchOptions, parse_duration
from vbatch._engine.plan import LaunchPlan
from vbatch._engine.server import ServerSpec
from vbatch._engine.sizing import InputMeasure
from vbatch._fleet.factory import FleetTarget
from vbatch._fleet.local import Launched
from vbatch._fleet.warm import WarmEntry, WarmFleet, gpu_set, misfit, read_entry, warm_entries
from vbatch._fleet.warm.match import engine_options
from vbatch._fleet.warm.registry import (
    Lease,
    keeper_alive,
    live_leases,
    take_keeper_lock,
    warm_dir,
    write_entry,
)

TESTS = str(Path(__file__).parents[1])


# -- pure ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("text", "seconds"), [("90", 90), ("90s", 90), ("10m", 600),
                                               ("1.5h", 5400), ("7d", 604800)])  # fmt: skip
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "10 minutes", "-5s", "m"])
def test_a_bad_duration_is_named(text: str) -> None:
    with pytest.raises(ConfigError, match="not a duration"):
        parse_duration(text)


def test_the_gpu_set_is_what_the_servers_would_see() -> None:
    assert gpu_set("cpu", "0") == "cpu"
    assert gpu_set("gpu", "0,1") == "gpu-0+1"
    assert gpu_set("gpu", "") == "gpu-none"
    assert gpu_set("gpu", "../x") == "gpu-___x"  # no path out of the folder


def _plan(context: int | None = 1024, replicas: int = 1, model: str = "/m") -> LaunchPlan:
    spec = ServerSpec(model=model, max_model_len=context)
    return LaunchPlan(spec, "m", 16, InputMeasure(), replicas=replicas)


def _entry(options: LaunchOptions, context: int | None = 1024, replicas: int = 1) -> WarmEntry:
    return WarmEntry("cpu", 1, "/m", "m", engine_options(options), context, replicas, 16, 60.0,
                     urls=["http://127.0.0.1:9/v1"])  # fmt: skip


def test_a_warm_fleet_serves_a_job_of_its_model_settings_and_context() -> None:
    options = LaunchOptions(dtype="bfloat16")
    entry = _entry(options, context=2048, replicas=3)
    assert misfit(entry, options, _plan(1024, replicas=2)) is None
    # Its own keep-alive, timeouts and restarts are the run's, not the engine's.
    assert misfit(entry, LaunchOptions(dtype="bfloat16", keep_alive_s=5, max_restarts=0),
                  _plan(2048)) is None  # fmt: skip


@pytest.mark.parametrize(("options", "plan", "why"), [
    (LaunchOptions(), _plan(model="/other"), "it serves m, not m"),
    (LaunchOptions(dtype="float32"), _plan(), "other dtype"),
    (LaunchOptions(vllm_args=("--enable-prefix-caching",)), _plan(), "other vllm_args"),
    (LaunchOptions(lora={"a": "/adapters/a"}), _plan(), "other lora"),
    (LaunchOptions(), _plan(4096), "context is 1024 tokens; this job needs 4096"),
    (LaunchOptions(), _plan(None), "needs the model maximum"),
    (LaunchOptions(replicas=2), _plan(replicas=2), "not the 2 asked for"),
    (LaunchOptions(), _plan(replicas=3), "this job's plan has 3"),
    (LaunchOptions(port=8000), _plan(), "does not listen on port 8000"),
])  # fmt: skip
def test_a_warm_fleet_that_cannot_serve_says_why(options: LaunchOptions, plan: LaunchPlan,
                                                 why: str) -> None:  # fmt: skip
    entry = _entry(LaunchOptions(port=options.port, replicas=None))
    entry.engine = engine_options(LaunchOptions())
    reason = misfit(entry, options, plan)
    assert reason is not None and why in reason


def test_a_warm_fleet_serves_the_adapters_it_was_started_with() -> None:
    options = LaunchOptions(lora=("a=/adapters/a", "b=/adapters/b"))
    entry = _entry(LaunchOptions(lora={"a": "/adapters/a", "b": "/adapters/b"}))
    assert misfit(entry, options, _plan()) is None
    del entry.engine["lora"]  # an entry written before adapters existed: it has none
    assert misfit(entry, LaunchOptions(), _plan()) is None
    assert "other lora" in (misfit(entry, options, _plan()) or "")


def test_keep_alive_is_for_servers_vbatch_starts_here(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ConfigError, match=r"keep_alive_s \(--keep-alive\) applies only"):
        FleetTarget(("http://127.0.0.1:1/v1",), launch=LaunchOptions(keep_alive_s=60))
    with pytest.raises(ConfigError, match="not on Ray"):
        FleetTarget(ray="", launch=LaunchOptions(keep_alive_s=60))
    monkeypatch.setenv("VBATCH_KEEP_ALIVE", "2m")
    assert FleetTarget.of(None).launch.keep_alive_s == 120
    assert FleetTarget.of("http://127.0.0.1:1/v1").launch.keep_alive_s == 0  # ignored there
    assert FleetTarget.of(None, launch=LaunchOptions(keep_alive_s=5)).launch.keep_alive_s == 5
    monkeypatch.setenv("VBATCH_KEEP_ALIVE", "soon")
    with pytest.raises(ConfigError, match=r"\$VBATCH_KEEP_ALIVE: not a duration"):
        FleetTarget.of(None)


# -- the registry --------------------------------------------------------------------------------


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("VBATCH_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("PYTHONPATH", TESTS)  # keepers unpickle helpers.FakeSpec
    return tmp_path / "home"


def test_leases_count_while_held_and_go_with_their_run(home: Path) -> None:
    with Lease("cpu", keep_alive_s=30):
        holders = list(live_leases("cpu"))
        assert [(h.pid, h.keep_alive_s) for h in holders] == [(os.getpid(), 30)]
    assert list(live_leases("cpu")) == []
    # A run killed outright leaves its file unlocked: not a holder, and removed.
    dead = home / "warm" / "cpu.leases" / "12345-deadbeef"
    dead.write_text('{"pid": 12345}')
    assert list(live_leases("cpu")) == [] and not dead.exists()


def test_an_entry_without_its_keeper_is_stale_and_removed(home: Path) -> None:
    entry = WarmEntry("cpu", 1, "/m", "m", {}, 512, 1, 16, 60.0, state="up")
    lock = take_keeper_lock("cpu")
    assert lock is not None and keeper_alive("cpu")
    write_entry(entry)
    assert take_keeper_lock("cpu", wait_s=0.1) is None  # one keeper per GPU set
    assert read_entry("cpu") == entry
    os.close(lock)  # the keeper is gone
    assert not keeper_alive("cpu")
    assert read_entry("cpu") is None and warm_entries() == []
    assert not (warm_dir() / "cpu.json").exists()


def test_looking_for_warm_fleets_creates_nothing(home: Path) -> None:
    assert read_entry("cpu") is None and warm_entries() == []
    assert not home.exists()


# -- a keeper with stand-in servers --------------------------------------------------------------


def _fake(replicas: int = 1, context: int = 512, model: str = "ok") -> LaunchPlan:
    spec = FakeSpec(model=model, max_model_len=context)
    return LaunchPlan(spec, "m", 8, InputMeasure(), replicas=replicas, start_together=True)


def _fleet(plan: LaunchPlan, keep_alive_s: float = 30, **options: object) -> WarmFleet:
    launch = LaunchOptions(keep_alive_s=keep_alive_s, **options)  # type: ignore[arg-type]
    return WarmFleet("cpu", plan, launch, down_timeout_s=5)


async def _until(check: Callable[[], object], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.1)


def _server_pids(entry: WarmEntry) -> list[int]:
    """The keeper's servers' processes (each: its shepherd and guard, the server, its engine)."""
    return [p.pid for p in psutil.Process(entry.pid).children(recursive=True)]


def _gone(pid: int) -> bool:
    """Ended (a keeper this test process started stays a zombie until reaped)."""
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


@pytest.fixture
async def keepers(home: Path) -> AsyncIterator[None]:
    yield
    for entry in warm_entries():  # whatever a failed test left
        os.kill(entry.pid, signal.SIGKILL)


@pytest.mark.usefixtures("keepers")
async def test_a_warm_fleet_outlives_its_run_serves_the_next_and_stops_when_idle() -> None:
    announced: list[Launched] = []
    first = WarmFleet("cpu", _fake(replicas=2), LaunchOptions(keep_alive_s=30),
                      on_launch=announced.append)  # fmt: skip
    await first.start()
    assert not first.attached and "starting a warm fleet" in (announced[0].warm or "")
    await _until(lambda: len(first.endpoints()) == 2)
    urls = sorted(first.endpoints())
    assert await first.models() == {"m": 512}
    entry = read_entry("cpu")
    assert entry is not None and entry.state == "up" and entry.pid != os.getpid()
    await first.stop()  # the run ends: its servers stay with the keeper
    await _until(lambda: (e := read_entry("cpu")) is not None and e.idle_since is not None)
    servers = _server_pids(entry)
    assert len(servers) == 2 * 4 and all(psutil.pid_exists(p) for p in servers)

    # The next run (a smaller context is fine) attaches, and says for how long it is kept.
    second = _fleet(_fake(context=256), keep_alive_s=1)
    await second.start()
    try:
        assert second.attached and sorted(second.endpoints()) == urls
        assert await second.models() == {"m": 512}  # what the servers serve
        await _until(lambda: (e := read_entry("cpu")) is not None and e.idle_since is None)
        await asyncio.sleep(1.5)  # past its keep-alive, but in use: kept
        assert keeper_alive("cpu")
    finally:
        await second.stop()
    # Idle for the keep-alive the last run gave: the keeper stops its servers and itself.
    await _until(lambda: not keeper_alive("cpu"), timeout=15)
    await _until(lambda: all(_gone(p) for p in servers), timeout=15)
    assert read_entry("cpu") is None


@pytest.mark.usefixtures("keepers")
async def test_a_keeper_killed_outright_takes_its_servers_and_fails_its_runs_at_once() -> None:
    fleet = _fleet(_fake())
    await fleet.start()
    entry = read_entry("cpu")
    assert entry is not None
    servers = _server_pids(entry)
    os.kill(entry.pid, signal.SIGKILL)
    with pytest.raises(FleetError, match=r"keeper .* has ended"):
        await _failed(fleet)
    await fleet.stop()
    await _until(lambda: all(_gone(p) for p in servers), timeout=15)
    assert read_entry("cpu") is None and warm_entries() == []


@pytest.mark.usefixtures("keepers")
async def test_a_server_the_keeper_restarts_is_in_the_runs_status_with_why() -> None:
    fleet = _fleet(_fake(replicas=2))
    await fleet.start()
    try:
        entry = read_entry("cpu")
        assert entry is not None and fleet.status().restarts == 0
        # A server dies (its shepherd's whole group): the keeper starts it again.
        shepherd = psutil.Process(entry.pid).children()[0]
        os.killpg(shepherd.pid, signal.SIGKILL)
        await _until(lambda: fleet.status().restarts == 1)
        (why,) = fleet.status().restart_reasons
        assert why.startswith("vLLM at http://127.0.0.1:") and "exited with code -9" in why
        kept = read_entry("cpu")
        assert kept is not None and kept.restarts == 1 and kept.restart_reasons == [why]
    finally:
        await fleet.stop()
    # The next run counts its own restarts only.
    second = _fleet(_fake())
    await second.start()
    try:
        assert second.attached and second.status().restarts == 0
        assert second.status().restart_reasons == ()
    finally:
        await second.stop()


async def _failed(fleet: WarmFleet) -> None:
    await _until(lambda: fleet.status().failure is not None, timeout=10)
    await fleet.wait_up()


@pytest.mark.usefixtures("keepers")
async def test_a_warm_fleet_that_cannot_serve_is_replaced_when_idle_refused_when_used() -> None:
    first = _fleet(_fake(context=512))
    await first.start()
    old = read_entry("cpu")
    assert old is not None
    # Used by a run: another job that needs more is refused, naming why and who uses it.
    with pytest.raises(LaunchError, match=r"its context is 512 tokens; this job needs 1024.*"
                                          rf"runs {os.getpid()}"):  # fmt: skip
        await _other_process_claims(_fake(context=1024))
    await first.stop()
    # Idle: stopped, and a new one started for the job.
    plan = _fake(context=1024)
    second = _fleet(plan)
    await second.start()
    try:
        new = read_entry("cpu")
        assert new is not None and new.pid != old.pid and new.context == 1024
        assert not second.attached
        assert any("stopped the warm fleet of m: its context is 512" in n for n in plan.notes)
        assert _gone(old.pid)
    finally:
        await second.stop()


async def _other_process_claims(plan: LaunchPlan) -> None:
    """What another run gets (the check of other runs' leases leaves out this process's own,
    so the claim runs in a child process)."""
    code = (
        "import asyncio, pickle, sys\n"
        "from vbatch._config import LaunchOptions\n"
        "from vbatch._fleet.warm import WarmFleet\n"
        "plan = pickle.loads(sys.stdin.buffer.read())\n"
        "fleet = WarmFleet('cpu', plan, LaunchOptions(keep_alive_s=30))\n"
        "try:\n"
        "    asyncio.run(fleet.start())\n"
        "except Exception as exc:\n"
        "    print(type(exc).__name__, exc)\n"
    )
    argv = [sys.executable, "-c", code]
    proc = await asyncio.to_thread(subprocess.run, argv, input=pickle.dumps(plan),
                                   capture_output=True, timeout=60)  # fmt: skip
    out = proc.stdout.decode()
    if out.startswith("LaunchError"):
        raise LaunchError(out.removeprefix("LaunchError "))
    raise AssertionError(out + proc.stderr.decode())


# -- vbatch ps, vbatch stop ----------------------------------------------------------------------


def _vbatch(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "vbatch", *args], capture_output=True,
                          text=True, timeout=60)  # fmt: skip


@pytest.mark.usefixtures("keepers")
async def test_ps_lists_warm_fleets_and_stop_stops_them_unless_in_use() -> None:
    listed = _vbatch("ps")
    assert listed.returncode == 0 and "no warm fleets" in listed.stderr
    fleet = _fleet(_fake(replicas=2))
    await fleet.start()
    try:
        await _until(lambda: len(fleet.endpoints()) == 2)
        await _until(lambda: (e := read_entry("cpu")) is not None and e.users == [os.getpid()])
        rows = [json.loads(line) for line in (await asyncio.to_thread(_vbatch, "ps", "--json")
                                               ).stdout.splitlines()]  # fmt: skip
        assert len(rows) == 1
        row = rows[0]
        assert row["gpus"] == "cpu" and row["model"] == "m" and row["state"] == "up"
        assert row["users"] == [os.getpid()] and row["idle_s"] is None
        assert sorted(row["urls"]) == sorted(fleet.endpoints()) and row["memory_bytes"] > 0
        table = (await asyncio.to_thread(_vbatch, "ps")).stdout
        assert "in use" in table and row["urls"][0] in table
        busy = await asyncio.to_thread(_vbatch, "stop")
        assert busy.returncode == 2 and f"in use: cpu (runs {os.getpid()})" in busy.stderr
    finally:
        await fleet.stop()
    pid = row["keeper_pid"]
    stopped = await asyncio.to_thread(_vbatch, "stop")
    assert stopped.returncode == 0, stopped.stderr
    assert not keeper_alive("cpu") and _gone(pid)
    missing = await asyncio.to_thread(_vbatch, "stop")
    assert missing.returncode == 2 and "no warm fleet on cpu" in missing.stderr
