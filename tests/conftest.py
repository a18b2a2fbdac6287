"""Shared fixtures: a clean environment, the fake vLLM server (in-process or as a subprocess),
the session's real vLLM server (realvllm.py; here so that e2e/ and onray/ share one) and a retry
policy that records its delays instead of sleeping them."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from fakeserver import FakeServer
from helpers import FastRetry, ServerProcess
from realvllm import vllm_server

__all__ = ["vllm_server"]  # a fixture: registered by being here


@pytest.fixture(autouse=True)
def _isolate_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No test sees the developer's keys, servers or proxies; subprocesses inherit this too."""
    for name in list(os.environ):
        if name.startswith(("OPENAI_", "VBATCH_")) or name.lower() in (
            "http_proxy",
            "https_proxy",
            "all_proxy",
        ):
            monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("NO_COLOR", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # a model id never reaches the network
    monkeypatch.chdir(tmp_path)


@pytest.fixture
def server() -> Iterator[FakeServer]:
    """A fake vLLM server on 127.0.0.1 in a background thread (usable from the test's loop and
    from subprocesses alike). Tests tweak its attributes and read its counters."""
    srv = FakeServer()
    srv.start()
    try:
        yield srv
    finally:
        srv.stop()


@pytest.fixture
def server_process() -> Iterator[ServerProcess]:
    """The fake server in its own process (latency 5-20 ms), so a SIGKILLed client can't take
    it down and the server's event loop doesn't share the test's CPU time slice."""
    server = ServerProcess.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def fast_retry() -> FastRetry:
    return FastRetry()
