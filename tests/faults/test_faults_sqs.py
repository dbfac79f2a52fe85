"""Lost S3 events: the watcher's listing sweep still admits every job, exactly once.

The proxy takes messages off the queue and answers an empty receive (they sit in
flight until the visibility timeout, nothing is deleted), or answers SendMessage
with a success it never delivered.
"""

from __future__ import annotations

import json

import pytest
from helpers import audit_events, make_jsonl, make_tenant
from proxy import FaultPlan

from dropbatch.context import Context
from dropbatch.models import BatchStatus
from dropbatch.queues import SqsEventQueue, find_queue_url
from dropbatch.storage.s3 import make_client
from watcher.service import Watcher

pytestmark = pytest.mark.integration

JOBS = ("j1", "j2", "j3")
SEED = 11


def _in_flight(settings, queue_url: str) -> int:
    sqs = make_client("sqs", settings.storage)
    attrs = sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["ApproximateNumberOfMessagesNotVisible"])
    return int(attrs["Attributes"]["ApproximateNumberOfMessagesNotVisible"])


def test_sweep_admits_everything_when_every_receive_is_dropped(make_context, start_proxy, drop_job):
    direct = make_context().settings
    plain = Context.from_settings(direct)
    _, key = make_tenant(plain, "acme")
    refs = [drop_job(plain, key, make_jsonl(3, prefix=job), job=job) for job in JOBS]

    proxy = start_proxy(FaultPlan(drop_receive=1.0, seed=SEED))
    settings = direct.with_endpoint(proxy.url)
    ctx = Context.from_settings(settings)
    queue_url = find_queue_url(settings.storage)
    watcher = Watcher(ctx, events=SqsEventQueue(ctx.settings.storage, queue_url))

    assert watcher.drain_events(0) == 0  # the events were taken and lost
    assert proxy.counts()["dropped_receive"] == 1
    assert _in_flight(direct, queue_url) >= len(JOBS)  # not deleted: only hidden (plus S3's TestEvent)

    assert watcher.run_once() == len(JOBS)  # no events again; the sweep finds every manifest
    assert proxy.counts()["dropped_receive"] == 2
    for ref in refs:
        assert ctx.batches.for_job(ref).status is BatchStatus.IN_PROGRESS
    admitted = [e["batch_id"] for e in audit_events(plain, "batch.admitted")]
    assert sorted(admitted) == sorted({ctx.batches.for_job(ref).id for ref in refs})
    assert len(list(plain.queue.entries())) == len(JOBS)


def test_some_events_lost_some_delivered_admits_each_job_once(make_context, start_proxy, drop_job):
    direct = make_context().settings
    plain = Context.from_settings(direct)
    _, key = make_tenant(plain, "acme")
    refs = [drop_job(plain, key, make_jsonl(2, prefix=job), job=job) for job in JOBS]

    proxy = start_proxy(FaultPlan(drop_receive=0.5, seed=SEED))
    settings = direct.with_endpoint(proxy.url)
    ctx = Context.from_settings(settings)
    events = Watcher(ctx, events=SqsEventQueue(ctx.settings.storage, find_queue_url(settings.storage)))
    for _ in range(len(JOBS)):  # moto may hand out fewer than all messages per receive
        events.drain_events(0)
    Watcher(ctx).run_once()  # a second replica that only sweeps
    events.run_once()

    assert proxy.counts().get("dropped_receive", 0) >= 1
    for ref in refs:
        assert ctx.batches.for_job(ref).status is BatchStatus.IN_PROGRESS
    assert len(audit_events(plain, "batch.admitted")) == len(JOBS)
    assert len(list(plain.queue.entries())) == len(JOBS)


def test_swallowed_notifications_are_covered_by_the_sweep(make_context, start_proxy, drop_job):
    direct = make_context().settings
    s3 = make_client("s3", direct.storage)
    # Only the events this test sends exist: no bucket notification.
    s3.put_bucket_notification_configuration(Bucket=direct.storage.inbox_bucket, NotificationConfiguration={})
    plain = Context.from_settings(direct)
    _, key = make_tenant(plain, "acme")
    ref = drop_job(plain, key, make_jsonl(3), job="sent")

    proxy = start_proxy(FaultPlan(drop_send=1.0, seed=SEED))
    settings = direct.with_endpoint(proxy.url)
    queue_url = find_queue_url(settings.storage)
    event = {
        "Records": [{"s3": {"bucket": {"name": direct.storage.inbox_bucket}, "object": {"key": ref.manifest_key}}}]
    }
    sent = make_client("sqs", settings.storage).send_message(QueueUrl=queue_url, MessageBody=json.dumps(event))
    assert sent["MessageId"]  # the sender believes it was delivered
    assert proxy.counts()["dropped_send"] == 1

    ctx = Context.from_settings(settings)
    watcher = Watcher(ctx, events=SqsEventQueue(ctx.settings.storage, queue_url))
    assert watcher.drain_events(0) == 0
    assert watcher.run_once() == 1
    assert ctx.batches.for_job(ref).status is BatchStatus.IN_PROGRESS
