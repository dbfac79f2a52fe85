"""The drop-box path over a real moto server and the real `aws` CLI, with the echo stand-in engine.

The runner here drives ``EchoEngine`` (same chunk reading and result shaping as
the real engine, a fake model); the real-engine proof is the e2e suite.
"""

from __future__ import annotations

import json
from collections import Counter

import pytest
from helpers import make_jsonl, make_tenant, read_jsonl

from dropbatch.engine.echo import EchoEngine
from dropbatch.jsonl import is_success
from dropbatch.models import BatchStatus
from dropbatch.queues import SqsEventQueue, find_queue_url
from dropbatch.storage.keys import OutputPrefix
from runner.service import Runner
from watcher.service import Watcher

pytestmark = pytest.mark.integration

LINES = 30
CHUNK_LINES = 7
LONG_ID = 3


@pytest.fixture
def settings(make_settings):
    # The echo engine counts words as tokens: a 50-word limit makes the long prompt unservable.
    return make_settings(DROPBATCH_CHUNK_LINES=str(CHUNK_LINES), DROPBATCH_MAX_MODEL_LEN="50")


def test_dropbox_happy_path_with_echo_engine_stand_in(settings, make_context, drop_job, aws):
    ctx = make_context(settings)
    _, key = make_tenant(ctx, "acme")
    lines = make_jsonl(LINES, long_ids={LONG_ID}, long_words=80)
    ref = drop_job(ctx, key, lines)

    watcher = Watcher(ctx, events=SqsEventQueue(ctx.settings.storage, find_queue_url(settings.storage)))
    watcher.run_once()
    record = ctx.batches.for_job(ref)
    assert record.status is BatchStatus.IN_PROGRESS
    assert record.request_counts.total == LINES
    assert sum(c.lines for c in record.chunks) == LINES
    assert len(record.chunks) == -(-LINES // CHUNK_LINES)
    assert [e.batch_id for e in ctx.queue.entries()] == [record.id]

    engine = EchoEngine(ctx.store, settings)
    assert Runner(ctx, engine).run_once() == 1
    assert engine.runs == [LINES]

    record = ctx.batches.for_job(ref)
    assert record.status is BatchStatus.COMPLETED
    assert record.request_counts.model_dump() == {"total": LINES, "completed": LINES - 1, "failed": 1}
    assert record.output_file_id and record.error_file_id
    assert not record.cached
    prefix = OutputPrefix(ref.tenant, record.content_sha256 or "")
    assert record.result is not None and record.result.output_key == prefix.output_key
    assert sorted(info.key for info in ctx.store.list(ctx.outbox)) == sorted(
        [prefix.output_key, prefix.errors_key, prefix.summary_key]
    )
    assert list(ctx.queue.entries()) == []

    # The client's view: the same objects through `aws s3 cp s3://... -`.
    output = aws.read(ctx.outbox, prefix.output_key)
    errors = aws.read(ctx.outbox, prefix.errors_key)
    summary = json.loads(aws.read(ctx.outbox, prefix.summary_key))
    assert output == ctx.store.get(ctx.outbox, prefix.output_key)[0]
    out_lines, err_lines = read_jsonl(output), read_jsonl(errors)
    assert Counter(line["custom_id"] for line in out_lines + err_lines) == Counter(
        line["custom_id"] for line in lines
    )
    assert all(is_success(line) for line in out_lines)
    assert {line["response"]["body"]["object"] for line in out_lines} == {"chat.completion"}
    assert [line["custom_id"] for line in err_lines] == [f"req-{LONG_ID}"]
    assert not is_success(err_lines[0])
    assert summary["request_counts"] == record.request_counts.model_dump()
    assert summary["content_sha256"] == record.content_sha256
    assert summary["usage"]["output_tokens"] == record.usage.output_tokens > 0


def test_identical_resubmission_is_answered_from_the_outbox(settings, make_context, drop_job):
    ctx = make_context(settings)
    _, key = make_tenant(ctx, "acme")
    # Deterministic (temperature 0): a batch with a sampled line is not answered from the outbox.
    lines = make_jsonl(10, temperature=0)
    first = drop_job(ctx, key, lines, job="first")
    Watcher(ctx).run_once()
    engine = EchoEngine(ctx.store, settings)
    Runner(ctx, engine).run_once()
    done = ctx.batches.for_job(first)
    assert done.status is BatchStatus.COMPLETED

    again = drop_job(ctx, key, lines, job="again")
    Watcher(ctx).run_once()
    cached = ctx.batches.for_job(again)
    assert cached.status is BatchStatus.COMPLETED
    assert cached.cached
    assert cached.id != done.id
    assert cached.content_sha256 == done.content_sha256
    assert cached.result == done.result
    assert cached.request_counts == done.request_counts
    assert ctx.quotas.usage("acme", "basic")[0] == len(lines)  # the cache hit used no quota
    assert Runner(ctx, engine).run_once() == 0
    assert engine.runs == [len(lines)]
