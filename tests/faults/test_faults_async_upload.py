"""The gateway's streamed upload (``AsyncS3ObjectStore.upload_stream``) through the fault proxy.

A multipart upload that cannot complete (a part refused, the caller's stream failing,
a create-only completion over an object that exists) is aborted: no incomplete upload
is left behind, nothing is written, and the error is the one the sync store raises.
A transient fault on a part is retried and the upload completes.
"""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator

import pytest
from helpers import with_async_store
from proxy import DenyRule, FaultPlan, TargetedFault

from dropbatch.errors import ObjectExists, ObjectNotFound, PayloadTooLarge, StorageError
from dropbatch.storage.s3 import S3ObjectStore, make_client

pytestmark = pytest.mark.integration

MiB = 1024 * 1024
KEY = "acme/.files/file-big.jsonl"
BIG = (hashlib.sha256(b"big").digest() * (11 * MiB // 32 + 1))[: 11 * MiB]  # three parts


async def _chunks(data: bytes, *, fail_after: int | None = None) -> AsyncIterator[bytes]:
    for offset in range(0, len(data), MiB):
        if fail_after is not None and offset >= fail_after:
            raise PayloadTooLarge("The file is larger than the limit.")
        yield data[offset : offset + MiB]


def _upload(storage, chunks):
    return with_async_store(
        storage,
        lambda store: store.upload_stream(
            storage.inbox_bucket, KEY, chunks, if_none_match=True, content_type="application/jsonl"
        ),
    )


@pytest.fixture
def proxied(make_context, start_proxy):
    direct = make_context().settings
    proxy = start_proxy(FaultPlan())
    return direct, proxy, direct.with_endpoint(proxy.url)


def _pending_uploads(direct) -> list[dict]:
    s3 = make_client("s3", direct.storage)
    return s3.list_multipart_uploads(Bucket=direct.storage.inbox_bucket).get("Uploads", [])


def test_a_multipart_upload_streams_parts_and_completes(proxied):
    direct, proxy, settings = proxied

    info = _upload(settings.storage, _chunks(BIG, fail_after=None))

    store = S3ObjectStore(direct.storage)
    assert info.size == len(BIG)
    assert store.get(direct.storage.inbox_bucket, KEY) == (BIG, info.etag)
    assert info.etag.strip('"').endswith("-2")  # two 8 MiB-default parts: 8 MiB + 3 MiB
    assert store.head(direct.storage.inbox_bucket, KEY).size == len(BIG)
    assert _pending_uploads(direct) == []


def test_a_refused_part_aborts_the_upload(proxied):
    direct, proxy, settings = proxied
    proxy.set(deny=[DenyRule(r"partNumber=2")])

    with pytest.raises(StorageError, match="AccessDenied"):
        _upload(settings.storage, _chunks(BIG))

    assert _pending_uploads(direct) == []
    with pytest.raises(ObjectNotFound):
        S3ObjectStore(direct.storage).head(direct.storage.inbox_bucket, KEY)


def test_a_stream_that_fails_midway_aborts_the_upload_and_keeps_its_error(proxied):
    direct, _, settings = proxied

    with pytest.raises(PayloadTooLarge):
        _upload(settings.storage, _chunks(BIG, fail_after=9 * MiB))  # after the first part went up

    assert _pending_uploads(direct) == []
    with pytest.raises(ObjectNotFound):
        S3ObjectStore(direct.storage).head(direct.storage.inbox_bucket, KEY)


def test_a_create_only_upload_over_an_existing_object_is_object_exists(proxied):
    direct, _, settings = proxied
    store = S3ObjectStore(direct.storage)
    etag = store.put(direct.storage.inbox_bucket, KEY, b"first\n")

    with pytest.raises(ObjectExists):
        _upload(settings.storage, _chunks(BIG))

    assert store.get(direct.storage.inbox_bucket, KEY) == (b"first\n", etag)
    assert _pending_uploads(direct) == []


@pytest.mark.parametrize("kind", ["slowdown", "reset_before"])
def test_a_transient_fault_on_a_part_is_retried(kind, proxied):
    direct, proxy, settings = proxied
    proxy.set(targeted=[TargetedFault(kind, r"partNumber=2", "PUT")])

    info = _upload(settings.storage, _chunks(BIG))

    assert proxy.faults()[kind] == 1
    assert S3ObjectStore(direct.storage).get(direct.storage.inbox_bucket, KEY)[0] == BIG
    assert info.size == len(BIG)
    assert _pending_uploads(direct) == []
