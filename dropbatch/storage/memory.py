"""An in-memory ``ObjectStore`` with S3's conditional-write semantics, for fast unit tests.

Never the default and never what the demo runs: services build ``S3ObjectStore``.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Iterable, Iterator

from dropbatch.errors import ObjectExists, ObjectNotFound, StaleWrite
from dropbatch.storage.base import DEFAULT_PART_SIZE, DEFAULT_READ_CHUNK, ObjectInfo


class MemoryObjectStore:
    """Buckets as dicts; one lock makes every conditional write atomic, like S3."""

    def __init__(self, buckets: Iterable[str] = ()) -> None:
        self._lock = threading.Lock()
        self._buckets: dict[str, dict[str, tuple[bytes, ObjectInfo]]] = {b: {} for b in buckets}

    def _bucket(self, bucket: str) -> dict[str, tuple[bytes, ObjectInfo]]:
        try:
            return self._buckets[bucket]
        except KeyError:
            raise ObjectNotFound(f"bucket {bucket} does not exist") from None

    def create_bucket(self, bucket: str) -> None:
        with self._lock:
            self._buckets.setdefault(bucket, {})

    def head(self, bucket: str, key: str) -> ObjectInfo:
        with self._lock:
            try:
                return self._bucket(bucket)[key][1]
            except KeyError:
                raise ObjectNotFound(f"s3://{bucket}/{key} does not exist") from None

    def get(self, bucket: str, key: str) -> tuple[bytes, str]:
        with self._lock:
            try:
                data, info = self._bucket(bucket)[key]
            except KeyError:
                raise ObjectNotFound(f"s3://{bucket}/{key} does not exist") from None
            return data, info.etag

    def iter_bytes(
        self, bucket: str, key: str, *, start: int = 0, end: int | None = None, chunk_size: int = DEFAULT_READ_CHUNK
    ) -> Iterator[bytes]:
        data, _ = self.get(bucket, key)
        data = data[start:end]
        for offset in range(0, len(data), chunk_size):
            yield data[offset : offset + chunk_size]

    def put(
        self,
        bucket: str,
        key: str,
        data: bytes,
        *,
        if_none_match: bool = False,
        if_match: str | None = None,
        content_type: str = "application/octet-stream",
        metadata: dict[str, str] | None = None,
    ) -> str:
        with self._lock:
            objects = self._bucket(bucket)
            current = objects.get(key)
            if if_none_match and current is not None:
                raise ObjectExists(f"s3://{bucket}/{key} already exists")
            if if_match is not None and (current is None or current[1].etag != if_match):
                if current is None:
                    raise ObjectNotFound(f"s3://{bucket}/{key} does not exist")
                raise StaleWrite(f"s3://{bucket}/{key} changed since it was read")
            etag = '"' + hashlib.md5(data).hexdigest() + f'-{time.monotonic_ns()}"'
            objects[key] = (bytes(data), ObjectInfo(key, len(data), etag, time.time(), dict(metadata or {})))
            return etag

    def upload_stream(
        self,
        bucket: str,
        key: str,
        chunks: Iterable[bytes],
        *,
        if_none_match: bool = False,
        content_type: str = "application/octet-stream",
        part_size: int = DEFAULT_PART_SIZE,
    ) -> ObjectInfo:
        data = b"".join(chunks)
        etag = self.put(bucket, key, data, if_none_match=if_none_match, content_type=content_type)
        return ObjectInfo(key, len(data), etag)

    def list(self, bucket: str, prefix: str = "", *, start_after: str | None = None) -> Iterator[ObjectInfo]:
        with self._lock:
            infos = sorted(
                (info for k, (_, info) in self._bucket(bucket).items() if k.startswith(prefix)),
                key=lambda info: info.key,
            )
        for info in infos:
            if start_after is None or info.key > start_after:
                yield info

    def delete(self, bucket: str, key: str) -> None:
        with self._lock:
            self._bucket(bucket).pop(key, None)

    def copy(self, bucket: str, key: str, dest_bucket: str, dest_key: str, *, if_none_match: bool = False) -> str:
        data, _ = self.get(bucket, key)
        return self.put(dest_bucket, dest_key, data, if_none_match=if_none_match)
