"""The watcher service: S3 events from SQS when configured, a listing sweep always.

Both feed the same ``admit_manifest`` call; the sweep catches lost or delayed
events (and is the only source when there is no queue). Every ``sweep_seconds``
the watcher also deletes expired files (``dropbatch.expiry``).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from dropbatch.context import Context
from dropbatch.errors import DropbatchError
from dropbatch.expiry import sweep_expired
from dropbatch.models import BatchRecord, BatchStatus
from dropbatch.observability.metrics import Metrics
from dropbatch.queues import EventQueue
from dropbatch.storage.keys import is_manifest_name, job_of_manifest_key
from watcher.admission import admit_manifest
from watcher.rejections import reject_manifest_key

log = logging.getLogger("dropbatch.watcher")
T = TypeVar("T")


class Watcher:
    def __init__(self, ctx: Context, *, events: EventQueue | None = None, metrics: Metrics | None = None) -> None:
        self.ctx = ctx
        self.events = events
        self.metrics = metrics or Metrics("watcher")
        # (key, ETag without quotes) of the manifests handled, by an event or a sweep: the sweep skips
        # them. Without the events' ones, every sweep admitted every manifest in the inbox again (a few
        # S3 calls each, in the loop events wait on): 5 s of a small job's latency behind a big one.
        self._seen: set[tuple[str, str]] = set()
        self._counted: set[str] = set()  # batch ids already counted in dropbatch_manifests_total
        self._counted_lock = threading.Lock()  # several manifests are handled at once
        self._last_sweep = 0.0
        self._last_expiry_sweep: float | None = None

    def handle(self, key: str, etag: str | None = None) -> bool:
        """Admit the job whose manifest is ``key``; False if it must be retried later.

        A manifest-named key that is not a job's manifest gets a ``rejection.json``
        beside it when it is under an existing tenant's prefix.
        """
        ref = job_of_manifest_key(key)
        try:
            if ref is None:
                if code := reject_manifest_key(self.ctx, key):
                    self.metrics.manifests.labels("rejected", code).inc()
                record = None
            else:
                record = admit_manifest(self.ctx, ref)
        except DropbatchError as exc:
            log.error("admission failed; will retry", extra={"key": key, "error": str(exc)})
            return False
        if record is not None and record.status != BatchStatus.VALIDATING and self._count_once(record.id):
            if record.status == BatchStatus.FAILED:
                reason = record.errors.data[0].code if record.errors and record.errors.data else "rejected"
                self.metrics.manifests.labels("rejected", reason).inc()
            else:
                self.metrics.manifests.labels("admitted", _admitted_reason(record)).inc()
        if etag is not None:
            self._seen.add((key, etag.strip('"')))
        return True

    def _count_once(self, batch_id: str) -> bool:
        with self._counted_lock:
            first = batch_id not in self._counted
            self._counted.add(batch_id)
        return first

    def _each(self, handle: Callable[[T], int], items: Iterable[T], tenant: Callable[[T], str]) -> int:
        """``handle`` over ``items``: one tenant's in the order given, up to ``watcher_workers`` tenants at once.

        Different tenants' admissions are independent; one tenant's are not (they share its
        hourly quota), so its manifests are admitted one after another, oldest first.
        """
        queues: dict[str, list[T]] = {}
        for item in items:
            queues.setdefault(tenant(item), []).append(item)
        workers = min(self.ctx.settings.service.watcher_workers, len(queues))
        if workers <= 1:
            return sum(handle(item) for queue in queues.values() for item in queue)
        with ThreadPoolExecutor(workers, thread_name_prefix="admit") as pool:
            return sum(pool.map(lambda queue: sum(handle(item) for item in queue), queues.values()))

    def sweep(self) -> int:
        """List the inbox and admit every manifest not yet handled by this process."""
        self._last_sweep = time.monotonic()
        # Any letter case, any depth: keys the S3 event filter (suffix /manifest.json) misses too.
        listed = {(info.key, info.etag.strip('"')): info for info in self.ctx.store.list(self.ctx.inbox)
                  if is_manifest_name(info.key)}
        self._seen &= listed.keys()  # a deleted manifest is forgotten: the set stays as big as the inbox
        new = sorted((info for seen, info in listed.items() if seen not in self._seen),
                     key=lambda info: (info.last_modified, info.key))
        return self._each(lambda info: self.handle(info.key, info.etag), new, lambda info: _tenant_of(info.key))

    def drain_events(self, wait_seconds: int = 0) -> int:
        if self.events is None:
            return 0
        events = self.events

        def deliver(delivery) -> int:
            if all(self.handle(key, etag) for key, etag in delivery.manifests):
                events.ack(delivery.receipt)  # else SQS redelivers it after the visibility timeout
                return len(delivery.manifests)
            return 0

        def tenant(delivery) -> str:
            return _tenant_of(next((m.key for m in delivery.manifests), ""))  # an S3 event names one object

        return self._each(deliver, events.receive(wait_seconds), tenant)

    def sweep_expired(self) -> int:
        """Delete files past their ``expires_at`` (records and bytes); returns how many went."""
        self._last_expiry_sweep = time.monotonic()
        return sweep_expired(self.ctx)

    def _expiry_due(self) -> bool:
        last = self._last_expiry_sweep
        return last is None or time.monotonic() - last >= self.ctx.settings.service.sweep_seconds

    def run_once(self) -> int:
        """Burst mode: take every pending event, sweep once, delete expired files. Tests drain with this."""
        handled = self.drain_events(0) + self.sweep()
        self.sweep_expired()
        return handled

    def run(self, stop: threading.Event) -> None:
        service = self.ctx.settings.service
        log.info("watcher started", extra={"intake": "sqs+sweep" if self.events else "poll"})
        while not stop.is_set():
            try:
                if self.events is not None:
                    self.drain_events(wait_seconds=max(1, min(20, int(service.poll_seconds))))
                    if time.monotonic() - self._last_sweep >= service.sweep_seconds:
                        self.sweep()
                else:
                    self.sweep()
                if self._expiry_due():
                    self.sweep_expired()
                if self.events is None:
                    stop.wait(service.poll_seconds)
            except DropbatchError as exc:
                log.error("intake pass failed", extra={"error": str(exc)})
                stop.wait(service.poll_seconds)


def _admitted_reason(record: BatchRecord) -> str:
    """cached (answered from the outbox), deadline_at_risk (admitted with that warning) or queued."""
    if record.cached:
        return "cached"
    if any(w.code == "deadline_at_risk" for w in record.warnings):
        return "deadline_at_risk"
    return "queued"


def _tenant_of(key: str) -> str:
    """The tenant an inbox key is under (its first segment); a foreign key is rejected by admission itself."""
    return key.split("/", 1)[0]
