"""What needs no cluster: ``--ray`` without Ray installed, the address check, what a member is
given of the driver's environment, the loopback rule. (Fast: no vLLM, no Ray started.)"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from fakeserver import FakeServer
from helpers import prompt_rows, write_jsonl

from vbatch._fleet.ray.cluster import _loopback
from vbatch._fleet.ray.fleet import forwarded_env

# Runs the CLI in a Python where `import ray` fails, as it does where Ray is not installed.
WITHOUT_RAY = "import sys; sys.modules['ray'] = None; from vbatch._cli import main; main()"


def test_ray_absent_exits_2_with_the_install_hint(tmp_path: Path) -> None:
    inp = write_jsonl(tmp_path / "in.jsonl", prompt_rows(3))
    for args in (["run", str(inp), "-o", str(tmp_path / "o.jsonl"), "--ray"],
                 ["serve", "--ray=127.0.0.1:6379"]):  # fmt: skip
        proc = subprocess.run([sys.executable, "-c", WITHOUT_RAY, *args],
                              capture_output=True, text=True, timeout=60)  # fmt: skip
        assert proc.returncode == 2, proc.stderr
        assert "pip install 'vbatch[ray]'" in proc.stderr
        assert "Traceback" not in proc.stderr
    assert not (tmp_path / "o.jsonl").exists()


def test_the_rest_runs_without_ray(server: FakeServer, tmp_path: Path) -> None:
    inp = write_jsonl(tmp_path / "in.jsonl", prompt_rows(3))
    args = ["run", str(inp), "-o", str(tmp_path / "o.jsonl"), "--base-url", server.base_url,
            "--model", "smol", "--shard", "0/1"]  # fmt: skip
    proc = subprocess.run([sys.executable, "-c", WITHOUT_RAY, *args], capture_output=True,
                          text=True, timeout=60)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert server.generation_requests == 3


@pytest.mark.parametrize("value", ["in.jsonl", "somewhere", "ray"])
def test_a_value_that_is_no_ray_address_is_named(tmp_path: Path, value: str) -> None:
    proc = subprocess.run([sys.executable, "-m", "vbatch", "run", "x.jsonl", "-o", "o.jsonl",
                           "--ray", value], capture_output=True, text=True, timeout=60)  # fmt: skip
    assert proc.returncode == 2
    assert f"{value!r} is not a Ray address" in proc.stderr and "--ray=ADDRESS" in proc.stderr


def test_ray_and_base_url_exclude_each_other(server: FakeServer, tmp_path: Path) -> None:
    inp = write_jsonl(tmp_path / "in.jsonl", prompt_rows(3))
    proc = subprocess.run([sys.executable, "-m", "vbatch", "run", str(inp), "-o", "o.jsonl",
                           "--base-url", server.base_url, "--ray=auto"],
                          capture_output=True, text=True, timeout=60)  # fmt: skip
    assert proc.returncode == 2 and "--ray" in proc.stderr
    assert server.generation_requests == 0


def test_members_get_the_drivers_model_settings_but_no_secret() -> None:
    env = {"VBATCH_HOME": "/m", "HF_HUB_OFFLINE": "1", "VLLM_CPU_KVCACHE_SPACE": "2",
           "HF_TOKEN": "hf_secret", "VLLM_API_KEY": "k", "OPENAI_API_KEY": "sk",
           "HOME": "/r"}  # fmt: skip
    assert forwarded_env(env) == {"VBATCH_HOME": "/m", "HF_HUB_OFFLINE": "1",
                                  "VLLM_CPU_KVCACHE_SPACE": "2"}  # fmt: skip


@pytest.mark.parametrize(
    ("address", "loopback"),
    [("127.0.0.1:6379", True), ("127.3.0.1:1", True), ("localhost:6379", True),
     ("[::1]:6379", True), ("10.0.0.5:6379", False), ("head:6379", False), ("auto", False)],
)  # fmt: skip
def test_loopback_addresses(address: str, loopback: bool) -> None:
    assert _loopback(address) is loopback
