"""Scripted faults at the worst moment: the write landed but its answer was lost, or a body was cut.

botocore retries both kinds of failed call, but a retried conditional write then
meets its own first attempt (412), and a body cut after the call returned is read
outside botocore's retries. The caller must still see what really happened: its
write succeeded, its read returns the whole object.
"""

from __future__ import annotations

import pytest
from proxy import FaultPlan, TargetedFault

from dropbatch.context import Context
from dropbatch.errors import DropbatchError, ObjectNotFound
from dropbatch.storage.s3 import S3ObjectStore

pytestmark = pytest.mark.integration

BODY = b'{"hello": "world"}\n' * 1000


def _proxied(make_context, start_proxy, *targets: TargetedFault):
    direct = make_context().settings
    proxy = start_proxy(FaultPlan(targeted=list(targets)))
    return direct, proxy, direct.with_endpoint(proxy.url)


def test_create_whose_answer_was_lost_is_reported_as_created(make_context, start_proxy):
    direct, proxy, settings = _proxied(make_context, start_proxy, TargetedFault("reset_after", r"/new-key$", "PUT"))
    store = S3ObjectStore(settings.storage)
    bucket = settings.storage.control_bucket

    etag = store.put(bucket, "new-key", BODY, if_none_match=True)

    assert proxy.faults()["reset_after"] == 1
    assert S3ObjectStore(direct.storage).get(bucket, "new-key") == (BODY, etag)


def test_update_whose_answer_was_lost_is_reported_as_written(make_context, start_proxy):
    direct, proxy, settings = _proxied(make_context, start_proxy)
    store = S3ObjectStore(settings.storage)
    bucket = settings.storage.control_bucket
    first = store.put(bucket, "record", b"v1")
    proxy.set(targeted=[TargetedFault("reset_after", r"/record$", "PUT")])

    etag = store.put(bucket, "record", b"v2", if_match=first)

    assert proxy.faults()["reset_after"] == 1
    assert S3ObjectStore(direct.storage).get(bucket, "record") == (b"v2", etag)


@pytest.mark.parametrize("how", ["get", "iter_bytes"])
def test_body_cut_mid_response_is_read_again(how, make_context, start_proxy):
    _, proxy, settings = _proxied(make_context, start_proxy)
    store = S3ObjectStore(settings.storage)
    bucket = settings.storage.inbox_bucket
    store.put(bucket, "t/j/input.jsonl", BODY)
    proxy.set(targeted=[TargetedFault("reset_mid", r"/t/j/input\.jsonl$", "GET")])

    data = (
        store.get(bucket, "t/j/input.jsonl")[0]
        if how == "get"
        else b"".join(store.iter_bytes(bucket, "t/j/input.jsonl"))
    )

    assert proxy.faults()["reset_mid"] == 1
    assert data == BODY


def test_tenant_created_when_the_answer_was_lost_is_not_a_conflict(make_context, start_proxy):
    direct, proxy, settings = _proxied(
        make_context, start_proxy, TargetedFault("reset_after", r"/tenants/acme\.json$", "PUT")
    )
    ctx = Context.from_settings(settings)

    tenant = ctx.tenants.create("acme", "basic")  # today: Conflict "tenant 'acme' already exists"

    assert tenant.name == "acme"
    assert Context.from_settings(direct).tenants.get("acme").tier == "basic"


def test_token_whose_audit_answer_was_lost_is_still_handed_out(make_context, start_proxy):
    direct, proxy, settings = _proxied(make_context, start_proxy)
    ctx = Context.from_settings(settings)
    ctx.tenants.create("acme", "basic")
    proxy.set(targeted=[TargetedFault("reset_after", r"/audit/", "PUT")])

    # Today the audit append raises ObjectExists after the token was stored: a live token nobody was shown.
    issued = ctx.tokens.create("acme")

    assert Context.from_settings(direct).tokens.authenticate(issued.token).id == issued.record.id


def test_error_document_cut_mid_response_is_read_again(make_context, start_proxy):
    # botocore reads error documents itself, outside its retries; a cut one escapes as urllib3's ProtocolError.
    _, proxy, settings = _proxied(make_context, start_proxy, TargetedFault("reset_mid", r"/no-such-key$", "GET"))
    store = S3ObjectStore(settings.storage)

    with pytest.raises(ObjectNotFound):
        store.get(settings.storage.control_bucket, "no-such-key")

    assert proxy.faults()["reset_mid"] == 1


CALLS = {
    "head": lambda store, b: store.head(b, "k"),
    "get": lambda store, b: store.get(b, "k"),
    "get missing": lambda store, b: store.get(b, "missing"),
    "iter_bytes": lambda store, b: b"".join(store.iter_bytes(b, "k")),
    "put": lambda store, b: store.put(b, "k2", b"data"),
    "create taken": lambda store, b: store.put(b, "k", b"data", if_none_match=True),
    "update stale": lambda store, b: store.put(b, "k", b"data", if_match='"0"'),
    "list": lambda store, b: list(store.list(b)),
    "delete": lambda store, b: store.delete(b, "k2"),
    "copy": lambda store, b: store.copy(b, "k", b, "k3"),
}


@pytest.mark.parametrize("kind", ["reset_mid", "reset_after", "reset_before"])
@pytest.mark.parametrize("call", sorted(CALLS))
def test_a_cut_answer_never_escapes_the_error_tree(call, kind, make_context, start_proxy):
    _, proxy, settings = _proxied(make_context, start_proxy)
    store = S3ObjectStore(settings.storage)
    bucket = settings.storage.control_bucket
    store.put(bucket, "k", BODY)
    proxy.set(targeted=[TargetedFault(kind, r"/dropbatch-control")])

    try:
        CALLS[call](store, bucket)
    except DropbatchError:
        pass  # translated: callers and service loops handle these

    assert proxy.faults()[kind] == 1
