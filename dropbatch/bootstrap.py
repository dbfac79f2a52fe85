"""Create the buckets, the intake queue and the inbox → queue notification, idempotently.

What `dropbatch up` and `dropbatch bootstrap` do against a local emulator; in AWS,
Terraform creates the same resources (terraform/) and this only checks them.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass

from dropbatch.errors import ObjectNotFound, StorageError
from dropbatch.settings import StorageSettings
from dropbatch.storage.keys import MANIFEST_NAME
from dropbatch.storage.s3 import call_aws, error_code, make_client

log = logging.getLogger("dropbatch.bootstrap")


@dataclass(frozen=True)
class Resources:
    buckets: tuple[str, ...]
    queue_url: str
    dead_letter_queue_url: str


def bootstrap(settings: StorageSettings) -> Resources:
    """Make sure every resource exists; safe to run any number of times, from any replica."""
    s3 = make_client("s3", settings)
    sqs = make_client("sqs", settings)
    buckets = (settings.inbox_bucket, settings.outbox_bucket, settings.control_bucket)
    for bucket in buckets:
        _ensure_bucket(s3, bucket, settings.region)
    call_aws(
        s3.put_bucket_versioning,
        Bucket=settings.control_bucket,
        VersioningConfiguration={"Status": "Enabled"},
        what=settings.control_bucket,
    )
    dlq_url = call_aws(sqs.create_queue, QueueName=settings.queue_name + "-dlq", what="sqs")["QueueUrl"]
    dlq_arn = _queue_arn(sqs, dlq_url)
    queue_url = call_aws(
        sqs.create_queue,
        QueueName=settings.queue_name,
        Attributes={
            "VisibilityTimeout": "120",
            "RedrivePolicy": json.dumps({"deadLetterTargetArn": dlq_arn, "maxReceiveCount": "5"}),
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
        s3.put_bucket_notification_configuration,
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
    log.info("bootstrapped", extra={"buckets": list(buckets), "queue": settings.queue_name})
    return Resources(buckets=buckets, queue_url=queue_url, dead_letter_queue_url=dlq_url)


def find_queue_url(settings: StorageSettings) -> str | None:
    """The intake queue's URL if it exists (explicit setting first), else None: poll instead."""
    if settings.queue_url:
        return settings.queue_url
    sqs = make_client("sqs", settings)
    try:
        return call_aws(sqs.get_queue_url, QueueName=settings.queue_name, what="sqs")["QueueUrl"]
    except (ObjectNotFound, StorageError) as exc:
        if isinstance(exc, ObjectNotFound) or error_code(exc) in {
            "AWS.SimpleQueueService.NonExistentQueue",
            "QueueDoesNotExist",
        }:
            return None
        raise


def _ensure_bucket(s3, bucket: str, region: str) -> None:
    kwargs: dict = {"Bucket": bucket}
    if region != "us-east-1":
        kwargs["CreateBucketConfiguration"] = {"LocationConstraint": region}
    try:
        call_aws(s3.create_bucket, what=bucket, **kwargs)
    except StorageError as exc:
        if error_code(exc) not in {"BucketAlreadyOwnedByYou", "BucketAlreadyExists"}:
            raise


def _queue_arn(sqs, url: str) -> str:
    attrs = call_aws(sqs.get_queue_attributes, QueueUrl=url, AttributeNames=["QueueArn"], what="sqs")
    return attrs["Attributes"]["QueueArn"]
