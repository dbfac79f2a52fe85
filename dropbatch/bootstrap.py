"""Create the buckets, the intake queue and the inbox → queue notification, idempotently.

What `dropbatch up` and `dropbatch bootstrap` do against a local emulator; in AWS,
Terraform creates the same resources (terraform/) and this only checks them.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from dropbatch.errors import ObjectExists
from dropbatch.queues import ensure_intake_queue
from dropbatch.settings import StorageSettings
from dropbatch.storage.s3 import call_aws, make_client

log = logging.getLogger("dropbatch.bootstrap")


@dataclass(frozen=True)
class Resources:
    buckets: tuple[str, ...]
    queue_url: str
    dead_letter_queue_url: str


def bootstrap(settings: StorageSettings) -> Resources:
    """Make sure every resource exists; safe to run any number of times, from any replica."""
    buckets = ensure_buckets(settings)
    queue = ensure_intake_queue(settings)
    log.info("bootstrapped", extra={"buckets": list(buckets), "queue": settings.queue_name})
    return Resources(buckets=buckets, queue_url=queue.url, dead_letter_queue_url=queue.dead_letter_url)


def ensure_buckets(settings: StorageSettings) -> tuple[str, ...]:
    """The three buckets (the control bucket versioned): all the gateway needs, on any S3-compatible server."""
    s3 = make_client("s3", settings)
    buckets = (settings.inbox_bucket, settings.outbox_bucket, settings.control_bucket)
    for bucket in buckets:
        _ensure_bucket(s3, bucket, settings.region)
    call_aws(
        s3.put_bucket_versioning,
        Bucket=settings.control_bucket,
        VersioningConfiguration={"Status": "Enabled"},
        what=settings.control_bucket,
    )
    return buckets


def _ensure_bucket(s3, bucket: str, region: str) -> None:
    kwargs: dict = {"Bucket": bucket}
    if region != "us-east-1":
        kwargs["CreateBucketConfiguration"] = {"LocationConstraint": region}
    try:
        call_aws(s3.create_bucket, what=bucket, **kwargs)
    except ObjectExists:
        pass  # created before (by us, another replica or Terraform)
