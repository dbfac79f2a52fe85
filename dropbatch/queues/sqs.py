"""The intake queue on SQS: receive/ack for the watcher, and creating it with the inbox notification.

Every SQS call goes through ``call_aws``, so botocore errors are translated by
storage's one table (a missing queue is ``ObjectNotFound``); nothing here reads
raw AWS error codes.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass

from dropbatch.errors import DropbatchError, ObjectNotFound
from dropbatch.queues.base import Delivery, manifests_in_message
from dropbatch.settings import StorageSettings
from dropbatch.storage.keys import MANIFEST_NAME
from dropbatch.storage.s3 import call_aws, make_client

log = logging.getLogger("dropbatch.queues")

VISIBILITY_TIMEOUT_SECONDS = 120
MAX_RECEIVES_BEFORE_DEAD_LETTER = 5


class SqsEventQueue:
    """``EventQueue`` on SQS: S3 event notifications for the inbox's manifests."""

    def __init__(self, settings: StorageSettings, queue_url: str) -> None:
        self.client = make_client("sqs", settings)
        self.queue_url = queue_url
        self.inbox = settings.inbox_bucket

    def receive(self, wait_seconds: int) -> list[Delivery]:
        resp = call_aws(
            self.client.receive_message,
            QueueUrl=self.queue_url,
            MaxNumberOfMessages=10,
            WaitTimeSeconds=wait_seconds,
            what="sqs",
        )
        return [
            Delivery(m["ReceiptHandle"], manifests_in_message(m.get("Body", ""), self.inbox))
            for m in resp.get("Messages", [])
        ]

    def ack(self, receipt: str) -> None:
        call_aws(self.client.delete_message, QueueUrl=self.queue_url, ReceiptHandle=receipt, what="sqs")

    def check(self) -> str | None:
        """Readiness, answered unauthenticated: the queue by its role; its URL and the error go to the log."""
        try:
            call_aws(self.client.get_queue_attributes, QueueUrl=self.queue_url, AttributeNames=["QueueArn"], what="sqs")
        except DropbatchError as exc:
            log.warning("intake queue not usable", extra={"queue_url": self.queue_url, "error": exc.message})
            return f"the intake queue is {'missing' if isinstance(exc, ObjectNotFound) else 'unreachable'}"
        return None


def find_queue_url(settings: StorageSettings) -> str | None:
    """The intake queue's URL if it exists (explicit setting first), else None: poll instead."""
    if settings.queue_url:
        return settings.queue_url
    sqs = make_client("sqs", settings)
    try:
        return call_aws(sqs.get_queue_url, QueueName=settings.queue_name, what="sqs")["QueueUrl"]
    except ObjectNotFound:
        return None


@dataclass(frozen=True)
class IntakeQueue:
    """The intake queue and its dead-letter queue, as created."""

    url: str
    dead_letter_url: str


def ensure_intake_queue(settings: StorageSettings) -> IntakeQueue:
    """Create the intake queue + DLQ and the inbox → queue notification; idempotent."""
    sqs = make_client("sqs", settings)
    dlq_url = call_aws(sqs.create_queue, QueueName=settings.queue_name + "-dlq", what="sqs")["QueueUrl"]
    queue_url = call_aws(
        sqs.create_queue,
        QueueName=settings.queue_name,
        Attributes={
            "VisibilityTimeout": str(VISIBILITY_TIMEOUT_SECONDS),
            "RedrivePolicy": json.dumps(
                {"deadLetterTargetArn": _queue_arn(sqs, dlq_url), "maxReceiveCount": str(MAX_RECEIVES_BEFORE_DEAD_LETTER)}
            ),
        },
        what="sqs",
    )["QueueUrl"]
    queue_arn = _queue_arn(sqs, queue_url)
    policy = {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Effect": "Allow",
                "Principal": {"Service": "s3.amazonaws.com"},
                "Action": "sqs:SendMessage",
                "Resource": queue_arn,
                "Condition": {"ArnLike": {"aws:SourceArn": f"arn:aws:s3:::{settings.inbox_bucket}"}},
            }
        ],
    }
    call_aws(sqs.set_queue_attributes, QueueUrl=queue_url, Attributes={"Policy": json.dumps(policy)}, what="sqs")
    call_aws(
        make_client("s3", settings).put_bucket_notification_configuration,
        Bucket=settings.inbox_bucket,
        NotificationConfiguration={
            "QueueConfigurations": [
                {
                    "Id": "dropbatch-manifests",
                    "QueueArn": queue_arn,
                    "Events": ["s3:ObjectCreated:*"],
                    "Filter": {"Key": {"FilterRules": [{"Name": "suffix", "Value": "/" + MANIFEST_NAME}]}},
                }
            ]
        },
        what=settings.inbox_bucket,
    )
    return IntakeQueue(url=queue_url, dead_letter_url=dlq_url)


def _queue_arn(sqs, url: str) -> str:
    attrs = call_aws(sqs.get_queue_attributes, QueueUrl=url, AttributeNames=["QueueArn"], what="sqs")
    return attrs["Attributes"]["QueueArn"]
