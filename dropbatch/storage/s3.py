"""The S3 object store over boto3 (the watcher and runner); errors go through ``storage.errors``."""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Iterable, Iterator

import boto3
from botocore.config import Config

from dropbatch.errors import ObjectNotFound, StorageError
from dropbatch.settings import StorageSettings
from dropbatch.storage.base import DEFAULT_PART_SIZE, DEFAULT_READ_CHUNK, ObjectInfo
from dropbatch.storage.errors import (
    AWS_ERRORS,
    BODY_CUT,
    read_failure,
    retried_precondition,
    retry_pause,
    translate,
)

SYNC_POOL = 50  # connections of the shared client: the threads that may call S3 at once (anyio's pool is 40)


def _backoff(attempt: int) -> None:
    time.sleep(retry_pause(attempt))


class S3ObjectStore:
    """``ObjectStore`` on real S3 (or moto/LocalStack through ``endpoint_url``).

    Transient faults (throttling, 5xx, resets, timeouts) are retried by botocore's
    ``standard`` mode with backoff and jitter, configured once here; what is still
    failing afterwards surfaces as ``StorageUnavailable``.
    """

    def __init__(self, settings: StorageSettings) -> None:
        self._settings = settings
        self._shared = None
        self._creating = threading.Lock()

    def _client(self):
        # One client for every thread: a botocore client is thread-safe once built (its building is not,
        # hence the lock). A client per thread cost ~0.1 s of CPU for each new worker thread, and the
        # gateway's thread pool retires idle threads, so it paid that again and again under load.
        client = self._shared
        if client is None:
            with self._creating:
                if self._shared is None:
                    self._shared = make_client("s3", self._settings, pool_size=SYNC_POOL)
                client = self._shared
        return client

    def head(self, bucket: str, key: str) -> ObjectInfo:
        try:
            resp = self._client().head_object(Bucket=bucket, Key=key)
        except AWS_ERRORS as exc:
            raise translate(exc, bucket=bucket, key=key) from exc
        return head_info(key, resp)

    def get(self, bucket: str, key: str) -> tuple[bytes, str]:
        attempt = 0
        while True:
            try:
                resp = self._client().get_object(Bucket=bucket, Key=key)
                return resp["Body"].read(), resp["ETag"]
            except BODY_CUT as exc:
                attempt += 1
                if attempt >= self._settings.max_attempts:
                    raise translate(exc, bucket=bucket, key=key) from exc
                _backoff(attempt - 1)
            except AWS_ERRORS as exc:
                raise translate(exc, bucket=bucket, key=key) from exc

    def iter_bytes(
        self,
        bucket: str,
        key: str,
        *,
        start: int = 0,
        end: int | None = None,
        chunk_size: int = DEFAULT_READ_CHUNK,
    ) -> Iterator[bytes]:
        if end is not None and end <= start:
            return
        offset, etag, attempt = start, None, 0
        while True:
            try:
                resp = self._client().get_object(**range_request(bucket, key, offset, end, etag))
                etag = etag or resp["ETag"]
                body = resp["Body"]
                while chunk := body.read(chunk_size):
                    offset += len(chunk)
                    yield chunk
                return
            except BODY_CUT as exc:
                attempt += 1
                if attempt >= self._settings.max_attempts:
                    raise translate(exc, bucket=bucket, key=key) from exc
                _backoff(attempt - 1)
            except AWS_ERRORS as exc:
                error = read_failure(exc, bucket=bucket, key=key, etag=etag)
                if error is None:
                    return
                raise error from exc

    def put(
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
            return self._client().put_object(**request)["ETag"]
        except AWS_ERRORS as exc:
            if (if_none_match or if_match is not None) and retried_precondition(exc):
                # botocore re-sent a write whose answer was lost; the 412 may be that write itself.
                mine = plain_etag(data)
                try:
                    if self.head(bucket, key).etag == mine:
                        return mine
                except StorageError:
                    pass
            conditional = "if_none_match" if if_none_match else "if_match"
            raise translate(exc, bucket=bucket, key=key, conditional=conditional) from exc

    def upload_stream(
        self,
        bucket: str,
        key: str,
        chunks: Iterable[bytes],
        *,
        if_none_match: bool = False,
        content_type: str = "application/octet-stream",
        part_size: int = DEFAULT_PART_SIZE,
    ) -> ObjectInfo:
        buffer = bytearray()
        parts: list[dict] = []
        upload_id: str | None = None
        size = 0
        client = self._client()
        try:
            for chunk in chunks:
                buffer += chunk
                size += len(chunk)
                for part in full_parts(buffer, part_size):
                    if upload_id is None:
                        upload_id = client.create_multipart_upload(
                            Bucket=bucket, Key=key, ContentType=content_type
                        )["UploadId"]
                    etag = client.upload_part(
                        Bucket=bucket, Key=key, UploadId=upload_id, PartNumber=len(parts) + 1, Body=part
                    )["ETag"]
                    parts.append({"ETag": etag, "PartNumber": len(parts) + 1})
            if upload_id is None:
                etag = self.put(bucket, key, bytes(buffer), if_none_match=if_none_match, content_type=content_type)
                return ObjectInfo(key=key, size=size, etag=etag)
            if buffer:
                etag = client.upload_part(
                    Bucket=bucket, Key=key, UploadId=upload_id, PartNumber=len(parts) + 1, Body=bytes(buffer)
                )["ETag"]
                parts.append({"ETag": etag, "PartNumber": len(parts) + 1})
            etag = client.complete_multipart_upload(**complete_request(bucket, key, upload_id, parts, if_none_match))[
                "ETag"
            ]
            return ObjectInfo(key=key, size=size, etag=etag)
        except AWS_ERRORS as exc:
            self._abort(bucket, key, upload_id)
            raise translate(exc, bucket=bucket, key=key, conditional="if_none_match") from exc
        except BaseException:
            self._abort(bucket, key, upload_id)
            raise

    def _abort(self, bucket: str, key: str, upload_id: str | None) -> None:
        if upload_id is None:
            return
        try:
            self._client().abort_multipart_upload(Bucket=bucket, Key=key, UploadId=upload_id)
        except AWS_ERRORS:
            pass  # the bucket lifecycle rule cleans up incomplete uploads

    def list(self, bucket: str, prefix: str = "", *, start_after: str | None = None) -> Iterator[ObjectInfo]:
        try:
            for page in (
                self._client().get_paginator("list_objects_v2").paginate(**list_request(bucket, prefix, start_after))
            ):
                for item in page.get("Contents", []):
                    yield listed_info(item)
        except AWS_ERRORS as exc:
            raise translate(exc, bucket=bucket, key=prefix) from exc

    def delete(self, bucket: str, key: str) -> None:
        try:
            self._client().delete_object(Bucket=bucket, Key=key)
        except AWS_ERRORS as exc:
            error = translate(exc, bucket=bucket, key=key)
            if not isinstance(error, ObjectNotFound):
                raise error from exc

    def copy(self, bucket: str, key: str, dest_bucket: str, dest_key: str, *, if_none_match: bool = False) -> str:
        if if_none_match:
            # CopyObject's If-None-Match is recent on AWS and ignored by moto and other S3-compatible
            # stores, which would overwrite silently. A conditional PUT (or multipart completion) is
            # honoured everywhere dropbatch runs, so a create-only copy streams through one.
            return self.upload_stream(dest_bucket, dest_key, self.iter_bytes(bucket, key), if_none_match=True).etag
        try:
            return self._client().copy_object(**copy_request(bucket, key, dest_bucket, dest_key))["CopyObjectResult"]["ETag"]
        except AWS_ERRORS as exc:
            raise translate(exc, bucket=dest_bucket, key=dest_key) from exc


def copy_request(bucket: str, key: str, dest_bucket: str, dest_key: str) -> dict:
    """CopyObject's arguments (an unconditional copy; a create-only one streams through a conditional PUT)."""
    return {"Bucket": dest_bucket, "Key": dest_key, "CopySource": {"Bucket": bucket, "Key": key}}


def put_request(
    bucket: str,
    key: str,
    data: bytes,
    if_none_match: bool,
    if_match: str | None,
    content_type: str,
    metadata: dict[str, str] | None,
) -> dict:
    """PutObject's arguments, conditional (``If-None-Match: *`` / ``If-Match``) as asked."""
    request: dict = {"Bucket": bucket, "Key": key, "Body": data, "ContentType": content_type}
    if if_none_match:
        request["IfNoneMatch"] = "*"
    if if_match is not None:
        request["IfMatch"] = if_match
    if metadata:
        request["Metadata"] = metadata
    return request


def full_parts(buffer: bytearray, part_size: int) -> Iterator[bytes]:
    """Cut every whole part off the front of ``buffer`` (a multipart upload's pending bytes)."""
    while len(buffer) >= part_size:
        part = bytes(buffer[:part_size])
        del buffer[:part_size]
        yield part


def complete_request(bucket: str, key: str, upload_id: str, parts: list[dict], if_none_match: bool) -> dict:
    """CompleteMultipartUpload's arguments; ``if_none_match`` makes the completion create-only."""
    request: dict = {"Bucket": bucket, "Key": key, "UploadId": upload_id, "MultipartUpload": {"Parts": parts}}
    if if_none_match:
        request["IfNoneMatch"] = "*"
    return request


def range_request(bucket: str, key: str, offset: int, end: int | None, etag: str | None) -> dict:
    """GetObject's arguments for ``[offset, end)``; with ``etag``, only from that very version (a resumed read)."""
    request = {"Bucket": bucket, "Key": key, "Range": f"bytes={offset}-{'' if end is None else end - 1}"}
    if etag is not None:
        request["IfMatch"] = etag
    return request


def list_request(bucket: str, prefix: str, start_after: str | None, page_size: int | None = None) -> dict:
    request: dict = {"Bucket": bucket, "Prefix": prefix}
    if start_after:
        request["StartAfter"] = start_after
    if page_size is not None:
        request["PaginationConfig"] = {"PageSize": page_size}
    return request


def head_info(key: str, resp: dict) -> ObjectInfo:
    return ObjectInfo(
        key=key,
        size=resp["ContentLength"],
        etag=resp["ETag"],
        last_modified=resp["LastModified"].timestamp(),
        metadata=resp.get("Metadata", {}),
    )


def listed_info(item: dict) -> ObjectInfo:
    return ObjectInfo(
        key=item["Key"], size=item["Size"], etag=item["ETag"], last_modified=item["LastModified"].timestamp()
    )


def plain_etag(data: bytes) -> str:
    """The ETag S3 gives a single-part upload of ``data`` (its quoted MD5)."""
    return '"' + hashlib.md5(data, usedforsecurity=False).hexdigest() + '"'


def client_options(settings: StorageSettings) -> tuple[dict, dict]:
    """(botocore Config options, client keywords) of dropbatch's S3 clients, sync and async alike."""
    config = {
        "retries": {"max_attempts": settings.max_attempts, "mode": "standard"},
        "connect_timeout": 5,
        "read_timeout": 60,
        "s3": {"addressing_style": "path"},
    }
    client = {
        "endpoint_url": settings.endpoint_url,
        "region_name": settings.region,
        "aws_access_key_id": settings.access_key_id,
        "aws_secret_access_key": settings.secret_access_key,
    }
    return config, client


def make_client(service: str, settings: StorageSettings, *, pool_size: int | None = None):
    """A boto3 client for ``service`` with dropbatch's retry policy (``pool_size`` connections, else botocore's 10)."""
    config, options = client_options(settings)
    if pool_size is not None:
        config["max_pool_connections"] = pool_size
    return boto3.session.Session().client(service, config=Config(**config), **options)


def call_aws(fn, *args, what: str, **kwargs):
    """Call a raw boto3 method (SQS in dropbatch.queues, bucket admin) with the same error translation."""
    try:
        return fn(*args, **kwargs)
    except AWS_ERRORS as exc:
        raise translate(exc, bucket=what, key="") from exc
