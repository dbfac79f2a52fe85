"""Per-line retries: engine failures are retried with exponential backoff, then become error lines."""

from __future__ import annotations

import json
from collections import Counter

from dropbatch.engine.echo import EchoEngine
from dropbatch.models import BatchStatus
from manifests import dumps, loads, sign
from runner.service import Runner
from watcher.admission import admit_manifest

LINES = 6


def flaky(failures: dict[str, int]):
    """An engine fault: ``custom_id`` fails its first ``failures[custom_id]`` attempts."""
    seen: Counter[str] = Counter()

    def fail(row: dict) -> str | None:
        custom_id = row["custom_id"]
        seen[custom_id] += 1
        if seen[custom_id] <= failures.get(custom_id, 0):
            return f"RuntimeError: engine hiccup #{seen[custom_id]}"
        return None

    return fail


def submit(ctx, make_tenant, make_jsonl, drop_job, **manifest_fields):
    _, key = make_tenant(ctx, "acme", "enterprise")
    dropped = drop_job(ctx, "acme", "j1", make_jsonl(LINES), key=key, manifest_fields=manifest_fields or None)
    return admit_manifest(ctx, dropped.ref)


def lines_of(ctx, key: str) -> list[dict]:
    data, _ = ctx.store.get(ctx.outbox, key)
    return [json.loads(line) for line in data.splitlines()]


def run(ctx, fail):
    engine = EchoEngine(ctx.store, ctx.settings, fail=fail)
    sleeps: list[float] = []
    runner = Runner(ctx, engine, sleep=sleeps.append)
    runner.run_once()
    return engine, sleeps, runner


def test_a_transient_failure_is_retried_and_the_line_succeeds(make_context, make_tenant, make_jsonl, drop_job):
    ctx = make_context()
    record = submit(ctx, make_tenant, make_jsonl, drop_job)
    engine, sleeps, runner = run(ctx, flaky({"req-2": 2}))
    done = ctx.batches.get("acme", record.id)
    assert done.status == BatchStatus.COMPLETED
    assert (done.request_counts.completed, done.request_counts.failed) == (LINES, 0)
    assert engine.runs == [LINES, 1, 1], "one full pass, then two passes of just the failed line"
    assert sleeps == [1.0, 2.0], "exponential backoff: 1 s, then 2 s"
    assert runner.metrics.registry.get_sample_value("dropbatch_request_retries_total") == 2
    assert sorted(line["custom_id"] for line in lines_of(ctx, done.result.output_key)) == sorted(
        f"req-{i}" for i in range(LINES)
    )


def test_a_line_failing_every_attempt_becomes_an_error_line_after_three_retries(
    make_context, make_tenant, make_jsonl, drop_job
):
    ctx = make_context()
    record = submit(ctx, make_tenant, make_jsonl, drop_job)
    engine, sleeps, _ = run(ctx, flaky({"req-4": 99}))
    done = ctx.batches.get("acme", record.id)
    assert done.status == BatchStatus.COMPLETED, "partial success: the batch still completes"
    assert (done.request_counts.completed, done.request_counts.failed) == (LINES - 1, 1)
    assert engine.runs == [LINES, 1, 1, 1]
    assert sleeps == [1.0, 2.0, 4.0]
    [error] = lines_of(ctx, done.result.errors_key)
    assert error["custom_id"] == "req-4"
    assert error["response"]["status_code"] == 500
    body = error["response"]["body"]["error"]
    assert body["code"] == "engine_error"
    assert "engine hiccup #4" in body["message"], "the last attempt's error is what the client sees"


def test_the_batch_retry_config_from_the_signed_manifest_wins(make_context, make_tenant, make_jsonl, drop_job):
    ctx = make_context()
    policy = {"max_retries": 1, "retry_delay": 0.5, "backoff_factor": 3.0}
    record = submit(ctx, make_tenant, make_jsonl, drop_job, retry_config=policy)
    assert record.retry_config is not None and record.retry_config.max_retries == 1
    engine, sleeps, _ = run(ctx, flaky({"req-0": 99, "req-1": 1}))
    done = ctx.batches.get("acme", record.id)
    assert engine.runs == [LINES, 2]
    assert sleeps == [0.5]
    assert (done.request_counts.completed, done.request_counts.failed) == (LINES - 1, 1)


def test_settings_set_the_default_policy(make_context, make_tenant, make_jsonl, drop_job):
    ctx = make_context(DROPBATCH_MAX_RETRIES="0")
    submit(ctx, make_tenant, make_jsonl, drop_job)
    engine, sleeps, _ = run(ctx, flaky({"req-0": 1}))
    assert engine.runs == [LINES]
    assert sleeps == []


def test_client_errors_are_never_retried(make_context, make_tenant, make_jsonl, drop_job):
    ctx = make_context(DROPBATCH_MAX_MODEL_LEN="1")  # every prompt is longer than one word
    _, key = make_tenant(ctx, "acme", "enterprise")
    # max_tokens within the one-token context is admitted; the prompt itself does not fit.
    record = admit_manifest(ctx, drop_job(ctx, "acme", "j1", make_jsonl(LINES, max_tokens=1), key=key).ref)
    engine, sleeps, _ = run(ctx, lambda row: None)
    done = ctx.batches.get("acme", record.id)
    assert engine.runs == [LINES]
    assert sleeps == []
    assert done.request_counts.failed == LINES
    assert {line["response"]["body"]["error"]["code"] for line in lines_of(ctx, done.result.errors_key)} == {
        "context_length_exceeded"
    }


def test_a_manifest_with_a_retry_config_round_trips_and_one_without_is_unchanged(make_context, make_tenant):
    ctx = make_context()
    _, key = make_tenant(ctx, "acme")
    from dropbatch.models import InputObject, RetryConfig
    from manifests import Manifest

    base = Manifest(
        tenant="acme", job="j", key_id=key.key_id, endpoint="/v1/chat/completions", model="m", created_at=1,
        nonce="n" * 20, inputs=[InputObject(key="acme/j/a.jsonl", size=1, sha256="0" * 64)],
    )
    plain = dumps(sign(base, key.secret))
    assert b"retry_config" not in plain, "unset fields are not serialized: older manifests keep verifying"
    with_policy = sign(base.model_copy(update={"retry_config": RetryConfig(max_retries=2)}), key.secret)
    parsed = loads(dumps(Manifest.model_validate(with_policy.model_dump())))
    assert parsed.retry_config is not None and parsed.retry_config.max_retries == 2


def test_a_batch_cancelled_before_it_ran_gives_its_hourly_quota_back(make_context, make_tenant, make_jsonl, drop_job):
    from dropbatch.models import BatchStatus as Status

    ctx = make_context()
    record = submit(ctx, make_tenant, make_jsonl, drop_job)
    assert ctx.quotas.usage("acme", "enterprise")[0] == LINES
    ctx.batches.update("acme", record.id, lambda b: b.transition(Status.CANCELLING, ctx.now()))
    engine, _, _ = run(ctx, lambda row: None)
    assert engine.runs == []
    assert ctx.batches.get("acme", record.id).status == Status.CANCELLED
    assert ctx.quotas.usage("acme", "enterprise")[0] == 0
