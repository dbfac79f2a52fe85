"""The gateway's async records over the real S3 server: a page costs one LIST and one wave of GETs.

The store under test is the real ``AsyncS3ObjectStore`` wrapped by ``Watching``,
which counts LISTs and records how many GETs were in flight at once.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from dropbatch.aiorecords import AsyncBatchStore, AsyncFileStore, AsyncRecords
from dropbatch.errors import Conflict, NotFound
from dropbatch.models import BatchRecord, BatchStatus, FileRecord
from dropbatch.storage.aio import AsyncS3ObjectStore

pytestmark = pytest.mark.integration

# Each GET is held this long before it is sent, so reads of one page overlap whenever they are concurrent
# (the peak says so; wall time on the shared moto server would not: it serves requests nearly one by one).
HOLD_SECONDS = 0.05


class Watching:
    """An AsyncObjectStore passing every call to ``inner``: LISTs counted, GETs' concurrency recorded."""

    def __init__(self, inner: AsyncS3ObjectStore) -> None:
        self.inner = inner
        self.lists = 0
        self.gets = 0
        self.in_flight = 0
        self.peak = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    async def get(self, bucket: str, key: str) -> tuple[bytes, str]:
        self.gets += 1
        self.in_flight += 1
        self.peak = max(self.peak, self.in_flight)
        try:
            await asyncio.sleep(HOLD_SECONDS)
            return await self.inner.get(bucket, key)
        finally:
            self.in_flight -= 1

    def list(self, *args: Any, **kwargs: Any) -> AsyncIterator:
        self.lists += 1
        return self.inner.list(*args, **kwargs)

    def reset(self) -> None:
        self.lists = self.gets = self.peak = 0


def batch(i: int) -> BatchRecord:
    return BatchRecord(
        id=f"batch_{i:03d}",
        endpoint="/v1/chat/completions",
        input_file_id="file-x",
        status=BatchStatus.VALIDATING,
        created_at=1000 + i,
        tenant="acme",
        job=f"job-{i}",
    )


def upload(i: int, purpose: str = "batch") -> FileRecord:
    return FileRecord(
        id=f"file-{i:03d}",
        bytes=1,
        created_at=1000 + i,
        filename=f"f{i}.jsonl",
        purpose=purpose,
        status="processed",
        tenant="acme",
        bucket="b",
        key=f"k{i}",
    )


def test_a_page_of_twenty_is_one_list_and_one_wave_of_reads(make_context) -> None:
    ctx = make_context()
    for i in range(45):
        ctx.batches.create(batch(i))

    async def main() -> None:
        inner = AsyncS3ObjectStore(ctx.settings.storage, pool_size=64)
        store = Watching(inner)
        batches = AsyncBatchStore(AsyncRecords(store, ctx.settings.storage.control_bucket, concurrency=64))
        try:
            await batches.get("acme", "batch_000")  # the client and its first connection exist now
            store.reset()
            page, more = await batches.list("acme", limit=20)
            assert [b.id for b in page] == [f"batch_{i:03d}" for i in range(44, 24, -1)] and more
            assert (store.lists, store.gets, store.peak) == (1, 21, 21)  # the 21st only says has_more
            assert (page, more) == ctx.batches.list("acme", limit=20)  # the sync kernel's very page

            store.reset()
            rest, more = await batches.list("acme", after=page[-1].id, limit=30)
            assert [b.id for b in rest] == [f"batch_{i:03d}" for i in range(24, -1, -1)] and not more
            assert store.lists == 1 and store.peak == 25  # the anchor read, then 25 at once

            bounded = AsyncBatchStore(AsyncRecords(store, ctx.settings.storage.control_bucket, concurrency=5))
            store.reset()
            assert (await bounded.list("acme", limit=20))[0] == page
            assert store.peak == 5  # never more reads in flight than the bound (the S3 pool)
        finally:
            await inner.close()

    asyncio.run(main())


def test_filtered_file_pages_in_both_orders_match_the_sync_kernel(make_context) -> None:
    ctx = make_context()
    for i in range(12):
        ctx.files.create(upload(i, purpose="batch_output" if i % 3 == 0 else "batch"))

    async def main() -> None:
        inner = AsyncS3ObjectStore(ctx.settings.storage, pool_size=8)
        files = AsyncFileStore(AsyncRecords(inner, ctx.settings.storage.control_bucket, concurrency=8))
        try:
            for newest_first in (True, False):
                for after in (None, "file-004", "file-010"):
                    for limit in (1, 3, 20):
                        expected = ctx.files.list(
                            "acme", after=after, limit=limit, newest_first=newest_first, purpose="batch"
                        )
                        got = await files.list(
                            "acme", after=after, limit=limit, newest_first=newest_first, purpose="batch"
                        )
                        assert got == expected, (newest_first, after, limit)
            deleted = await files.delete("acme", "file-001")
            assert deleted.id == "file-001"
            with pytest.raises(NotFound):
                await files.get("acme", "file-001")
            assert "file-001" not in [f.id for f in (await files.list("acme", limit=100))[0]]

            expired = upload(50).model_copy(update={"id": "file-050", "expires_at": 1})  # long past
            ctx.files.create(expired)
            with pytest.raises(NotFound):
                await files.get("acme", "file-050")  # an expired file is gone for the gateway at once
            assert "file-050" not in [f.id for f in (await files.list("acme", limit=100))[0]]
        finally:
            await inner.close()

    asyncio.run(main())


def test_cancel_through_the_async_update_is_a_conditional_write(make_context) -> None:
    ctx = make_context()
    ctx.batches.create(batch(1))

    async def main() -> None:
        inner = AsyncS3ObjectStore(ctx.settings.storage, pool_size=8)
        batches = AsyncBatchStore(AsyncRecords(inner, ctx.settings.storage.control_bucket))
        try:
            moved = await batches.update("acme", "batch_001", lambda b: b.transition(BatchStatus.CANCELLING, 5))
            assert moved.status is BatchStatus.CANCELLING
            assert ctx.batches.get("acme", "batch_001").status is BatchStatus.CANCELLING
            with pytest.raises(Conflict):
                await batches.update("acme", "batch_001", lambda b: b.transition(BatchStatus.COMPLETED, 6))
            with pytest.raises(NotFound):
                await batches.update("acme", "batch_404", lambda b: None)
        finally:
            await inner.close()

    asyncio.run(main())


def test_list_pages_reuse_what_they_may_and_still_show_every_change(make_context) -> None:
    ctx = make_context()
    for i in range(30):
        finished = i % 4 == 2  # batch_002, _006, ... have finished
        ctx.batches.create(batch(i).model_copy(update={"status": BatchStatus.COMPLETED}) if finished else batch(i))
    now = [0.0]

    async def main() -> None:
        inner = AsyncS3ObjectStore(ctx.settings.storage, pool_size=64)
        store = Watching(inner)
        records = AsyncRecords(store, ctx.settings.storage.control_bucket, concurrency=64)
        batches = AsyncBatchStore(records, cache_seconds=1.0, cache_clock=lambda: now[0])

        async def page() -> dict[str, BatchStatus]:
            return {b.id: b.status for b in (await batches.list("acme", limit=20))[0]}

        try:
            first = await page()
            assert store.gets == 21
            store.reset()
            assert await page() == first and (store.lists, store.gets) == (0, 0)  # the same page: no S3 request

            ctx.batches.update("acme", "batch_029", lambda b: b.transition(BatchStatus.IN_PROGRESS, 7))  # the watcher
            assert (await page())["batch_029"] is BatchStatus.VALIDATING  # a page may be up to 1 s old ...
            assert (await batches.get("acme", "batch_029")).status is BatchStatus.IN_PROGRESS  # a retrieve is not
            assert (await page())["batch_029"] is BatchStatus.IN_PROGRESS  # and what it read, pages show

            await batches.update("acme", "batch_028", lambda b: b.transition(BatchStatus.CANCELLING, 8))
            store.reset()
            assert (await page())["batch_028"] is BatchStatus.CANCELLING and store.gets == 0  # our own write at once

            ctx.batches.update("acme", "batch_027", lambda b: b.transition(BatchStatus.IN_PROGRESS, 9))
            ctx.batches.create(batch(30))  # the watcher admits one from the drop-box
            assert "batch_030" not in await page()  # ... pages may not show it for up to 1 s
            now[0] += 1.0
            store.reset()
            shown = await page()
            assert shown["batch_027"] is BatchStatus.IN_PROGRESS and "batch_030" in shown
            # past 1 s a page LISTs again and reads every record that can change; finished ones it does not
            assert (store.lists, store.gets) == (1, 21 - 5)

            await batches.create(batch(31))
            store.reset()
            assert "batch_031" in await page() and (store.lists, store.gets) == (0, 0)  # our own create at once

            ctx.batches.update("acme", "batch_025", lambda b: b.transition(BatchStatus.IN_PROGRESS, 10))
            now[0] += 0.5  # half the ttl: a page still shows what it kept, and reads it again meanwhile
            store.reset()
            assert (await page())["batch_025"] is BatchStatus.VALIDATING and (store.lists, store.gets) == (0, 0)
            await batches.refreshes.settled()
            assert (store.lists, store.gets) == (1, 21 - 4)  # in the background: the LIST, the records that can change
            store.reset()
            assert (await page())["batch_025"] is BatchStatus.IN_PROGRESS and (store.lists, store.gets) == (0, 0)
            now[0] += 0.9
            assert await page() and (store.lists, store.gets) == (0, 0)  # a page polled every half ttl never waits
            await batches.refreshes.settled()

            store.reset()
            assert (await batches.get("acme", "batch_022")).status is BatchStatus.COMPLETED and store.gets == 0
            assert (await batches.get("acme", "batch_029")).status is BatchStatus.IN_PROGRESS and store.gets == 1
        finally:
            await inner.close()

    asyncio.run(main())


def test_a_finished_batch_record_never_changes(make_context) -> None:
    ctx = make_context()
    ctx.batches.create(batch(1).model_copy(update={"status": BatchStatus.COMPLETED}))

    def relabel(b: BatchRecord) -> None:
        b.metadata = {"changed": "yes"}

    with pytest.raises(Conflict, match="a finished batch does not change"):
        ctx.batches.update("acme", "batch_001", relabel)
    assert ctx.batches.update("acme", "batch_001", lambda b: None).metadata is None  # a no-op still answers

    async def main() -> None:
        inner = AsyncS3ObjectStore(ctx.settings.storage, pool_size=8)
        batches = AsyncBatchStore(AsyncRecords(inner, ctx.settings.storage.control_bucket))
        try:
            with pytest.raises(Conflict, match="a finished batch does not change"):
                await batches.update("acme", "batch_001", relabel)
        finally:
            await inner.close()

    asyncio.run(main())
    assert ctx.batches.get("acme", "batch_001").metadata is None
