"""The work queue: admitted batches waiting for a runner, earliest deadline first.

Entries are objects ``queue/<deadline>_<batch_id>.json`` in the control bucket, so
listing is EDF order. A runner owns a batch while it holds its lease
(``leases/<batch_id>.json``, created with If-None-Match, renewed with If-Match);
a lease that stops being renewed expires and another runner takes the batch over.
"""

from __future__ import annotations

import os
import secrets
import socket
from collections.abc import Collection, Iterator
from dataclasses import dataclass

from pydantic import BaseModel

from dropbatch.errors import LeaseLost, ObjectExists, ObjectNotFound, StaleWrite
from dropbatch.models import BatchRecord
from dropbatch.records import Clock, Records
from dropbatch.storage.keys import ControlKeys


class QueueEntry(BaseModel):
    batch_id: str
    tenant: str
    deadline: int  # created_at + the batch's completion window
    lines: int
    model: str = ""  # entries written before it was kept count toward the default model
    created_at: int | None = None  # None: written before it was kept (a 24h batch: deadline - 24 h)

    @classmethod
    def of(cls, record: BatchRecord) -> QueueEntry:
        return cls(
            batch_id=record.id,
            tenant=record.tenant,
            deadline=record.expires_at or record.created_at,
            lines=record.request_counts.total,
            model=record.model or "",
            created_at=record.created_at,
        )


class LeaseBody(BaseModel):
    batch_id: str
    owner: str
    expires_at: float


@dataclass
class Lease:
    """Proof that this runner owns a batch until ``expires_at``."""

    batch_id: str
    owner: str
    etag: str
    expires_at: float


def runner_identity() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"


class WorkQueue:
    def __init__(self, records: Records, *, clock: Clock) -> None:
        self.records = records
        self.clock = clock

    def enqueue(self, entry: QueueEntry) -> None:
        """Add an admitted batch; adding it twice is a no-op (intake is idempotent)."""
        try:
            self.records.create(ControlKeys.queue_entry(entry.deadline, entry.batch_id), entry)
        except ObjectExists:
            pass

    def entries(self, *, skip: Collection[str] = ()) -> Iterator[QueueEntry]:
        """Queued batches, earliest deadline first; those whose batch id is in ``skip`` are not read."""
        for key in self.records.list_keys(ControlKeys.QUEUE_PREFIX):
            if skip and ControlKeys.queue_entry_batch(key) in skip:
                continue
            entry = self.records.get(key, QueueEntry)
            if entry is not None:
                yield entry

    def remove(self, entry: QueueEntry) -> None:
        self.records.store.delete(self.records.bucket, ControlKeys.queue_entry(entry.deadline, entry.batch_id))

    def depth(self) -> tuple[int, int]:
        """(batches, request lines) waiting or running."""
        batches = lines = 0
        for entry in self.entries():
            batches += 1
            lines += entry.lines
        return batches, lines

    def claim(self, batch_id: str, owner: str, lease_seconds: float) -> Lease | None:
        """Take the lease on ``batch_id`` if nobody holds a live one."""
        key = ControlKeys.lease(batch_id)
        body = LeaseBody(batch_id=batch_id, owner=owner, expires_at=self.clock() + lease_seconds)
        try:
            etag = self.records.create(key, body)
            return Lease(batch_id, owner, etag, body.expires_at)
        except ObjectExists:
            pass
        try:
            current, etag = self.records.load(key, LeaseBody)
        except ObjectNotFound:
            return None  # released between our two calls; the next poll gets it
        if current.expires_at > self.clock() and current.owner != owner:
            return None
        try:
            etag = self.records.store.put(
                self.records.bucket, key, body.model_dump_json().encode(), if_match=etag
            )
        except (StaleWrite, ObjectNotFound):
            return None
        return Lease(batch_id, owner, etag, body.expires_at)

    def renew(self, lease: Lease, lease_seconds: float) -> None:
        """Extend ``lease``; raises ``LeaseLost`` if it expired and someone took it."""
        body = LeaseBody(batch_id=lease.batch_id, owner=lease.owner, expires_at=self.clock() + lease_seconds)
        try:
            lease.etag = self.records.store.put(
                self.records.bucket,
                ControlKeys.lease(lease.batch_id),
                body.model_dump_json().encode(),
                if_match=lease.etag,
            )
        except (StaleWrite, ObjectNotFound) as exc:
            raise LeaseLost(f"lease on {lease.batch_id} was taken over") from exc
        lease.expires_at = body.expires_at

    def release(self, lease: Lease) -> None:
        self.records.store.delete(self.records.bucket, ControlKeys.lease(lease.batch_id))
