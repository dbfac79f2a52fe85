"""Admission of one drop-box job: verify, check quota, validate, then queue (or answer from cache).

Every step is safe to repeat, so duplicate, reordered or replayed S3 events and a
watcher crash between any two steps all converge on the same record:

    manifest bytes ─▶ batch id (hash of tenant, job, manifest bytes)
    record created (If-None-Match) ─▶ verify ─▶ nonce claimed (names this batch)
    ─▶ inputs hashed + lines validated + duplicates found + chunks planned
    ─▶ answered from the outbox if the same work exists (no quota used), else
    ─▶ deadline projected ─▶ quota reserved (by batch id) ─▶ in_progress + queued.
"""

from __future__ import annotations

import hashlib
import logging

from dropbatch.bodies import body_limits
from dropbatch.context import Context
from dropbatch.deadlines import DEFAULT_WINDOW, check_window, window_seconds
from dropbatch.duplicates import save_duplicates
from dropbatch.engine.requests import engine_fingerprint
from dropbatch.errors import (
    Conflict,
    DropbatchError,
    InvalidRequest,
    ManifestRejected,
    NotFound,
    ObjectExists,
    ObjectNotFound,
    QuotaExceeded,
)
from dropbatch.ids import batch_id_for, content_address
from dropbatch.models import BatchError, BatchRecord, BatchStatus, FileRecord
from dropbatch.queue import QueueEntry
from dropbatch.records import audit
from dropbatch.results import Summary, close_batch, read_summary, result_location
from dropbatch.served import check_model
from dropbatch.storage.keys import ControlKeys, JobRef, OutputPrefix
from manifests import Manifest, loads, verify_signature
from watcher.rejections import refuse_if_job_is_live, write_rejection
from watcher.scan import scan_inputs
from watcher.sla import deadline_warning

log = logging.getLogger("dropbatch.watcher")


def admit_manifest(ctx: Context, ref: JobRef) -> BatchRecord | None:
    """Take the job at ``ref`` as far as it can go; returns its batch record.

    Returns None when no batch is made: the manifest is gone (deleted before we got
    to it), or it was refused because the job has a live batch (``rejection.json`` says so).
    """
    try:
        data, _ = ctx.store.get(ctx.inbox, ref.manifest_key)
    except ObjectNotFound:
        return None
    manifest_sha256 = hashlib.sha256(data).hexdigest()
    batch_id = batch_id_for(ref.tenant, ref.job, manifest_sha256)
    try:
        manifest: Manifest | None = loads(data)
        problem: DropbatchError | None = None
    except ManifestRejected as exc:
        manifest, problem = None, exc

    record = _open_record(ctx, ref, batch_id, manifest_sha256, manifest)
    if record is None:
        return None
    if record.status != BatchStatus.VALIDATING:
        _ensure_follow_up(ctx, ref, record)
        return record
    try:
        if manifest is None:
            raise problem or ManifestRejected("The manifest could not be read.", code="invalid_manifest")
        return _admit(ctx, ref, record, manifest)
    except (InvalidRequest, QuotaExceeded) as exc:
        return reject(ctx, ref, record, exc)
    except Conflict:
        # Cancelled (through the gateway) while we were admitting it.
        record = ctx.batches.get(ref.tenant, batch_id)
        _ensure_follow_up(ctx, ref, record)
        return record


def _open_record(
    ctx: Context, ref: JobRef, batch_id: str, manifest_sha256: str, manifest: Manifest | None
) -> BatchRecord | None:
    """The batch record for this manifest, created in ``validating`` if it is new.

    None when the manifest is refused instead: its job already has a live batch.
    """
    try:
        return ctx.batches.get(ref.tenant, batch_id)
    except NotFound:
        pass
    if refuse_if_job_is_live(ctx, ref, batch_id, manifest_sha256):
        return None
    now = ctx.now()
    window = manifest.completion_window if manifest else DEFAULT_WINDOW
    record = BatchRecord(
        id=batch_id,
        endpoint=manifest.endpoint if manifest else "",
        input_file_id="",
        status=BatchStatus.VALIDATING,
        created_at=now,
        completion_window=window,
        expires_at=now + window_seconds(ctx.settings.limits, window),
        metadata=manifest.metadata if manifest else None,
        model=manifest.model if manifest else None,
        tenant=ref.tenant,
        job=ref.job,
        manifest_key=ref.manifest_key,
        updated_at=now,
    )
    # An earlier batch's (or a refused manifest's) rejection no longer describes this job;
    # before the create, so a crash in between deletes it on the next pass.
    ctx.store.delete(ctx.inbox, ref.rejection_key)
    try:
        ctx.batches.create(record)
    except ObjectExists:
        record = ctx.batches.get(ref.tenant, batch_id)
    ctx.batches.point_job(ref, batch_id)
    return record


def _admit(ctx: Context, ref: JobRef, record: BatchRecord, manifest: Manifest) -> BatchRecord:
    _verify(ctx, ref, record, manifest)
    limits = ctx.settings.limits
    tenant = ctx.tenants.get(ref.tenant)
    check_window(limits, manifest.completion_window, tenant.tier)
    # Work the outbox holds already costs no quota; anything else stops being read once past what is left.
    done = _done_before(ctx, ref, manifest)
    budget = None if done is not None else ctx.quotas.budget(ref.tenant, tenant.tier, record.id)
    scan = scan_inputs(
        ctx.store,
        ctx.inbox,
        manifest.inputs,
        endpoint=manifest.endpoint,
        model=manifest.model,
        limits=limits,
        default_max_tokens=ctx.settings.engine.default_max_tokens,
        body_limits=body_limits(ctx.settings),
        dedup=limits.dedup,
        budget=budget,
    )
    if scan.errors:
        if scan.error_count > len(scan.errors):
            scan.errors.append(
                BatchError(code="too_many_errors", message=f"{scan.error_count - len(scan.errors)} more errors not listed.")
            )
        return _fail(ctx, ref, record, "invalid_input", "The input file failed validation.", scan.errors)

    sha256 = _address(ctx, manifest, sampled_batch_id=record.id if scan.sampled else None)
    prefix = OutputPrefix(ref.tenant, sha256)
    input_file_id = record.input_file_id or _register_input_file(ctx, ref, manifest)

    def plan(batch: BatchRecord) -> None:
        batch.endpoint = manifest.endpoint
        batch.model = manifest.model
        batch.metadata = manifest.metadata or batch.metadata
        batch.input_file_id = batch.input_file_id or input_file_id
        batch.completion_window = manifest.completion_window
        batch.expires_at = batch.created_at + window_seconds(limits, manifest.completion_window)
        batch.inputs = list(manifest.inputs)
        batch.input_etags = scan.etags
        batch.retry_config = manifest.retry_config or batch.retry_config
        batch.chunks = scan.chunks
        batch.content_sha256 = sha256
        batch.result = result_location(ctx, prefix)
        batch.request_counts.total = scan.lines
        batch.duplicate_lines = scan.duplicates.count

    record = ctx.batches.update(ref.tenant, record.id, plan)
    # A deterministic batch's address is the one read before its lines: that read answers it, no second GET.
    summary = read_summary(ctx, prefix) if scan.sampled else done
    if summary is not None and not summary.partial:
        # The same work is done: nothing runs, so nothing counts against the hour's quota.
        ctx.quotas.release(ref.tenant, record.id)  # a reservation an interrupted earlier attempt made
        log.info("answered from the outbox", extra={"tenant": ref.tenant, "batch_id": record.id, "job": ref.job})
        return close_batch(ctx, record, summary, cached=True)

    warning = deadline_warning(ctx, record, scan.lines)
    ctx.quotas.reserve(ref.tenant, tenant.tier, record.id, scan.requests, lines=scan.lines)
    if scan.duplicates.count:
        save_duplicates(ctx.records, record.id, scan.duplicates)
    moved = False

    def start(batch: BatchRecord) -> None:
        nonlocal moved
        moved = batch.status == BatchStatus.VALIDATING  # False when a racing watcher got there first
        if moved and warning is not None:
            batch.warnings = [*batch.warnings, warning]
        batch.transition(BatchStatus.IN_PROGRESS, ctx.now())

    record = ctx.batches.update(ref.tenant, record.id, start)
    _ensure_follow_up(ctx, ref, record)
    if moved:
        audit(ctx.records, "batch.admitted", now=ctx.clock(), tenant=ref.tenant, batch_id=record.id, lines=scan.lines)
    log.info(
        "admitted",
        extra={"tenant": ref.tenant, "batch_id": record.id, "job": ref.job, "lines": scan.lines,
               "chunks": len(scan.chunks), "duplicates": scan.duplicates.count},
    )
    return record


def _address(ctx: Context, manifest: Manifest, *, sampled_batch_id: str | None = None) -> str:
    return content_address(
        input_sha256s=[item.sha256 for item in manifest.inputs],
        model=manifest.model,
        endpoint=manifest.endpoint,
        engine_fingerprint=engine_fingerprint(ctx.settings.engine.for_model(manifest.model)),
        sampled_batch_id=sampled_batch_id,
    )


def _done_before(ctx: Context, ref: JobRef, manifest: Manifest) -> Summary | None:
    """The finished summary of this work in the tenant's outbox, if its lines are deterministic (read before them)."""
    summary = read_summary(ctx, OutputPrefix(ref.tenant, _address(ctx, manifest)))
    return summary if summary is not None and not summary.partial else None


def _verify(ctx: Context, ref: JobRef, record: BatchRecord, manifest: Manifest) -> None:
    if manifest.tenant != ref.tenant or manifest.job != ref.job:
        raise ManifestRejected(
            f"The manifest is for {manifest.tenant}/{manifest.job} but was uploaded to {ref}.",
            code="prefix_mismatch",
        )
    try:
        ctx.tenants.get(ref.tenant)
    except NotFound:
        raise ManifestRejected(f"Tenant {ref.tenant!r} does not exist.", code="unknown_tenant") from None
    try:
        key = ctx.tenants.signing_key(manifest.key_id)
    except NotFound:
        key = None
    if key is None or key.tenant != ref.tenant:
        raise ManifestRejected(f"Signing key {manifest.key_id!r} is not a key of this tenant.", code="unknown_key")
    if key.revoked_at is not None:
        raise ManifestRejected(f"Signing key {manifest.key_id!r} has been revoked.", code="revoked_key")
    verify_signature(manifest, key.secret)
    try:
        check_model(ctx.settings.engine, manifest.model)
    except NotFound as exc:
        raise ManifestRejected(exc.message, code=exc.code, param="model") from None
    nonce_key = ControlKeys.nonce(ref.tenant, manifest.nonce)
    try:
        ctx.store.put(ctx.settings.storage.control_bucket, nonce_key, record.id.encode(), if_none_match=True)
    except ObjectExists:
        owner, _ = ctx.store.get(ctx.settings.storage.control_bucket, nonce_key)
        if owner.decode() != record.id:
            raise ManifestRejected(
                "The manifest's nonce was already used by another manifest (a replay).", code="replayed_nonce"
            ) from None


def _register_input_file(ctx: Context, ref: JobRef, manifest: Manifest) -> str:
    """A File record for the job's first input, so /v1/files/{id}/content serves it too."""
    first = manifest.inputs[0]
    file_id = "file-" + hashlib.sha256(f"input\0{ref.tenant}\0{first.key}\0{first.sha256}".encode()).hexdigest()[:24]
    try:
        ctx.files.create(
            FileRecord(
                id=file_id,
                bytes=first.size,
                created_at=ctx.now(),
                filename=first.key.rsplit("/", 1)[-1],
                purpose="batch",
                tenant=ref.tenant,
                bucket=ctx.inbox,
                key=first.key,
                sha256=first.sha256,
            )
        )
    except ObjectExists:
        pass
    return file_id


def reject(ctx: Context, ref: JobRef, record: BatchRecord, exc: DropbatchError) -> BatchRecord:
    """Fail the batch with the reason, readable next to the manifest; nothing runs."""
    line = getattr(exc, "line", None)
    error = BatchError(code=exc.code, message=exc.message, line=line, param=exc.param)
    return _fail(ctx, ref, record, exc.code, exc.message, [error])


def _fail(ctx: Context, ref: JobRef, record: BatchRecord, code: str, reason: str, errors: list[BatchError]) -> BatchRecord:
    def fail(batch: BatchRecord) -> None:
        if batch.status in (BatchStatus.VALIDATING, BatchStatus.IN_PROGRESS):
            batch.fail(errors, ctx.now())

    record = ctx.batches.update(ref.tenant, record.id, fail)
    _write_rejection(ctx, ref, record, code, reason)
    audit(ctx.records, "batch.rejected", now=ctx.clock(), tenant=ref.tenant, batch_id=record.id, code=code)
    log.warning("rejected", extra={"tenant": ref.tenant, "batch_id": record.id, "job": ref.job, "code": code})
    return record


# A manifest's bytes map to its batch, so the same manifest uploaded again is that batch (an S3 event
# delivered twice is nothing new): say so where a client reads why, or they wait for nothing.
RUN_AGAIN = ("To run this job, fix that and upload a newly signed manifest (`dropbatch manifest sign` again); "
             "uploading this one again does nothing.")


def _write_rejection(ctx: Context, ref: JobRef, record: BatchRecord, code: str, reason: str) -> None:
    write_rejection(
        ctx,
        ref.rejection_key,
        tenant=ref.tenant,
        job=ref.job,
        code=code,
        reason=f"{reason} {RUN_AGAIN}",
        rejected_at=record.failed_at,
        batch_id=record.id,
        errors=[e.model_dump() for e in (record.errors.data if record.errors else [])],
    )


def _ensure_follow_up(ctx: Context, ref: JobRef, record: BatchRecord) -> None:
    """Redo the idempotent last step of an admission that may have been interrupted."""
    if record.status == BatchStatus.IN_PROGRESS:
        ctx.queue.enqueue(QueueEntry.of(record))
    elif record.status == BatchStatus.CANCELLING:
        if record.chunks:  # admitted: the runner writes batch_cancelled lines and closes it
            ctx.queue.enqueue(QueueEntry.of(record))
        else:  # never admitted: nothing ran and nothing was counted
            ctx.batches.update(
                record.tenant,
                record.id,
                lambda b: b.transition(BatchStatus.CANCELLED, ctx.now()) if b.status == BatchStatus.CANCELLING else None,
            )
    elif record.status == BatchStatus.FAILED and record.source == "dropbox":
        try:
            ctx.store.head(ctx.inbox, ref.rejection_key)
        except ObjectNotFound:
            code = record.errors.data[0].code if record.errors and record.errors.data else "rejected"
            _write_rejection(ctx, ref, record, code, "The batch failed validation.")
