"""Expired files: deleting the records and bytes of files past their ``expires_at``.

A file with ``expires_after`` (an upload) or from a batch with
``output_expires_after`` (its output and error files) answers 404 from the
moment it expires (``FileStore`` checks the clock on every read). This sweep,
run by the watcher, then deletes what is left, due entries of
``index/expiry/`` oldest first (``files.delete`` writes one due at once, so a
deleted file's bytes go the same way):

- the File record and its listing entry;
- the bytes, unless something still needs them: an upload read by a batch that
  has not finished, or an outbox result another live File record (a repeated,
  cached batch of the same tenant) points at. Such an entry stays and is
  tried again at the next sweep. Finding those reads the tenant's batch records
  created since the upload, or all of the tenant's file records for a result:
  a cost paid once per expiring file, by the watcher, never by a request.

Result bytes go with their whole result (``summary.json`` first, so the work
stops counting as done and a repeated job runs again, then ``output.jsonl`` and
``errors.jsonl``), never a partial result of another batch under the same prefix.
"""

from __future__ import annotations

import logging

from dropbatch.context import Context
from dropbatch.errors import ObjectNotFound
from dropbatch.models import BatchRecord, FileRecord
from dropbatch.records import ExpiryEntry, indexed_created_at, indexed_id
from dropbatch.storage.keys import ControlKeys

log = logging.getLogger("dropbatch.expiry")

RESULT_NAMES = ("summary.json", "output.jsonl", "errors.jsonl")  # deletion order


def sweep_expired(ctx: Context) -> int:
    """Delete every file due by now; returns how many files' bytes were deleted."""
    now = ctx.now()
    deleted = 0
    for key in ctx.records.list_keys(ControlKeys.EXPIRY_PREFIX):
        if ControlKeys.expiry_due_at(key) > now:
            break  # keys sort by due time
        entry = ctx.records.get(key, ExpiryEntry)
        if entry is None:
            continue
        record = ctx.records.get(ControlKeys.file(entry.tenant, entry.file_id), FileRecord)
        if record is not None:
            if record.expires_at is None or record.expires_at > now:
                continue  # never the bytes of a file that is still live
            ctx.files.remove(record)
        if _still_needed(ctx, entry, now):
            continue
        _delete_bytes(ctx, entry)
        ctx.store.delete(ctx.records.bucket, key)
        log.info("expired file deleted", extra={"tenant": entry.tenant, "file_id": entry.file_id})
        deleted += 1
    return deleted


def _delete_bytes(ctx: Context, entry: ExpiryEntry) -> None:
    if entry.bucket == ctx.outbox:
        folder = entry.key.rsplit("/", 1)[0]
        for name in RESULT_NAMES:
            ctx.store.delete(entry.bucket, f"{folder}/{name}")
    else:
        ctx.store.delete(entry.bucket, entry.key)


def _still_needed(ctx: Context, entry: ExpiryEntry, now: int) -> bool:
    if entry.bucket == ctx.outbox:
        return _result_shared(ctx, entry, now)
    return _upload_in_use(ctx, entry)


def _result_shared(ctx: Context, entry: ExpiryEntry, now: int) -> bool:
    """Another live File record of the tenant points into the same result folder."""
    folder = entry.key.rsplit("/", 1)[0] + "/"
    for index_key in ctx.records.list_keys(ControlKeys.file_index_prefix(entry.tenant)):
        file_id = indexed_id(index_key)
        if file_id == entry.file_id:
            continue
        other = ctx.records.get(ControlKeys.file(entry.tenant, file_id), FileRecord)
        if (
            other is not None
            and other.bucket == entry.bucket
            and other.key.rsplit("/", 1)[0] + "/" == folder
            and (other.expires_at is None or other.expires_at > now)
        ):
            return True
    return False


def _upload_in_use(ctx: Context, entry: ExpiryEntry) -> bool:
    """A batch that has not finished reads the upload's bytes (only batches created after it can)."""
    for index_key in ctx.records.list_keys(ControlKeys.batch_index_prefix(entry.tenant)):  # newest first
        if indexed_created_at(index_key) < entry.created_at:
            break
        try:
            batch, _ = ctx.records.load(ControlKeys.batch(entry.tenant, indexed_id(index_key)), BatchRecord)
        except ObjectNotFound:
            continue
        reads = batch.input_file_id == entry.file_id or any(source.key == entry.key for source in batch.inputs)
        if reads and not batch.status.is_terminal:
            return True
    return False
