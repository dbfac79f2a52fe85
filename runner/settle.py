"""While and after a group runs: counts onto the records, early stops, and closing each batch."""

from __future__ import annotations

import logging
from collections.abc import Sequence

from dropbatch.context import Context
from dropbatch.errors import DropbatchError
from dropbatch.models import BatchRecord, BatchStatus, RequestCounts
from dropbatch.observability.metrics import Metrics
from runner.claimed import Claimed
from runner.claiming import done
from runner.finalize import finalize, write_chunk_result
from runner.leases import LeaseKeeper

log = logging.getLogger("dropbatch.runner")


def publish_progress(
    ctx: Context, metrics: Metrics, group: Sequence[Claimed], keeper: LeaseKeeper, *, stopping: bool
) -> bool:
    """Move request_counts on the records, close finished batches; True if the engine pass must end now.

    That is when a batch is cancelled or expired, a lease was lost, or the runner
    is asked to stop (``stopping``; unfinished chunks are then handed back, not lost).
    """
    must_stop = stopping
    for claimed in group:
        if claimed.settled:
            continue
        if claimed.active and not claimed.remaining and claimed.lease.batch_id not in keeper.lost:
            # Done while bigger batches of its group still run: close it now, not when they end.
            keeper.drop(claimed.lease.batch_id)
            settle(ctx, metrics, claimed)
            claimed.settled = True
            continue
        if claimed.lease.batch_id in keeper.lost:
            claimed.lost = True
            must_stop = True
            continue
        if claimed.stop_as is not None:
            continue
        counts = claimed.counts()

        def move(batch: BatchRecord, counts: RequestCounts = counts) -> None:
            if batch.status == BatchStatus.IN_PROGRESS:
                batch.request_counts = counts

        try:
            record = ctx.batches.update(claimed.record.tenant, claimed.record.id, move)
        except DropbatchError as exc:
            log.warning("progress update failed", extra={"batch_id": claimed.record.id, "error": str(exc)})
            continue
        if record.status == BatchStatus.CANCELLING:
            claimed.stop_as = BatchStatus.CANCELLED
        elif record.expires_at is not None and ctx.now() >= record.expires_at and claimed.remaining:
            claimed.stop_as = BatchStatus.EXPIRED
        must_stop = must_stop or claimed.stop_as is not None
    return must_stop


def settle(ctx: Context, metrics: Metrics, claimed: Claimed) -> None:
    """After the engine pass: finish the batch, or hand it back for another pass."""
    if claimed.lost:
        log.warning("lease lost; another runner finishes this batch", extra={"batch_id": claimed.record.id})
        return
    if claimed.stop_as is not None:
        # Keep the lines that did finish: checkpoint partial chunks, then close early.
        for index, lines in claimed.buffers.items():
            write_chunk_result(ctx, claimed.record.id, index, list(lines.values()),
                               total=claimed.remaining[index].lines, copies=claimed.copies)
        ran = claimed.counts()
        closed = finalize(ctx, claimed.record, final=claimed.stop_as)
        if ran.total:  # the hour counts engine work: the lines that never ran give their share back
            ctx.quotas.keep_share(claimed.record.tenant, claimed.record.id, (ran.completed + ran.failed) / ran.total)
        metrics.batches_finished.labels(closed.status.value).inc()
        done(ctx, claimed.entry, claimed.lease)
        return
    if claimed.remaining:
        ctx.queue.release(claimed.lease)  # the pass ended early; the next pass continues it
        return
    closed = finalize(ctx, claimed.record)  # its status moves by conditional updates, read fresh there
    metrics.batches_finished.labels(closed.status.value).inc()
    done(ctx, claimed.entry, claimed.lease)
