"""A permanent storage error (403 AccessDenied) is translated once and surfaced, never retried forever.

botocore does not retry a 403, so the proxy sees the denied request exactly once per
call; the store raises a plain ``StorageError`` (not ``StorageUnavailable``: waiting
would not fix it), and the watcher logs it and moves on to the other jobs.
"""

from __future__ import annotations

import pytest
from helpers import make_jsonl, make_tenant
from proxy import DenyRule, FaultPlan

from dropbatch.context import Context
from dropbatch.errors import NotFound, StorageError, StorageUnavailable
from dropbatch.models import BatchStatus
from dropbatch.storage.keys import JobRef
from watcher.service import Watcher

pytestmark = pytest.mark.integration

DENIED_JOB = "locked"


def test_access_denied_is_a_translated_storage_error(make_context, start_proxy):
    direct = make_context().settings
    proxy = start_proxy(FaultPlan(deny=[DenyRule(pattern=f"/{DENIED_JOB}/")]))
    ctx = Context.from_settings(direct.with_endpoint(proxy.url))
    key = f"acme/{DENIED_JOB}/input.jsonl"

    for call in (
        lambda: ctx.store.get(ctx.inbox, key),
        lambda: ctx.store.put(ctx.inbox, key, b"{}\n"),
        lambda: list(ctx.store.iter_bytes(ctx.inbox, key)),
    ):
        with pytest.raises(StorageError) as caught:
            call()
        assert not isinstance(caught.value, StorageUnavailable)
        assert "AccessDenied" in caught.value.message
        assert caught.value.to_openai()["error"]["code"] == "storage_error"
    with pytest.raises(StorageError) as caught:
        ctx.store.head(ctx.inbox, key)  # a HEAD error has no body: only the status code is known
    assert "403" in caught.value.message
    assert proxy.counts()["denied"] == 4  # one request per call: no retry storm


def test_watcher_surfaces_a_denied_job_and_admits_the_others(make_context, start_proxy, drop_job):
    direct = make_context().settings
    plain = Context.from_settings(direct)
    _, key = make_tenant(plain, "acme")
    denied = drop_job(plain, key, make_jsonl(3, prefix="d"), job=DENIED_JOB)
    allowed = drop_job(plain, key, make_jsonl(4, prefix="a"), job="open")

    proxy = start_proxy(FaultPlan(deny=[DenyRule(pattern=f"/{DENIED_JOB}/")]))
    ctx = Context.from_settings(direct.with_endpoint(proxy.url))
    watcher = Watcher(ctx)
    assert watcher.run_once() == 1  # the open job; the locked one failed and is retried later
    assert ctx.batches.for_job(allowed).status is BatchStatus.IN_PROGRESS
    assert _job_batch(plain, denied) is None
    denied_before = proxy.counts()["denied"]
    assert denied_before >= 1

    proxy.set(deny=[])  # the permission is fixed: the next sweep admits the job
    assert watcher.run_once() == 1
    assert ctx.batches.for_job(denied).status is BatchStatus.IN_PROGRESS
    assert proxy.counts()["denied"] == denied_before


def _job_batch(ctx: Context, ref: JobRef):
    try:
        return ctx.batches.for_job(ref)
    except NotFound:
        return None
