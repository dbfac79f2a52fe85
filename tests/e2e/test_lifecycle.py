"""OpenAI's batch lifecycle on the real engine: cancel and expiry in the middle of a run.

Both are made deterministic without mocking the engine: a hook acts after the
n-th real result (cancel through the record, as the gateway does; expiry by
moving the services' clock past the deadline). What the client then sees must be
OpenAI's: finished lines kept, every other line a batch_cancelled / batch_expired
error line, counts final, partial results under partial-<batch_id>/.
"""

from __future__ import annotations

import json
import time

import pytest

from dropbatch.models import BatchStatus
from dropbatch.storage.keys import JobRef
from manifests import build_manifest, dumps, sign

pytestmark = pytest.mark.e2e

TENANT = "e2e-lifecycle"
LINES = 400
ACT_AFTER = 120


def chat_lines(n: int, prefix: str) -> list[dict]:
    return [
        {
            "custom_id": f"{prefix}-{i}",
            "method": "POST",
            "url": "/v1/chat/completions",
            "body": {
                "model": "dropbatch-tiny",
                "messages": [{"role": "user", "content": f"{prefix} request number {i}: say something long."}],
                "max_tokens": 64,
                "temperature": 0,
                "ignore_eos": True,
            },
        }
        for i in range(n)
    ]


@pytest.fixture(scope="module")
def signing_key(stack):
    stack.ctx.tenants.create(TENANT, "enterprise")
    return stack.ctx.tenants.create_signing_key(TENANT)


def drop(stack, tmp_path, key, job: str) -> JobRef:
    data = tmp_path / f"{job}.jsonl"
    data.write_text("".join(json.dumps(line) + "\n" for line in chat_lines(LINES, job)))
    manifest = build_manifest(
        [data], tenant=TENANT, job=job, key_id=key.key_id, endpoint="/v1/chat/completions",
        model="dropbatch-tiny", created_at=int(time.time()), input_keys=[f"{TENANT}/{job}/input.jsonl"],
    )
    path = tmp_path / f"{job}.manifest.json"
    path.write_bytes(dumps(sign(manifest, key.secret)))
    inbox = stack.settings.storage.inbox_bucket
    stack.aws("s3", "cp", str(data), f"s3://{inbox}/{TENANT}/{job}/input.jsonl")
    stack.aws("s3", "cp", str(path), f"s3://{inbox}/{TENANT}/{job}/manifest.json")
    return JobRef(TENANT, job)


def read_lines(stack, key: str) -> list[dict]:
    data, _ = stack.ctx.store.get(stack.settings.storage.outbox_bucket, key)
    return [json.loads(line) for line in data.splitlines()]


def sample(stack, name: str, **labels: str) -> float:
    return stack.metrics.registry.get_sample_value(name, labels) or 0.0


def check_partial_results(stack, ref: JobRef, status: BatchStatus, code: str) -> None:
    record = stack.ctx.batches.for_job(ref)
    assert record.status == status
    assert getattr(record, f"{status.value}_at") is not None
    counts = record.request_counts
    assert counts.total == LINES
    assert counts.completed + counts.failed == LINES
    assert counts.completed >= ACT_AFTER, "lines finished before the stop are kept"
    assert counts.failed > 0, "the run was stopped before the end"
    assert record.result.prefix == f"{TENANT}/{record.content_sha256}/partial-{record.id}/"
    out = read_lines(stack, record.result.output_key)
    err = read_lines(stack, record.result.errors_key)
    assert len(out) == counts.completed and len(err) == counts.failed
    ids = sorted(line["custom_id"] for line in out + err)
    assert ids == sorted(f"{ref.job}-{i}" for i in range(LINES)), "every custom_id exactly once"
    assert {line["error"]["code"] for line in err} == {code}
    assert all(line["response"] is None for line in err)
    assert all(line["response"]["body"]["object"] == "chat.completion" for line in out)
    assert record.usage.output_tokens == 64 * counts.completed
    summary = json.loads(stack.ctx.store.get(stack.settings.storage.outbox_bucket, record.result.summary_key)[0])
    assert summary["partial"] is True
    # partial results never stand in for the complete work at the content address
    complete = f"{TENANT}/{record.content_sha256}/summary.json"
    assert not list(stack.ctx.store.list(stack.settings.storage.outbox_bucket, complete))


def test_cancel_mid_run(stack, signing_key, tmp_path):
    ref = drop(stack, tmp_path, signing_key, "cancel-me")
    completed_before = sample(stack, "dropbatch_requests_completed_total", tenant=TENANT,
                              endpoint="/v1/chat/completions", model="dropbatch-tiny")
    seen = {}

    def cancel() -> None:
        record = stack.ctx.batches.for_job(ref)
        seen["in_progress_counts"] = record.request_counts.completed
        stack.ctx.batches.update(
            TENANT, record.id, lambda b: b.transition(BatchStatus.CANCELLING, int(stack.clock()))
        )

    stack.engine.after(ACT_AFTER, cancel)
    stack.drain(progress_seconds=0)  # Ray hands rows over in blocks: look after every result
    check_partial_results(stack, ref, BatchStatus.CANCELLED, "batch_cancelled")
    record = stack.ctx.batches.for_job(ref)
    assert record.cancelling_at is not None and record.cancelling_at <= record.cancelled_at
    # counts moved while the batch ran, and the runner's metrics saw the lines
    assert 0 < seen["in_progress_counts"] <= ACT_AFTER
    completed_after = sample(stack, "dropbatch_requests_completed_total", tenant=TENANT,
                             endpoint="/v1/chat/completions", model="dropbatch-tiny")
    assert completed_after - completed_before == record.request_counts.completed
    assert sample(stack, "dropbatch_batches_finished_total", status="cancelled") >= 1


def test_expiry_mid_run(stack, signing_key, tmp_path):
    ref = drop(stack, tmp_path, signing_key, "expire-me")
    expired_before = sample(stack, "dropbatch_batches_finished_total", status="expired")
    window = stack.settings.limits.completion_windows["24h"]
    stack.engine.after(ACT_AFTER, lambda: stack.clock.advance(window + 1))
    try:
        stack.drain(progress_seconds=0)  # Ray hands rows over in blocks: look after every result
    finally:
        stack.clock.advance(-(window + 1))
    check_partial_results(stack, ref, BatchStatus.EXPIRED, "batch_expired")
    assert sample(stack, "dropbatch_batches_finished_total", status="expired") == expired_before + 1
    assert sample(stack, "dropbatch_generated_tokens_total", tenant=TENANT, model="dropbatch-tiny") > 0
