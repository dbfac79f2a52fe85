"""The records a gateway process's list pages show without reading them again.

A page of 20 batches was one LIST and 20 record GETs; a hundred dashboards polling
the newest page of one account read the same 20 records over and over, and those
reads were most of the gateway's and the S3 server's CPU (README, "The gateway at
load"). A page now takes each record from here when it may:

* a record that can no longer change, a finished batch (``records.finished_stays``
  refuses to change one) or a file (written once, only ever deleted), for as long
  as it stays among the ``size`` most recently used;
* any other record for ``ttl`` seconds after it was read or written here.

The LIST that starts every page still decides which records exist, so a new batch
or a deleted file shows on the next page at once, and this process's own writes
replace their entry as they are made. ``batches.retrieve`` and ``files.retrieve``
read S3 for anything that can still change: what a client wrote, a retrieve shows,
whichever worker or replica it lands on. Only a list page served by another
process than the one that took a cancel can show the batch's older state, for at
most ``ttl`` seconds.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

DEFAULT_SIZE = 10_000


class PageCache:
    """Records by S3 key, with when they were read; bounded, least recently used out first. One event loop."""

    def __init__(self, ttl: float, *, size: int = DEFAULT_SIZE, clock: Callable[[], float] = time.monotonic) -> None:
        self.ttl = ttl
        self.size = size
        self.clock = clock
        self._entries: OrderedDict[str, tuple[Any, float]] = OrderedDict()

    def get(self, key: str, *, final: Callable[[Any], bool]) -> Any | None:
        """The record kept for ``key`` if a page may show it: ``final`` ones always, others while fresh."""
        entry = self._entries.get(key)
        if entry is None:
            return None
        record, read_at = entry
        if not final(record) and self.clock() - read_at >= self.ttl:
            return None
        self._entries.move_to_end(key)
        return record

    def put(self, key: str, record: Any) -> None:
        """``record`` as just read from, or written to, S3."""
        self._entries[key] = (record, self.clock())
        self._entries.move_to_end(key)
        while len(self._entries) > self.size:
            self._entries.popitem(last=False)

    def drop(self, key: str) -> None:
        self._entries.pop(key, None)

    def __len__(self) -> int:
        return len(self._entries)
