"""The end-to-end tests run real vLLM (the session's shared server: tests/realvllm.py) and
share its converted model."""

from __future__ import annotations

import pytest
from realvllm import E2E_HOME, MAX_MODEL_LEN

__all__ = ["E2E_HOME", "MAX_MODEL_LEN"]


@pytest.fixture(autouse=True)
def _e2e_home(monkeypatch: pytest.MonkeyPatch) -> None:
    # After the package-wide isolation fixture: share one converted model across tests.
    E2E_HOME.mkdir(parents=True, exist_ok=True)
    monkeypatch.setenv("VBATCH_HOME", str(E2E_HOME))
