"""The records a gateway process's list pages show without reading them again.

A page of 20 batches was one LIST and 20 record GETs; a hundred dashboards polling
the newest page of one account read the same 20 records over and over, and those
reads were most of the gateway's and the S3 server's CPU (README, "The gateway under
load"). A page now takes each record from here when it may:

* a record that can no longer change, a finished batch (``records.finished_stays``
  refuses to change one) or a file (written once, only ever deleted), for as long
  as it stays among the most recently used that fit the ``budget``;
* any other record for ``ttl`` seconds after it was read or written here.

A ``ttl`` of 0 keeps nothing: every page reads every record, as before the cache.

The LIST that starts every page still decides which records exist, so a new batch
or a deleted file shows on the next page at once, and this process's own writes
replace their entry as they are made. ``batches.retrieve`` reads S3 unless the
batch has finished, ``files.retrieve`` always (a file can be deleted): what a
client wrote, a retrieve shows, whichever worker or replica it lands on. Only a
list page served by another process than the one that took a cancel can show the
batch's older state, for at most ``ttl`` seconds.
"""

from __future__ import annotations

import itertools
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

# Weights are units of ~1.3 KB of Python objects: a file record is 1, a batch record 3 plus one per
# chunk and input (a 50,000-line batch, 100 chunks of 500 lines, is ~130 KB parsed). So ~26 MB at most.
DEFAULT_BUDGET = 20_000


class PageCache:
    """Records by S3 key, with when they were read; at most ``budget`` of ``weight``, the least recently
    used out first. One event loop.

    ``final`` says which records can no longer change. A read passes the ``ticket`` it took before it
    was sent, so what it got cannot replace what a write or a later read left meanwhile.
    """

    def __init__(self, ttl: float, *, final: Callable[[Any], bool], weight: Callable[[Any], int] = lambda _: 1,
                 budget: int = DEFAULT_BUDGET, clock: Callable[[], float] = time.monotonic) -> None:
        self.ttl = ttl
        self.final = final
        self.weight = weight
        self.budget = budget
        self.clock = clock
        self.held = 0  # the weight of what is kept
        self._entries: OrderedDict[str, tuple[Any, float, int, int]] = OrderedDict()
        self._tickets = itertools.count(1)
        self._last = 0

    def get(self, key: str, *, changing_too: bool = True) -> Any | None:
        """The record kept for ``key`` if it may be shown: a final one always, another while fresh
        (never, with ``changing_too=False``)."""
        entry = self._entries.get(key)
        if entry is None:
            return None
        record, read_at, _, _ = entry
        if not self.final(record) and (not changing_too or self.clock() - read_at >= self.ttl):
            return None
        self._entries.move_to_end(key)
        return record

    def ticket(self) -> int:
        """Take one before a read; pass it to ``put`` with what the read got."""
        return self._last

    def put(self, key: str, record: Any, *, since: int | None = None) -> None:
        """``record`` as just written to S3 (``since`` None), or read from it after taking ``since``."""
        if self.ttl <= 0:
            return
        entry = self._entries.get(key)
        if entry is not None and since is not None:
            kept, _, stamped, _ = entry
            if stamped > since or (self.final(kept) and not self.final(record)):
                return  # written or read again while this read was on its way: that is newer
        self.drop(key)
        self._last = next(self._tickets)
        weight = self.weight(record)
        self._entries[key] = (record, self.clock(), self._last, weight)
        self.held += weight
        while self.held > self.budget:
            _, (_, _, _, gone) = self._entries.popitem(last=False)
            self.held -= gone

    def drop(self, key: str) -> None:
        entry = self._entries.pop(key, None)
        if entry is not None:
            self.held -= entry[3]

    def __len__(self) -> int:
        return len(self._entries)
