"""The async S3 object store (aiobotocore) the gateway awaits on its event loop.

One ``AsyncS3ObjectStore`` per process: one aiobotocore client whose connection
pool holds ``pool_size`` connections, created on first use inside the running
loop and closed by ``close()`` (the app's shutdown). botocore failures go through
the same table as the boto3 store (``dropbatch.storage.errors``), so callers see
the same ``ObjectNotFound`` / ``ObjectExists`` / ``StaleWrite`` / ``StorageUnavailable``.

Its ``get`` (every record read) goes first through ``SignedGet``, a plain signed
GET a third the CPU of an aiobotocore call; what that cannot answer alone is asked
again through the client. ``upload_stream`` writes an upload of any size: one PUT
up to a part, else a multipart upload holding one part at a time.

``async_twin(store, …)`` picks the async store for a sync one: the S3 store gets
this one; any other ``ObjectStore`` (the in-memory one, a test's wrapper) is
awaited through a worker thread by ``storage.threaded.ThreadedObjectStore``.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterable, AsyncIterator
from contextlib import AsyncExitStack
from datetime import datetime
from email.utils import parsedate_to_datetime
from typing import Any

from aiobotocore.config import AioConfig
from aiobotocore.credentials import AioCredentials
from aiobotocore.session import get_session
from botocore.utils import parse_timestamp

from dropbatch.errors import ObjectNotFound, StorageError
from dropbatch.settings import StorageSettings
from dropbatch.storage.base import (
    DEFAULT_PART_SIZE,
    DEFAULT_READ_CHUNK,
    AsyncObjectStore,
    ObjectInfo,
    ObjectStore,
)
from dropbatch.storage.errors import (
    AWS_ERRORS,
    BODY_CUT,
    read_failure,
    retried_precondition,
    retry_pause,
    translate,
)
from dropbatch.storage.s3 import (
    S3ObjectStore,
    client_options,
    complete_request,
    copy_request,
    full_parts,
    head_info,
    list_request,
    listed_info,
    plain_etag,
    put_request,
    range_request,
)
from dropbatch.storage.signed import SignedGet
from dropbatch.storage.threaded import ThreadedObjectStore

# Per-call work the gateway's small JSON reads and writes do not need (botocore's defaults are for
# any caller): our own code builds every request, and S3 checks the MD5 botocore sends on writes.
LEAN_CALLS: dict[str, Any] = {
    "parameter_validation": False,
    "request_checksum_calculation": "when_required",
    "response_checksum_validation": "when_required",
}


def fast_timestamp(text: str) -> datetime:
    """S3's two timestamp forms (ISO 8601 in XML, RFC 7231 in headers) without dateutil's general parser."""
    try:
        if text[:1].isdigit():
            return datetime.fromisoformat(text)
        return parsedate_to_datetime(text)
    except (TypeError, ValueError):
        return parse_timestamp(text)


class AsyncS3ObjectStore:
    """``AsyncObjectStore`` on S3 through one pooled aiobotocore client."""

    def __init__(self, settings: StorageSettings, *, pool_size: int = 64) -> None:
        self._settings = settings
        self._pool_size = pool_size
        self._client: Any = None
        self._stack: AsyncExitStack | None = None
        self._opening: asyncio.Lock | None = None
        self._signed: SignedGet | None = None

    async def _s3(self) -> Any:
        if self._client is not None:
            return self._client
        if self._opening is None:
            self._opening = asyncio.Lock()
        async with self._opening:
            if self._client is None:
                config, options = client_options(self._settings)
                session = get_session()
                session.get_component("response_parser_factory").set_parser_defaults(timestamp_parser=fast_timestamp)
                creator = session.create_client(
                    "s3", config=AioConfig(max_pool_connections=self._pool_size, **config, **LEAN_CALLS), **options
                )
                stack = AsyncExitStack()
                client = await stack.enter_async_context(creator)
                credentials = (
                    AioCredentials(options["aws_access_key_id"], options["aws_secret_access_key"])
                    if options["aws_access_key_id"] and options["aws_secret_access_key"]
                    else await session.get_credentials()
                )
                if credentials is not None:
                    self._signed = SignedGet(
                        client.meta.endpoint_url,
                        self._settings.region,
                        credentials,
                        pool_size=self._pool_size,
                        connect_timeout=config["connect_timeout"],
                        read_timeout=config["read_timeout"],
                    )
                    stack.push_async_callback(self._signed.close)
                self._client, self._stack = client, stack
        return self._client

    async def open(self) -> None:
        try:
            await self._s3()
        except AWS_ERRORS as exc:
            raise translate(exc, bucket="", key="") from exc

    async def close(self) -> None:
        stack, self._stack, self._client, self._signed = self._stack, None, None, None
        if stack is not None:
            await stack.aclose()

    async def head(self, bucket: str, key: str) -> ObjectInfo:
        try:
            resp = await (await self._s3()).head_object(Bucket=bucket, Key=key)
        except AWS_ERRORS as exc:
            raise translate(exc, bucket=bucket, key=key) from exc
        return head_info(key, resp)

    async def get(self, bucket: str, key: str) -> tuple[bytes, str]:
        """(body, ETag): a plain signed GET first (the hot read, a third of the CPU); aiobotocore for the rest."""
        attempt = 0
        while True:
            try:
                client = await self._s3()
                if attempt == 0 and self._signed is not None and (found := await self._signed.get(bucket, key)):
                    return found
                resp = await client.get_object(Bucket=bucket, Key=key)
                async with resp["Body"] as body:
                    return await body.read(), resp["ETag"]
            except BODY_CUT as exc:
                attempt += 1
                if attempt >= self._settings.max_attempts:
                    raise translate(exc, bucket=bucket, key=key) from exc
                await asyncio.sleep(retry_pause(attempt - 1))
            except AWS_ERRORS as exc:
                raise translate(exc, bucket=bucket, key=key) from exc

    async def iter_bytes(
        self,
        bucket: str,
        key: str,
        *,
        start: int = 0,
        end: int | None = None,
        chunk_size: int = DEFAULT_READ_CHUNK,
    ) -> AsyncIterator[bytes]:
        if end is not None and end <= start:
            return
        offset, etag, attempt = start, None, 0
        while True:
            try:
                resp = await (await self._s3()).get_object(**range_request(bucket, key, offset, end, etag))
                etag = etag or resp["ETag"]
                async with resp["Body"] as body:
                    while chunk := await body.read(chunk_size):
                        offset += len(chunk)
                        yield chunk
                return
            except BODY_CUT as exc:
                attempt += 1
                if attempt >= self._settings.max_attempts:
                    raise translate(exc, bucket=bucket, key=key) from exc
                await asyncio.sleep(retry_pause(attempt - 1))
            except AWS_ERRORS as exc:
                error = read_failure(exc, bucket=bucket, key=key, etag=etag)
                if error is None:
                    return
                raise error from exc

    async def put(
        self,
        bucket: str,
        key: str,
        data: bytes,
        *,
        if_none_match: bool = False,
        if_match: str | None = None,
        content_type: str = "application/octet-stream",
        metadata: dict[str, str] | None = None,
    ) -> str:
        request = put_request(bucket, key, data, if_none_match, if_match, content_type, metadata)
        try:
            return (await (await self._s3()).put_object(**request))["ETag"]
        except AWS_ERRORS as exc:
            if (if_none_match or if_match is not None) and retried_precondition(exc):
                # botocore re-sent a write whose answer was lost; the 412 may be that write itself.
                mine = plain_etag(data)
                try:
                    if (await self.head(bucket, key)).etag == mine:
                        return mine
                except StorageError:
                    pass
            conditional = "if_none_match" if if_none_match else "if_match"
            raise translate(exc, bucket=bucket, key=key, conditional=conditional) from exc

    async def upload_stream(
        self,
        bucket: str,
        key: str,
        chunks: AsyncIterable[bytes],
        *,
        if_none_match: bool = False,
        content_type: str = "application/octet-stream",
        part_size: int = DEFAULT_PART_SIZE,
    ) -> ObjectInfo:
        """``S3ObjectStore.upload_stream`` awaited: one PUT if it fits a part, else a multipart upload
        holding one part in memory at a time, aborted if anything fails before it completes."""
        buffer = bytearray()
        parts: list[dict] = []
        upload_id: str | None = None
        size = 0
        client = await self._s3()
        try:
            async for chunk in chunks:
                buffer += chunk
                size += len(chunk)
                for part in full_parts(buffer, part_size):
                    if upload_id is None:
                        upload_id = (
                            await client.create_multipart_upload(Bucket=bucket, Key=key, ContentType=content_type)
                        )["UploadId"]
                    etag = (
                        await client.upload_part(
                            Bucket=bucket, Key=key, UploadId=upload_id, PartNumber=len(parts) + 1, Body=part
                        )
                    )["ETag"]
                    parts.append({"ETag": etag, "PartNumber": len(parts) + 1})
            if upload_id is None:
                data = bytes(buffer)
                etag = await self.put(bucket, key, data, if_none_match=if_none_match, content_type=content_type)
                return ObjectInfo(key=key, size=size, etag=etag)
            if buffer:
                etag = (
                    await client.upload_part(
                        Bucket=bucket, Key=key, UploadId=upload_id, PartNumber=len(parts) + 1, Body=bytes(buffer)
                    )
                )["ETag"]
                parts.append({"ETag": etag, "PartNumber": len(parts) + 1})
            request = complete_request(bucket, key, upload_id, parts, if_none_match)
            etag = (await client.complete_multipart_upload(**request))["ETag"]
            return ObjectInfo(key=key, size=size, etag=etag)
        except AWS_ERRORS as exc:
            await self._abort(bucket, key, upload_id)
            raise translate(exc, bucket=bucket, key=key, conditional="if_none_match") from exc
        except BaseException:
            await self._abort(bucket, key, upload_id)
            raise

    async def _abort(self, bucket: str, key: str, upload_id: str | None) -> None:
        if upload_id is None:
            return
        try:
            await (await self._s3()).abort_multipart_upload(Bucket=bucket, Key=key, UploadId=upload_id)
        except AWS_ERRORS:
            pass  # the bucket lifecycle rule cleans up incomplete uploads

    async def list(
        self, bucket: str, prefix: str = "", *, start_after: str | None = None, page_size: int = 1000
    ) -> AsyncIterator[ObjectInfo]:
        request = list_request(bucket, prefix, start_after, page_size)
        try:
            async for page in (await self._s3()).get_paginator("list_objects_v2").paginate(**request):
                for item in page.get("Contents", []):
                    yield listed_info(item)
        except AWS_ERRORS as exc:
            raise translate(exc, bucket=bucket, key=prefix) from exc

    async def delete(self, bucket: str, key: str) -> None:
        try:
            await (await self._s3()).delete_object(Bucket=bucket, Key=key)
        except AWS_ERRORS as exc:
            error = translate(exc, bucket=bucket, key=key)
            if not isinstance(error, ObjectNotFound):
                raise error from exc

    async def copy(self, bucket: str, key: str, dest_bucket: str, dest_key: str, *, if_none_match: bool = False) -> str:
        if if_none_match:  # streamed through a conditional PUT, as ``S3ObjectStore.copy`` says why
            return (await self.upload_stream(dest_bucket, dest_key, self.iter_bytes(bucket, key), if_none_match=True)).etag
        try:
            resp = await (await self._s3()).copy_object(**copy_request(bucket, key, dest_bucket, dest_key))
        except AWS_ERRORS as exc:
            raise translate(exc, bucket=dest_bucket, key=dest_key) from exc
        return resp["CopyObjectResult"]["ETag"]


def async_twin(store: ObjectStore, settings: StorageSettings, *, pool_size: int) -> AsyncObjectStore:
    """The async store over the same objects as ``store``: aiobotocore for S3, a thread adapter otherwise."""
    if isinstance(store, S3ObjectStore):
        return AsyncS3ObjectStore(settings, pool_size=pool_size)
    return ThreadedObjectStore(store)
