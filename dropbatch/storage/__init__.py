"""Object storage: the ``ObjectStore`` seam, its S3 implementation, and every key layout."""

from dropbatch.storage.base import ObjectInfo, ObjectStore
from dropbatch.storage.memory import MemoryObjectStore
from dropbatch.storage.s3 import S3ObjectStore

__all__ = ["MemoryObjectStore", "ObjectInfo", "ObjectStore", "S3ObjectStore"]
