"""The status page at / in a real headless Chromium (Debian's chromium and chromium-driver,
driven by Selenium): it shows a running batch's progress and updates it."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
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
                text: row.innerText, done: row.querySelector(".completed").textContent};""",
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


def _view(browser: webdriver.Chrome) -> dict[str, Any]:
    """Everything the page shows now, read in one go."""
    found: dict[str, Any] = browser.execute_script(
        """const text = (row, cls) => (row.querySelector("." + cls) || {}).textContent;
        return {
          servers: [...document.querySelectorAll("tr.server")].map(r => r.innerText),
          batches: Object.fromEntries([...document.querySelectorAll("#batches tr")].map(r =>
            [r.id.slice(6), {name: text(r, "name"), status: r.cells[2].textContent,
             completed: text(r, "completed"), failed: r.cells[5].textContent,
             created: text(r, "created"), elapsed: text(r, "elapsed"), share: text(r, "share"),
             files: [...r.querySelectorAll("a.file")].map(a => [a.textContent,
                                                               a.dataset.file])}])),
          series: Object.fromEntries([...document.querySelectorAll("#chart polyline")].map(
            l => [l.dataset.series, Number(l.dataset.last)])),
        };"""
    )
    return found


def test_the_page_for_an_operator_servers_chart_batches_files_and_only_the_keys_own(
    start_api: StartApi, server_process: ServerProcess, tmp_path: Path,
    browser: webdriver.Chrome,
) -> None:  # fmt: skip
    server_process.control(latency=0.05)
    api = start_api("--concurrency", "4")
    alice, bob = api.client(KEYS[0]), api.client(KEYS[1])
    shot = os.environ.get("PAGE_SCREENSHOT")  # docs/status-page.png is made this way
    rows = 3000 if shot else 600  # running still when the screenshot is taken
    # Alice: a small batch that ends (its files), then a long one that runs; Bob: one that
    # runs too, weighted 3, which Alice's view must not show (but shares the window with).
    small = upload(alice, write_lines(tmp_path / "small.jsonl", batch_lines(4, "s")))
    done = alice.batches.create(input_file_id=small, endpoint="/v1/chat/completions",
                                completion_window="24h", metadata={"name": "smoke"})  # fmt: skip
    done_id = done.id
    while alice.batches.retrieve(done_id).status != "completed":
        time.sleep(0.1)
    big = upload(alice, write_lines(tmp_path / "big.jsonl", batch_lines(rows, "a")))
    running = alice.batches.create(input_file_id=big, endpoint="/v1/chat/completions",
                                   completion_window="24h",
                                   metadata={"name": "nightly-eval"})  # fmt: skip
    other = upload(bob, write_lines(tmp_path / "bob.jsonl", batch_lines(rows, "b")))
    bobs = bob.batches.create(input_file_id=other, endpoint="/v1/chat/completions",
                              completion_window="24h",
                              metadata={"vbatch_priority": "3"})  # fmt: skip
    browser.set_window_size(1400, 900)
    browser.get(api.base_url.removesuffix("/v1") + "/")
    browser.find_element(By.ID, "key").send_keys(KEYS[0], Keys.TAB)
    deadline = time.monotonic() + 40
    while True:  # two rate samples (5 s apart) make the chart's lines
        view = _view(browser)
        if {"fleet", "nightly-eval"} <= set(view["series"]):
            break
        assert time.monotonic() < deadline, view
        time.sleep(0.5)
    assert set(view["batches"]) == {done_id, running.id}  # not Bob's
    assert bobs.id not in browser.page_source
    assert view["servers"] and all("\tup\t0" in s for s in view["servers"])
    assert view["series"]["fleet"] > 0 and view["series"]["nightly-eval"] > 0
    now = view["batches"][running.id]
    assert now["name"] == "nightly-eval" and now["status"] == "in_progress"
    assert now["share"] == "25%"  # weight 1 of 1 + 3
    assert now["created"] and now["elapsed"].endswith(" s")
    counts = alice.batches.retrieve(running.id).request_counts
    assert counts is not None and int(now["completed"].split("/")[0]) <= counts.completed
    ended = view["batches"][done_id]
    assert (ended["name"], ended["status"], ended["completed"], ended["failed"]) == (
        "smoke", "completed", "4/4", "0")  # fmt: skip
    finished = alice.batches.retrieve(done_id)
    assert ended["files"] == [["output", finished.output_file_id]] and ended["share"] == ""
    # The link fetches the file with the key: the lines the API serves.
    fetched = browser.execute_async_script(
        """const done = arguments[arguments.length - 1];
        fetch("v1/files/" + arguments[0] + "/content",
              {headers: {Authorization: "Bearer " + arguments[1]}})
          .then(r => r.text()).then(done);""",
        finished.output_file_id,
        KEYS[0],
    )
    assert len(fetched.splitlines()) == 4
    if shot:
        time.sleep(25)  # a few more samples on the chart
        browser.save_screenshot(shot)
    for client, batch_id in ((alice, running.id), (bob, bobs.id)):
        with contextlib.suppress(openai.ConflictError):  # ended meanwhile
            client.batches.cancel(batch_id)
