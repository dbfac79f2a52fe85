"""Admission over the memory store: verify, validate, plan, queue — or reject readably."""

from __future__ import annotations

import hashlib
import json
from typing import Any

import pytest

from dropbatch.engine.echo import EchoEngine
from dropbatch.errors import ObjectNotFound
from dropbatch.models import BatchStatus
from dropbatch.queues import Manifested, manifests_in_message
from dropbatch.storage.keys import ControlKeys, JobRef
from runner.service import Runner
from watcher import scan
from watcher.admission import admit_manifest
from watcher.service import Watcher


def rejection(ctx, ref: JobRef) -> dict[str, Any]:
    data, _ = ctx.store.get(ctx.inbox, ref.rejection_key)
    return json.loads(data)


def queued(ctx) -> list[str]:
    return [e.batch_id for e in ctx.queue.entries()]


def test_happy_path_plans_chunks_that_tile_the_file(make_context, make_tenant, make_jsonl, drop_job) -> None:
    ctx = make_context(DROPBATCH_CHUNK_LINES=3)
    _, key = make_tenant(ctx, "acme", "basic")
    data = make_jsonl(10)
    # A blank line in the middle and at the end are counted but are not requests.
    lines = data.split(b"\n")
    data = b"\n".join(lines[:4] + [b"   "] + lines[4:]) + b"\n"
    job = drop_job(ctx, "acme", "j1", data, key=key)

    record = admit_manifest(ctx, job.ref)

    assert record is not None
    assert record.status == BatchStatus.IN_PROGRESS
    assert (record.tenant, record.job, record.endpoint, record.model) == ("acme", "j1", "/v1/chat/completions", "dropbatch-tiny")
    assert record.request_counts.total == 10
    assert record.in_progress_at is not None and record.expires_at == record.created_at + 86_400
    assert record.content_sha256 and record.result is not None
    assert record.result.output_key == f"acme/{record.content_sha256}/output.jsonl"
    assert record.input_file_id.startswith("file-")
    assert ctx.files.get("acme", record.input_file_id).key == job.input_key
    assert queued(ctx) == [record.id]
    assert ctx.batches.for_job(job.ref).id == record.id
    assert ctx.quotas.usage("acme", "basic") == (10, 500)
    with pytest.raises(ObjectNotFound):
        ctx.store.head(ctx.inbox, job.ref.rejection_key)

    chunks = record.chunks
    assert len(chunks) == 4 and [c.lines for c in chunks] == [3, 3, 3, 1]
    assert [c.index for c in chunks] == [0, 1, 2, 3]
    assert chunks[0].start == 0 and chunks[-1].end == len(data)
    for before, after in zip(chunks, chunks[1:], strict=False):
        assert before.end == after.start
    for c in chunks:
        piece = data[c.start : c.end]
        assert hashlib.sha256(piece).hexdigest() == c.sha256
        assert c.first_line == data[: c.start].count(b"\n") + 1
        assert sum(1 for line in piece.split(b"\n") if line.strip()) == c.lines


def test_multiple_inputs_are_planned_separately(make_context, make_tenant, make_jsonl, drop_job, tmp_path) -> None:
    from manifests import build_manifest, dumps, sign

    ctx = make_context(DROPBATCH_CHUNK_LINES=2)
    _, key = make_tenant(ctx)
    first, second = make_jsonl(3, custom_id=lambda i: f"a{i}"), make_jsonl(2, custom_id=lambda i: f"b{i}")
    paths = []
    for name, data in (("a.jsonl", first), ("b.jsonl", second)):
        (tmp_path / name).write_bytes(data)
        ctx.store.put(ctx.inbox, f"acme/multi/{name}", data)
        paths.append(tmp_path / name)
    manifest = build_manifest(
        paths, tenant="acme", job="multi", key_id=key.key_id, endpoint="/v1/chat/completions",
        model="dropbatch-tiny", created_at=int(ctx.clock()),
    )
    ctx.store.put(ctx.inbox, "acme/multi/manifest.json", dumps(sign(manifest, key.secret)))
    record = admit_manifest(ctx, JobRef("acme", "multi"))
    assert record is not None and record.status == BatchStatus.IN_PROGRESS
    assert [(c.input, c.lines) for c in record.chunks] == [(0, 2), (0, 1), (1, 2)]
    assert record.request_counts.total == 5


def _rewrite(data: bytes, **fields: Any) -> bytes:
    """The manifest file with fields changed, still in the canonical layout."""
    return (json.dumps({**json.loads(data), **fields}, sort_keys=True, indent=2) + "\n").encode()


def _bad_line(i: int, body: dict[str, Any]) -> dict[str, Any]:
    return {"model": "dropbatch-tiny", "messages": "not a list"} if i in (1, 4) else body


# name: (env, setup kwargs, expected rejection code, expected errors[].code, expected errors[].line)
REJECTIONS: dict[str, dict[str, Any]] = {
    "bad_signature": {"drop": {"secret": "not-the-key"}, "code": "bad_signature"},
    "bad_signature_byte": {
        "drop": {"tamper": lambda b: b.replace(b'"created_at": 17', b'"created_at": 27')},
        "code": "bad_signature",
    },
    "not_canonical": {"drop": {"tamper": lambda b: b.replace(b"\n}", b"\n }")}, "code": "manifest_not_canonical"},
    "not_json": {"drop": {"tamper": lambda b: b"{oops"}, "code": "invalid_manifest"},
    "unsigned": {"drop": {"tamper": lambda b: _rewrite(b, signature=None)}, "code": "unsigned_manifest"},
    "extra_field": {"drop": {"tamper": lambda b: _rewrite(b, priority="high")}, "code": "invalid_manifest"},
    "traversal_in_job": {"drop": {"tamper": lambda b: _rewrite(b, job="../j1")}, "code": "invalid_manifest"},
    "traversal_in_tenant": {"drop": {"tamper": lambda b: _rewrite(b, tenant="..")}, "code": "invalid_manifest"},
    "input_mismatch": {"drop": {"uploaded_input": "FLIP"}, "code": "input_mismatch"},
    "input_truncated": {"drop": {"uploaded_input": "TRUNCATE"}, "code": "input_mismatch"},
    "unknown_key": {"drop": {"manifest_fields": {"key_id": "key_00000000deadbeef"}}, "code": "unknown_key"},
    "model_not_found": {"drop": {"model": "gpt-4o"}, "lines": {"model": "gpt-4o"}, "code": "model_not_found"},
    "invalid_input": {
        "lines": {"body": _bad_line},
        "code": "invalid_input",
        "errors": [("invalid_body", 2), ("invalid_body", 5)],
    },
    "duplicate_custom_id": {
        "lines": {"custom_id": lambda i: "same" if i in (0, 3) else f"c{i}"},
        "code": "invalid_input",
        "errors": [("duplicate_custom_id", 4)],
    },
    "mismatched_endpoint": {
        "lines": {"url": "/v1/completions"},
        "code": "invalid_input",
        "errors": [("mismatched_endpoint", n) for n in range(1, 7)],
    },
    "empty_file": {"data": b"", "code": "invalid_input", "errors": [("empty_file", None)]},
    "blank_file": {"data": b"\n  \n\n", "code": "invalid_input", "errors": [("empty_file", None)]},
    "too_many_requests": {
        "env": {"DROPBATCH_MAX_FILE_LINES": 4},
        "code": "invalid_input",
        "errors": [("too_many_requests", 5)],
    },
    "file_too_large": {"env": {"DROPBATCH_MAX_FILE_BYTES": 100}, "code": "file_too_large"},
    "line_too_long": {
        "env": {"DROPBATCH_MAX_LINE_BYTES": 200},
        "lines": {"words": 1, "body": lambda i, b: {**b, "user": "u" * 200} if i == 2 else b},
        "code": "invalid_input",
        "errors": [("line_too_long", 3)],
    },
    "quota_exceeded": {"env": {"DROPBATCH_TIER_QUOTAS": "basic=5"}, "code": "quota_exceeded"},
}


@pytest.mark.parametrize("case", sorted(REJECTIONS))
def test_rejections_are_readable_and_nothing_runs(case, make_context, make_tenant, make_jsonl, drop_job) -> None:
    spec = REJECTIONS[case]
    ctx = make_context(**spec.get("env", {}))
    _, key = make_tenant(ctx, "acme", "basic")
    data = spec["data"] if "data" in spec else make_jsonl(6, **spec.get("lines", {}))
    drop = dict(spec.get("drop", {}))
    if drop.get("uploaded_input") == "FLIP":
        drop["uploaded_input"] = data.replace(b"w3_0", b"w3_1", 1)
    elif drop.get("uploaded_input") == "TRUNCATE":
        drop["uploaded_input"] = data[:-1]
    job = drop_job(ctx, "acme", "j1", data, key=key, **drop)

    assert Watcher(ctx).run_once() == 1  # handled: not left for an endless retry
    record = ctx.batches.for_job(job.ref)

    assert record.status == BatchStatus.FAILED
    assert record.failed_at is not None and record.in_progress_at is None
    assert record.errors is not None and record.errors.data
    body = rejection(ctx, job.ref)
    assert body["code"] == spec["code"]
    assert body["reason"] and body["batch_id"] == record.id
    assert (body["tenant"], body["job"]) == ("acme", "j1")
    assert body["errors"] == [e.model_dump() for e in record.errors.data]
    if "errors" in spec:
        assert [(e.code, e.line) for e in record.errors.data] == spec["errors"]
    else:
        assert [e.code for e in record.errors.data] == [spec["code"]]
    assert queued(ctx) == []
    assert list(ctx.store.list(ctx.outbox)) == []
    if spec["code"] != "quota_exceeded":
        assert ctx.quotas.usage("acme", "basic")[0] == 0


def test_a_batch_past_the_hours_quota_is_refused_without_reading_the_rest(
    make_context, make_tenant, make_jsonl, drop_job, monkeypatch
) -> None:
    """The quota decides while the lines are read: a batch that cannot fit stops being read there.

    Else a tenant with no quota left could make the watcher read and validate any number of
    200 MB batches (a free token makes 60 a minute from one upload), every other tenant's admissions waiting.
    """
    ctx = make_context(DROPBATCH_TIER_QUOTAS="basic=10")
    _, key = make_tenant(ctx, "acme", "basic")
    parsed = 0
    parse = scan.parse_request_line

    def counted(*args: Any, **kwargs: Any) -> Any:
        nonlocal parsed
        parsed += 1
        return parse(*args, **kwargs)

    monkeypatch.setattr(scan, "parse_request_line", counted)
    job = drop_job(ctx, "acme", "j1", make_jsonl(2000), key=key)
    record = admit_manifest(ctx, job.ref)
    assert record is not None and record.status == BatchStatus.FAILED
    assert [e.code for e in record.errors.data] == ["quota_exceeded"]
    assert "at least 11 requests" in record.errors.data[0].message
    assert parsed == 11  # the first line past the 10 left
    assert ctx.quotas.usage("acme", "basic") == (0, 10)

    # What fits is admitted and spends the hour; then nothing is left, and one line is read.
    assert admit_manifest(ctx, drop_job(ctx, "acme", "j2", make_jsonl(10), key=key).ref).status == BatchStatus.IN_PROGRESS
    parsed = 0
    record = admit_manifest(ctx, drop_job(ctx, "acme", "j3", make_jsonl(5), key=key).ref)
    assert [e.code for e in record.errors.data] == ["quota_exceeded"] and parsed == 1


def test_work_done_before_is_answered_from_the_outbox_with_the_hour_used_up(
    make_context, make_tenant, make_jsonl, drop_job
) -> None:
    ctx = make_context(DROPBATCH_TIER_QUOTAS="basic=4")
    _, key = make_tenant(ctx, "acme", "basic")
    data = make_jsonl(4, body=lambda i, b: {**b, "temperature": 0})
    first = admit_manifest(ctx, drop_job(ctx, "acme", "j1", data, key=key).ref)
    Runner(ctx, EchoEngine(ctx.store, ctx.settings)).run_once()
    assert ctx.batches.get("acme", first.id).status == BatchStatus.COMPLETED
    assert ctx.quotas.usage("acme", "basic") == (4, 4)
    again = admit_manifest(ctx, drop_job(ctx, "acme", "j2", data, key=key).ref)
    assert again is not None and again.status == BatchStatus.COMPLETED and again.cached


def test_rejection_lists_line_numbers_in_the_record(make_context, make_tenant, make_jsonl, drop_job) -> None:
    ctx = make_context()
    _, key = make_tenant(ctx)
    data = make_jsonl(3) + b"not json\n" + make_jsonl(1, custom_id=lambda i: "last", url="/v1/embeddings")
    job = drop_job(ctx, "acme", "j1", data, key=key)
    record = admit_manifest(ctx, job.ref)
    assert record is not None
    assert [(e.code, e.line) for e in record.errors.data] == [("invalid_json_line", 4), ("mismatched_endpoint", 5)]
    assert all(str(e.line) in e.message for e in record.errors.data)


def test_many_errors_are_capped(make_context, make_tenant, make_jsonl, drop_job) -> None:
    ctx = make_context()
    _, key = make_tenant(ctx)
    job = drop_job(ctx, "acme", "j1", b"x\n" * 150, key=key)
    record = admit_manifest(ctx, job.ref)
    assert record is not None and record.errors is not None
    assert len(record.errors.data) == 101
    assert record.errors.data[-1].code == "too_many_errors" and "50" in record.errors.data[-1].message


def test_revoked_key(make_context, make_tenant, make_jsonl, drop_job) -> None:
    ctx = make_context()
    _, key = make_tenant(ctx)
    job = drop_job(ctx, "acme", "j1", make_jsonl(2), key=key)
    ctx.tenants.revoke_signing_key(key.key_id)
    record = admit_manifest(ctx, job.ref)
    assert record is not None and record.status == BatchStatus.FAILED
    assert rejection(ctx, job.ref)["code"] == "revoked_key"
    assert queued(ctx) == []


def test_key_of_another_tenant_is_unknown(make_context, make_tenant, make_jsonl, drop_job) -> None:
    ctx = make_context()
    make_tenant(ctx, "acme")
    _, other_key = make_tenant(ctx, "other")
    job = drop_job(ctx, "acme", "j1", make_jsonl(2), key=other_key)
    record = admit_manifest(ctx, job.ref)
    assert record is not None and record.status == BatchStatus.FAILED
    assert rejection(ctx, job.ref)["code"] == "unknown_key"


def test_unknown_tenant(make_context, make_tenant, make_jsonl, drop_job) -> None:
    ctx = make_context()
    _, key = make_tenant(ctx, "acme")
    job = drop_job(ctx, "ghost", "j1", make_jsonl(2), key=key)
    record = admit_manifest(ctx, job.ref)
    assert record is not None and record.status == BatchStatus.FAILED
    assert rejection(ctx, job.ref)["code"] == "unknown_tenant"
    assert queued(ctx) == []


@pytest.mark.parametrize("at", [("acme", "j1"), ("acme", "other-job")], ids=["other-tenant", "other-job"])
def test_prefix_mismatch(at, make_context, make_tenant, make_jsonl, drop_job) -> None:
    """A manifest for tenant B (or another job) uploaded under acme/j1 never runs."""
    ctx = make_context()
    make_tenant(ctx, "acme")
    _, b_key = make_tenant(ctx, "bravo")
    tenant, job_name = ("bravo", "j1") if at == ("acme", "j1") else ("acme", "j1")
    key = b_key if tenant == "bravo" else ctx.tenants.create_signing_key("acme")
    job = drop_job(ctx, tenant, job_name, make_jsonl(2), key=key, at=at)
    record = admit_manifest(ctx, job.ref)
    assert record is not None and record.status == BatchStatus.FAILED
    assert record.tenant == "acme"
    assert rejection(ctx, job.ref)["code"] == "prefix_mismatch"
    assert queued(ctx) == []


def test_replayed_nonce(make_context, make_tenant, make_jsonl, drop_job) -> None:
    ctx = make_context()
    _, key = make_tenant(ctx)
    first = drop_job(ctx, "acme", "j1", make_jsonl(2), key=key)
    assert admit_manifest(ctx, first.ref).status == BatchStatus.IN_PROGRESS
    replay = drop_job(ctx, "acme", "j2", make_jsonl(3), key=key, manifest_fields={"nonce": first.manifest.nonce})
    record = admit_manifest(ctx, replay.ref)
    assert record is not None and record.status == BatchStatus.FAILED
    assert rejection(ctx, replay.ref)["code"] == "replayed_nonce"
    assert len(queued(ctx)) == 1
    # The same job re-signed with the old nonce but different metadata is a replay too.
    again = drop_job(ctx, "acme", "j3", make_jsonl(2), key=key, manifest_fields={"nonce": first.manifest.nonce, "metadata": {"x": "y"}})
    record = admit_manifest(ctx, again.ref)
    assert record is not None and record.status == BatchStatus.FAILED
    assert rejection(ctx, again.ref)["code"] == "replayed_nonce"


def test_duplicate_upload_of_the_same_bytes_is_not_a_replay(make_context, make_tenant, make_jsonl, drop_job) -> None:
    ctx = make_context()
    _, key = make_tenant(ctx)
    job = drop_job(ctx, "acme", "j1", make_jsonl(4), key=key)
    first = admit_manifest(ctx, job.ref)
    ctx.store.put(ctx.inbox, job.ref.manifest_key, job.manifest_bytes)  # a second PUT, a second event
    second = admit_manifest(ctx, job.ref)
    assert first is not None and second is not None
    assert second.id == first.id and second.status == BatchStatus.IN_PROGRESS
    assert queued(ctx) == [first.id]


def test_admit_twice_is_one_batch(make_context, make_tenant, make_jsonl, drop_job) -> None:
    ctx = make_context()
    _, key = make_tenant(ctx)
    job = drop_job(ctx, "acme", "j1", make_jsonl(4), key=key)
    records = [admit_manifest(ctx, job.ref) for _ in range(3)]
    assert len({r.id for r in records}) == 1
    assert queued(ctx) == [records[0].id]
    assert len(ctx.batches.list("acme")[0]) == 1
    assert ctx.quotas.usage("acme", "basic")[0] == 4
    assert Watcher(ctx).run_once() == 1 and Watcher(ctx).run_once() == 1
    assert queued(ctx) == [records[0].id]
    assert len(ctx.batches.list("acme")[0]) == 1


def test_run_once_skips_what_it_handled(make_context, make_tenant, make_jsonl, drop_job) -> None:
    ctx = make_context()
    _, key = make_tenant(ctx)
    drop_job(ctx, "acme", "j1", make_jsonl(2), key=key)
    drop_job(ctx, "acme", "j2", make_jsonl(2), key=key)
    ctx.store.put(ctx.inbox, "acme/j3/input.jsonl", b"no manifest yet\n")
    watcher = Watcher(ctx)
    assert watcher.run_once() == 2
    assert watcher.run_once() == 0
    assert len(queued(ctx)) == 2


def test_the_sweep_remembers_only_what_the_inbox_holds(make_context, make_tenant, make_jsonl, drop_job) -> None:
    ctx = make_context()
    _, key = make_tenant(ctx)
    drop_job(ctx, "acme", "j1", make_jsonl(2), key=key)
    drop_job(ctx, "acme", "j2", make_jsonl(2), key=key)
    watcher = Watcher(ctx)
    assert watcher.sweep() == 2
    ctx.store.delete(ctx.inbox, "acme/j1/manifest.json")
    assert watcher.sweep() == 0
    assert [key for key, _ in watcher._seen] == ["acme/j2/manifest.json"]  # a long-lived watcher does not grow


def test_rejection_is_stable_on_repeat(make_context, make_tenant, make_jsonl, drop_job) -> None:
    ctx = make_context()
    _, key = make_tenant(ctx)
    job = drop_job(ctx, "acme", "j1", make_jsonl(2), key=key, secret="wrong")
    first = admit_manifest(ctx, job.ref)
    ctx.store.delete(ctx.inbox, job.ref.rejection_key)  # crashed before writing it
    second = admit_manifest(ctx, job.ref)
    assert first.id == second.id and second.status == BatchStatus.FAILED
    assert second.failed_at == first.failed_at
    assert rejection(ctx, job.ref)["code"] == "bad_signature"


def test_crash_after_admission_is_re_enqueued(make_context, make_tenant, make_jsonl, drop_job) -> None:
    ctx = make_context()
    _, key = make_tenant(ctx)
    job = drop_job(ctx, "acme", "j1", make_jsonl(3), key=key)
    record = admit_manifest(ctx, job.ref)
    assert record is not None
    for info in ctx.store.list(ctx.records.bucket, ControlKeys.QUEUE_PREFIX):
        ctx.store.delete(ctx.records.bucket, info.key)  # the queue write was lost
    assert queued(ctx) == []
    assert Watcher(ctx).run_once() == 1
    assert queued(ctx) == [record.id]
    assert ctx.quotas.usage("acme", "basic")[0] == 3  # reserved once, not twice


def test_crash_while_validating_resumes(make_context, make_tenant, make_jsonl, drop_job) -> None:
    """A record left in `validating` (watcher died mid-admission) is carried forward, not duplicated."""
    ctx = make_context()
    _, key = make_tenant(ctx)
    job = drop_job(ctx, "acme", "j1", make_jsonl(3), key=key)
    record = admit_manifest(ctx, job.ref)
    ctx.batches.update("acme", record.id, lambda b: setattr(b, "status", BatchStatus.VALIDATING))
    for info in list(ctx.store.list(ctx.records.bucket, ControlKeys.QUEUE_PREFIX)):
        ctx.store.delete(ctx.records.bucket, info.key)
    again = admit_manifest(ctx, job.ref)
    assert again is not None and again.id == record.id and again.status == BatchStatus.IN_PROGRESS
    assert queued(ctx) == [record.id]
    assert ctx.quotas.usage("acme", "basic")[0] == 3


def test_deleted_manifest_is_ignored(make_context) -> None:
    ctx = make_context()
    assert admit_manifest(ctx, JobRef("acme", "gone")) is None


def test_sqs_event_bodies() -> None:
    event = {
        "Records": [
            {"s3": {"bucket": {"name": "dropbatch-inbox"}, "object": {"key": "acme/j%2B1/manifest.json",
                                                                     "eTag": "0123abcd"}}},
            {"s3": {"bucket": {"name": "dropbatch-inbox"}, "object": {"key": "acme/j2/manifest.json"}}},
            {"s3": {"bucket": {"name": "dropbatch-inbox"}, "object": {"key": "acme/j1/input.jsonl"}}},
            {"s3": {"bucket": {"name": "elsewhere"}, "object": {"key": "acme/j2/manifest.json"}}},
        ]
    }
    assert manifests_in_message(json.dumps(event), "dropbatch-inbox") == [
        Manifested("acme/j+1/manifest.json", "0123abcd"), Manifested("acme/j2/manifest.json", None)]
    assert manifests_in_message("not json", "dropbatch-inbox") == []
    assert manifests_in_message('{"Event": "s3:TestEvent"}', "dropbatch-inbox") == []
    assert manifests_in_message("[]", "dropbatch-inbox") == []
