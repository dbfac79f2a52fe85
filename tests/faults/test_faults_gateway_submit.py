"""Batch creation on the gateway's event loop when S3 refuses the manifest, or answers late.

The record is written before the manifest (so the watcher keeps its input file and
metadata); when the manifest cannot be written no watcher will ever look at the
record, so the gateway fails it with ``submit_failed`` and the client gets the error.
The checks of one creation are awaited together; a late read never changes which
error the client gets (the first check's, as when they ran one after another).
"""

from __future__ import annotations

import asyncio
import json

import pytest
from helpers import audit_events, make_jsonl
from proxy import DenyRule, FaultPlan, TargetedFault

from dropbatch.context import Context
from dropbatch.errors import InvalidRequest, NotFound, ObjectNotFound, StorageError
from dropbatch.models import BatchStatus
from gateway.app import create_app
from gateway.batches import create
from gateway.files import store_upload
from gateway.schemas import BatchCreate
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


def _proxied_gateway(make_context, start_proxy, plan: FaultPlan):
    direct = make_context()
    direct.tenants.create("acme", "basic")  # not a priority tier: completion_window '1h' is refused
    proxy = start_proxy(plan)
    settings = direct.settings.with_endpoint(proxy.url)
    return direct, proxy, create_app(settings, ctx=Context.from_settings(settings)).state.gateway


def test_the_first_failing_check_answers_however_late_its_read_returns(make_context, start_proxy):
    # The tier read (the window check) is held back, so the model check fails first in time;
    # the answer is still the window's 400, as when the checks ran one by one.
    plan = FaultPlan(delay_seconds=0.5, targeted=[TargetedFault("delay", r"tenants/acme\.json$", method="GET")])
    direct, proxy, gw = _proxied_gateway(make_context, start_proxy, plan)
    data = b"".join(json.dumps(line).encode() + b"\n" for line in make_jsonl(2, model="gpt-4o"))

    async def chunks():
        yield data

    async def submit() -> None:
        try:
            file = await store_upload(gw, "acme", chunks(), filename="input.jsonl")
            await submit_batch(gw, "acme", file, endpoint=CHAT, metadata=None, completion_window="1h")
        finally:
            await gw.store.close()

    with pytest.raises(InvalidRequest) as refused:
        asyncio.run(submit())

    assert (refused.value.code, refused.value.param) == ("completion_window_not_allowed", "completion_window")
    assert not isinstance(refused.value, BaseExceptionGroup)
    assert proxy.faults().get("delay") == 1
    assert direct.batches.list("acme")[0] == []
    # A failed submission never creates the tenant's signing key (that writes and audits).
    assert audit_events(direct, "signing_key.created") == []


def test_a_missing_input_file_is_a_404_before_a_refused_window(make_context, start_proxy):
    plan = FaultPlan(delay_seconds=0.5, targeted=[TargetedFault("delay", r"/files/", method="GET")])
    direct, proxy, gw = _proxied_gateway(make_context, start_proxy, plan)
    body = BatchCreate(input_file_id="file-nosuchfile", endpoint=CHAT, completion_window="1h")

    async def submit() -> None:
        try:
            await create(gw, "acme", body)
        finally:
            await gw.store.close()

    with pytest.raises(NotFound) as missing:
        asyncio.run(submit())

    assert missing.value.message == "No such File object: file-nosuchfile"
    assert proxy.faults().get("delay") == 1
    assert direct.batches.list("acme")[0] == []
