"""Conditional-write records, batch listing, and the EDF work queue with leases."""

from __future__ import annotations

import threading

import pytest
from pydantic import BaseModel

from dropbatch.errors import Conflict, LeaseLost, NotFound, ObjectExists, StaleWrite
from dropbatch.models import BatchRecord, BatchStatus
from dropbatch.queue import QueueEntry
from dropbatch.storage.keys import ControlKeys, JobRef


class Counter(BaseModel):
    value: int = 0


def test_create_is_once(make_context) -> None:
    ctx = make_context()
    ctx.records.create("c.json", Counter(value=1))
    with pytest.raises(ObjectExists):
        ctx.records.create("c.json", Counter(value=2))
    assert ctx.records.get("c.json", Counter) == Counter(value=1)
    assert ctx.records.get("missing.json", Counter) is None


def test_stale_etag_is_refused(make_context) -> None:
    ctx = make_context()
    etag = ctx.records.create("c.json", Counter())
    ctx.records.put("c.json", Counter(value=5))
    with pytest.raises(StaleWrite):
        ctx.store.put(ctx.records.bucket, "c.json", b"{}", if_match=etag)


def test_update_under_contention_loses_nothing(make_context, monkeypatch) -> None:
    ctx = make_context()
    ctx.records.create("c.json", Counter())
    errors: list[BaseException] = []
    conflicts: list[str] = []
    start = threading.Barrier(8)
    # Every thread's first update reads before any thread writes, so 7 of those 8 writes
    # are stale: the retry path runs every time, not only when the scheduler happens to.
    first_reads = threading.Barrier(8, timeout=30)
    local = threading.local()
    put = ctx.store.put

    def counting_put(*args, **kwargs):
        try:
            return put(*args, **kwargs)
        except StaleWrite:
            conflicts.append(args[1])
            raise

    monkeypatch.setattr(ctx.store, "put", counting_put)

    def bump(counter: Counter) -> None:
        counter.value += 1
        if not getattr(local, "collided", False):
            local.collided = True
            first_reads.wait()

    def worker() -> None:
        try:
            start.wait()
            for _ in range(50):
                ctx.records.update("c.json", Counter, bump)
        except BaseException as exc:  # surfaced below; a thread cannot fail the test itself
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert len(conflicts) >= 7  # the retries were exercised, not just sequential writes
    assert ctx.records.get("c.json", Counter) == Counter(value=400)


def test_update_that_changes_nothing_does_not_write(make_context) -> None:
    ctx = make_context()
    etag = ctx.records.create("c.json", Counter(value=3))
    assert ctx.records.update("c.json", Counter, lambda c: None) == Counter(value=3)
    assert ctx.store.head(ctx.records.bucket, "c.json").etag == etag


def test_update_can_abort(make_context) -> None:
    ctx = make_context()
    ctx.records.create("c.json", Counter(value=3))

    def refuse(counter: Counter) -> None:
        counter.value = 99
        raise Conflict("no")

    with pytest.raises(Conflict):
        ctx.records.update("c.json", Counter, refuse)
    assert ctx.records.get("c.json", Counter) == Counter(value=3)


def batch(batch_id: str, created_at: int, tenant: str = "acme") -> BatchRecord:
    return BatchRecord(
        id=batch_id,
        endpoint="/v1/chat/completions",
        input_file_id="file-x",
        status=BatchStatus.VALIDATING,
        created_at=created_at,
        tenant=tenant,
        job=f"job-{batch_id}",
    )


def test_batch_list_is_newest_first_with_cursor(make_context) -> None:
    ctx = make_context()
    for i, created in enumerate([100, 500, 300, 400, 200]):
        ctx.batches.create(batch(f"batch_{i}", created))
    ctx.batches.create(batch("batch_other", 999, tenant="other"))
    page, more = ctx.batches.list("acme", limit=2)
    assert [b.created_at for b in page] == [500, 400] and more
    page, more = ctx.batches.list("acme", after=page[-1].id, limit=2)
    assert [b.created_at for b in page] == [300, 200] and more
    page, more = ctx.batches.list("acme", after=page[-1].id, limit=2)
    assert [b.created_at for b in page] == [100] and not more
    everything, more = ctx.batches.list("acme")
    assert [b.created_at for b in everything] == [500, 400, 300, 200, 100] and not more
    exact, more = ctx.batches.list("acme", limit=5)
    assert len(exact) == 5 and not more
    with pytest.raises(NotFound):
        ctx.batches.list("acme", after="batch_missing")


def test_batch_get_update_and_job_pointer(make_context) -> None:
    ctx = make_context()
    ctx.batches.create(batch("batch_a", 10))
    with pytest.raises(ObjectExists):
        ctx.batches.create(batch("batch_a", 10))
    with pytest.raises(NotFound):
        ctx.batches.get("other", "batch_a")  # tenants never see each other's batches
    with pytest.raises(NotFound):
        ctx.batches.update("acme", "batch_zz", lambda b: None)
    updated = ctx.batches.update("acme", "batch_a", lambda b: b.transition(BatchStatus.IN_PROGRESS, 20))
    assert (updated.status, updated.in_progress_at, updated.updated_at) == (BatchStatus.IN_PROGRESS, 20, 20)
    with pytest.raises(Conflict):
        ctx.batches.update("acme", "batch_a", lambda b: b.transition(BatchStatus.VALIDATING, 30))
    ref = JobRef("acme", "j1")
    with pytest.raises(NotFound):
        ctx.batches.for_job(ref)
    ctx.batches.point_job(ref, "batch_a")
    assert ctx.batches.for_job(ref).id == "batch_a"


def entry(batch_id: str, deadline: int, lines: int = 1) -> QueueEntry:
    return QueueEntry(batch_id=batch_id, tenant="acme", deadline=deadline, lines=lines)


def test_queue_is_earliest_deadline_first_and_idempotent(make_context) -> None:
    ctx = make_context()
    for batch_id, deadline in [("b", 5_000), ("c", 900), ("a", 1_000_000), ("d", 5_000)]:
        ctx.queue.enqueue(entry(batch_id, deadline, lines=deadline % 7 + 1))
    ctx.queue.enqueue(entry("c", 900, lines=1))  # a duplicate event
    assert [e.batch_id for e in ctx.queue.entries()] == ["c", "b", "d", "a"]
    assert ctx.queue.depth() == (4, sum(d % 7 + 1 for d in (5_000, 900, 1_000_000, 5_000)))
    ctx.queue.remove(entry("b", 5_000))
    assert [e.batch_id for e in ctx.queue.entries()] == ["c", "d", "a"]


def test_queue_entries_skip_named_batches_without_reading_them(make_context) -> None:
    ctx = make_context()
    for batch_id, deadline in [("batch_run", 900), ("batch_new", 1_000)]:
        ctx.queue.enqueue(entry(batch_id, deadline))
    ctx.store.put(ctx.settings.storage.control_bucket, ControlKeys.queue_entry(900, "batch_run"), b"not json")
    # A skipped entry is never read: this one would fail to parse.
    assert [e.batch_id for e in ctx.queue.entries(skip={"batch_run"})] == ["batch_new"]
    assert ControlKeys.queue_entry_batch(ControlKeys.queue_entry(-5, "batch_x_y")) == "batch_x_y"


def test_claim_is_exclusive_and_renewable(make_context, make_clock) -> None:
    clock = make_clock()
    ctx = make_context(clock=clock)
    lease = ctx.queue.claim("b1", "runner-a", 60)
    assert lease is not None and lease.expires_at == clock() + 60
    assert ctx.queue.claim("b1", "runner-b", 60) is None
    again = ctx.queue.claim("b1", "runner-a", 60)  # the holder may re-take its own lease
    assert again is not None
    clock.advance(50)
    ctx.queue.renew(again, 60)
    assert again.expires_at == clock() + 60
    clock.advance(50)  # past the first expiry, inside the renewed one
    assert ctx.queue.claim("b1", "runner-b", 60) is None


def test_expired_lease_is_taken_over(make_context, make_clock) -> None:
    clock = make_clock()
    ctx = make_context(clock=clock)
    mine = ctx.queue.claim("b1", "runner-a", 60)
    assert mine is not None
    clock.advance(61)
    theirs = ctx.queue.claim("b1", "runner-b", 60)
    assert theirs is not None and theirs.owner == "runner-b"
    with pytest.raises(LeaseLost):
        ctx.queue.renew(mine, 60)
    ctx.queue.renew(theirs, 60)  # the new holder keeps it
    assert ctx.queue.claim("b1", "runner-a", 60) is None


def test_release_frees_the_batch(make_context) -> None:
    ctx = make_context()
    lease = ctx.queue.claim("b1", "runner-a", 60)
    assert lease is not None
    ctx.queue.release(lease)
    assert list(ctx.store.list(ctx.records.bucket, ControlKeys.lease("b1"))) == []
    other = ctx.queue.claim("b1", "runner-b", 60)
    assert other is not None and other.owner == "runner-b"
    with pytest.raises(LeaseLost):
        ctx.queue.renew(lease, 60)


def test_only_one_of_many_claimants_wins(make_context) -> None:
    ctx = make_context()
    won: list[str] = []
    start = threading.Barrier(8)

    def claim(owner: str) -> None:
        start.wait()
        if ctx.queue.claim("b1", owner, 60) is not None:
            won.append(owner)

    threads = [threading.Thread(target=claim, args=(f"r{i}",)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(won) == 1
