"""The object-store seam: what dropbatch needs from S3, and nothing more."""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

DEFAULT_PART_SIZE = 8 * 1024 * 1024  # S3's minimum is 5 MiB for every part but the last.
DEFAULT_READ_CHUNK = 1024 * 1024


@dataclass(frozen=True)
class ObjectInfo:
    """What a listing or a HEAD says about one object."""

    key: str
    size: int
    etag: str
    last_modified: float = 0.0
    metadata: dict[str, str] = field(default_factory=dict)


@runtime_checkable
class ObjectStore(Protocol):
    """S3 semantics the services rely on: conditional writes, ranges, streaming.

    Conditional writes are how every gateway, watcher and runner replica agrees:
    ``if_none_match=True`` creates only if absent (else ``ObjectExists``),
    ``if_match=etag`` replaces only that version (else ``StaleWrite``).
    """

    def head(self, bucket: str, key: str) -> ObjectInfo: ...

    def get(self, bucket: str, key: str) -> tuple[bytes, str]:
        """The whole object and its ETag. For small records only; stream large ones."""
        ...

    def iter_bytes(
        self,
        bucket: str,
        key: str,
        *,
        start: int = 0,
        end: int | None = None,
        chunk_size: int = DEFAULT_READ_CHUNK,
    ) -> Iterator[bytes]:
        """Stream ``[start, end)`` of an object in chunks, never holding it whole."""
        ...

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
        """Write ``data``; returns the new ETag."""
        ...

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
        """Write an object of unknown length from ``chunks`` with bounded memory."""
        ...

    def list(self, bucket: str, prefix: str = "", *, start_after: str | None = None) -> Iterator[ObjectInfo]:
        """Every object under ``prefix`` in key order, paginating as it goes."""
        ...

    def delete(self, bucket: str, key: str) -> None:
        """Remove an object; removing a missing object is not an error."""
        ...

    def copy(self, bucket: str, key: str, dest_bucket: str, dest_key: str, *, if_none_match: bool = False) -> str:
        """Copy an object; returns the destination ETag.

        ``if_none_match=True`` creates the destination only if absent (else ``ObjectExists``),
        never replacing what is there.
        """
        ...


@runtime_checkable
class AsyncObjectStore(Protocol):
    """The async twin of ``ObjectStore`` for code on an event loop (the gateway's reads, uploads and writes).

    Same semantics and the same errors (both translate through ``storage.errors``).
    """

    async def head(self, bucket: str, key: str) -> ObjectInfo: ...

    async def get(self, bucket: str, key: str) -> tuple[bytes, str]: ...

    def iter_bytes(
        self,
        bucket: str,
        key: str,
        *,
        start: int = 0,
        end: int | None = None,
        chunk_size: int = DEFAULT_READ_CHUNK,
    ) -> AsyncIterator[bytes]: ...

    async def put(
        self,
        bucket: str,
        key: str,
        data: bytes,
        *,
        if_none_match: bool = False,
        if_match: str | None = None,
        content_type: str = "application/octet-stream",
        metadata: dict[str, str] | None = None,
    ) -> str: ...

    async def upload_stream(
        self,
        bucket: str,
        key: str,
        chunks: AsyncIterable[bytes],
        *,
        if_none_match: bool = False,
        content_type: str = "application/octet-stream",
        part_size: int = DEFAULT_PART_SIZE,
    ) -> ObjectInfo:
        """Like ``ObjectStore.upload_stream``: ``chunks`` awaited, one part in memory at a time."""
        ...

    def list(
        self, bucket: str, prefix: str = "", *, start_after: str | None = None, page_size: int = 1000
    ) -> AsyncIterator[ObjectInfo]:
        """Like ``ObjectStore.list``; ``page_size`` keys per LIST request (a short page asks for few)."""
        ...

    async def delete(self, bucket: str, key: str) -> None: ...

    async def copy(self, bucket: str, key: str, dest_bucket: str, dest_key: str, *, if_none_match: bool = False) -> str:
        """Like ``ObjectStore.copy``: the destination's ETag; create-only with ``if_none_match``."""
        ...

    async def open(self) -> None:
        """Build the client now, sending nothing (the app's start-up); the first call would otherwise."""
        ...

    async def close(self) -> None:
        """Release the connection pool (the app's shutdown)."""
        ...
