"""What the watcher needs from an intake queue: deliveries of inbox manifest keys, acked when handled."""

from __future__ import annotations

import json
from typing import NamedTuple, Protocol
from urllib.parse import unquote_plus

from dropbatch.storage.keys import is_manifest_name


class Manifested(NamedTuple):
    """A manifest an S3 event names: its key, and its ETag without quotes (None if the event has none)."""

    key: str
    etag: str | None = None


class Delivery(NamedTuple):
    """One queue message: its receipt (to ack) and the inbox manifests it names, with their ETags."""

    receipt: str
    manifests: list[Manifested]


class EventQueue(Protocol):
    """An at-least-once queue of inbox events (SQS in production).

    A delivery that is not acked comes back after the queue's visibility timeout,
    so the watcher acks only once every key in it was handled.
    """

    def receive(self, wait_seconds: int) -> list[Delivery]:
        """Up to a batch of deliveries, waiting at most ``wait_seconds`` for the first."""
        ...

    def ack(self, receipt: str) -> None:
        """Delete a handled delivery so it is not redelivered."""
        ...

    def check(self) -> str | None:
        """Readiness: None when the queue answers, else why not."""
        ...


def manifests_in_message(body: str, inbox_bucket: str) -> list[Manifested]:
    """Inbox manifests named by one message body (an S3 event notification)."""
    try:
        event = json.loads(body)
    except ValueError:
        return []
    keys = []
    for record in event.get("Records", []) if isinstance(event, dict) else []:
        s3 = record.get("s3", {})
        if s3.get("bucket", {}).get("name") != inbox_bucket:
            continue
        # S3 (and moto) URL-encode keys in events, '/' included.
        key = unquote_plus(s3.get("object", {}).get("key", ""))
        if is_manifest_name(key):
            etag = s3.get("object", {}).get("eTag")
            keys.append(Manifested(key, str(etag).strip('"') if etag else None))
    return keys
