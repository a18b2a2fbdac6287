"""``vbatch run`` with its input and output at http URLs, as run_batch takes presigned object-store
URLs: a loopback HTTP server that answers GET and PUT only with the right signature in the
query, as a presigned URL's. The signature is never printed; the output is sent once, whole,
when the job ends, and a run that is interrupted sends nothing."""

from __future__ import annotations

import json
import threading
import urllib.parse
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from fakeserver import FakeServer
from helpers import cli, prompt_rows, read_jsonl

SIGNATURE = "X-Amz-Signature=4f1c0ffee0ddba11d00dfeed5ecret"


class ObjectStore(ThreadingHTTPServer):
    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.objects: dict[str, bytes] = {}
        self.puts: list[str] = []

    def url(self, key: str, signed: bool = True) -> str:
        query = f"?{SIGNATURE}&X-Amz-Expires=600" if signed else ""
        return f"http://127.0.0.1:{self.server_address[1]}/bucket/{key}{query}"


class _Handler(BaseHTTPRequestHandler):
    server: ObjectStore

    def _key(self) -> str | None:
        parts = urllib.parse.urlsplit(self.path)
        if SIGNATURE not in parts.query:
            self.send_response(403)
            self.end_headers()
            return None
        return parts.path.removeprefix("/bucket/")

    def do_GET(self) -> None:
        key = self._key()
        if key is None:
            return
        body = self.server.objects.get(key)
        self.send_response(200 if body is not None else 404)
        self.send_header("Content-Length", str(len(body or b"")))
        self.end_headers()
        self.wfile.write(body or b"")

    def do_PUT(self) -> None:
        key = self._key()
        if key is None:
            return
        length = int(self.headers["Content-Length"])
        self.server.objects[key] = self.rfile.read(length)
        self.server.puts.append(key)
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(autouse=True)
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Local copies under the test's own $VBATCH_HOME (the runs inherit it)."""
    monkeypatch.setenv("VBATCH_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


@pytest.fixture
def store() -> Iterator[ObjectStore]:
    srv = ObjectStore()
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    try:
        yield srv
    finally:
        srv.shutdown()
        srv.server_close()


def _lines(rows: list[dict[str, object]]) -> bytes:
    return b"".join(json.dumps(r).encode() + b"\n" for r in rows)


def test_input_and_output_at_presigned_urls(
    server: FakeServer, store: ObjectStore, home: Path
) -> None:
    rows = prompt_rows(12)
    store.objects["in.jsonl"] = _lines(rows)
    args = (store.url("in.jsonl"), "-o", store.url("out/results.jsonl"), "--base-url",
            server.base_url, "--model", "smol", "--max-tokens", "4")  # fmt: skip
    proc = cli(*args)
    assert proc.returncode == 0, proc.stderr
    assert store.puts == ["out/results.jsonl"]  # once, at the end
    sent = [json.loads(line) for line in store.objects["out/results.jsonl"].splitlines()]
    assert sorted(r["id"] for r in sent) == sorted(r["id"] for r in rows)
    assert all(r["error"] is None for r in sent)
    assert "and sent to http://127.0.0.1" in proc.stderr
    assert "Signature" not in proc.stderr + proc.stdout  # a presigned URL's query is a secret
    for path in home.rglob("*"):
        if path.is_file():
            assert b"Signature" not in path.read_bytes(), path

    # The same command again (another signature, as a new presigned URL has): it resumes
    # from the local copy, sends nothing more to the server, and sends the output again.
    before = server.generation_requests
    again = cli(*[a.replace("4f1c0ffee", "0ther5ig") for a in args])
    assert again.returncode == 2 and "403" in again.stderr  # the store refuses a bad signature
    again = cli(*args)
    assert again.returncode == 0, again.stderr
    assert server.generation_requests == before and store.puts == ["out/results.jsonl"] * 2
    assert len(read_jsonl_bytes(store.objects["out/results.jsonl"])) == len(rows)


def read_jsonl_bytes(data: bytes) -> list[dict[str, object]]:
    return [json.loads(line) for line in data.splitlines()]


def test_a_url_that_fails_names_it_without_its_query(
    server: FakeServer, store: ObjectStore, tmp_path: Path
) -> None:
    missing = cli(store.url("nothing.jsonl"), "-o", str(tmp_path / "o.jsonl"),
                  "--base-url", server.base_url, "--model", "smol")  # fmt: skip
    assert missing.returncode == 2
    assert "bucket/nothing.jsonl" in missing.stderr and "404" in missing.stderr
    assert "Signature" not in missing.stderr
    assert server.generation_requests == 0
    # The output's PUT refused: exit 2, and the results are kept locally, where it says.
    store.objects["in.jsonl"] = _lines(prompt_rows(3))
    refused = cli(store.url("in.jsonl"), "-o", store.url("out.jsonl", signed=False),
                  "--base-url", server.base_url, "--model", "smol")  # fmt: skip
    assert refused.returncode == 2 and "403" in refused.stderr
    kept = refused.stderr.split("kept at ")[1].split()[0].rstrip(".;")
    assert len(read_jsonl(Path(kept))) == 3
