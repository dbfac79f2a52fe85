"""Any sync ``ObjectStore`` as an ``AsyncObjectStore``, each call in a worker thread.

What ``async_twin`` gives the gateway for a store that is not S3 (the in-memory
store of fast tests, a test's wrapper); the S3 store's twin is ``storage.aio``'s
``AsyncS3ObjectStore``, which needs no thread.
"""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterator
from functools import partial
from typing import Any, TypeVar

import anyio.from_thread
import anyio.to_thread

from dropbatch.storage.base import DEFAULT_PART_SIZE, DEFAULT_READ_CHUNK, ObjectInfo, ObjectStore

T = TypeVar("T")

_DONE = object()


class ThreadedObjectStore:
    """Any sync ``ObjectStore`` awaited through worker threads (the in-memory store, a test's wrapper)."""

    def __init__(self, store: ObjectStore) -> None:
        self.store = store

    async def _run(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        return await anyio.to_thread.run_sync(partial(fn, *args, **kwargs))

    async def _drain(self, items: Any) -> AsyncIterator[Any]:
        iterator = iter(items)
        while (item := await anyio.to_thread.run_sync(next, iterator, _DONE)) is not _DONE:
            yield item

    async def open(self) -> None:
        return None

    async def close(self) -> None:
        return None

    async def head(self, bucket: str, key: str) -> ObjectInfo:
        return await self._run(self.store.head, bucket, key)

    async def get(self, bucket: str, key: str) -> tuple[bytes, str]:
        return await self._run(self.store.get, bucket, key)

    def iter_bytes(
        self, bucket: str, key: str, *, start: int = 0, end: int | None = None, chunk_size: int = DEFAULT_READ_CHUNK
    ) -> AsyncIterator[bytes]:
        return self._drain(self.store.iter_bytes(bucket, key, start=start, end=end, chunk_size=chunk_size))

    async def put(self, bucket: str, key: str, data: bytes, **kwargs: Any) -> str:
        return await self._run(self.store.put, bucket, key, data, **kwargs)

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
        """The sync store's ``upload_stream`` in a worker thread, pulling each chunk back from the event loop."""
        source = aiter(chunks)

        def pulled() -> Iterator[bytes]:
            while (chunk := anyio.from_thread.run(anext, source, _DONE)) is not _DONE:
                yield chunk

        return await self._run(
            self.store.upload_stream,
            bucket,
            key,
            pulled(),
            if_none_match=if_none_match,
            content_type=content_type,
            part_size=part_size,
        )

    def list(
        self, bucket: str, prefix: str = "", *, start_after: str | None = None, page_size: int = 1000
    ) -> AsyncIterator[ObjectInfo]:
        return self._drain(self.store.list(bucket, prefix, start_after=start_after))

    async def delete(self, bucket: str, key: str) -> None:
        await self._run(self.store.delete, bucket, key)

    async def copy(self, bucket: str, key: str, dest_bucket: str, dest_key: str, *, if_none_match: bool = False) -> str:
        return await self._run(self.store.copy, bucket, key, dest_bucket, dest_key, if_none_match=if_none_match)
