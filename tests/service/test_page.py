"""The status page at / in a real headless Chromium (Debian's chromium and chromium-driver,
driven by Selenium): it shows a running batch's progress and updates it."""

from __future__ import annotations

import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers import ServerProcess
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys

from service.apiproc import KEYS, batch_lines, upload, write_lines
from service.conftest import StartApi

CHROMIUM = "/usr/bin/chromium"
DRIVER = "/usr/bin/chromedriver"


@pytest.fixture
def browser(monkeypatch: pytest.MonkeyPatch) -> Iterator[webdriver.Chrome]:
    if not (shutil.which(CHROMIUM) and shutil.which(DRIVER)):  # a failure, not a skip
        pytest.fail("the page test needs Debian's chromium and chromium-driver "
                    "(apt-get install -y chromium chromium-driver; .ci/run does)")  # fmt: skip
    monkeypatch.setenv("SE_OFFLINE", "true")  # Selenium Manager must not fetch anything
    profile = tempfile.mkdtemp(prefix="vbatch-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                 "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage", f"--user-data-dir={profile}"):  # fmt: skip
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(DRIVER), options=options)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def _row(browser: webdriver.Chrome, batch_id: str) -> dict[str, Any] | None:
    """The batch's row as the page shows it now, read in one go (the page redraws its rows
    every second, so an element found earlier may be gone)."""
    found: dict[str, Any] | None = browser.execute_script(
        """const row = document.getElementById(arguments[0]);
        if (!row) return null;
        return {percent: Number(row.querySelector(".bar").dataset.percent),
                text: row.innerText, done: row.querySelector(".done").textContent};""",
        f"batch-{batch_id}",
    )
    return found


def test_the_page_shows_a_running_batch_and_updates_it(
    start_api: StartApi, server_process: ServerProcess, tmp_path: Path,
    browser: webdriver.Chrome,
) -> None:  # fmt: skip
    server_process.control(latency=0.1)
    api = start_api("--concurrency", "2")
    client = api.client()
    file_id = upload(client, write_lines(tmp_path / "in.jsonl", batch_lines(200)))
    batch = client.batches.create(input_file_id=file_id, endpoint="/v1/chat/completions",
                                  completion_window="24h")  # fmt: skip
    browser.get(api.base_url.removesuffix("/v1") + "/")
    assert "vbatch" in browser.title
    key_box = browser.find_element(By.ID, "key")
    key_box.send_keys(KEYS[0], Keys.TAB)  # "change" fires: the page asks with the key
    seen: list[int] = []
    deadline = time.monotonic() + 30
    while len(set(seen)) < 3:  # the bar moved at least twice
        assert time.monotonic() < deadline, f"the page did not update: {seen}"
        row = _row(browser, batch.id)
        if row is not None:
            seen.append(row["percent"])
        time.sleep(0.2)
    assert seen == sorted(seen) and 0 < seen[-1] < 100
    row = _row(browser, batch.id)
    assert row is not None and "in_progress" in row["text"] and "/200" in row["done"]
    assert "1/1 servers up" in browser.find_element(By.ID, "fleet").text
    # A wrong key is shown as refused, not as an empty list.
    key_box.clear()
    key_box.send_keys("wrong", Keys.TAB)
    deadline = time.monotonic() + 10
    while "401" not in browser.find_element(By.ID, "error").text:
        assert time.monotonic() < deadline
        time.sleep(0.1)
    client.batches.cancel(batch.id)
