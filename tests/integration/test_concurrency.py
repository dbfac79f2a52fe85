"""Replicas racing over real S3: conditional writes, enforced by moto over HTTP, decide who wins."""

from __future__ import annotations

import threading
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import pytest
from helpers import audit_events, control_keys, make_jsonl, make_tenant, read_jsonl

from dropbatch.engine.echo import EchoEngine
from dropbatch.models import BatchStatus
from runner.service import Runner
from watcher.service import Watcher

pytestmark = pytest.mark.integration

REPLICAS = 3
CLAIM_ROUNDS = 5


def race(calls):
    """Run ``calls`` on their own threads, released together; returns their results in order."""
    barrier = threading.Barrier(len(calls))

    def run(call):
        barrier.wait()
        return call()

    with ThreadPoolExecutor(len(calls)) as pool:
        return [future.result() for future in [pool.submit(run, call) for call in calls]]


@pytest.fixture
def settings(make_settings):
    return make_settings(DROPBATCH_CHUNK_LINES="4")


def test_watchers_admitting_one_manifest_at_once_make_one_batch(settings, make_context, drop_job):
    ctx = make_context(settings)
    _, key = make_tenant(ctx, "acme")
    ref = drop_job(ctx, key, make_jsonl(10))
    replicas = [Watcher(make_context(settings)) for _ in range(REPLICAS)]

    assert race([lambda w=w: w.handle(ref.manifest_key) for w in replicas]) == [True] * REPLICAS

    record = ctx.batches.for_job(ref)
    assert record.status is BatchStatus.IN_PROGRESS
    assert record.request_counts.total == 10
    assert len(control_keys(ctx, "batches/acme/")) == 1
    assert [entry.batch_id for entry in ctx.queue.entries()] == [record.id]
    assert ctx.quotas.usage("acme", "basic")[0] == 10  # reserved once, not per replica


def test_one_runner_wins_each_claim_on_a_batch(settings, make_context, drop_job):
    ctx = make_context(settings)
    _, key = make_tenant(ctx, "acme")
    ref = drop_job(ctx, key, make_jsonl(10))
    Watcher(ctx).run_once()
    batch_id = ctx.batches.for_job(ref).id
    runners = [(make_context(settings), f"runner-{i}") for i in range(REPLICAS)]

    for _ in range(CLAIM_ROUNDS):
        leases = race([lambda c=c, owner=owner: c.queue.claim(batch_id, owner, 60) for c, owner in runners])
        winners = [lease for lease in leases if lease is not None]
        assert len(winners) == 1
        assert winners[0].batch_id == batch_id
        ctx.queue.release(winners[0])


def test_runners_racing_for_one_batch_run_it_once(settings, make_context, drop_job, aws):
    ctx = make_context(settings)
    _, key = make_tenant(ctx, "acme")
    lines = make_jsonl(10)
    ref = drop_job(ctx, key, lines)
    Watcher(ctx).run_once()
    engines = [EchoEngine(ctx.store, settings) for _ in range(REPLICAS)]
    runners = [Runner(make_context(settings), engine, owner=f"runner-{i}") for i, engine in enumerate(engines)]

    race([runner.run_once for runner in runners])

    assert sum(sum(engine.runs) for engine in engines) == len(lines)
    record = ctx.batches.for_job(ref)
    assert record.status is BatchStatus.COMPLETED
    assert list(ctx.queue.entries()) == []
    assert control_keys(ctx, "leases/") == []
    assert len(audit_events(ctx, "batch.closed")) == 1
    assert record.result is not None
    results = read_jsonl(aws.read(ctx.outbox, record.result.output_key))
    results += read_jsonl(aws.read(ctx.outbox, record.result.errors_key))
    assert Counter(line["custom_id"] for line in results) == Counter(line["custom_id"] for line in lines)
