"""A file upload (``multipart/form-data``) streamed straight to disk, its size capped as it
arrives: python-multipart parses the body chunk by chunk, the ``file`` part's bytes go to a
file in the data folder, the small text fields (``purpose``, ``expires_after[...]``) to memory.
Nothing is spooled elsewhere first, and an upload over the cap stops at the cap."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import BinaryIO

from python_multipart.exceptions import ParseError
from python_multipart.multipart import MultipartParser, parse_options_header

__all__ = ["TooLarge", "Upload", "UploadError", "receive_upload"]

_MAX_FIELD_BYTES = 4096


class UploadError(ValueError):
    """The body is not a usable upload (the message says why)."""


class TooLarge(UploadError):
    pass


@dataclass
class Upload:
    filename: str | None = None  # None: no file part came
    size: int = 0
    fields: dict[str, str] = field(default_factory=dict)


class _Receiver:
    """python-multipart's callbacks: one part at a time, to the file or to a field."""

    def __init__(self, out: BinaryIO, max_bytes: int) -> None:
        self.out = out
        self.max_bytes = max_bytes
        self.upload = Upload()
        self._header_field = b""
        self._header_value = b""
        self._headers: dict[bytes, bytes] = {}
        self._name: str | None = None
        self._is_file = False
        self._value = bytearray()
        self.complete = False  # the closing boundary came: the body is whole

    def callbacks(self) -> dict[str, object]:
        return {
            "on_part_begin": self._begin,
            "on_header_field": self._field,
            "on_header_value": self._value_part,
            "on_header_end": self._header_end,
            "on_headers_finished": self._headers_done,
            "on_part_data": self._data,
            "on_part_end": self._end,
            "on_end": self._body_end,
        }

    def _body_end(self) -> None:
        self.complete = True

    def _begin(self) -> None:
        self._headers, self._value = {}, bytearray()

    def _field(self, data: bytes, start: int, end: int) -> None:
        self._header_field += data[start:end]

    def _value_part(self, data: bytes, start: int, end: int) -> None:
        self._header_value += data[start:end]

    def _header_end(self) -> None:
        self._headers[self._header_field.lower()] = self._header_value
        self._header_field = self._header_value = b""

    def _headers_done(self) -> None:
        _, params = parse_options_header(self._headers.get(b"content-disposition", b""))
        name = params.get(b"name")
        self._name = name.decode("utf-8", "replace") if name is not None else None
        self._is_file = self._name == "file"
        if self._is_file:
            if self.upload.filename is not None:
                raise UploadError("more than one 'file' part")
            filename = params.get(b"filename", b"upload")
            # Only shown back (FileObject.filename), never used as a path.
            self.upload.filename = os.path.basename(filename.decode("utf-8", "replace"))[:255]

    def _data(self, data: bytes, start: int, end: int) -> None:
        if self._is_file:
            self.upload.size += end - start
            if self.upload.size > self.max_bytes:
                raise TooLarge(f"the file is larger than this service takes "
                               f"({self.max_bytes:,} bytes)")  # fmt: skip
            self.out.write(data[start:end])
        else:
            self._value += data[start:end]
            if len(self._value) > _MAX_FIELD_BYTES:
                raise UploadError(f"form field {self._name!r} is too long")

    def _end(self) -> None:
        if not self._is_file and self._name is not None:
            self.upload.fields[self._name] = self._value.decode("utf-8", "replace")


async def receive_upload(
    content_type: str, body: AsyncIterator[bytes], path: str, max_bytes: int
) -> Upload:
    """Parse the multipart ``body``, writing its ``file`` part to ``path`` (removed again when
    anything goes wrong)."""
    kind, params = parse_options_header(content_type)
    boundary = params.get(b"boundary")
    if kind != b"multipart/form-data" or not boundary:
        raise UploadError("the body must be multipart/form-data")
    try:
        with open(path, "xb") as out:
            receiver = _Receiver(out, max_bytes)
            parser = MultipartParser(boundary, receiver.callbacks())  # type: ignore[arg-type]
            try:
                async for chunk in body:
                    parser.write(chunk)
                parser.finalize()
            except ParseError as exc:
                raise UploadError(f"the multipart body cannot be read: {exc}") from None
            if not receiver.complete:
                raise UploadError("the multipart body ends before its closing boundary")
            out.flush()
            os.fsync(out.fileno())
    except BaseException:
        if os.path.exists(path):
            os.unlink(path)
        raise
    if receiver.upload.filename is None:
        os.unlink(path)
        raise UploadError("the upload has no 'file' part")
    return receiver.upload
