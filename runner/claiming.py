"""Taking a leased batch into a group: settle what needs no engine, check its inputs, plan what is left."""

from __future__ import annotations

import logging
from collections.abc import Callable

from dropbatch.context import Context
from dropbatch.errors import NotFound, ObjectNotFound
from dropbatch.models import BatchError, BatchRecord, BatchStatus, RequestCounts, RetryConfig
from dropbatch.observability.metrics import Metrics
from dropbatch.queue import Lease, QueueEntry
from dropbatch.results import close_batch, read_summary
from dropbatch.storage.keys import OutputPrefix
from runner.claimed import Claimed
from runner.finalize import batch_duplicates, finalize, finished_chunks, work_chunks

log = logging.getLogger("dropbatch.runner")

INPUT_CHANGED = "An input object changed after it was admitted."


def take(
    ctx: Context,
    metrics: Metrics,
    entry: QueueEntry,
    lease: Lease,
    group: list[Claimed],
    start_work: Callable[[tuple[str, str]], bool],
) -> Claimed | None:
    """Add the leased batch to ``group`` if it needs the engine (settling it otherwise).

    ``start_work((tenant, content address))`` says False when the runner runs that work already
    (another batch of the tenant with the same bytes, model and settings): the batch waits in the
    queue and is answered from the outbox once that one is done, neither run nor charged twice.
    """
    try:
        record = ctx.batches.get(entry.tenant, entry.batch_id)
    except NotFound:
        done(ctx, entry, lease)
        return None
    if settle_without_engine(ctx, metrics, entry, lease, record):
        return None
    if not inputs_unchanged(ctx, record):
        fail(ctx, metrics, entry, lease, record, "input_changed", INPUT_CHANGED)
        return None
    if record.content_sha256 and not start_work((record.tenant, record.content_sha256)):
        ctx.queue.release(lease)  # identical work runs now; a later claim answers it from the outbox
        return None
    finished = finished_chunks(ctx, record.id)
    committed = RequestCounts(
        total=record.request_counts.total,
        completed=sum(c.completed for c in finished.values()),
        failed=sum(c.failed for c in finished.values()),
    )
    duplicates = batch_duplicates(ctx, record)
    remaining = {c.chunk: c for c in work_chunks(ctx, record, duplicates) if c.chunk not in finished}
    policy = record.retry_config or RetryConfig(**ctx.settings.retry.model_dump())
    claimed = Claimed(entry, lease, record, remaining, committed, policy=policy, copies=duplicates.copy_counts(),
                      tier=_tier(ctx, record.tenant))
    group.append(claimed)
    return claimed


def settle_without_engine(ctx: Context, metrics: Metrics, entry: QueueEntry, lease: Lease, record: BatchRecord) -> bool:
    """Finish batches that need no engine run; True if ``record`` was settled here."""
    final = None
    if record.status.is_terminal:
        done(ctx, entry, lease)
        return True
    if record.status == BatchStatus.CANCELLING:
        final = BatchStatus.CANCELLED
    elif record.expires_at is not None and ctx.now() >= record.expires_at:
        final = BatchStatus.EXPIRED  # never start a batch already past its deadline
    elif record.status == BatchStatus.FINALIZING:
        final = BatchStatus.COMPLETED  # a runner died while finalizing
    elif record.status != BatchStatus.IN_PROGRESS:
        ctx.queue.release(lease)
        return True
    else:
        summary = read_summary(ctx, OutputPrefix(record.tenant, record.content_sha256 or ""))
        if summary is not None and not summary.partial:
            close_batch(ctx, record, summary, cached=True)
            ctx.quotas.release(record.tenant, record.id)  # answered from the outbox: nothing ran
            metrics.batches_finished.labels(BatchStatus.COMPLETED.value).inc()
            done(ctx, entry, lease)
            return True
        return False
    ran = record.request_counts  # what earlier passes ran, before the stop's error lines are added
    closed = finalize(ctx, record, final=final)
    if closed.status in (BatchStatus.CANCELLED, BatchStatus.EXPIRED) and ran.total:
        # The hour counts engine work: lines that never ran give their share back (all of it if none ran).
        ctx.quotas.keep_share(record.tenant, record.id, (ran.completed + ran.failed) / ran.total)
    metrics.batches_finished.labels(closed.status.value).inc()
    done(ctx, entry, lease)
    return True


def _tier(ctx: Context, tenant: str) -> str:
    try:
        return ctx.tenants.get(tenant).tier
    except NotFound:
        return ""  # a deleted tenant's queued work still runs, at the smallest share


def inputs_unchanged(ctx: Context, record: BatchRecord) -> bool:
    """The inputs still hold the admitted bytes (each chunk is also sha256-checked when read)."""
    for item, etag in zip(record.inputs, record.input_etags, strict=False):
        try:
            if ctx.store.head(ctx.inbox, item.key).etag != etag:
                return False
        except ObjectNotFound:
            return False
    return True


def fail(
    ctx: Context,
    metrics: Metrics,
    entry: QueueEntry,
    lease: Lease,
    record: BatchRecord,
    code: str,
    message: str,
    *,
    release_quota: bool = True,
) -> None:
    """Fail the batch and take it off the queue; ``release_quota`` when none of its lines ran."""
    error = BatchError(code=code, message=message)
    ctx.batches.update(record.tenant, record.id, lambda b: None if b.status.is_terminal else b.fail([error], ctx.now()))
    if release_quota:
        ctx.quotas.release(record.tenant, record.id)
    metrics.batches_finished.labels(BatchStatus.FAILED.value).inc()
    log.warning("batch failed", extra={"tenant": record.tenant, "batch_id": record.id, "code": code})
    done(ctx, entry, lease)


def done(ctx: Context, entry: QueueEntry, lease: Lease) -> None:
    """The batch needs no runner any more: off the queue, lease handed back."""
    ctx.queue.remove(entry)
    ctx.queue.release(lease)
