"""Every reason a drop-box job is refused, end to end over moto and the `aws` CLI.

Each one leaves a readable ``rejection.json`` next to the manifest, a failed batch
record with ``errors``, and nothing queued or run.
"""

from __future__ import annotations

import json

import pytest
from helpers import Tamper, make_jsonl, make_line, make_tenant

from dropbatch.engine.echo import EchoEngine
from dropbatch.models import BatchStatus
from dropbatch.storage.keys import JobRef
from runner.service import Runner
from watcher.admission import RUN_AGAIN
from watcher.service import Watcher

pytestmark = pytest.mark.integration


@pytest.fixture
def ctx(make_settings, make_context):
    return make_context(make_settings())


def assert_rejected(
    ctx, aws, ref: JobRef, code: str, *, error_codes: list[str] | None = None, engine_lines: int = 0
) -> dict:
    """Admit what is in the inbox, then check ``ref`` was refused with ``code`` and nothing of it ran.

    ``error_codes``: the record's ``errors.data`` codes (default: just ``code``);
    ``engine_lines``: lines of other, valid jobs in the inbox that do run.
    """
    Watcher(ctx).run_once()
    rejection = json.loads(aws.read(ctx.inbox, ref.rejection_key))
    record = ctx.batches.for_job(ref)
    assert rejection["code"] == code
    assert isinstance(rejection["reason"], str) and rejection["reason"].endswith(RUN_AGAIN)
    assert (rejection["tenant"], rejection["job"], rejection["batch_id"]) == (ref.tenant, ref.job, record.id)
    assert record.status is BatchStatus.FAILED
    assert record.failed_at is not None
    assert record.errors is not None
    assert [error.code for error in record.errors.data] == (error_codes or [code])
    assert rejection["errors"] == [error.model_dump() for error in record.errors.data]
    assert record.id not in [entry.batch_id for entry in ctx.queue.entries()]

    engine = EchoEngine(ctx.store, ctx.settings)
    Runner(ctx, engine).run_once()
    assert sum(engine.runs) == engine_lines
    record = ctx.batches.for_job(ref)
    assert record.status is BatchStatus.FAILED
    assert record.request_counts.completed == 0 and record.output_file_id is None
    return rejection


@pytest.mark.parametrize(
    ("tamper", "code"),
    [
        (Tamper.INPUT_BYTE, "input_mismatch"),
        (Tamper.MANIFEST_BYTE, "bad_signature"),  # a nonce character edited in the file: still canonical
        (Tamper.MANIFEST_FIELD, "bad_signature"),  # metadata changed, re-serialized canonically
        (Tamper.MANIFEST_WHITESPACE, "manifest_not_canonical"),  # any other edit of the file
    ],
)
def test_changed_after_signing_is_rejected(tamper, code, ctx, drop_job, aws):
    _, key = make_tenant(ctx, "acme")
    ref = drop_job(ctx, key, make_jsonl(5), tamper=tamper)
    assert_rejected(ctx, aws, ref, code)


@pytest.mark.parametrize("target", ["other_tenant", "other_job"])
def test_manifest_under_another_prefix_is_rejected(target, ctx, drop_job, aws):
    make_tenant(ctx, "acme")
    _, globex = make_tenant(ctx, "globex")
    upload_to = JobRef("acme", "job-1") if target == "other_tenant" else JobRef("globex", "job-2")
    ref = drop_job(ctx, globex, make_jsonl(5), job="job-1", upload_to=upload_to)
    assert ref == upload_to
    rejection = assert_rejected(ctx, aws, ref, "prefix_mismatch")
    assert "globex/job-1" in rejection["reason"]


@pytest.mark.parametrize("which", ["nonexistent", "another_tenants"])
def test_unknown_signing_key_is_rejected(which, ctx, drop_job, aws):
    _, key = make_tenant(ctx, "acme")
    _, globex = make_tenant(ctx, "globex")
    if which == "nonexistent":
        ref = drop_job(ctx, key, make_jsonl(5), key_id="key_00000000deadbeef", secret="not-a-real-secret")
    else:
        ref = drop_job(ctx, key, make_jsonl(5), key_id=globex.key_id, secret=globex.secret)
    assert_rejected(ctx, aws, ref, "unknown_key")


def test_key_revoked_after_upload_is_rejected(ctx, drop_job, aws):
    _, key = make_tenant(ctx, "acme")
    ref = drop_job(ctx, key, make_jsonl(5))
    ctx.tenants.revoke_signing_key(key.key_id)
    assert_rejected(ctx, aws, ref, "revoked_key")


def test_replayed_nonce_is_rejected(ctx, drop_job, aws):
    _, key = make_tenant(ctx, "acme")
    nonce = "replayed-nonce-0001"
    first = drop_job(ctx, key, make_jsonl(5), job="first", nonce=nonce)
    Watcher(ctx).run_once()
    assert ctx.batches.for_job(first).status is BatchStatus.IN_PROGRESS
    replay = drop_job(ctx, key, make_jsonl(5), job="replay", nonce=nonce)
    assert_rejected(ctx, aws, replay, "replayed_nonce", engine_lines=5)
    assert ctx.batches.for_job(first).status is BatchStatus.COMPLETED


def test_a_manifest_that_came_before_its_input_runs_once_newly_signed(ctx, drop_job, aws):
    _, key = make_tenant(ctx, "acme")
    ref = drop_job(ctx, key, make_jsonl(5))
    input_key, manifest = f"{ref.prefix}input.jsonl", ctx.store.get(ctx.inbox, ref.manifest_key)[0]
    data = ctx.store.get(ctx.inbox, input_key)[0]
    ctx.store.delete(ctx.inbox, input_key)  # as if the manifest was uploaded first
    rejected = assert_rejected(ctx, aws, ref, "missing_input")

    ctx.store.put(ctx.inbox, input_key, data)
    ctx.store.put(ctx.inbox, ref.manifest_key, manifest)  # the same manifest again: the same batch
    Watcher(ctx).run_once()
    assert ctx.batches.for_job(ref).id == rejected["batch_id"]
    assert ctx.batches.for_job(ref).status is BatchStatus.FAILED

    drop_job(ctx, key, make_jsonl(5))  # what the rejection says to do: a newly signed manifest
    Watcher(ctx).run_once()
    Runner(ctx, EchoEngine(ctx.store, ctx.settings)).run_once()
    record = ctx.batches.for_job(ref)
    assert record.id != rejected["batch_id"] and record.status is BatchStatus.COMPLETED


def test_batch_over_the_free_tier_hourly_quota_is_rejected(ctx, drop_job, aws):
    _, key = make_tenant(ctx, "freeloader", tier="free")
    limit = ctx.settings.limits.tier_quotas["free"]
    ref = drop_job(ctx, key, make_jsonl(limit + 1))
    rejection = assert_rejected(ctx, aws, ref, "quota_exceeded")
    assert str(limit) in rejection["reason"]
    assert ctx.quotas.usage("freeloader", "free") == (0, limit)


def test_batch_past_what_is_left_of_the_hour_is_rejected(make_settings, make_context, drop_job, aws):
    ctx = make_context(make_settings(DROPBATCH_TIER_QUOTAS="free=10"))
    _, key = make_tenant(ctx, "acme", tier="free")
    first = drop_job(ctx, key, make_jsonl(6), job="first")
    second = drop_job(ctx, key, make_jsonl(6, prefix="more"), job="second")
    assert_rejected(ctx, aws, second, "quota_exceeded", engine_lines=6)
    assert ctx.batches.for_job(first).status is BatchStatus.COMPLETED
    assert ctx.quotas.usage("acme", "free") == (6, 10)


def test_invalid_lines_fail_validation_naming_them(ctx, drop_job, aws):
    _, key = make_tenant(ctx, "acme")
    lines = make_jsonl(4)
    lines[1] = make_line("req-1", model="some-other-model")
    lines[3] = make_line("req-0")
    ref = drop_job(ctx, key, lines)
    rejection = assert_rejected(
        ctx, aws, ref, "invalid_input", error_codes=["mismatched_model", "duplicate_custom_id"]
    )
    assert [error["line"] for error in rejection["errors"]] == [2, 4]
