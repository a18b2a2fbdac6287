"""Real vLLM for the tests that need it: the CPU build serving the embedded SmolLM2-135M-Instruct.

One server for the whole session, shared by the end-to-end and the Ray tests (start-up costs
~30-60 s on two cores); tests that must kill or misconfigure a server start their own. The
converted model is cached in VBATCH_E2E_HOME (default ``.cache/e2e`` in the project) so each
run converts it once at most. The fixture is registered by the root conftest, so that both
folders get the one server.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from vbatch import LaunchError
from vbatch._config import LaunchOptions
from vbatch._engine.machine import detect_backend
from vbatch._engine.plan import plan_server
from vbatch._engine.server import VllmServer

E2E_HOME = Path(os.environ.get("VBATCH_E2E_HOME", Path(__file__).parents[1] / ".cache" / "e2e"))
MAX_MODEL_LEN = 512


def require_vllm() -> None:
    try:
        detect_backend()
    except LaunchError as exc:  # a failure, not a skip: CI must run these
        pytest.fail(f"the end-to-end tests need vLLM: {exc}")


@pytest.fixture(scope="session")
def vllm_server() -> Iterator[VllmServer]:
    require_vllm()
    mp = pytest.MonkeyPatch()
    E2E_HOME.mkdir(parents=True, exist_ok=True)
    mp.setenv("VBATCH_HOME", str(E2E_HOME))
    try:
        plan = plan_server(None, None, LaunchOptions(max_model_len=MAX_MODEL_LEN))
        with VllmServer(plan.spec) as server:
            yield server
    finally:
        mp.undo()
