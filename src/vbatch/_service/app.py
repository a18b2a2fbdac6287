"""The HTTP routes: OpenAI's ``/v1/files`` and ``/v1/batches``, the status page at ``/`` and
its data at ``/v1/vbatch/status``. Every ``/v1`` route needs a key (when the service has keys)
and sees only that key's objects: another key's id is answered 404, as an unknown one is.

They run in the API's own process (apiserver.py), apart from the runner's: every answer comes
from the database and the data folder, and every change goes into the database, where the
runner finds it on its tick (a batch to start, a cancel to apply: serve.py)."""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Annotated, Any

import orjson
from fastapi import Depends, FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response
from pydantic import BaseModel
from starlette.exceptions import HTTPException

from .auth import Keys
from .filestore import FileStore
from .ids import is_id, new_id
from .objects import CANCELLABLE, TERMINAL, error_body, file_object, new_batch, page, share_weight
from .page import PAGE
from .store import FileRow, ShownBatch, Store
from .uploads import TooLarge, UploadError, receive_upload
from .validation import ENDPOINTS
from .views import batch_view, status_doc

__all__ = ["APIError", "Service", "create_app"]

PURPOSES = ("assistants", "batch", "fine-tune", "vision", "user_data", "evals")
BATCH_FILE_TTL_S = 30 * 24 * 3600  # OpenAI keeps batch input files 30 days unless told
_WINDOW = re.compile(r"^([1-9][0-9]{0,6})([smhd])$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
MAX_WINDOW_S = 7 * 86400


class APIError(Exception):
    def __init__(self, status: int, message: str, type_: str = "invalid_request_error",
                 param: str | None = None, code: str | None = None) -> None:  # fmt: skip
        super().__init__(message)
        self.status, self.body = status, error_body(message, type_, param, code)


def _json(body: Any) -> Response:
    """A reply encoded by orjson, past FastAPI's ``jsonable_encoder``: the polled routes
    (retrieve, list, status) are most of a busy service's requests (docs/benchmarks.md §3)."""
    return Response(orjson.dumps(body), media_type="application/json")


def _not_found(kind: str, object_id: str) -> APIError:
    return APIError(404, f"No {kind} found with id '{object_id}'.", code="not_found")


@dataclass
class Service:
    store: Store
    files: FileStore
    keys: Keys
    max_file_bytes: int
    clock: Callable[[], float] = field(default=time.time)


class BatchCreate(BaseModel):
    input_file_id: str
    endpoint: str
    completion_window: str
    metadata: dict[str, str] | None = None
    output_expires_after: dict[str, Any] | None = None


async def _owner(request: Request) -> str:
    """The owner of the request's bearer key; 401 for a missing or wrong one. ``async``: a
    plain function would be run in a worker thread for every request (FastAPI's way with sync
    dependencies), a thread hop per poll (docs/benchmarks.md §3)."""
    service: Service = request.app.state.service
    found = service.keys.owner(request.headers.get("authorization"))
    if found is None:
        raise APIError(401, "Incorrect API key provided.", code="invalid_api_key")
    return found


# Declared here, not inside create_app: FastAPI resolves the routes' annotations by name.
Owner = Annotated[str, Depends(_owner)]


def window_seconds(window: str) -> int:
    """Seconds of a completion window: OpenAI's only one, "24h", or another up to 7 days
    such as "90s" or "30m"."""
    match = _WINDOW.match(window)
    if match is None or int(match[1]) * _UNITS[match[2]] > MAX_WINDOW_S:
        raise APIError(400, f"completion_window must be like '24h' (at most 7d); got "
                            f"{window!r}", param="completion_window")  # fmt: skip
    return int(match[1]) * _UNITS[match[2]]


def create_app(service: Service) -> FastAPI:
    app = FastAPI(title="vbatch Batch API", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.service = service
    store, files, clock = service.store, service.files, service.clock

    @app.exception_handler(APIError)
    async def api_error(request: Request, exc: APIError) -> JSONResponse:
        return JSONResponse(exc.body, status_code=exc.status)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
        # Routing's own answers (no such route, a method the route lacks) in OpenAI's envelope,
        # not FastAPI's {"detail": ...}: the openai client's message reads the envelope.
        where = f"{request.method} {request.url.path}"
        if exc.status_code == 404:
            message, code = f"Invalid URL ({where})", "unknown_url"
        elif exc.status_code == 405:
            message, code = f"Method {request.method} is not allowed here ({where})", None
        else:
            message, code = str(exc.detail), None
        body = error_body(message, "invalid_request_error", None, code)
        return JSONResponse(body, status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def bad_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {}
        param = ".".join(str(p) for p in first.get("loc", ())[1:]) or None
        message = str(first.get("msg", "invalid request"))
        body = error_body(message, "invalid_request_error", param)
        return JSONResponse(body, status_code=400)

    def own_file(who: str, file_id: str) -> FileRow:
        row = store.file(who, file_id) if is_id(file_id, "file") else None
        if row is None:
            raise _not_found("file", file_id)
        return row

    def own_batch(who: str, batch_id: str) -> ShownBatch:
        shown = store.shown_batch(who, batch_id) if is_id(batch_id, "batch") else None
        if shown is None:
            raise _not_found("batch", batch_id)
        return shown

    # -- files -----------------------------------------------------------------------------------

    @app.post("/v1/files")
    async def create_file(request: Request, who: Owner) -> dict[str, Any]:
        declared = int(request.headers.get("content-length") or 0)
        if declared > service.max_file_bytes + 64 * 1024:
            raise APIError(413, f"the file is larger than this service takes "
                                f"({service.max_file_bytes:,} bytes)")  # fmt: skip
        file_id = new_id("file")
        location = files.upload_location(file_id)
        try:
            upload = await receive_upload(request.headers.get("content-type", ""),
                                          request.stream(), files.path(location),
                                          service.max_file_bytes)  # fmt: skip
        except TooLarge as exc:
            raise APIError(413, str(exc), param="file") from None
        except UploadError as exc:
            raise APIError(400, str(exc), param="file") from None
        purpose = upload.fields.get("purpose")
        try:
            if purpose not in PURPOSES:
                raise APIError(400, f"purpose must be one of {', '.join(PURPOSES)}; got "
                                    f"{purpose!r}", param="purpose")  # fmt: skip
            expires_at = _expires_at(upload.fields, purpose, int(clock()))
        except APIError:
            files.remove(location)
            raise
        row = FileRow(file_id, who, upload.size, int(clock()), expires_at,
                      upload.filename or "upload", purpose, location)  # fmt: skip
        store.add_file(row)
        return file_object(row)

    @app.get("/v1/files")
    async def list_files(
        who: Owner,
        after: str | None = None,
        limit: Annotated[int, Query(ge=1, le=10_000)] = 10_000,
        order: Annotated[str, Query(pattern="^(asc|desc)$")] = "desc",
        purpose: str | None = None,
    ) -> dict[str, Any]:
        rows, more = store.files(who, purpose, after, limit, order == "desc")
        return page([file_object(r) for r in rows], more)

    @app.get("/v1/files/{file_id}")
    async def get_file(file_id: str, who: Owner) -> dict[str, Any]:
        return file_object(own_file(who, file_id))

    @app.get("/v1/files/{file_id}/content")
    async def file_content(file_id: str, who: Owner) -> FileResponse:
        row = own_file(who, file_id)
        return FileResponse(files.path(row.location), media_type="application/octet-stream")

    @app.delete("/v1/files/{file_id}")
    async def delete_file(file_id: str, who: Owner) -> dict[str, Any]:
        row = own_file(who, file_id)
        # The file object goes at once; its bytes stay while an unfinished batch reads them
        # (its end removes them), so a batch's outcome never depends on a delete.
        with store.transaction():
            store.delete_file(who, file_id)
            used = store.location_used(row.location)
        if not used:
            files.remove(row.location)
        return {"id": file_id, "object": "file", "deleted": True}

    # -- batches ---------------------------------------------------------------------------------

    @app.post("/v1/batches")
    async def create_batch(body: BatchCreate, who: Owner) -> dict[str, Any]:
        if body.endpoint not in ENDPOINTS:
            raise APIError(400, f"endpoint must be one of {', '.join(ENDPOINTS)}; got "
                                f"{body.endpoint!r}", param="endpoint")  # fmt: skip
        window = window_seconds(body.completion_window)
        _check_metadata(body.metadata)
        output_ttl = _ttl(body.output_expires_after, "output_expires_after")
        weight, ignored = share_weight(body.metadata)
        now = int(clock())
        # The check and the insert in one transaction: the runner removing the file as it
        # expires (its own transaction) comes wholly before (404 here) or after (it is kept).
        with store.transaction():
            source = own_file(who, body.input_file_id)
            if source.purpose != "batch":
                raise APIError(400, f"file {source.id} has purpose {source.purpose!r}, not "
                                    "'batch'", param="input_file_id")  # fmt: skip
            doc = new_batch(new_id("batch"), source.id, body.endpoint, body.completion_window,
                            body.metadata, now, now + window)  # fmt: skip
            # vbatch's own facts beside OpenAI's fields (the openai client keeps unknown ones).
            doc["vbatch"] = {"share_weight": weight, "notes": [ignored] if ignored else []}
            # "validating": the runner starts it on its next tick.
            store.add_batch(who, doc, source.location, output_ttl)
        return doc

    @app.get("/v1/batches")
    async def list_batches(
        who: Owner, after: str | None = None, limit: Annotated[int, Query(ge=1, le=100)] = 20
    ) -> Response:
        shown, more = store.shown_batches(who, after, limit)
        return _json(page([batch_view(s) for s in shown], more))

    @app.get("/v1/batches/{batch_id}")
    async def get_batch(batch_id: str, who: Owner) -> Response:
        return _json(batch_view(own_batch(who, batch_id)))

    @app.post("/v1/batches/{batch_id}/cancel")
    async def cancel_batch(batch_id: str, who: Owner) -> Response:
        # Written where only the API writes (batch_cancels, m007): the runner applies it on
        # its tick, and no save of the batch by the runner can undo it.
        with store.transaction():
            shown = own_batch(who, batch_id)
            if shown.doc["status"] in CANCELLABLE and shown.cancel_at is None:
                at = int(clock())
                store.request_cancel(batch_id, at)
                shown = replace(shown, cancel_at=at)  # what a re-read would give
        doc = batch_view(shown)
        if doc["status"] in TERMINAL - {"cancelled"}:
            raise APIError(409, f"batch {batch_id} is {doc['status']}; it cannot be "
                                "cancelled", code="batch_not_cancellable")  # fmt: skip
        return _json(doc)

    # -- the status page -------------------------------------------------------------------------

    @app.get("/", response_class=HTMLResponse)
    async def status_page() -> str:
        return PAGE

    @app.get("/v1/vbatch/status")
    async def status(who: Owner) -> Response:
        shown, _ = store.shown_batches(who, None, 50)
        return _json(status_doc(shown, store.live_fleet(), clock()))

    return app


def _ttl(policy: dict[str, Any] | None, param: str) -> int | None:
    """Seconds from an expiry policy (``{"anchor": "created_at", "seconds": N}``), as OpenAI
    takes them: 1 hour to 30 days."""
    if policy is None:
        return None
    seconds = policy.get("seconds")
    if policy.get("anchor") != "created_at" or not (
        isinstance(seconds, int) and 3600 <= seconds <= 30 * 86400
    ):
        raise APIError(400, f"{param} must be anchor 'created_at' and 3600 to 2592000 "
                            "seconds", param=param)  # fmt: skip
    return seconds


def _expires_at(fields: dict[str, str], purpose: str | None, now: int) -> int | None:
    seconds = fields.get("expires_after[seconds]")
    if seconds is None:
        return now + BATCH_FILE_TTL_S if purpose == "batch" else None
    policy = {"anchor": fields.get("expires_after[anchor]"),
              "seconds": int(seconds) if seconds.isdigit() else None}  # fmt: skip
    ttl = _ttl(policy, "expires_after")
    assert ttl is not None
    return now + ttl


def _check_metadata(metadata: dict[str, str] | None) -> None:
    if metadata is None:
        return
    if len(metadata) > 16 or any(len(k) > 64 or len(v) > 512 for k, v in metadata.items()):
        raise APIError(400, "metadata takes at most 16 keys of 64 characters, values of 512",
                       param="metadata")  # fmt: skip
