"""/v1/files: uploads streamed to the inbox, File records, and content from any bucket.

An upload is parsed by Starlette into a spooled temporary file (memory up to
1 MB, then disk), then streamed to ``inbox/<tenant>/.files/<file_id>.jsonl`` in
1 MiB reads while its sha256 and size are computed, through the async store on
the event loop (one PUT up to a part, a multipart upload past it); nothing holds
more than one part of the file. Output and error files are File records the
kernel created over outbox objects; ``/content`` streams whichever bucket a
record names.

Deleting a file removes its record (it can no longer be read, listed or used
for a new batch); the bytes of an upload stay in the inbox for batches already
created from it, until the bucket's lifecycle rule removes them. A file created
with ``expires_after`` answers 404 once it expires, and the watcher's expiry
sweep (``dropbatch.expiry``) deletes its record and bytes.
"""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterable, AsyncIterator

from pydantic import ValidationError
from starlette.datastructures import UploadFile
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from dropbatch.context import Context
from dropbatch.errors import InvalidRequest, PayloadTooLarge, UnprocessableRequest
from dropbatch.ids import new_file_id
from dropbatch.models import ExpiresAfter, FileRecord
from dropbatch.storage.keys import uploaded_file_key
from gateway.auth import Principal, tenant_route
from gateway.params import (
    check_content_length,
    limited_receive,
    path_id,
    query_choice,
    query_cursor,
    query_int,
    query_str,
)
from gateway.state import Gateway, gateway_of

READ_CHUNK = 1024 * 1024
JSONL = "application/jsonl"
MULTIPART_OVERHEAD = 64 * 1024  # boundaries, part headers and the small form fields around the file
# Purposes OpenAI defines; only "batch" is served here (others are refused with 400).
KNOWN_PURPOSES = ("assistants", "batch", "fine-tune", "vision", "user_data", "evals")
# GET /v1/files pages like OpenAI's (limit, after, order); its default is this short page,
# not OpenAI's 10,000 (one record read each), and the SDK's iteration follows `after`.
FILES_PAGE = 20
MAX_FILES_PAGE = 10_000


async def upload_chunks(source: UploadFile) -> AsyncIterator[bytes]:
    """The upload in ``READ_CHUNK`` reads (Starlette spools past 1 MB to disk and reads that in a thread)."""
    while chunk := await source.read(READ_CHUNK):
        yield chunk


async def store_upload(
    gw: Gateway,
    tenant: str,
    chunks: AsyncIterable[bytes],
    *,
    filename: str,
    expires_at: int | None = None,
) -> FileRecord:
    """Stream ``chunks`` to a new inbox upload (one PUT, or multipart past a part) and record it;
    413 past the size limit."""
    ctx = gw.ctx
    limit = ctx.settings.limits.max_file_bytes
    file_id = new_file_id()
    key = uploaded_file_key(tenant, file_id)
    hasher = hashlib.sha256()
    size = 0

    async def counted() -> AsyncIterator[bytes]:
        nonlocal size
        async for chunk in chunks:
            size += len(chunk)
            _check_size(size, limit)
            hasher.update(chunk)
            yield chunk

    await gw.store.upload_stream(ctx.inbox, key, counted(), if_none_match=True, content_type=JSONL)
    record = _upload_record(ctx, tenant, file_id, size, hasher.hexdigest(), filename=filename, expires_at=expires_at)
    await gw.files.create(record)
    return record


def _check_size(size: int, limit: int) -> None:
    if size > limit:
        raise PayloadTooLarge(f"The file is larger than the limit of {limit} bytes.")


def _upload_record(
    ctx: Context, tenant: str, file_id: str, size: int, sha256: str, *, filename: str, expires_at: int | None
) -> FileRecord:
    return FileRecord(
        id=file_id,
        bytes=size,
        created_at=ctx.now(),
        filename=filename,
        purpose="batch",
        status="processed",
        expires_at=expires_at,
        tenant=tenant,
        bucket=ctx.inbox,
        key=uploaded_file_key(tenant, file_id),
        sha256=sha256,
    )


def _clean_filename(name: str | None) -> str:
    base = (name or "").replace("\\", "/").rsplit("/", 1)[-1].strip()
    return base[:255] or "upload.jsonl"


def _expires_after(form, created_at: int) -> int | None:
    anchor = form.get("expires_after[anchor]")
    seconds = form.get("expires_after[seconds]")
    if anchor is None and seconds is None:
        return None
    try:
        policy = ExpiresAfter.model_validate(
            {"anchor": anchor, "seconds": int(seconds) if isinstance(seconds, str) and seconds.isdigit() else seconds}
        )
    except ValidationError:
        raise UnprocessableRequest(
            "expires_after needs anchor 'created_at' and seconds between 3600 and 2592000.", param="expires_after"
        ) from None
    return policy.expires_at(created_at)


@tenant_route
async def create_file(request: Request, principal: Principal) -> Response:
    gw = gateway_of(request)
    limit = gw.settings.limits.max_file_bytes
    check_content_length(request, limit + MULTIPART_OVERHEAD, "upload")
    content_type = request.headers.get("content-type", "")
    if not content_type.lower().startswith("multipart/form-data"):
        raise InvalidRequest(
            "Upload files as multipart/form-data with fields 'file' and 'purpose'.", code="invalid_content_type"
        )
    limited = Request(request.scope, receive=limited_receive(request.receive, limit + MULTIPART_OVERHEAD, "upload"))
    async with limited.form(max_files=1, max_fields=8, max_part_size=64 * 1024) as form:
        purpose = form.get("purpose")
        upload = form.get("file")
        if not isinstance(purpose, str):
            raise UnprocessableRequest(
                "Missing required parameter: 'purpose'.", code="missing_required_parameter", param="purpose"
            )
        if purpose not in KNOWN_PURPOSES:
            raise UnprocessableRequest(
                f"Invalid value for 'purpose': must be one of {', '.join(KNOWN_PURPOSES)}.", param="purpose"
            )
        if purpose != "batch":
            raise InvalidRequest(
                f"Purpose '{purpose}' is not supported here; dropbatch stores files with purpose 'batch'.",
                code="unsupported_purpose",
                param="purpose",
            )
        if not isinstance(upload, UploadFile):
            raise UnprocessableRequest(
                "Missing required parameter: 'file'.", code="missing_required_parameter", param="file"
            )
        if upload.size is not None and upload.size > limit:
            raise PayloadTooLarge(f"The file is {upload.size} bytes; the limit is {limit} bytes.")
        if upload.size == 0:  # refused now, not as a failed batch later
            raise InvalidRequest("The file is empty; a batch file holds at least one request line.",
                                 code="empty_file", param="file")
        expires_at = _expires_after(form, gw.ctx.now())
        record = await store_upload(
            gw, principal.tenant, upload_chunks(upload), filename=_clean_filename(upload.filename), expires_at=expires_at
        )
    return JSONResponse(record.openai())


def list_envelope(data: list[dict], has_more: bool) -> dict:
    return {
        "object": "list",
        "data": data,
        "first_id": data[0]["id"] if data else None,
        "last_id": data[-1]["id"] if data else None,
        "has_more": has_more,
    }


@tenant_route
async def get_files(request: Request, principal: Principal) -> Response:
    gw = gateway_of(request)
    after = query_cursor(request)
    limit = query_int(request, "limit", default=FILES_PAGE, low=1, high=MAX_FILES_PAGE)
    order = query_choice(request, "order", default="desc", choices=("asc", "desc"))
    purpose = query_str(request, "purpose")
    page, has_more = await gw.files.list(
        principal.tenant, after=after, limit=limit, newest_first=order == "desc", purpose=purpose
    )
    return JSONResponse(list_envelope([f.openai() for f in page], has_more))


@tenant_route
async def retrieve_file(request: Request, principal: Principal) -> Response:
    gw = gateway_of(request)
    record = await gw.files.get(principal.tenant, path_id(request, "file_id"))
    return JSONResponse(record.openai())


@tenant_route
async def delete_file(request: Request, principal: Principal) -> Response:
    gw = gateway_of(request)
    record = await gw.files.delete(principal.tenant, path_id(request, "file_id"))
    return JSONResponse({"id": record.id, "object": "file", "deleted": True})


@tenant_route
async def file_content(request: Request, principal: Principal) -> Response:
    gw = gateway_of(request)
    record = await gw.files.get(principal.tenant, path_id(request, "file_id"))
    size = (await gw.store.head(record.bucket, record.key)).size
    return StreamingResponse(
        gw.store.iter_bytes(record.bucket, record.key),
        media_type="application/jsonl",
        headers={"content-length": str(size)},
    )


ROUTES = [
    Route("/v1/files", create_file, methods=["POST"]),
    Route("/v1/files", get_files, methods=["GET"]),
    Route("/v1/files/{file_id}", retrieve_file, methods=["GET"]),
    Route("/v1/files/{file_id}", delete_file, methods=["DELETE"]),
    Route("/v1/files/{file_id}/content", file_content, methods=["GET"]),
]
