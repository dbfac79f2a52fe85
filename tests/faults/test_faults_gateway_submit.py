"""Batch creation on the gateway's event loop when S3 refuses the manifest.

The record is written before the manifest (so the watcher keeps its input file and
metadata); when the manifest cannot be written no watcher will ever look at the
record, so the gateway fails it with ``submit_failed`` and the client gets the error.
"""

from __future__ import annotations

import asyncio
import json

import pytest
from helpers import audit_events, make_jsonl
from proxy import DenyRule, FaultPlan

from dropbatch.context import Context
from dropbatch.errors import ObjectNotFound, StorageError
from dropbatch.models import BatchStatus
from gateway.app import create_app
from gateway.files import store_upload
from gateway.submit import submit_batch

pytestmark = pytest.mark.integration

CHAT = "/v1/chat/completions"


def test_a_refused_manifest_fails_the_batch_it_was_for(make_context, start_proxy):
    direct = make_context()
    direct.tenants.create("acme", "basic")
    proxy = start_proxy(FaultPlan())
    settings = direct.settings.with_endpoint(proxy.url)
    gw = create_app(settings, ctx=Context.from_settings(settings)).state.gateway
    data = b"".join(json.dumps(line).encode() + b"\n" for line in make_jsonl(2))

    async def chunks():
        yield data

    async def submit() -> None:
        try:
            file = await store_upload(gw, "acme", chunks(), filename="input.jsonl")
            proxy.set(deny=[DenyRule(r"/manifest\.json$")])
            await submit_batch(gw, "acme", file, endpoint=CHAT, metadata={"k": "v"})
        finally:
            await gw.store.close()

    with pytest.raises(StorageError, match="AccessDenied"):
        asyncio.run(submit())

    (batch,), _ = direct.batches.list("acme")
    assert batch.status == BatchStatus.FAILED
    assert [e.code for e in batch.errors.data] == ["submit_failed"]
    assert batch.metadata == {"k": "v"}
    with pytest.raises(ObjectNotFound):
        direct.store.head(direct.inbox, batch.manifest_key)
    assert audit_events(direct, "batch.submitted") == []
