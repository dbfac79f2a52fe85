"""Turn a batch's checkpointed chunk results into its outbox objects and close the record.

Chunk results (``control/work/<batch>/chunks/<n>.jsonl``) are written once each, so
the outbox files assembled from them hold every custom_id exactly once, whichever
runner (or how many crashed runners) produced them. For an expired or cancelled
batch, lines of unfinished chunks become ``batch_expired`` / ``batch_cancelled``
error lines and the partial results go to a ``partial-<batch_id>/`` sub-prefix.
"""

from __future__ import annotations

import json
import logging
import tempfile
from collections import Counter
from collections.abc import Iterator
from typing import IO

from dropbatch.context import Context
from dropbatch.duplicates import Duplicates, copy_result, load_duplicates
from dropbatch.engine.base import WorkChunk
from dropbatch.engine.rows import read_chunk
from dropbatch.errors import EngineError, ObjectExists, ObjectNotFound
from dropbatch.jsonl import CANCELLED_MESSAGE, EXPIRED_MESSAGE, encode, error_line, is_success, iter_lines
from dropbatch.models import BatchRecord, BatchStatus, RequestCounts, Usage, token_counts
from dropbatch.results import Summary, close_batch, read_summary
from dropbatch.storage.keys import ControlKeys, OutputPrefix
from runner.claimed import settled_counts

log = logging.getLogger("dropbatch.runner")

_ERRORS_IN_MEMORY = 8 * 1024 * 1024  # error lines past this spill to a temporary file while the output uploads
_ERRORS_PART = 1024 * 1024

_UNFINISHED = {
    BatchStatus.EXPIRED: ("batch_expired", EXPIRED_MESSAGE),
    BatchStatus.CANCELLED: ("batch_cancelled", CANCELLED_MESSAGE),
}


def work_chunks(ctx: Context, record: BatchRecord, duplicates: Duplicates | None = None) -> list[WorkChunk]:
    """The record's chunk plan as engine work items; with ``duplicates``, a chunk holding copies asks only its originals."""
    found = duplicates.chunks if duplicates is not None else {}
    return [
        WorkChunk(
            batch_id=record.id,
            chunk=c.index,
            content_sha256=record.content_sha256 or "",
            endpoint=record.endpoint,
            model=record.model or "",
            bucket=ctx.inbox,
            key=record.inputs[c.input].key,
            start=c.start,
            end=c.end,
            first_line=c.first_line,
            lines=c.lines,
            sha256=c.sha256,
            created=record.in_progress_at or record.created_at,
            prompt_chars=c.prompt_chars,
            max_tokens=c.max_tokens,
            only=tuple(found[c.index].keep) if c.index in found else (),
        )
        for c in record.chunks
    ]


def batch_duplicates(ctx: Context, record: BatchRecord) -> Duplicates:
    """The duplicate lines admission found in ``record`` (none when dedup is off or there are none)."""
    return load_duplicates(ctx.records, record.id, record.duplicate_lines)


def finished_chunks(ctx: Context, batch_id: str) -> dict[int, RequestCounts]:
    """Chunks already checkpointed for ``batch_id``, with their counts."""
    done: dict[int, RequestCounts] = {}
    bucket = ctx.settings.storage.control_bucket
    for info in ctx.store.list(bucket, ControlKeys.chunk_prefix(batch_id)):
        index = int(info.key.rsplit("/", 1)[1].split(".")[0])
        meta = ctx.store.head(bucket, info.key).metadata
        done[index] = RequestCounts(
            total=int(meta.get("total", 0)), completed=int(meta.get("completed", 0)), failed=int(meta.get("failed", 0))
        )
    return done


def write_chunk_result(
    ctx: Context, batch_id: str, chunk: int, lines: list[dict], *, total: int, copies: Counter[str] | None = None
) -> bool:
    """Checkpoint one chunk's result lines; False if another runner already did (theirs stands).

    The counts in its metadata include the copies of duplicates each line answers.
    """
    completed, failed = settled_counts(lines, copies or Counter())
    try:
        ctx.store.put(
            ctx.settings.storage.control_bucket,
            ControlKeys.chunk_result(batch_id, chunk),
            b"".join(encode(line) for line in lines),
            if_none_match=True,
            content_type="application/jsonl",
            metadata={"total": str(total), "completed": str(completed), "failed": str(failed)},
        )
    except ObjectExists:
        return False
    return True


def finalize(ctx: Context, record: BatchRecord, *, final: BatchStatus = BatchStatus.COMPLETED) -> BatchRecord:
    """Write output.jsonl, errors.jsonl and summary.json (last), then close the record.

    A batch cancelled while its last lines came back is closed ``cancelled`` with every line: the
    cancel was accepted (the client saw ``cancelling``), so it is honoured.
    """
    if final == BatchStatus.COMPLETED:
        record = ctx.batches.update(record.tenant, record.id, lambda b: _finalizing(b, ctx.now()))
        if record.status == BatchStatus.CANCELLING:
            final = BatchStatus.CANCELLED
    partial = final != BatchStatus.COMPLETED
    prefix = OutputPrefix(record.tenant, record.content_sha256 or "", partial_of=record.id if partial else None)
    summary = read_summary(ctx, prefix)
    if summary is None:
        summary = _write_outputs(ctx, record, prefix, final)
    closed = close_batch(ctx, record, summary, final=final)
    for info in list(ctx.store.list(ctx.settings.storage.control_bucket, ControlKeys.chunk_prefix(record.id))):
        ctx.store.delete(ctx.settings.storage.control_bucket, info.key)
    log.info(
        "batch finished",
        extra={
            "tenant": record.tenant,
            "batch_id": record.id,
            "status": closed.status.value,
            "completed": summary.request_counts.completed,
            "failed": summary.request_counts.failed,
        },
    )
    return closed


def _finalizing(batch: BatchRecord, now: int) -> None:
    if batch.status != BatchStatus.CANCELLING and not batch.status.is_terminal:
        batch.transition(BatchStatus.FINALIZING, now)


def _write_outputs(ctx: Context, record: BatchRecord, prefix: OutputPrefix, final: BatchStatus) -> Summary:
    counts = RequestCounts(total=record.request_counts.total)
    usage = Usage()
    duplicates = batch_duplicates(ctx, record)
    chunks = work_chunks(ctx, record, duplicates)
    wanted = set(duplicates.copy_counts())

    def successes(errors: IO[bytes]) -> Iterator[bytes]:
        """One pass over the chunk results: success lines are yielded, error lines spooled to ``errors``."""
        originals: dict[str, dict] = {}  # result lines of originals with copies (they come first)
        for chunk in chunks:
            copies = duplicates.chunks[chunk.chunk].copies if chunk.chunk in duplicates.chunks else {}
            for line in _chunk_lines(ctx, record, chunk, final, copies, originals, wanted):
                if not is_success(line):
                    counts.failed += 1
                    errors.write(encode(line))
                    continue
                counts.completed += 1
                usage.add(*token_counts((line["response"]["body"] or {}).get("usage")))
                yield encode(line)

    with tempfile.SpooledTemporaryFile(max_size=_ERRORS_IN_MEMORY) as spool:
        output = _upload_once(ctx, prefix.output_key, successes(spool))
        spool.seek(0)
        errors = _upload_once(ctx, prefix.errors_key, iter(lambda: spool.read(_ERRORS_PART), b""))
    summary = Summary(
        content_sha256=record.content_sha256 or "",
        tenant=record.tenant,
        endpoint=record.endpoint,
        model=record.model or "",
        request_counts=counts,
        usage=usage,
        output_bytes=output,
        errors_bytes=errors,
        output_key=prefix.output_key,
        errors_key=prefix.errors_key,
        summary_key=prefix.summary_key,
        produced_by=record.id,
        created_at=ctx.now(),
        partial=final != BatchStatus.COMPLETED,
    )
    try:
        ctx.store.put(
            ctx.outbox, prefix.summary_key, summary.model_dump_json(indent=2).encode(), if_none_match=True,
            content_type="application/json",
        )
    except ObjectExists:
        existing = read_summary(ctx, prefix)
        if existing is not None:
            return existing
    return summary


def _upload_once(ctx: Context, key: str, chunks: Iterator[bytes]) -> int:
    """Stream ``chunks`` to ``key`` unless identical content-addressed bytes are already there."""
    try:
        return ctx.store.upload_stream(ctx.outbox, key, chunks, if_none_match=True, content_type="application/jsonl").size
    except ObjectExists:
        # Same address, same work: another runner finished first. Drain the generator
        # anyway so the counts reflect this batch, then report the existing object.
        for _ in chunks:
            pass
        return ctx.store.head(ctx.outbox, key).size


def _chunk_lines(
    ctx: Context,
    record: BatchRecord,
    chunk: WorkChunk,
    final: BatchStatus,
    copies: dict[str, str],
    originals: dict[str, dict],
    wanted: set[str],
) -> Iterator[dict]:
    """A chunk's result lines, then its copies of duplicates; for unfinished lines of an expired/cancelled batch, error lines.

    ``copies`` maps this chunk's copy custom_ids to their originals; ``originals``
    collects the result lines of the ``wanted`` originals as they pass (an original
    always comes before its copies).
    """
    try:
        data, _ = ctx.store.get(ctx.settings.storage.control_bucket, ControlKeys.chunk_result(record.id, chunk.chunk))
    except ObjectNotFound:
        data = b""
    done: set[str] = set()
    for raw in data.splitlines():
        line = json.loads(raw)
        done.add(line["custom_id"])
        if line["custom_id"] in wanted:
            originals[line["custom_id"]] = line
        yield line
    for custom_id, original in copies.items():
        if original in originals:
            done.add(custom_id)
            yield copy_result(originals[original], custom_id, record.content_sha256 or "")
    if len(done) >= chunk.lines:
        return
    if final not in _UNFINISHED:
        raise EngineError(f"chunk {chunk.chunk} of {record.id} is unfinished at completion")
    code, message = _UNFINISHED[final]
    source = read_chunk(chunk, ctx.store)
    for raw in iter_lines([source], max_line_bytes=ctx.settings.limits.max_line_bytes):
        try:
            custom_id = json.loads(raw.data or b"")["custom_id"]
        except (ValueError, KeyError, TypeError):
            continue
        if custom_id not in done:
            done.add(custom_id)
            yield error_line(record.content_sha256 or "", custom_id, code, message)
