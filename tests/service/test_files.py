"""Files through the official openai client: upload, list (pagination, order, purpose),
retrieve, content, delete; size limit; keys: 401 for a wrong one, 404 for another's file."""

from __future__ import annotations

from pathlib import Path

import httpx
import openai
import pytest

from service.apiproc import KEYS, batch_lines, write_lines
from service.conftest import StartApi


def test_upload_retrieve_content_delete(start_api: StartApi, tmp_path: Path) -> None:
    api = start_api()
    client = api.client()
    path = write_lines(tmp_path / "in.jsonl", batch_lines(3))
    with path.open("rb") as f:
        created = client.files.create(file=f, purpose="batch")
    assert created.id.startswith("file-") and len(created.id) == 29
    assert created.bytes == path.stat().st_size and created.filename == "in.jsonl"
    assert created.purpose == "batch" and created.object == "file"
    assert created.expires_at == created.created_at + 30 * 86400  # OpenAI's default for batch
    assert client.files.retrieve(created.id) == created
    assert client.files.content(created.id).content == path.read_bytes()
    deleted = client.files.delete(created.id)
    assert deleted.deleted and deleted.id == created.id
    with pytest.raises(openai.NotFoundError):
        client.files.retrieve(created.id)
    assert list(client.files.list()) == []


def test_list_pages_orders_and_filters(start_api: StartApi, tmp_path: Path) -> None:
    client = start_api().client()
    path = write_lines(tmp_path / "in.jsonl", batch_lines(1))
    ids = []
    for i in range(7):
        with path.open("rb") as f:
            ids.append(client.files.create(file=f, purpose="batch" if i % 2 else "user_data").id)
    first = client.files.list(limit=3)
    assert [f.id for f in first.data] == ids[::-1][:3] and first.has_more
    assert first.first_id == ids[6] and first.last_id == ids[4]
    # The client follows the pages (after = the last id) to the end.
    assert [f.id for f in client.files.list(limit=3)] == ids[::-1]
    assert [f.id for f in client.files.list(limit=2, order="asc")] == ids
    batch_only = client.files.list(purpose="batch")
    assert [f.id for f in batch_only] == [ids[5], ids[3], ids[1]]
    last = client.files.list(limit=3, after=ids[2])
    assert [f.id for f in last.data] == [ids[1], ids[0]] and not last.has_more


def test_size_limit_and_purpose(start_api: StartApi, tmp_path: Path) -> None:
    client = start_api("--max-file-bytes", "1000").client()
    big = write_lines(tmp_path / "big.jsonl", batch_lines(20))
    assert big.stat().st_size > 1000
    with pytest.raises(openai.APIStatusError) as caught, big.open("rb") as f:
        client.files.create(file=f, purpose="batch")
    assert caught.value.status_code == 413
    small = write_lines(tmp_path / "small.jsonl", batch_lines(1))
    with pytest.raises(openai.BadRequestError, match="purpose"), small.open("rb") as f:
        client.files.create(file=f, purpose="nonsense")  # type: ignore[arg-type]
    assert list(client.files.list()) == []
    assert list((tmp_path / "data" / "files").iterdir()) == []  # nothing left on disk


def test_keys_wrong_is_401_other_owner_is_404(start_api: StartApi, tmp_path: Path) -> None:
    api = start_api()
    alice, bob = api.client(KEYS[0]), api.client(KEYS[1])
    path = write_lines(tmp_path / "in.jsonl", batch_lines(1))
    with path.open("rb") as f:
        file_id = alice.files.create(file=f, purpose="batch").id
    with pytest.raises(openai.AuthenticationError):
        api.client("key-mallory").files.list()
    with pytest.raises(openai.NotFoundError):
        bob.files.retrieve(file_id)
    with pytest.raises(openai.NotFoundError):
        bob.files.content(file_id)
    with pytest.raises(openai.NotFoundError):
        bob.files.delete(file_id)
    assert list(bob.files.list()) == []
    assert [f.id for f in alice.files.list()] == [file_id]
    assert "key-alice" not in api.log() and "key-bob" not in api.log()


def test_a_broken_upload_is_a_400_and_leaves_nothing(start_api: StartApi, tmp_path: Path) -> None:
    api = start_api()
    for content_type, body in (
        ("multipart/form-data; boundary=zzz", b"--zzz\r\nContent-Disposition: form-data; "
         b'name="file"; filename="a.jsonl"\r\n\r\npartial'),  # never closed
        ("multipart/form-data; boundary=zzz", b"--zzz\r\n\x00\x01 not a header\r\n\r\n"),
        ("application/json", b"{}"),
        ("multipart/form-data; boundary=zzz", b'--zzz\r\nContent-Disposition: form-data; '
         b'name="purpose"\r\n\r\nbatch\r\n--zzz--\r\n'),  # no file part
    ):  # fmt: skip
        headers = {"Content-Type": content_type, "Authorization": f"Bearer {KEYS[0]}"}
        reply = httpx.post(api.base_url + "/files", content=body, headers=headers, timeout=30)
        assert reply.status_code == 400, (body, reply.text)
        assert reply.json()["error"]["param"] == "file"
    assert list((tmp_path / "data" / "files").iterdir()) == []


def test_without_keys_any_caller_on_loopback_is_the_one_owner(
    start_api: StartApi, tmp_path: Path
) -> None:
    api = start_api(keys=())
    assert api.base_url.startswith("http://127.0.0.1:")
    path = write_lines(tmp_path / "in.jsonl", batch_lines(1))
    with path.open("rb") as f:
        file_id = api.client("anything").files.create(file=f, purpose="batch").id
    assert [f.id for f in api.client("something-else").files.list()] == [file_id]
