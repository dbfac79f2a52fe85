"""JSON records in the control bucket, changed only by conditional writes.

Create is ``If-None-Match: *``; change is read → mutate → ``If-Match`` the ETag read,
retried when another replica won the race. That is the whole concurrency story:
no locks, no database, any number of gateways, watchers and runners.
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Callable, Iterable, Iterator
from typing import NamedTuple, TypeVar

from pydantic import BaseModel

from dropbatch.errors import Conflict, NotFound, ObjectExists, ObjectNotFound, StaleWrite, StorageError
from dropbatch.models import BatchRecord, FileRecord
from dropbatch.storage.base import ObjectStore
from dropbatch.storage.keys import ControlKeys, JobRef

M = TypeVar("M", bound=BaseModel)
Clock = Callable[[], float]


JSON = "application/json"
OCTETS = "application/octet-stream"


def dump(model: BaseModel) -> bytes:
    return model.model_dump_json(exclude_none=False).encode("utf-8")


def conflict_pause(attempt: int) -> float:
    """Seconds before re-reading a record another writer changed under us (jittered, growing to 1 s)."""
    return min(0.05 * 2**attempt, 1.0) * (0.5 + secrets.randbelow(1000) / 1000)


def batch_not_found(batch_id: str) -> NotFound:
    return NotFound(f"No batch found with id '{batch_id}'.", param="batch_id")


def finished_stays(mutate: Callable[[BatchRecord], None]) -> Callable[[BatchRecord], None]:
    """``mutate`` for a batch record, refused (``Conflict``) where it would change a finished batch.

    A finished batch's record is final: it is what its results are read by, and the gateway's list
    pages keep finished records without reading them again (``dropbatch.pagecache``).
    """

    def guarded(batch: BatchRecord) -> None:
        if not batch.status.is_terminal:
            mutate(batch)
            return
        before = dump(batch)
        mutate(batch)
        if dump(batch) != before:
            raise Conflict(f"batch {batch.id} is {batch.status.value}; a finished batch does not change",
                           code="invalid_state")

    return guarded


def file_not_found(file_id: str) -> NotFound:
    return NotFound(f"No such File object: {file_id}", param="file_id")


class Records:
    """Typed JSON documents in one bucket with create-once and compare-and-swap."""

    def __init__(self, store: ObjectStore, bucket: str) -> None:
        self.store = store
        self.bucket = bucket

    def create(self, key: str, model: BaseModel) -> str:
        """Write ``model`` at ``key`` only if nothing is there (``ObjectExists`` otherwise)."""
        return self.store.put(self.bucket, key, dump(model), if_none_match=True, content_type=JSON)

    def put(self, key: str, model: BaseModel) -> str:
        return self.store.put(self.bucket, key, dump(model), content_type=JSON)

    def load(self, key: str, cls: type[M]) -> tuple[M, str]:
        data, etag = self.store.get(self.bucket, key)
        return cls.model_validate_json(data), etag

    def get(self, key: str, cls: type[M]) -> M | None:
        try:
            return self.load(key, cls)[0]
        except ObjectNotFound:
            return None

    def update(self, key: str, cls: type[M], mutate: Callable[[M], None], *, attempts: int = 20) -> M:
        """Apply ``mutate`` to the current record and write it back if nobody wrote in between.

        ``mutate`` changes the record in place and may raise to abort. It can run more
        than once (after a lost race), so it must depend only on the record it is given.
        """
        for attempt in range(attempts):
            record, etag = self.load(key, cls)
            before = dump(record)
            mutate(record)
            after = dump(record)
            if after == before:
                return record
            try:
                self.store.put(self.bucket, key, after, if_match=etag, content_type=JSON)
                return record
            except StaleWrite:
                time.sleep(conflict_pause(attempt))
        raise StorageError(f"s3://{self.bucket}/{key}: gave up after {attempts} conflicting writes")

    def list_keys(self, prefix: str, *, start_after: str | None = None) -> Iterator[str]:
        for info in self.store.list(self.bucket, prefix, start_after=start_after):
            yield info.key


class BatchStore:
    """Batch records of every tenant, with a newest-first index for listing."""

    def __init__(self, records: Records) -> None:
        self.records = records

    def create(self, record: BatchRecord) -> None:
        """Store a new batch; raises ``ObjectExists`` if this id was already created."""
        for write in batch_writes(record):
            self.records.store.put(
                self.records.bucket, write.key, write.body, if_none_match=write.create_only, content_type=write.content_type
            )

    def get(self, tenant: str, batch_id: str) -> BatchRecord:
        record = self.records.get(ControlKeys.batch(tenant, batch_id), BatchRecord)
        if record is None:
            raise batch_not_found(batch_id)
        return record

    def update(self, tenant: str, batch_id: str, mutate: Callable[[BatchRecord], None]) -> BatchRecord:
        try:
            return self.records.update(ControlKeys.batch(tenant, batch_id), BatchRecord, finished_stays(mutate))
        except ObjectNotFound:
            raise batch_not_found(batch_id) from None

    def point_job(self, ref: JobRef, batch_id: str) -> None:
        """Make ``dropbatch status TENANT/JOB`` find ``batch_id`` (the job's latest batch)."""
        write = job_pointer(ref, batch_id)
        self.records.store.put(self.records.bucket, write.key, write.body, content_type=write.content_type)

    def for_job(self, ref: JobRef) -> BatchRecord:
        try:
            data, _ = self.records.store.get(self.records.bucket, ControlKeys.job(ref))
        except ObjectNotFound:
            raise NotFound(f"No batch found for job '{ref}'.", param="job") from None
        return self.get(ref.tenant, json.loads(data)["batch_id"])

    def refuse_manifest(self, ref: JobRef, manifest_sha256: str, *, live_batch_id: str, now: int) -> None:
        """Remember that a manifest of ``ref`` was refused while ``live_batch_id`` ran: it stays refused."""
        body = {"manifest_sha256": manifest_sha256, "live_batch_id": live_batch_id, "refused_at": now}
        try:
            self.records.store.put(
                self.records.bucket,
                ControlKeys.refused_manifest(ref, manifest_sha256),
                json.dumps(body).encode(),
                if_none_match=True,
                content_type=JSON,
            )
        except ObjectExists:
            pass  # another watcher refused it first

    def was_refused(self, ref: JobRef, manifest_sha256: str) -> bool:
        try:
            self.records.store.head(self.records.bucket, ControlKeys.refused_manifest(ref, manifest_sha256))
        except ObjectNotFound:
            return False
        return True

    def refused_while(self, ref: JobRef, batch_id: str) -> list[dict]:
        """The manifests of ``ref`` refused because ``batch_id`` was running, oldest first."""
        found = []
        for key in self.records.list_keys(ControlKeys.refused_manifest_prefix(ref)):
            try:
                data, _ = self.records.store.get(self.records.bucket, key)
            except ObjectNotFound:
                continue
            body = json.loads(data)
            if body.get("live_batch_id") == batch_id:
                found.append(body)
        return sorted(found, key=lambda body: body.get("refused_at", 0))

    def list(self, tenant: str, *, after: str | None = None, limit: int = 20) -> tuple[list[BatchRecord], bool]:
        """A page of ``tenant``'s batches, newest first, after the batch id ``after``."""
        anchor = None
        if after is not None:
            record = self.get(tenant, after)
            anchor = ControlKeys.batch_index(tenant, record.created_at, record.id)
        return page_index(
            self.records,
            ControlKeys.batch_index_prefix(tenant),
            anchor=anchor,
            load=lambda batch_id: self.records.get(ControlKeys.batch(tenant, batch_id), BatchRecord),
            limit=limit,
        )


class FileStore:
    """File records of every tenant (uploads and batch results).

    A file past its ``expires_at`` is gone for every reader at once (404, not
    listed); the watcher's expiry sweep (``dropbatch.expiry``) deletes its record
    and bytes afterwards, through the ``index/expiry/`` entry written at create.
    """

    def __init__(self, records: Records, *, clock: Clock = time.time) -> None:
        self.records = records
        self.clock = clock

    def create(self, record: FileRecord) -> None:
        for write in file_writes(record):
            self.records.store.put(
                self.records.bucket, write.key, write.body, if_none_match=write.create_only, content_type=write.content_type
            )

    def _live(self, record: FileRecord | None) -> FileRecord | None:
        return record if record is not None and record.live_at(self.clock()) else None

    def get(self, tenant: str, file_id: str) -> FileRecord:
        record = self._live(self.records.get(ControlKeys.file(tenant, file_id), FileRecord))
        if record is None:
            raise file_not_found(file_id)
        return record

    def delete(self, tenant: str, file_id: str) -> FileRecord:
        """Delete the file as ``files.delete`` does: gone for readers now, its bytes at the next sweep."""
        record = self.get(tenant, file_id)
        due = bytes_due(record, int(self.clock()))  # before the record: a crash in between leaves a harmless entry
        self.records.store.put(self.records.bucket, due.key, due.body, content_type=due.content_type)
        self.remove(record)
        return record

    def remove(self, record: FileRecord) -> None:
        """Delete ``record`` and its index entry, expired or not (the bytes are the caller's)."""
        store, bucket = self.records.store, self.records.bucket
        store.delete(bucket, ControlKeys.file_index(record.tenant, record.created_at, record.id))
        store.delete(bucket, ControlKeys.file(record.tenant, record.id))

    def list(
        self,
        tenant: str,
        *,
        after: str | None = None,
        limit: int = 10_000,
        newest_first: bool = True,
        purpose: str | None = None,
    ) -> tuple[list[FileRecord], bool]:
        """A page of ``tenant``'s live files in creation order, after the file id ``after``."""
        anchor = None
        if after is not None:
            record = self.get(tenant, after)
            anchor = ControlKeys.file_index(tenant, record.created_at, record.id)
        return page_index(
            self.records,
            ControlKeys.file_index_prefix(tenant),
            anchor=anchor,
            load=lambda file_id: self._live(self.records.get(ControlKeys.file(tenant, file_id), FileRecord)),
            limit=limit,
            newest_first=newest_first,
            keep=(lambda record: record.purpose == purpose) if purpose is not None else None,
        )


class ExpiryEntry(BaseModel):
    """``index/expiry/<expires_at>/<tenant>/<file_id>.json``: which bytes to delete once the file expired."""

    tenant: str
    file_id: str
    bucket: str
    key: str
    created_at: int = 0


class Write(NamedTuple):
    """One object a record's creation writes."""

    key: str
    body: bytes
    create_only: bool
    content_type: str


def file_writes(record: FileRecord) -> Iterator[Write]:
    """What creating ``record`` writes, in order (``FileStore.create`` and its async twin).

    The expiry entry comes before the record: a crash in between leaves a harmless entry.
    """
    if record.expires_at is not None:
        yield bytes_due(record, record.expires_at)
    yield Write(ControlKeys.file(record.tenant, record.id), dump(record), True, JSON)
    yield Write(ControlKeys.file_index(record.tenant, record.created_at, record.id), b"", False, OCTETS)


def bytes_due(record: FileRecord, due_at: int) -> Write:
    """The expiry entry that has the watcher's sweep delete ``record``'s bytes from ``due_at`` on.

    Written at create for a file with ``expires_at``, and by a delete with the time of the delete: the
    sweep deletes the bytes once nothing reads them (a batch still running on an upload keeps them).
    """
    due = ExpiryEntry(
        tenant=record.tenant, file_id=record.id, bucket=record.bucket, key=record.key, created_at=record.created_at
    )
    return Write(ControlKeys.expiry(due_at, record.tenant, record.id), dump(due), False, JSON)


def batch_writes(record: BatchRecord) -> Iterator[Write]:
    """What creating ``record`` writes, in order (``BatchStore.create`` and its async twin): the record
    create-only (``ObjectExists`` for an id created before), then its entry in the newest-first index."""
    yield Write(ControlKeys.batch(record.tenant, record.id), dump(record), True, JSON)
    yield Write(ControlKeys.batch_index(record.tenant, record.created_at, record.id), b"", False, OCTETS)


def job_pointer(ref: JobRef, batch_id: str) -> Write:
    """The object that makes ``dropbatch status TENANT/JOB`` find ``batch_id``."""
    return Write(ControlKeys.job(ref), json.dumps({"batch_id": batch_id}).encode(), False, JSON)


def page_index(
    records: Records,
    prefix: str,
    *,
    anchor: str | None,
    load: Callable[[str], M | None],
    limit: int,
    newest_first: bool = True,
    keep: Callable[[M], bool] | None = None,
) -> tuple[list[M], bool]:
    """One page of records through a newest-first index (``<prefix><rank>_<id>`` keys).

    Returns the page and whether more records follow. ``anchor`` is the index key of
    the record the page starts after; ``keep`` filters records without ending the page.
    """
    if newest_first:  # the index's key order
        keys: Iterable[str] = records.list_keys(prefix, start_after=anchor)
    else:
        keys = oldest_first(list(records.list_keys(prefix)), anchor)
    page: list[M] = []
    for key in keys:
        if take(page, [load(indexed_id(key))], limit=limit, keep=keep):
            return page, True
    return page, False


def oldest_first(index_keys: list[str], anchor: str | None) -> list[str]:
    """Index keys (newest first) turned oldest first, starting after ``anchor``."""
    ordered = index_keys[::-1]
    return ordered[ordered.index(anchor) + 1 :] if anchor in ordered else ordered


def take(page: list[M], loaded: Iterable[M | None], *, limit: int, keep: Callable[[M], bool] | None) -> bool:
    """Add ``loaded`` records to ``page`` (skipping missing and unkept ones); True once one more than ``limit`` is found."""
    for record in loaded:
        if record is None or (keep is not None and not keep(record)):
            continue
        if len(page) == limit:
            return True
        page.append(record)
    return False


def indexed_id(index_key: str) -> str:
    """The id in an index key ``index/<kind>/<tenant>/<rank>_<id>``."""
    return index_key.rsplit("/", 1)[1].split("_", 1)[1]


def indexed_created_at(index_key: str) -> int:
    """The creation time in a newest-first index key (its rank is the time remaining to 10^11)."""
    return 10**11 - int(index_key.rsplit("/", 1)[1].split("_", 1)[0])


def audit(records: Records, event: str, *, now: float, **fields: object) -> None:
    """Append one event to the control bucket's audit log (never secrets)."""
    records.store.put(records.bucket, *audit_entry(event, now=now, **fields), if_none_match=True)


def audit_entry(event: str, *, now: float, **fields: object) -> tuple[str, bytes]:
    """The key and body of one audit log event."""
    body = json.dumps({"event": event, "at": now, **fields}, sort_keys=True, default=str).encode()
    return ControlKeys.audit(now, secrets.token_hex(6)), body
