"""The storage boundary over real HTTP: S3ObjectStore turns S3 answers into dropbatch's error tree."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest

from dropbatch.errors import ObjectExists, ObjectNotFound, StaleWrite
from dropbatch.storage import S3ObjectStore
from dropbatch.storage.s3 import make_client

pytestmark = pytest.mark.integration

MIB = 1024 * 1024
S3_MIN_PART = 5 * MIB


@pytest.fixture
def storage(make_context):
    return make_context().settings.storage


@pytest.fixture
def store(storage):
    return S3ObjectStore(storage)


@pytest.fixture
def bucket(storage):
    return storage.outbox_bucket


def test_missing_objects_and_buckets_are_object_not_found(store, bucket):
    with pytest.raises(ObjectNotFound):
        store.get(bucket, "missing")
    with pytest.raises(ObjectNotFound):
        store.head(bucket, "missing")
    with pytest.raises(ObjectNotFound):
        list(store.iter_bytes(bucket, "missing"))
    with pytest.raises(ObjectNotFound):
        store.get("no-such-bucket-here", "key")
    store.delete(bucket, "missing")  # deleting what is not there is not an error


def test_create_once_is_enforced(store, bucket):
    etag = store.put(bucket, "once", b"first", if_none_match=True)
    with pytest.raises(ObjectExists):
        store.put(bucket, "once", b"second", if_none_match=True)
    assert store.get(bucket, "once") == (b"first", etag)


def test_update_on_a_stale_etag_is_refused(store, bucket):
    first = store.put(bucket, "record", b"v1")
    second = store.put(bucket, "record", b"v2", if_match=first)
    with pytest.raises(StaleWrite):
        store.put(bucket, "record", b"v3-from-a-stale-read", if_match=first)
    assert store.get(bucket, "record") == (b"v2", second)


def test_multipart_create_once_is_enforced_and_aborted(store, storage, bucket):
    payload = bytes(range(256)) * (6 * MIB // 256)  # two parts: 5 MiB + 1 MiB
    pieces = [payload[i : i + MIB] for i in range(0, len(payload), MIB)]
    info = store.upload_stream(bucket, "big.bin", iter(pieces), if_none_match=True, part_size=S3_MIN_PART)
    assert info.size == len(payload)
    assert info.etag.strip('"').endswith("-2")

    with pytest.raises(ObjectExists):
        store.upload_stream(bucket, "big.bin", iter([b"x" * MIB] * 6), if_none_match=True, part_size=S3_MIN_PART)
    assert store.head(bucket, "big.bin").etag == info.etag
    uploads = make_client("s3", storage).list_multipart_uploads(Bucket=bucket)
    assert uploads.get("Uploads", []) == []  # the refused upload was aborted

    small = store.upload_stream(bucket, "small.bin", iter([b"a", b"b"]), if_none_match=True)
    assert small.size == 2
    with pytest.raises(ObjectExists):
        store.upload_stream(bucket, "small.bin", iter([b"c"]), if_none_match=True)


def test_iter_bytes_streams_ranges(store, bucket):
    data = bytes(range(256)) * 4
    store.put(bucket, "bytes.bin", data)
    store.put(bucket, "empty.bin", b"")

    assert b"".join(store.iter_bytes(bucket, "bytes.bin")) == data
    pieces = list(store.iter_bytes(bucket, "bytes.bin", start=10, end=300, chunk_size=64))
    assert b"".join(pieces) == data[10:300]
    assert max(len(p) for p in pieces) <= 64 and len(pieces) == -(-290 // 64)
    assert b"".join(store.iter_bytes(bucket, "bytes.bin", start=1000)) == data[1000:]
    assert list(store.iter_bytes(bucket, "bytes.bin", start=20, end=20)) == []
    assert list(store.iter_bytes(bucket, "bytes.bin", start=len(data) + 5)) == []
    assert list(store.iter_bytes(bucket, "empty.bin")) == []


def test_list_paginates_past_one_thousand_keys(store, bucket):
    keys = [f"many/{i:05d}" for i in range(1050)]
    store.put(bucket, "other/outside-the-prefix", b"")
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda key: store.put(bucket, key, b"."), keys))

    listed = [info.key for info in store.list(bucket, "many/")]
    assert listed == keys
    assert [info.key for info in store.list(bucket, "many/", start_after="many/01009")] == keys[1010:]
    assert {info.size for info in store.list(bucket, "many/")} == {1}
