"""SLA-aware admission: will a new batch, behind the queued work, finish inside its window?

The projection (``dropbatch.deadlines.projected_finish``) uses the request lines per
second the runners measured lately and the lines queued with an earlier or equal
deadline. ``DROPBATCH_SLA_ADMISSION`` says what a projected miss does: ``reject``
(the batch fails with ``deadline_unreachable``), ``warn`` (admitted with a
``deadline_at_risk`` warning in its record) or ``off``.
"""

from __future__ import annotations

from dropbatch.context import Context
from dropbatch.deadlines import measured_throughput, projected_finish
from dropbatch.errors import DeadlineUnreachable
from dropbatch.models import BatchError, BatchRecord


def deadline_warning(ctx: Context, record: BatchRecord, lines: int) -> BatchError | None:
    """Raise ``DeadlineUnreachable`` if the batch is projected to miss its window (or, by setting, a warning)."""
    limits = ctx.settings.limits
    if limits.sla_admission == "off" or record.expires_at is None:
        return None
    now = ctx.clock()
    rate = measured_throughput(ctx.records, now, limits.throughput_max_age_seconds)
    if rate is None:
        return None  # no runner measured a rate lately: nothing to project from
    queued = (e for e in ctx.queue.entries() if e.batch_id != record.id)
    finish = projected_finish(now, rate, queued, deadline=record.expires_at, lines=lines)
    if finish <= record.expires_at:
        return None
    message = (
        f"At the measured {rate:.1f} request lines/s, with the work queued ahead of it, this batch would finish "
        f"about {finish - record.expires_at:.0f} s after its {record.completion_window} completion window ends."
    )
    if limits.sla_admission == "reject":
        raise DeadlineUnreachable(message + " Submit it later or split it.", param="completion_window")
    return BatchError(code="deadline_at_risk", message=message, param="completion_window")
