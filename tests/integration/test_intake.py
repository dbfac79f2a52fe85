"""Intake over a real moto server: S3 events through SQS, the listing sweep, duplicates, acks."""

from __future__ import annotations

import json
from urllib.parse import quote_plus

import pytest
from helpers import audit_events, control_keys, make_jsonl, make_tenant

from dropbatch.context import Context
from dropbatch.engine.echo import EchoEngine
from dropbatch.errors import StorageUnavailable
from dropbatch.models import BatchStatus
from dropbatch.queues import Delivery, SqsEventQueue, find_queue_url
from dropbatch.storage.keys import ControlKeys, JobRef
from dropbatch.storage.s3 import make_client
from runner.service import Runner
from watcher.service import Watcher

pytestmark = pytest.mark.integration

MAX_RECEIVES = 10  # moto may hand out one message per receive; bound the loop, never time it


class RecordingIntake(SqsEventQueue):
    """The real SQS intake, remembering what it received and what it acknowledged."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.received: list[Delivery] = []
        self.acked: list[str] = []

    def receive(self, wait_seconds: int) -> list[Delivery]:
        messages = super().receive(wait_seconds)
        self.received.extend(messages)
        return messages

    def ack(self, receipt: str) -> None:
        super().ack(receipt)
        self.acked.append(receipt)

    def keys(self) -> list[str]:
        return [manifest.key for delivery in self.received for manifest in delivery.manifests]


def drain_until(watcher: Watcher, intake: RecordingIntake, key: str, events: int = 1) -> None:
    """Drain the queue until ``events`` notifications for ``key`` have been received."""
    for _ in range(MAX_RECEIVES):
        if intake.keys().count(key) >= events:
            return
        watcher.drain_events(wait_seconds=2)
    raise AssertionError(f"{events} event(s) for {key} never arrived; got {intake.keys()}")


def redeliver(ctx, queue_url: str, key: str) -> None:
    """A second delivery of the manifest's S3 event, as SQS's at-least-once delivery may give.

    (moto also fires two events for a multipart upload; S3 and LocalStack fire one.)
    """
    event = {
        "Records": [
            {
                "eventName": "ObjectCreated:CompleteMultipartUpload",
                "s3": {"bucket": {"name": ctx.inbox}, "object": {"key": quote_plus(key)}},
            }
        ]
    }
    make_client("sqs", ctx.settings.storage).send_message(QueueUrl=queue_url, MessageBody=json.dumps(event))


def queue_depth(ctx, queue_url: str) -> int:
    """Messages still in the intake queue, visible or in flight."""
    sqs = make_client("sqs", ctx.settings.storage)
    attrs = sqs.get_queue_attributes(
        QueueUrl=queue_url,
        AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
    )["Attributes"]
    return int(attrs["ApproximateNumberOfMessages"]) + int(attrs["ApproximateNumberOfMessagesNotVisible"])


def assert_admitted_once(ctx, ref: JobRef, lines: int) -> None:
    record = ctx.batches.for_job(ref)
    assert record.status is BatchStatus.IN_PROGRESS
    assert record.request_counts.total == lines
    assert control_keys(ctx, f"batches/{ref.tenant}/") == [ControlKeys.batch(ref.tenant, record.id)]
    assert [e.batch_id for e in ctx.queue.entries()] == [record.id]
    assert [e["batch_id"] for e in audit_events(ctx, "batch.admitted")] == [record.id]


def test_sqs_event_admits_the_job(make_settings, make_context, drop_job):
    settings = make_settings()
    ctx = make_context(settings)
    _, key = make_tenant(ctx, "acme")
    ref = drop_job(ctx, key, make_jsonl(5))
    queue_url = find_queue_url(settings.storage)
    assert queue_url is not None

    intake = RecordingIntake(ctx.settings.storage, queue_url)
    watcher = Watcher(ctx, events=intake)
    drain_until(watcher, intake, ref.manifest_key)

    # moto URL-encodes the key ('/' as %2F); the intake hands over the decoded key, and the ETag.
    assert intake.keys() == [ref.manifest_key]
    [manifest] = [manifest for delivery in intake.received for manifest in delivery.manifests]
    assert manifest.etag == ctx.store.head(ctx.inbox, ref.manifest_key).etag.strip('"')
    assert_admitted_once(ctx, ref, 5)
    assert sorted(intake.acked) == sorted(receipt for receipt, _ in intake.received)
    assert queue_depth(ctx, queue_url) == 0
    # The sweep (every 30 s) leaves a manifest an event already brought in alone: it used to admit
    # every manifest in the inbox again, several S3 calls each, in the loop that events wait on.
    assert watcher.sweep() == 0


def test_polling_sweep_admits_the_job_when_there_is_no_queue(make_settings, make_context, drop_job):
    settings = make_settings()
    s3 = make_client("s3", settings.storage)
    for bucket in (settings.storage.inbox_bucket, settings.storage.outbox_bucket, settings.storage.control_bucket):
        s3.create_bucket(Bucket=bucket)
    assert find_queue_url(settings.storage) is None
    ctx = make_context(settings, bootstrap=False)
    _, key = make_tenant(ctx, "acme")
    ref = drop_job(ctx, key, make_jsonl(5))

    watcher = Watcher(ctx)
    assert watcher.sweep() == 1
    assert_admitted_once(ctx, ref, 5)
    assert watcher.sweep() == 0  # this process has handled that manifest version


@pytest.mark.parametrize("order", ["events_then_sweeps", "sweep_then_late_events_after_completion"])
def test_duplicate_and_reordered_events_admit_once(order, make_settings, make_context, drop_job):
    settings = make_settings()
    ctx = make_context(settings)
    _, key = make_tenant(ctx, "acme")
    ref = drop_job(ctx, key, make_jsonl(5), multipart_manifest=True)
    queue_url = find_queue_url(settings.storage)
    intake = RecordingIntake(ctx.settings.storage, queue_url)
    events = Watcher(ctx, events=intake)

    if order == "events_then_sweeps":
        redeliver(ctx, queue_url, ref.manifest_key)
        drain_until(events, intake, ref.manifest_key, events=2)
        events.sweep()
        Watcher(ctx).run_once()  # a second replica that never saw the events
        assert_admitted_once(ctx, ref, 5)
    else:
        Watcher(ctx).sweep()
        assert_admitted_once(ctx, ref, 5)
        engine = EchoEngine(ctx.store, settings)
        assert Runner(ctx, engine).run_once() == 1
        redeliver(ctx, queue_url, ref.manifest_key)  # a late duplicate, after the batch completed
        drain_until(events, intake, ref.manifest_key, events=2)
        record = ctx.batches.for_job(ref)
        assert record.status is BatchStatus.COMPLETED
        assert list(ctx.queue.entries()) == []
        assert len(control_keys(ctx, f"batches/{ref.tenant}/")) == 1
        assert len(audit_events(ctx, "batch.admitted")) == 1
        assert engine.runs == [5]

    assert intake.keys().count(ref.manifest_key) >= 2
    assert sorted(intake.acked) == sorted(receipt for receipt, _ in intake.received)


class FlakyStore:
    """The real S3 store, except that writes to one bucket fail while ``failing`` is set."""

    def __init__(self, store, bucket: str) -> None:
        self.store = store
        self.bucket = bucket
        self.failing = True

    def __getattr__(self, name):
        return getattr(self.store, name)

    def put(self, bucket: str, key: str, data: bytes, **kwargs) -> str:
        if self.failing and bucket == self.bucket:
            raise StorageUnavailable(f"s3://{bucket}/{key}: injected outage")
        return self.store.put(bucket, key, data, **kwargs)


def test_event_is_deleted_only_after_successful_handling(make_settings, make_context, drop_job):
    settings = make_settings()
    ctx = make_context(settings)
    _, key = make_tenant(ctx, "acme")
    ref = drop_job(ctx, key, make_jsonl(5))
    queue_url = find_queue_url(settings.storage)

    flaky = FlakyStore(ctx.store, settings.storage.control_bucket)
    broken = Context(settings=settings, store=flaky)
    intake = RecordingIntake(broken.settings.storage, queue_url)
    watcher = Watcher(broken, events=intake)
    drain_until(watcher, intake, ref.manifest_key)
    (failed_receipt,) = [receipt for receipt, manifests in intake.received
                         if ref.manifest_key in [m.key for m in manifests]]
    assert failed_receipt not in intake.acked
    assert queue_depth(ctx, queue_url) == 1  # in flight, to be redelivered
    assert control_keys(ctx, "queue/") == []

    # The outage ends; the visibility timeout (120 s in bootstrap) is cut short to redeliver now.
    flaky.failing = False
    make_client("sqs", settings.storage).change_message_visibility(
        QueueUrl=queue_url, ReceiptHandle=failed_receipt, VisibilityTimeout=0
    )
    drain_until(watcher, intake, ref.manifest_key, events=2)
    assert_admitted_once(ctx, ref, 5)
    assert queue_depth(ctx, queue_url) == 0


def test_a_nested_manifest_s_event_is_answered_with_a_rejection_and_nothing_comes_back(
    make_settings, make_context, drop_job
):
    settings = make_settings()
    ctx = make_context(settings)
    _, key = make_tenant(ctx, "acme")
    ref = drop_job(ctx, key, make_jsonl(2), upload_to=JobRef("acme", "a/b"))  # acme/a/b/manifest.json
    assert ref.manifest_key == "acme/a/b/manifest.json"
    queue_url = find_queue_url(settings.storage)
    intake = RecordingIntake(ctx.settings.storage, queue_url)
    watcher = Watcher(ctx, events=intake)

    drain_until(watcher, intake, ref.manifest_key)  # the S3 event filter (suffix /manifest.json) passes it

    rejection = json.loads(ctx.store.get(ctx.inbox, "acme/a/b/manifest.json.rejection.json")[0])
    assert (rejection["code"], rejection["manifest_key"]) == ("manifest_key_invalid", ref.manifest_key)
    assert control_keys(ctx, "batches/") == []
    assert sorted(intake.acked) == sorted(receipt for receipt, _ in intake.received)
    # Our rejection.json is not a manifest: its write sends no event the watcher acts on.
    watcher.drain_events(wait_seconds=1)
    assert intake.keys() == [ref.manifest_key]
    assert queue_depth(ctx, queue_url) == 0
