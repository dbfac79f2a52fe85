"""Results in the outbox: the summary written last, and closing a batch record over them."""

from __future__ import annotations

from pydantic import BaseModel

from dropbatch.context import Context
from dropbatch.errors import ObjectExists, ObjectNotFound
from dropbatch.ids import output_file_id
from dropbatch.models import BatchRecord, BatchStatus, FileRecord, RequestCounts, ResultLocation, Usage
from dropbatch.records import audit
from dropbatch.storage.keys import ControlKeys, OutputPrefix


class Summary(BaseModel):
    """``outbox/<tenant>/<sha256>/summary.json``: written last, so its presence means done."""

    object: str = "dropbatch.summary"
    content_sha256: str
    tenant: str
    endpoint: str
    model: str
    request_counts: RequestCounts
    usage: Usage
    output_bytes: int
    errors_bytes: int
    output_key: str
    errors_key: str
    summary_key: str
    produced_by: str
    created_at: int
    partial: bool = False


def result_location(ctx: Context, prefix: OutputPrefix) -> ResultLocation:
    return ResultLocation(
        bucket=ctx.outbox,
        prefix=prefix.prefix,
        output_key=prefix.output_key,
        errors_key=prefix.errors_key,
        summary_key=prefix.summary_key,
    )


def read_summary(ctx: Context, prefix: OutputPrefix) -> Summary | None:
    """The summary of finished work at ``prefix``, or None if that work has not been done."""
    try:
        data, _ = ctx.store.get(ctx.outbox, prefix.summary_key)
    except ObjectNotFound:
        return None
    return Summary.model_validate_json(data)


def register_result_files(ctx: Context, record: BatchRecord, summary: Summary) -> tuple[str | None, str | None]:
    """File records for the batch's output and error objects; returns their ids (None if empty)."""
    ids: list[str | None] = []
    for kind, key, size, count in (
        ("output", summary.output_key, summary.output_bytes, summary.request_counts.completed),
        ("errors", summary.errors_key, summary.errors_bytes, summary.request_counts.failed),
    ):
        if count == 0:
            ids.append(None)
            continue
        file_id = output_file_id(record.id, kind)
        created_at = ctx.now()
        expiry = record.output_expires_after
        file = FileRecord(
            id=file_id,
            bytes=size,
            created_at=created_at,
            expires_at=expiry.expires_at(created_at) if expiry is not None else None,
            filename=f"{record.id}_{kind}.jsonl",
            purpose="batch_output",
            tenant=record.tenant,
            bucket=ctx.outbox,
            key=key,
            batch_id=record.id,
        )
        try:
            ctx.files.create(file)
        except ObjectExists:
            pass  # a retried completion: the record is already there
        ids.append(file_id)
    return ids[0], ids[1]


def close_batch(
    ctx: Context,
    record: BatchRecord,
    summary: Summary,
    *,
    final: BatchStatus = BatchStatus.COMPLETED,
    cached: bool = False,
) -> BatchRecord:
    """Move ``record`` to ``final`` (completed/expired/cancelled) with counts, usage and files."""
    output_id, error_id = register_result_files(ctx, record, summary)
    location = ResultLocation(
        bucket=ctx.outbox,
        prefix=summary.summary_key.rsplit("/", 1)[0] + "/",
        output_key=summary.output_key,
        errors_key=summary.errors_key,
        summary_key=summary.summary_key,
    )

    def finish(batch: BatchRecord) -> None:
        if batch.status.is_terminal:
            return
        now = ctx.now()
        if final == BatchStatus.COMPLETED:
            for step in (BatchStatus.IN_PROGRESS, BatchStatus.FINALIZING):
                if batch.status in (BatchStatus.VALIDATING, BatchStatus.IN_PROGRESS) and batch.status != step:
                    batch.transition(step, now)
        elif final == BatchStatus.CANCELLED and batch.status != BatchStatus.CANCELLING:
            batch.transition(BatchStatus.CANCELLING, now)
        batch.transition(final, now)
        batch.request_counts = summary.request_counts
        batch.usage = summary.usage
        batch.output_file_id = output_id
        batch.error_file_id = error_id
        batch.result = location
        batch.cached = cached

    closed = ctx.batches.update(record.tenant, record.id, finish)
    if record.duplicate_lines:  # the duplicates map is written out now (or was never needed)
        ctx.store.delete(ctx.settings.storage.control_bucket, ControlKeys.duplicates(record.id))
    audit(
        ctx.records,
        "batch.closed",
        now=ctx.clock(),
        tenant=record.tenant,
        batch_id=record.id,
        status=closed.status.value,
        cached=cached,
    )
    return closed
