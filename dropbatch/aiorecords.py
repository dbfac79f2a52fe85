"""The async twin of ``dropbatch.records`` for the gateway: the same keys, writes and pages, awaited.

Reads and conditional writes go through an ``AsyncObjectStore``, so a handler
awaits S3 on its event loop. A page lists its index once and then loads its
records concurrently (at most ``concurrency`` requests in flight, the size of
the S3 connection pool), so it costs about two round trips however long it is,
not one per record. With a page cache (``dropbatch.pagecache``) the same page polled
again within its seconds costs no S3 request.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Hashable, Iterable
from contextlib import aclosing
from typing import TypeVar

from pydantic import BaseModel

from dropbatch.errors import ObjectNotFound, StaleWrite, StorageError
from dropbatch.models import BatchRecord, FileRecord
from dropbatch.pagecache import Listings, PageCache
from dropbatch.records import (
    JSON,
    Clock,
    Write,
    audit_entry,
    batch_not_found,
    batch_writes,
    bytes_due,
    conflict_pause,
    dump,
    file_not_found,
    file_writes,
    finished_stays,
    indexed_id,
    job_pointer,
    oldest_first,
    take,
)
from dropbatch.storage.base import AsyncObjectStore
from dropbatch.storage.keys import ControlKeys, JobRef

M = TypeVar("M", bound=BaseModel)
T = TypeVar("T")
log = logging.getLogger("dropbatch.gateway")


class AsyncRecords:
    """Typed JSON documents in one bucket with create-once and compare-and-swap, awaited."""

    def __init__(self, store: AsyncObjectStore, bucket: str, *, concurrency: int = 32) -> None:
        self.store = store
        self.bucket = bucket
        self.concurrency = concurrency

    async def create(self, key: str, model: BaseModel) -> str:
        """Write ``model`` at ``key`` only if nothing is there (``ObjectExists`` otherwise)."""
        return await self.store.put(self.bucket, key, dump(model), if_none_match=True, content_type=JSON)

    async def write(self, write: Write) -> str:
        """One of the objects a record's creation writes (``file_writes``, ``batch_writes``)."""
        return await self.store.put(
            self.bucket, write.key, write.body, if_none_match=write.create_only, content_type=write.content_type
        )

    async def load(self, key: str, cls: type[M]) -> tuple[M, str]:
        data, etag = await self.store.get(self.bucket, key)
        return cls.model_validate_json(data), etag

    async def get(self, key: str, cls: type[M]) -> M | None:
        try:
            return (await self.load(key, cls))[0]
        except ObjectNotFound:
            return None

    async def update(self, key: str, cls: type[M], mutate: Callable[[M], None], *, attempts: int = 20) -> M:
        """``Records.update`` awaited: read, mutate, write back ``If-Match`` the ETag read, retry on a lost race."""
        for attempt in range(attempts):
            record, etag = await self.load(key, cls)
            before = dump(record)
            mutate(record)
            after = dump(record)
            if after == before:
                return record
            try:
                await self.store.put(self.bucket, key, after, if_match=etag, content_type=JSON)
                return record
            except StaleWrite:
                await asyncio.sleep(conflict_pause(attempt))
        raise StorageError(f"s3://{self.bucket}/{key}: gave up after {attempts} conflicting writes")

    async def list_keys(self, prefix: str, *, start_after: str | None = None, page_size: int = 1000) -> AsyncIterator[str]:
        async with aclosing(self.store.list(self.bucket, prefix, start_after=start_after, page_size=page_size)) as infos:
            async for info in infos:
                yield info.key

    async def gather(self, calls: Iterable[Awaitable[T]]) -> list[T]:
        """Await ``calls`` concurrently, at most ``concurrency`` at a time, in order."""
        gate = asyncio.Semaphore(self.concurrency)

        async def bounded(call: Awaitable[T]) -> T:
            async with gate:
                return await call

        return list(await asyncio.gather(*(bounded(call) for call in calls)))

    async def audit(self, event: str, *, now: float, **fields: object) -> None:
        """``records.audit`` awaited: append one event to the audit log (never secrets)."""
        await self.store.put(self.bucket, *audit_entry(event, now=now, **fields), if_none_match=True)


async def page_index(
    records: AsyncRecords,
    prefix: str,
    *,
    anchor: str | None,
    load: Callable[[str], Awaitable[M | None]],
    limit: int,
    listings: Listings,
    relist: bool = False,
    newest_first: bool = True,
    keep: Callable[[M], bool] | None = None,
) -> tuple[list[M], bool]:
    """``records.page_index`` awaited: one LIST of ``limit + 1`` index keys (none if ``listings`` kept
    them and not ``relist``), then their records at once.

    Only missing or filtered-out records make it list and load further windows.
    """
    page: list[M] = []
    window: list[str] = []
    if newest_first:  # the index's key order
        keys = _listed(records, listings, prefix, anchor, limit + 1, relist=relist)
    else:
        keys = _each(oldest_first([key async for key in records.list_keys(prefix)], anchor))
    async with aclosing(keys):
        async for key in keys:
            window.append(key)
            if len(window) < limit + 1 - len(page):
                continue
            if take(page, await records.gather(load(indexed_id(k)) for k in window), limit=limit, keep=keep):
                return page, True
            window = []
    more = take(page, await records.gather(load(indexed_id(k)) for k in window), limit=limit, keep=keep)
    return page, more


async def _listed(records: AsyncRecords, listings: Listings, prefix: str, anchor: str | None, n: int,
                  *, relist: bool) -> AsyncIterator[str]:
    """The index keys after ``anchor``: the first ``n`` as ``listings`` kept them or one LIST got them,
    the rest (a page that skips missing or filtered-out records) from further LISTs."""
    window = None if relist else listings.get(prefix, anchor, n)
    if window is None:
        since = listings.ticket()
        window = []
        async with aclosing(records.list_keys(prefix, start_after=anchor, page_size=n)) as keys:
            async for key in keys:
                window.append(key)
                if len(window) == n:
                    break
        listings.put(prefix, anchor, n, window, since=since)
    for key in window:
        yield key
    if len(window) == n:
        async with aclosing(records.list_keys(prefix, start_after=window[-1], page_size=n)) as keys:
            async for key in keys:
                yield key


async def _read(cache: PageCache, key: str, read: Awaitable[T | None]) -> T | None:
    """``read`` of ``key`` from S3, kept in ``cache`` unless a write here came first."""
    since = cache.ticket()
    record = await read
    if record is not None:
        cache.put(key, record, since=since)
    return record


class Refreshes:
    """Pages read again in the background, one per window at a time: a page polled at least every half
    ``ttl`` shows what S3 held at most ``ttl`` ago and never waits for S3 itself."""

    def __init__(self) -> None:
        self._running: dict[Hashable, asyncio.Task[object]] = {}  # held so no task is collected early

    def start(self, window: Hashable, refresh: Callable[[], Awaitable[object]]) -> None:
        if window in self._running:
            return
        task = self._running[window] = asyncio.ensure_future(refresh())
        task.add_done_callback(lambda done: self._finished(window, done))

    def _finished(self, window: Hashable, task: asyncio.Task[object]) -> None:
        self._running.pop(window, None)
        if not task.cancelled() and task.exception() is not None:  # the next page reads it, or tries again
            log.warning("could not refresh a kept list page", extra={"error": str(task.exception())})

    async def settled(self) -> None:
        """Wait for the refreshes running now."""
        await asyncio.gather(*self._running.values(), return_exceptions=True)

    async def close(self) -> None:
        """Stop the refreshes running now (before the S3 client they use is closed)."""
        for task in self._running.values():
            task.cancel()
        await self.settled()


async def _each(items: list[str]) -> AsyncIterator[str]:
    for item in items:
        yield item


def _finished(record: BatchRecord) -> bool:
    return record.status.is_terminal


def _weight(record: BatchRecord) -> int:
    """A batch record's size for the page cache's budget (``dropbatch.pagecache``)."""
    return 3 + len(record.chunks) + len(record.inputs)


class AsyncBatchStore:
    """The gateway's reads and cancels of batch records (``BatchStore`` awaited).

    List pages take records from ``cache`` and the keys of their window from ``listings`` when
    they may (``dropbatch.pagecache``); a retrieve reads S3 unless the batch has finished.
    """

    def __init__(self, records: AsyncRecords, *, cache_seconds: float = 0.0,
                 cache_clock: Clock = time.monotonic) -> None:
        self.records = records
        self.cache = PageCache(cache_seconds, final=_finished, weight=_weight, clock=cache_clock)
        self.listings = Listings(cache_seconds, clock=cache_clock)
        self.refreshes = Refreshes()

    async def create(self, record: BatchRecord) -> None:
        """Store a new batch; raises ``ObjectExists`` if this id was already created."""
        for write in batch_writes(record):
            await self.records.write(write)
        self.cache.put(ControlKeys.batch(record.tenant, record.id), record)
        self.listings.add(ControlKeys.batch_index_prefix(record.tenant),
                          ControlKeys.batch_index(record.tenant, record.created_at, record.id))

    async def _read(self, key: str) -> BatchRecord | None:
        return await _read(self.cache, key, self.records.get(key, BatchRecord))

    async def _shown(self, key: str) -> BatchRecord | None:
        """What a list page shows for ``key``: the kept record while it may, else a fresh read."""
        kept = self.cache.get(key)
        return kept if kept is not None else await self._read(key)

    async def _current(self, key: str) -> BatchRecord | None:
        """What a retrieve shows for ``key``: the kept record if it has finished, else a fresh read."""
        return self.cache.get(key, changing_too=False) or await self._read(key)

    async def point_job(self, ref: JobRef, batch_id: str) -> None:
        """Make ``dropbatch status TENANT/JOB`` find ``batch_id`` (the job's latest batch)."""
        await self.records.write(job_pointer(ref, batch_id))

    async def get(self, tenant: str, batch_id: str) -> BatchRecord:
        record = await self._current(ControlKeys.batch(tenant, batch_id))
        if record is None:
            raise batch_not_found(batch_id)
        return record

    async def update(self, tenant: str, batch_id: str, mutate: Callable[[BatchRecord], None]) -> BatchRecord:
        key = ControlKeys.batch(tenant, batch_id)
        try:
            record = await self.records.update(key, BatchRecord, finished_stays(mutate))
        except ObjectNotFound:
            raise batch_not_found(batch_id) from None
        self.cache.put(key, record)
        return record

    async def list(self, tenant: str, *, after: str | None = None, limit: int = 20) -> tuple[list[BatchRecord], bool]:
        """A page of ``tenant``'s batches, newest first, after the batch id ``after``."""
        anchor = None
        if after is not None:
            record = await self.get(tenant, after)
            anchor = ControlKeys.batch_index(tenant, record.created_at, record.id)
        prefix = ControlKeys.batch_index_prefix(tenant)

        def paged(show: Callable[[str], Awaitable[BatchRecord | None]], *, relist: bool = False):
            return page_index(self.records, prefix, anchor=anchor, load=lambda batch_id: show(
                ControlKeys.batch(tenant, batch_id)), limit=limit, listings=self.listings, relist=relist)

        page, more = await paged(self._shown)
        if self.listings.due(prefix, anchor, limit + 1) or any(
            self.cache.due(ControlKeys.batch(tenant, b.id)) for b in page
        ):
            self.refreshes.start((prefix, anchor, limit), lambda: paged(self._current, relist=True))
        return page, more


class AsyncFileStore:
    """The gateway's reads and deletes of file records (``FileStore`` awaited).

    A file past its ``expires_at`` is gone for this reader (404, not listed).
    """

    def __init__(self, records: AsyncRecords, *, clock: Clock = time.time, cache_seconds: float = 0.0,
                 cache_clock: Clock = time.monotonic) -> None:
        self.records = records
        self.clock = clock
        self.cache = PageCache(cache_seconds, final=lambda _record: True)  # written once: never stale
        self.listings = Listings(cache_seconds, clock=cache_clock)
        self.refreshes = Refreshes()

    async def create(self, record: FileRecord) -> None:
        for write in file_writes(record):
            await self.records.write(write)
        self.cache.put(ControlKeys.file(record.tenant, record.id), record)
        self.listings.add(ControlKeys.file_index_prefix(record.tenant),
                          ControlKeys.file_index(record.tenant, record.created_at, record.id))

    async def _load(self, tenant: str, file_id: str) -> FileRecord | None:
        key = ControlKeys.file(tenant, file_id)
        return self._live(await _read(self.cache, key, self.records.get(key, FileRecord)))

    async def _shown(self, tenant: str, file_id: str) -> FileRecord | None:
        """What a list page shows: the kept record (the LIST before it said the file exists), else a read."""
        kept = self.cache.get(ControlKeys.file(tenant, file_id))
        return self._live(kept) if kept is not None else await self._load(tenant, file_id)

    def _live(self, record: FileRecord | None) -> FileRecord | None:
        return record if record is not None and record.live_at(self.clock()) else None

    async def get(self, tenant: str, file_id: str) -> FileRecord:
        record = await self._load(tenant, file_id)
        if record is None:
            raise file_not_found(file_id)
        return record

    async def delete(self, tenant: str, file_id: str) -> FileRecord:
        """Delete the file as ``files.delete`` does: gone for readers now, its bytes at the next sweep."""
        record = await self.get(tenant, file_id)
        await self.records.write(bytes_due(record, int(self.clock())))  # before the record, as FileStore.delete
        store, bucket = self.records.store, self.records.bucket
        await store.delete(bucket, ControlKeys.file_index(tenant, record.created_at, file_id))
        await store.delete(bucket, ControlKeys.file(tenant, file_id))
        self.cache.drop(ControlKeys.file(tenant, file_id))
        self.listings.forget(ControlKeys.file_index_prefix(tenant))
        return record

    async def list(
        self,
        tenant: str,
        *,
        after: str | None = None,
        limit: int = 20,
        newest_first: bool = True,
        purpose: str | None = None,
    ) -> tuple[list[FileRecord], bool]:
        """A page of ``tenant``'s files in creation order, after the file id ``after``."""
        anchor = None
        if after is not None:
            record = await self.get(tenant, after)
            anchor = ControlKeys.file_index(tenant, record.created_at, record.id)
        prefix = ControlKeys.file_index_prefix(tenant)

        def paged(*, relist: bool = False):
            return page_index(
                self.records,
                prefix,
                anchor=anchor,
                load=lambda file_id: self._shown(tenant, file_id),
                limit=limit,
                listings=self.listings,
                relist=relist,
                newest_first=newest_first,
                keep=(lambda record: record.purpose == purpose) if purpose is not None else None,
            )

        page, more = await paged()
        if newest_first and self.listings.due(prefix, anchor, limit + 1):  # the records never change
            self.refreshes.start((prefix, anchor, limit, purpose), lambda: paged(relist=True))
        return page, more
