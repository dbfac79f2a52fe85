"""The tenant's gateway signing key when batch creations race on the event loop.

Two creations for a tenant with no key yet both read "no key", both create one and
race to write the pointer (``If-None-Match``): the loser revokes its own key and
signs with the winner's, so both manifests carry one key and the watcher admits both.
"""

from __future__ import annotations

import asyncio
import json

import pytest
from helpers import audit_events, control_keys, make_jsonl

from dropbatch.auth.tenants import SigningKey
from dropbatch.models import BatchStatus
from dropbatch.storage.keys import ControlKeys
from gateway.app import create_app
from gateway.files import store_upload
from gateway.submit import GatewayKey, submit_batch
from manifests import loads
from watcher.service import Watcher

pytestmark = pytest.mark.integration

CHAT = "/v1/chat/completions"


async def _two_racing_batches(gw, tenant: str):
    data = b"".join(json.dumps(line).encode() + b"\n" for line in make_jsonl(2))

    async def chunks():
        yield data

    try:
        file = await store_upload(gw, tenant, chunks(), filename="input.jsonl")
        return await asyncio.gather(
            submit_batch(gw, tenant, file, endpoint=CHAT, metadata=None),
            submit_batch(gw, tenant, file, endpoint=CHAT, metadata=None),
        )
    finally:
        await gw.store.close()


def test_two_concurrent_creates_settle_on_one_signing_key(settings, make_context) -> None:
    ctx = make_context(settings)
    ctx.tenants.create("acme", "basic")
    gw = create_app(settings, ctx=ctx).state.gateway

    first, second = asyncio.run(_two_racing_batches(gw, "acme"))

    manifests = [loads(ctx.store.get(ctx.inbox, batch.manifest_key)[0]) for batch in (first, second)]
    pointer = ctx.records.get(ControlKeys.gateway_key("acme"), GatewayKey)
    assert pointer is not None
    assert [m.key_id for m in manifests] == [pointer.key_id, pointer.key_id]
    keys = [ctx.records.get(key, SigningKey) for key in control_keys(ctx, "signing-keys/")]
    assert sorted((k.key_id == pointer.key_id, k.revoked_at is None) for k in keys) == [(False, False), (True, True)]
    loser = next(k for k in keys if k.key_id != pointer.key_id)
    assert [e["key_id"] for e in audit_events(ctx, "signing_key.revoked")] == [loser.key_id]
    assert len(audit_events(ctx, "signing_key.created")) == 2
    assert sorted(e["batch_id"] for e in audit_events(ctx, "batch.submitted")) == sorted([first.id, second.id])

    Watcher(ctx).run_once()
    for batch in (first, second):
        admitted = ctx.batches.get("acme", batch.id)
        assert admitted.status == BatchStatus.IN_PROGRESS, admitted.errors
