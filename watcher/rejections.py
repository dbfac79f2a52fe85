"""``rejection.json``, and the manifests refused without ever making a batch.

A manifest makes no batch record when
- its job already has a live batch (validating, in_progress, finalizing or
  cancelling): that batch keeps the job and runs to the end; the newer manifest
  never runs, not even after the live batch ends (``job_in_progress``);
- it sits at a key the watcher does not admit (``manifest_key_invalid``): a
  ``Manifest.json``, a nested folder, an invalid job name.

Either way a rejection beside the manifest says why: the job's ``rejection.json``, or for
a manifest at a key that is not admitted, ``<its file name>.rejection.json`` (a
``Manifest.json`` sits in a job's folder, whose ``rejection.json`` is the job's own). Nothing is written
under a prefix that is not an existing tenant's, and ``rejection.json`` is not a
manifest name, so the watcher's own writes never come back to it as work.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from typing import Any

from dropbatch.context import Context
from dropbatch.errors import InvalidRequest, NotFound, ObjectNotFound
from dropbatch.records import audit
from dropbatch.storage.keys import (
    MANIFEST_KEY_PATTERN,
    REJECTION_NAME,
    JobRef,
    check_name,
    why_not_a_manifest_key,
)

log = logging.getLogger("dropbatch.watcher")

JOB_IN_PROGRESS = "job_in_progress"
MANIFEST_KEY_INVALID = "manifest_key_invalid"
_FOR_ETAG = "dropbatch-manifest-etag"  # object metadata: the manifest version a key rejection answers


def write_rejection(
    ctx: Context,
    key: str,
    *,
    tenant: str,
    job: str | None,
    code: str,
    reason: str,
    rejected_at: int | None,
    batch_id: str | None = None,
    errors: Iterable[dict[str, Any]] = (),
    metadata: dict[str, str] | None = None,
    **extra: Any,
) -> None:
    """Write the client-readable ``rejection.json`` at ``key`` in the inbox."""
    body = {
        "object": "dropbatch.rejection",
        "batch_id": batch_id,
        "tenant": tenant,
        "job": job,
        "code": code,
        "reason": reason,
        "errors": list(errors),
        "rejected_at": rejected_at,
        **extra,
    }
    data = json.dumps(body, indent=2).encode() + b"\n"
    ctx.store.put(ctx.inbox, key, data, content_type="application/json", metadata=metadata)


def refuse_if_job_is_live(ctx: Context, ref: JobRef, batch_id: str, manifest_sha256: str) -> bool:
    """Refuse the manifest of ``batch_id`` (not yet a batch) if ``ref`` has a live batch; True if refused.

    A refused manifest stays refused (its bytes map to the refusal, as a batch's bytes
    map to the batch): after the live batch ends the client uploads a newly signed one.
    """
    if ctx.batches.was_refused(ref, manifest_sha256):
        return True
    try:
        live = ctx.batches.for_job(ref)
    except NotFound:
        return False
    if live.status.is_terminal or live.id == batch_id:  # the latter: another watcher just opened it
        return False
    now = ctx.now()
    reason = (
        f"Job {ref} already has batch {live.id}, which is {live.status.value}; a job runs one batch at a time, "
        "so this manifest was not admitted and will not run. That batch runs to the end and `dropbatch status` "
        "shows it. To run this work, wait until it is completed, failed, expired or cancelled, then upload a "
        "newly signed manifest (or use a new job name)."
    )
    write_rejection(
        ctx,
        ref.rejection_key,
        tenant=ref.tenant,
        job=ref.job,
        code=JOB_IN_PROGRESS,
        reason=reason,
        rejected_at=now,
        live_batch_id=live.id,
        manifest_sha256=manifest_sha256,
    )
    # After the rejection: a crash in between refuses it again on the next pass.
    ctx.batches.refuse_manifest(ref, manifest_sha256, live_batch_id=live.id, now=now)
    audit(
        ctx.records, "manifest.refused", now=ctx.clock(), tenant=ref.tenant, job=ref.job,
        code=JOB_IN_PROGRESS, live_batch_id=live.id, manifest_sha256=manifest_sha256,
    )
    log.warning(
        "refused: the job has a live batch",
        extra={"tenant": ref.tenant, "job": ref.job, "batch_id": live.id, "code": JOB_IN_PROGRESS},
    )
    return True


def reject_manifest_key(ctx: Context, key: str) -> str | None:
    """Answer a manifest-named ``key`` the watcher does not admit with ``<name>.rejection.json`` beside it.

    Only under an existing tenant's prefix; once per version of the manifest. Returns
    the code when a rejection was written now, else None.
    """
    tenant, sep, _ = key.partition("/")
    if not sep or not _is_tenant(ctx, tenant):
        return None  # not a tenant's prefix: nobody to tell, and nothing to amplify
    folder, name = key.rsplit("/", 1)
    if any(part in {".", ".."} for part in folder.split("/")):
        folder = tenant  # never a key that a download would resolve outside the tenant's folder
    rejection_key = f"{folder}/{name}.{REJECTION_NAME}"  # not the folder's rejection.json: a job may own it
    try:
        manifest = ctx.store.head(ctx.inbox, key)
    except ObjectNotFound:
        return None
    try:
        if ctx.store.head(ctx.inbox, rejection_key).metadata.get(_FOR_ETAG) == manifest.etag:
            return None
    except ObjectNotFound:
        pass
    reason = (
        f"{key!r} {why_not_a_manifest_key(key)}, so no job was started. The watcher admits manifests only at "
        f"{MANIFEST_KEY_PATTERN}: the job a folder right under the tenant, 1-128 ASCII letters, digits, '.', '_' "
        "or '-' starting with a letter or digit, and the file named exactly 'manifest.json' (lower case). "
        "Upload the manifest there."
    )
    write_rejection(
        ctx,
        rejection_key,
        tenant=tenant,
        job=None,
        code=MANIFEST_KEY_INVALID,
        reason=reason,
        rejected_at=ctx.now(),
        metadata={_FOR_ETAG: manifest.etag},
        manifest_key=key,
        accepted_pattern=MANIFEST_KEY_PATTERN,
    )
    audit(ctx.records, "manifest.rejected", now=ctx.clock(), tenant=tenant, code=MANIFEST_KEY_INVALID, key=key)
    log.warning("rejected: not a manifest key", extra={"tenant": tenant, "key": key, "code": MANIFEST_KEY_INVALID})
    return MANIFEST_KEY_INVALID


def _is_tenant(ctx: Context, name: str) -> bool:
    try:
        ctx.tenants.get(check_name(name, "tenant"))
    except (InvalidRequest, NotFound):
        return False
    return True
