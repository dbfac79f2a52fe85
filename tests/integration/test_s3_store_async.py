"""The async S3 store over real HTTP: the same answers, through the same error table, as the boto3 store."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TypeVar

import aiohttp
import pytest
from botocore.exceptions import ClientError
from helpers import with_async_store

from dropbatch.emulator import free_port
from dropbatch.errors import ObjectExists, ObjectNotFound, StaleWrite, StorageError, StorageUnavailable
from dropbatch.storage import S3ObjectStore
from dropbatch.storage.aio import AsyncS3ObjectStore, async_twin
from dropbatch.storage.base import AsyncObjectStore
from dropbatch.storage.errors import translate
from dropbatch.storage.memory import MemoryObjectStore
from dropbatch.storage.threaded import ThreadedObjectStore

pytestmark = pytest.mark.integration

T = TypeVar("T")


def run(storage, use: Callable[[AsyncS3ObjectStore], Awaitable[T]], *, pool_size: int = 4) -> T:
    return with_async_store(storage, use, pool_size=pool_size)


async def collect(items) -> list:
    return [item async for item in items]


@pytest.fixture
def storage(make_context):
    return make_context().settings.storage


def test_missing_objects_and_buckets_are_object_not_found(storage):
    bucket = storage.outbox_bucket

    async def use(store: AsyncS3ObjectStore) -> None:
        for missing in (
            store.get(bucket, "missing"),
            store.head(bucket, "missing"),
            collect(store.iter_bytes(bucket, "missing")),
            store.get("no-such-bucket-7d2e", "key"),
            collect(store.list("no-such-bucket-7d2e")),
        ):
            with pytest.raises(ObjectNotFound):
                await missing
        await store.delete(bucket, "missing")  # not an error, as in the sync store

    run(storage, use)


def test_conditional_writes_mean_what_they_mean_for_the_sync_store(storage):
    bucket = storage.control_bucket

    async def use(store: AsyncS3ObjectStore) -> None:
        first = await store.put(bucket, "rec.json", b"1", if_none_match=True)
        with pytest.raises(ObjectExists):
            await store.put(bucket, "rec.json", b"2", if_none_match=True)
        second = await store.put(bucket, "rec.json", b"2", if_match=first)
        with pytest.raises(StaleWrite):
            await store.put(bucket, "rec.json", b"3", if_match=first)
        assert await store.get(bucket, "rec.json") == (b"2", second)

    run(storage, use)
    # Both stores see the same object and translate the same answers.
    sync = S3ObjectStore(storage)
    assert sync.get(bucket, "rec.json")[0] == b"2"
    with pytest.raises(ObjectExists):
        sync.put(bucket, "rec.json", b"4", if_none_match=True)


def test_list_pages_ranges_and_head(storage):
    bucket = storage.inbox_bucket

    async def use(store: AsyncS3ObjectStore) -> tuple:
        await asyncio.gather(*(store.put(bucket, f"p/{i:02d}", b"x" * i) for i in range(7)))
        keys = [info.key async for info in store.list(bucket, "p/", start_after="p/01", page_size=2)]
        data = await store.put(bucket, "blob", bytes(range(100)))
        ranged = b"".join(await collect(store.iter_bytes(bucket, "blob", start=10, end=20, chunk_size=3)))
        empty = await collect(store.iter_bytes(bucket, "blob", start=200))
        return keys, (await store.head(bucket, "p/05")).size, data, ranged, empty

    keys, size, _, ranged, empty = run(storage, use)
    assert keys == [f"p/{i:02d}" for i in range(2, 7)]  # every key after the anchor, across pages of 2
    assert size == 5
    assert ranged == bytes(range(10, 20))
    assert empty == []


def test_copies_create_only_or_replace_like_the_sync_store(storage):
    source, dest = storage.outbox_bucket, storage.inbox_bucket

    async def use(store: AsyncS3ObjectStore) -> tuple[str, str]:
        await store.put(source, "a/output.jsonl", b"one\n")
        created = await store.copy(source, "a/output.jsonl", dest, "t/out.jsonl", if_none_match=True)
        await store.put(source, "a/output.jsonl", b"two\n")
        with pytest.raises(ObjectExists):  # never replaces what is there
            await store.copy(source, "a/output.jsonl", dest, "t/out.jsonl", if_none_match=True)
        kept = (await store.get(dest, "t/out.jsonl"))[0]
        replaced = await store.copy(source, "a/output.jsonl", dest, "t/out.jsonl")
        with pytest.raises(ObjectNotFound):
            await store.copy(source, "a/missing.jsonl", dest, "t/other.jsonl", if_none_match=True)
        with pytest.raises(ObjectNotFound):
            await store.copy(source, "a/missing.jsonl", dest, "t/other.jsonl")
        assert kept == b"one\n"
        return created, replaced

    created, replaced = run(storage, use)
    sync = S3ObjectStore(storage)
    assert created == sync.put(storage.control_bucket, "x/one", b"one\n")  # the plain MD5 ETag of the bytes
    assert sync.get(dest, "t/out.jsonl") == (b"two\n", replaced)
    assert list(sync.list(dest, "t/other")) == []


def test_an_unreachable_server_is_storage_unavailable(make_settings):
    storage = make_settings().storage.model_copy(
        update={"endpoint_url": f"http://127.0.0.1:{free_port()}", "max_attempts": 1}
    )

    async def use(store: AsyncS3ObjectStore) -> None:
        with pytest.raises(StorageUnavailable):
            await store.get(storage.control_bucket, "anything")
        with pytest.raises(StorageUnavailable):
            await store.put(storage.control_bucket, "anything", b"x", if_none_match=True)

    run(storage, use)


def test_one_table_translates_both_clients_failures():
    denied = ClientError({"Error": {"Code": "AccessDenied", "Message": "no"}}, "PutObject")
    error = translate(denied, bucket="b", key="k")
    assert type(error) is StorageError and "AccessDenied" in error.message
    # aiohttp faults that aiobotocore lets through are transport failures, like urllib3's for boto3.
    assert isinstance(translate(aiohttp.ClientPayloadError("cut"), bucket="b", key="k"), StorageUnavailable)
    assert isinstance(translate(aiohttp.ServerDisconnectedError(), bucket="b", key="k"), StorageUnavailable)
    assert isinstance(
        translate(
            ClientError({"Error": {"Code": "412"}}, "PutObject"), bucket="b", key="k", conditional="if_none_match"
        ),
        ObjectExists,
    )


def test_the_async_twin_of_each_store(storage):
    assert isinstance(async_twin(S3ObjectStore(storage), storage, pool_size=2), AsyncS3ObjectStore)
    memory = async_twin(MemoryObjectStore(["b"]), storage, pool_size=2)
    assert isinstance(memory, ThreadedObjectStore) and isinstance(memory, AsyncObjectStore)

    async def use() -> None:
        with pytest.raises(ObjectNotFound):
            await memory.get("b", "missing")
        etag = await memory.put("b", "k", b"v", if_none_match=True)
        with pytest.raises(StaleWrite):
            await memory.put("b", "k", b"w", if_match=etag + "x")
        assert [i.key for i in await collect(memory.list("b"))] == ["k"]

    asyncio.run(use())


async def chunked(data: bytes, size: int):
    for offset in range(0, len(data), size):
        yield data[offset : offset + size]


def test_a_streamed_upload_of_one_part_is_one_put_like_the_sync_store(storage):
    bucket = storage.inbox_bucket
    data = b'{"custom_id": "a"}\n' * 1000

    async def use(store: AsyncS3ObjectStore):
        info = await store.upload_stream(bucket, "t/.files/one.jsonl", chunked(data, 4096), if_none_match=True)
        with pytest.raises(ObjectExists):
            await store.upload_stream(bucket, "t/.files/one.jsonl", chunked(b"other\n", 4096), if_none_match=True)
        return info

    info = run(storage, use)
    sync = S3ObjectStore(storage)
    assert (info.size, info.etag) == (len(data), sync.put(bucket, "t/.files/same.jsonl", data))  # the plain MD5 ETag
    assert sync.get(bucket, "t/.files/one.jsonl") == (data, info.etag)


def test_the_threaded_twin_streams_awaited_chunks_into_the_sync_store():
    memory = MemoryObjectStore(["b"])
    store = ThreadedObjectStore(memory)

    async def failing():
        yield b"first\n"
        raise StorageUnavailable("the upload's source went away")

    async def use() -> None:
        info = await store.upload_stream("b", "k", chunked(b"abc\n" * 10, 3), if_none_match=True)
        assert (info.size, memory.get("b", "k")[0]) == (40, b"abc\n" * 10)
        with pytest.raises(ObjectExists):
            await store.upload_stream("b", "k", chunked(b"x", 1), if_none_match=True)
        with pytest.raises(StorageUnavailable, match="went away"):
            await store.upload_stream("b", "k2", failing())

    asyncio.run(use())
    with pytest.raises(ObjectNotFound):
        memory.head("b", "k2")
