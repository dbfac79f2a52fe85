"""Completion windows and SLA-aware admission, on a simulated clock."""

from __future__ import annotations

from typing import Any

import pytest

from dropbatch.deadlines import Throughput, measured_throughput, projected_finish, publish_throughput
from dropbatch.engine.echo import EchoEngine
from dropbatch.models import BatchStatus
from dropbatch.observability.metrics import Metrics
from dropbatch.queue import QueueEntry
from dropbatch.storage.keys import ControlKeys
from runner.observe import observe_queue
from runner.service import Runner
from watcher.admission import admit_manifest
from watcher.service import Watcher


def deterministic(i: int, body: dict[str, Any]) -> dict[str, Any]:
    return {**body, "temperature": 0}


def test_priority_window_sets_a_one_hour_deadline_that_queues_first(make_context, make_tenant, make_jsonl, drop_job):
    ctx = make_context()
    _, key = make_tenant(ctx, "acme", "premium")
    slow = admit_manifest(ctx, drop_job(ctx, "acme", "slow", make_jsonl(3), key=key).ref)
    ctx.clock.advance(60)
    fast = admit_manifest(
        ctx, drop_job(ctx, "acme", "fast", make_jsonl(3), key=key, manifest_fields={"completion_window": "1h"}).ref
    )
    assert slow.completion_window == "24h" and slow.expires_at == slow.created_at + 86_400
    assert fast.status == BatchStatus.IN_PROGRESS
    assert fast.completion_window == "1h" and fast.expires_at == fast.created_at + 3_600
    assert fast.openai()["completion_window"] == "1h"
    entries = list(ctx.queue.entries())
    assert [e.batch_id for e in entries] == [fast.id, slow.id]  # earliest deadline first
    assert entries[0].deadline == fast.expires_at and entries[0].created_at == fast.created_at


def test_priority_window_is_refused_to_other_tiers_naming_the_field(make_context, make_tenant, make_jsonl, drop_job):
    ctx = make_context(DROPBATCH_PRIORITY_WINDOW_TIERS="enterprise")
    _, key = make_tenant(ctx, "acme", "premium")
    record = admit_manifest(
        ctx, drop_job(ctx, "acme", "j1", make_jsonl(2), key=key, manifest_fields={"completion_window": "1h"}).ref
    )
    assert record.status == BatchStatus.FAILED
    error = record.errors.data[0]
    assert (error.code, error.param) == ("completion_window_not_allowed", "completion_window")
    assert "enterprise" in error.message and "'premium'" in error.message
    assert list(ctx.queue.entries()) == []
    assert ctx.quotas.usage("acme", "premium")[0] == 0


def test_shortened_windows_are_a_setting(make_context, make_tenant, make_jsonl, drop_job):
    ctx = make_context(DROPBATCH_COMPLETION_WINDOWS="1h=30,24h=600")
    _, key = make_tenant(ctx, "acme", "enterprise")
    record = admit_manifest(
        ctx, drop_job(ctx, "acme", "j1", make_jsonl(2), key=key, manifest_fields={"completion_window": "1h"}).ref
    )
    assert record.expires_at == record.created_at + 30


def entry(batch_id: str, deadline: int, lines: int) -> QueueEntry:
    return QueueEntry(batch_id=batch_id, tenant="t", deadline=deadline, lines=lines, created_at=0)


def test_projection_counts_only_work_due_no_later() -> None:
    queued = [entry("a", 100, 40), entry("b", 200, 60), entry("c", 300, 1000)]
    assert projected_finish(0, 10.0, queued, deadline=200, lines=20) == pytest.approx(12.0)
    assert projected_finish(5, 10.0, queued, deadline=50, lines=20) == pytest.approx(7.0)


def test_throughput_sums_fresh_runners_and_forgets_stale_ones(make_context):
    ctx = make_context()
    now = ctx.clock()
    assert measured_throughput(ctx.records, now, 300) is None
    publish_throughput(ctx.records, "runner-a", 4.0, now - 10)
    publish_throughput(ctx.records, "runner-b", 6.0, now - 20)
    publish_throughput(ctx.records, "runner-c", 0.0, now)  # idle: publishes nothing
    ctx.records.put(ControlKeys.throughput("gone"), Throughput(owner="gone", lines_per_second=99, measured_at=now - 301))
    assert measured_throughput(ctx.records, now, 300) == pytest.approx(10.0)
    assert ctx.records.get(ControlKeys.throughput("gone"), Throughput) is None


def busy_world(make_context, make_tenant, make_jsonl, drop_job, **env):
    """A premium tenant, 2 lines/s measured, and 6000 lines due within the day queued ahead."""
    ctx = make_context(DROPBATCH_TIER_QUOTAS="premium=100000", **env)
    _, key = make_tenant(ctx, "acme", "premium")
    publish_throughput(ctx.records, "runner-a", 2.0, ctx.clock())
    ctx.queue.enqueue(entry("batch_big", int(ctx.clock()) + 600, 6000))

    def drop(job: str, n: int, window: str):
        return drop_job(ctx, "acme", job, make_jsonl(n), key=key, manifest_fields={"completion_window": window})

    return ctx, drop


def test_a_batch_that_cannot_make_its_window_is_rejected(make_context, make_tenant, make_jsonl, drop_job):
    ctx, drop = busy_world(make_context, make_tenant, make_jsonl, drop_job)
    watcher = Watcher(ctx, metrics=Metrics("watcher"))
    late = drop("late", 10, "1h")  # 6010 lines at 2/s: 3005 s, inside 3600 s
    assert watcher.handle(late.ref.manifest_key)
    assert ctx.batches.for_job(late.ref).status == BatchStatus.IN_PROGRESS
    ctx.clock.advance(100)
    doomed = drop("doomed", 1500, "1h")  # 6010 lines ahead and its own 1500: 3755 s, past the window
    assert watcher.handle(doomed.ref.manifest_key)
    record = ctx.batches.for_job(doomed.ref)
    assert record.status == BatchStatus.FAILED
    error = record.errors.data[0]
    assert (error.code, error.param) == ("deadline_unreachable", "completion_window")
    assert "2.0 request lines/s" in error.message
    assert watcher.metrics.manifests.labels("rejected", "deadline_unreachable")._value.get() == 1
    assert ctx.quotas.usage("acme", "premium")[0] == 10  # the rejected batch reserved nothing
    assert record.id not in [e.batch_id for e in ctx.queue.entries()]


def test_without_a_fresh_rate_nothing_is_projected(make_context, make_tenant, make_jsonl, drop_job):
    ctx, drop = busy_world(make_context, make_tenant, make_jsonl, drop_job, DROPBATCH_THROUGHPUT_MAX_AGE_SECONDS="60")
    ctx.clock.advance(61)  # the runner's sample aged out
    record = admit_manifest(ctx, drop("j", 1000, "1h").ref)
    assert record.status == BatchStatus.IN_PROGRESS


def test_warn_admits_with_a_warning_in_the_record(make_context, make_tenant, make_jsonl, drop_job):
    ctx, drop = busy_world(make_context, make_tenant, make_jsonl, drop_job, DROPBATCH_SLA_ADMISSION="warn")
    watcher = Watcher(ctx, metrics=Metrics("watcher"))
    job = drop("risky", 2000, "1h")
    assert watcher.handle(job.ref.manifest_key)
    record = ctx.batches.for_job(job.ref)
    assert record.status == BatchStatus.IN_PROGRESS
    assert [w.code for w in record.warnings] == ["deadline_at_risk"]
    assert watcher.metrics.manifests.labels("admitted", "deadline_at_risk")._value.get() == 1
    assert record.id in [e.batch_id for e in ctx.queue.entries()]


def test_runner_publishes_its_rate_and_gauges_use_each_batchs_window(make_context, make_tenant, make_jsonl, drop_job):
    ctx = make_context()
    _, key = make_tenant(ctx, "acme", "premium")
    admit_manifest(ctx, drop_job(ctx, "acme", "day", make_jsonl(2), key=key).ref)
    ctx.clock.advance(120)
    admit_manifest(
        ctx, drop_job(ctx, "acme", "hour", make_jsonl(2), key=key, manifest_fields={"completion_window": "1h"}).ref
    )
    ctx.clock.advance(30)
    m = Metrics("runner")
    m.lines_rate.add(50)
    observe_queue(ctx, m, "runner-a")
    assert m.oldest_queued_age._value.get() == 150  # the 24h batch, admitted 150 s ago
    assert m.most_urgent_deadline._value.get() == 3600 - 30  # the 1h batch
    assert measured_throughput(ctx.records, ctx.clock(), 300) == pytest.approx(m.lines_rate.per_second())


def test_a_cache_hit_costs_no_quota(make_context, make_tenant, make_jsonl, drop_job):
    ctx = make_context()
    _, key = make_tenant(ctx, "acme", "free")  # 100 lines an hour
    data = make_jsonl(60, body=deterministic)
    first = admit_manifest(ctx, drop_job(ctx, "acme", "j1", data, key=key).ref)
    Runner(ctx, EchoEngine(ctx.store, ctx.settings)).run_once()
    assert ctx.batches.get("acme", first.id).status == BatchStatus.COMPLETED
    assert ctx.quotas.usage("acme", "free")[0] == 60
    again = admit_manifest(ctx, drop_job(ctx, "acme", "j2", data, key=key).ref)  # 60 more would pass 100
    assert again.status == BatchStatus.COMPLETED and again.cached
    assert ctx.quotas.usage("acme", "free")[0] == 60


def test_a_resubmitted_sampled_batch_runs_again(make_context, make_tenant, make_jsonl, drop_job):
    ctx = make_context()
    _, key = make_tenant(ctx, "acme", "premium")
    data = make_jsonl(3, body=lambda i, b: b if i else {**b, "temperature": 0.7})  # one sampled line
    engine = EchoEngine(ctx.store, ctx.settings)
    first = admit_manifest(ctx, drop_job(ctx, "acme", "j1", data, key=key).ref)
    Runner(ctx, engine).run_once()
    again = admit_manifest(ctx, drop_job(ctx, "acme", "j2", data, key=key).ref)
    assert again.status == BatchStatus.IN_PROGRESS and not again.cached
    assert again.content_sha256 != first.content_sha256
    Runner(ctx, engine).run_once()
    assert engine.runs == [3, 3]
    assert ctx.batches.get("acme", again.id).status == BatchStatus.COMPLETED


def test_queue_entries_from_before_created_at_was_kept_age_as_24h_batches(make_context):
    ctx = make_context()
    now = int(ctx.clock())
    ctx.queue.enqueue(QueueEntry(batch_id="batch_old", tenant="t", deadline=now + 86_400 - 500, lines=3))
    m = Metrics("runner")
    m.lines_rate.add(50)
    observe_queue(ctx, m)  # without an owner: gauges only, no throughput published
    assert m.oldest_queued_age._value.get() == 500
    assert list(ctx.records.list_keys(ControlKeys.THROUGHPUT_PREFIX)) == []
