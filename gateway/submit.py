"""Submitting a batch the drop-box way: a server-signed manifest in the tenant's inbox prefix.

The gateway never runs or queues anything itself. It signs a manifest with a
signing key it holds for the tenant (created on first use, remembered at
``gateway-keys/<tenant>.json`` in the control bucket), creates the batch record
in ``validating`` under the id the watcher will derive from the manifest bytes,
and puts the manifest at ``<tenant>/api-<hash>/manifest.json``. From there the
watcher (SQS event or listing sweep) admits it exactly like a drop-box job.
Every read and write here is awaited through the gateway's async stores, the
independent ones together (``gateway.together.in_order``).
"""

from __future__ import annotations

import asyncio
import hashlib
import secrets
from collections.abc import Awaitable

from pydantic import BaseModel, ValidationError

from dropbatch.auth.tenants import SigningKey
from dropbatch.context import Context
from dropbatch.deadlines import DEFAULT_WINDOW, check_window, window_seconds
from dropbatch.errors import DropbatchError, InvalidRequest, NotFound, ObjectExists
from dropbatch.ids import batch_id_for
from dropbatch.models import (
    BatchError,
    BatchRecord,
    BatchStatus,
    ExpiresAfter,
    FileRecord,
    InputObject,
    RetryConfig,
)
from dropbatch.served import check_model, model_of_file
from dropbatch.storage.keys import ControlKeys, JobRef
from gateway.state import Gateway
from gateway.together import in_order
from manifests import Manifest, dumps, sign

_KEY_ATTEMPTS = 5


class GatewayKey(BaseModel):
    tenant: str
    key_id: str
    created_at: int


async def _usable_key(gw: Gateway, tenant: str, pointer: GatewayKey | None) -> SigningKey | None:
    if pointer is None:
        return None
    try:
        key = await gw.tenants.signing_key(pointer.key_id)
    except NotFound:
        return None
    return key if key.tenant == tenant and key.revoked_at is None else None


async def settled_key(gw: Gateway, tenant: str) -> SigningKey | None:
    """The tenant's usable gateway signing key, or None if there is none yet; reads only, so it can run
    beside a submission's checks (creating a key writes and audits, so that waits until they pass)."""
    return await _usable_key(gw, tenant, await gw.records.get(ControlKeys.gateway_key(tenant), GatewayKey))


async def signing_key_for(gw: Gateway, tenant: str) -> SigningKey:
    """The tenant's gateway signing key, created on first use; safe with many replicas racing."""
    pointer_key = ControlKeys.gateway_key(tenant)
    for _ in range(_KEY_ATTEMPTS):
        pointer = await gw.records.get(pointer_key, GatewayKey)
        key = await _usable_key(gw, tenant, pointer)
        if key is not None:
            return key
        fresh = await gw.tenants.create_signing_key(tenant)
        if pointer is None:
            try:
                await gw.records.create(pointer_key, GatewayKey(tenant=tenant, key_id=fresh.key_id, created_at=gw.ctx.now()))
                return fresh
            except ObjectExists:
                await gw.tenants.revoke_signing_key(fresh.key_id)  # another replica's key won
                continue
        stale = pointer.key_id

        def replace(current: GatewayKey, stale: str = stale, fresh_id: str = fresh.key_id) -> None:
            if current.key_id == stale:
                current.key_id = fresh_id

        if (await gw.records.update(pointer_key, GatewayKey, replace)).key_id == fresh.key_id:
            return fresh
        await gw.tenants.revoke_signing_key(fresh.key_id)
    raise InvalidRequest(f"Could not settle a signing key for tenant {tenant!r}; retry.", code="signing_key_race")


async def _given(file: FileRecord) -> FileRecord:
    return file


def check_input_file(ctx: Context, file: FileRecord) -> InputObject:
    """The manifest input for ``file``; 400 unless it is batch input in the inbox."""
    if file.purpose != "batch" or file.bucket != ctx.inbox or not file.sha256:
        raise InvalidRequest(
            f"File {file.id} has purpose '{file.purpose}'; a batch needs a file uploaded with purpose 'batch'.",
            code="invalid_input_file",
            param="input_file_id",
        )
    return InputObject(key=file.key, size=file.bytes, sha256=file.sha256)


async def batch_model(gw: Gateway, file: FileRecord) -> str:
    """The served model the file's lines name (a batch runs on one); 400 naming the served models if not served."""
    named = await model_of_file(gw.store, file.bucket, file.key, max_line_bytes=gw.settings.limits.max_line_bytes)
    try:
        return check_model(gw.settings.engine, named)
    except NotFound as exc:
        raise InvalidRequest(f"The input file's lines name a model this deployment does not serve: {exc.message}",
                             code="model_not_found", param="input_file_id") from None


async def submit_batch(
    gw: Gateway,
    tenant: str,
    file: FileRecord | Awaitable[FileRecord],
    *,
    endpoint: str,
    metadata: dict[str, str] | None,
    retry_config: RetryConfig | None = None,
    output_expires_after: ExpiresAfter | None = None,
    completion_window: str = DEFAULT_WINDOW,
) -> BatchRecord:
    """Create the batch record and drop its signed manifest; returns the record (``validating``).

    ``file`` is the input file's record or what produces it (its lookup, an upload):
    it is awaited together with the other checks and lookups (``in_order``), and its
    error, if any, comes first.
    """
    ctx = gw.ctx
    produced = asyncio.ensure_future(_given(file) if isinstance(file, FileRecord) else file)

    async def window() -> None:
        if completion_window != DEFAULT_WINDOW:
            check_window(ctx.settings.limits, completion_window, (await gw.tenants.get(tenant)).tier)

    async def source_and_model() -> tuple[InputObject, str]:
        # Shielded: a later step's failure cancels this one, never the upload the caller asked for.
        input_file = await asyncio.shield(produced)
        return check_input_file(ctx, input_file), await batch_model(gw, input_file)

    # The order the checks ran in one by one, so the same request gets the same first error.
    input_file, _, (source, model), settled = await in_order(
        produced, window(), source_and_model(), settled_key(gw, tenant)
    )
    key = settled or await signing_key_for(gw, tenant)
    nonce = secrets.token_urlsafe(18)
    job = "api-" + hashlib.sha256(nonce.encode()).hexdigest()[:16]
    now = ctx.now()
    try:
        manifest = Manifest(
            tenant=tenant,
            job=job,
            key_id=key.key_id,
            inputs=[source],
            endpoint=endpoint,
            model=model,
            completion_window=completion_window,
            metadata=metadata or {},
            created_at=now,
            nonce=nonce,
            retry_config=retry_config,
        )
    except ValidationError as exc:
        raise InvalidRequest(
            f"The batch cannot be built: {exc.errors()[0].get('msg')}.", code="invalid_batch"
        ) from None
    data = dumps(sign(manifest, key.secret))
    ref = JobRef(tenant, job)
    record = BatchRecord(
        id=batch_id_for(tenant, job, hashlib.sha256(data).hexdigest()),
        endpoint=endpoint,
        input_file_id=input_file.id,
        status=BatchStatus.VALIDATING,
        created_at=now,
        completion_window=completion_window,
        expires_at=now + window_seconds(ctx.settings.limits, completion_window),
        metadata=metadata,
        model=manifest.model,
        tenant=tenant,
        job=job,
        source="api",
        manifest_key=ref.manifest_key,
        retry_config=retry_config,
        output_expires_after=output_expires_after,
        updated_at=now,
    )
    # Record, then job pointer, then manifest: the watcher finds the record and keeps its
    # input_file_id and metadata, and a pointer always leads to a record (written together, a
    # failed create could leave a pointer to nothing).
    await gw.batches.create(record)
    await gw.batches.point_job(ref, record.id)
    try:
        await gw.store.put(ctx.inbox, ref.manifest_key, data, if_none_match=True, content_type="application/json")
    except DropbatchError:
        # No manifest, so no watcher will ever look at this record: fail it rather than leave it validating.
        error = BatchError(
            code="submit_failed", message="The batch could not be handed to the watcher; submit it again."
        )
        await gw.batches.update(
            tenant, record.id, lambda b: b.fail([error], ctx.now()) if not b.status.is_terminal else None
        )
        raise
    await gw.records.audit("batch.submitted", now=ctx.clock(), tenant=tenant, batch_id=record.id, job=job, source="api")
    return record
