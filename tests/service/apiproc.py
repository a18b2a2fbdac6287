"""``vbatch api`` as a subprocess for the service's tests: started on a free port with its own
data folder and keys, driven with the official ``openai`` client, killed and started again."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from openai import OpenAI

KEYS = ("key-alice", "key-bob")
TERMINAL = {"completed", "failed", "expired", "cancelled"}


class ApiProcess:
    def __init__(self, data_dir: Path, *args: str, keys: tuple[str, ...] = KEYS) -> None:
        self.data_dir = data_dir
        self.args = args
        self.key_file = data_dir.parent / "keys.txt"
        self.key_file.write_text("".join(k + "\n" for k in keys))
        self.proc: subprocess.Popen[str] | None = None
        self.base_url = ""
        self.stderr_path = data_dir.parent / "api.stderr"

    def start(self) -> ApiProcess:
        stderr = self.stderr_path.open("a")
        keys = ["--api-key-file", str(self.key_file)] if self.key_file.read_text() else []
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "vbatch", "api", "--port", "0", "--data-dir",
             str(self.data_dir), *keys, *self.args],
            stdout=subprocess.PIPE, stderr=stderr, text=True,
        )  # fmt: skip
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        assert line.startswith("http://"), f"the service did not start: {self.log()}"
        self.base_url = line.strip()
        return self

    def log(self) -> str:
        return self.stderr_path.read_text() if self.stderr_path.exists() else ""

    def client(self, key: str = KEYS[0]) -> OpenAI:
        return OpenAI(base_url=self.base_url, api_key=key, max_retries=0, timeout=30)

    def kill(self) -> None:
        """SIGKILL: no clean-up of any kind."""
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.kill()


def batch_lines(n: int, prefix: str = "r", url: str = "/v1/chat/completions",
                max_tokens: int = 4) -> list[dict[str, Any]]:  # fmt: skip
    """OpenAI Batch lines whose content starts with their custom_id (the fake server scripts
    replies by that word)."""
    lines = []
    for i in range(n):
        cid = f"{prefix}{i}"
        if url == "/v1/completions":
            body: dict[str, Any] = {"prompt": f"{cid} say something", "max_tokens": max_tokens}
        else:
            body = {"messages": [{"role": "user", "content": f"{cid} say something"}],
                    "max_tokens": max_tokens}  # fmt: skip
        lines.append({"custom_id": cid, "method": "POST", "url": url, "body": body})
    return lines


def write_lines(path: Path, lines: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return path


def upload(client: OpenAI, path: Path) -> str:
    with path.open("rb") as f:
        return client.files.create(file=f, purpose="batch").id


def wait_done(client: OpenAI, batch_id: str, timeout_s: float = 60) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        batch = client.batches.retrieve(batch_id)
        if batch.status in TERMINAL:
            return batch
        assert time.monotonic() < deadline, f"batch still {batch.status}: {batch}"
        time.sleep(0.1)


def content_lines(client: OpenAI, file_id: str | None) -> list[dict[str, Any]]:
    if file_id is None:
        return []
    text = client.files.content(file_id).text
    assert not text or text.endswith("\n"), "a file ends with a partial line"
    return [json.loads(line) for line in text.splitlines()]
