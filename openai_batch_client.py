"""The original design's client module name: everything here is ``dropbatch.client``."""

from dropbatch.client import BatchClient, create_batch, get_batch_results, retrieve_batch

__all__ = ["BatchClient", "create_batch", "get_batch_results", "retrieve_batch"]
