"""Fixtures of the service's tests: the fake vLLM in its own process and ``vbatch api`` in
another, fronting it."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from helpers import ServerProcess

from service.apiproc import ApiProcess

StartApi = Callable[..., ApiProcess]


@pytest.fixture
def start_api(tmp_path: Path, server_process: ServerProcess) -> Iterator[StartApi]:
    """Start ``vbatch api --base-url FAKE ARGS`` (stopped at the end of the test)."""
    started: list[ApiProcess] = []

    def start(*args: str, keys: tuple[str, ...] | None = None) -> ApiProcess:
        extra = ("--base-url", server_process.base_url, *args)
        api = ApiProcess(tmp_path / "data", *extra, **({} if keys is None else {"keys": keys}))
        started.append(api.start())
        return api

    try:
        yield start
    finally:
        for api in started:
            api.stop()
