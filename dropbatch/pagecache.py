"""The records a gateway process's list pages show without reading them again.

A page of 20 batches was one LIST and 20 record GETs; a hundred dashboards polling
the newest page of one account read the same 20 records over and over, and those
reads were most of the gateway's and the S3 server's CPU (README, "The gateway under
load"). A page now takes each record from here when it may:

* a record that can no longer change, a finished batch (``records.finished_stays``
  refuses to change one) or a file (written once, only ever deleted), for as long
  as it stays among the most recently used that fit the ``budget``;
* any other record for ``ttl`` seconds after the read that got it was sent, or it was written here.

The keys a page LISTed are kept too (``Listings``), for ``ttl`` seconds: the same page
polled again within it costs no S3 request.

A ``ttl`` of 0 keeps nothing: every page LISTs and reads every record, as before the cache.

This process's own writes replace their record as they are made and update the
listings they change (a create joins the kept windows it falls in, a delete drops
the prefix's windows), so what a client wrote here, the next page here shows.
``batches.retrieve`` reads S3 unless the batch has finished, ``files.retrieve``
always (a file can be deleted): what a client wrote, a retrieve shows, whichever
worker or replica it lands on. A list page served by another process than the one
that took a write (or a batch the watcher admitted or moved on) can show the
older state, for at most ``ttl`` seconds.
"""

from __future__ import annotations

import itertools
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any, NamedTuple

# Weights are units of ~1.3 KB of Python objects: a file record is 1, a batch record 3 plus one per
# chunk and input (a 50,000-line batch, 100 chunks of 500 lines, is ~130 KB parsed). So ~26 MB at most.
DEFAULT_BUDGET = 20_000


class Ticket(NamedTuple):
    """What a read takes before it is sent: the last write or read stamped here, and when it was sent
    (what it gets is as old as that)."""

    last: int
    sent_at: float


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

    def due(self, key: str) -> bool:
        """True if the record kept for ``key`` can change and is half its ``ttl`` old: time to read it
        again, in the background, before a page has to wait for it."""
        entry = self._entries.get(key)
        return entry is not None and not self.final(entry[0]) and self.clock() - entry[1] >= self.ttl / 2

    def ticket(self) -> Ticket:
        """Take one before a read; pass it to ``put`` with what the read got."""
        return Ticket(self._last, self.clock())

    def put(self, key: str, record: Any, *, since: Ticket | None = None) -> None:
        """``record`` as just written to S3 (``since`` None), or read from it after taking ``since``."""
        if self.ttl <= 0:
            return
        entry = self._entries.get(key)
        if entry is not None and since is not None:
            kept, _, stamped, _ = entry
            if stamped > since.last or (self.final(kept) and not self.final(record)):
                return  # written or read again while this read was on its way: that is newer
        self.drop(key)
        self._last = next(self._tickets)
        weight = self.weight(record)
        self._entries[key] = (record, self.clock() if since is None else since.sent_at, self._last, weight)
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


class Listings:
    """The index keys list pages LISTed, for ``ttl`` seconds after the LIST: the same page polled again
    within it costs no S3 request at all. One event loop.

    A window is the first ``n`` keys of ``prefix`` after ``start_after``. This process's creates ``add``
    their index key to the windows it falls in and its deletes ``forget`` the prefix's windows, so what
    was written here shows on the next page here; what another process or replica (or the watcher)
    wrote shows within ``ttl``. A LIST sent before such a write is not kept (the ``ticket`` it took
    says so). At most ``size`` windows, the least recently used out first.
    """

    def __init__(self, ttl: float, *, size: int = 1024, clock: Callable[[], float] = time.monotonic) -> None:
        self.ttl = ttl
        self.size = size
        self.clock = clock
        self._windows: OrderedDict[tuple[str, str | None, int], tuple[list[str], float]] = OrderedDict()
        self._written: dict[str, int] = {}  # prefix -> the ticket its last write here left
        self._tickets = itertools.count(1)
        self._last = 0

    def get(self, prefix: str, start_after: str | None, n: int) -> list[str] | None:
        window = (prefix, start_after, n)
        entry = self._windows.get(window)
        if entry is None:
            return None
        if self.clock() - entry[1] >= self.ttl:
            del self._windows[window]
            return None
        self._windows.move_to_end(window)
        return entry[0]

    def due(self, prefix: str, start_after: str | None, n: int) -> bool:
        """True if the window is kept and half its ``ttl`` old: time to LIST it again, in the background."""
        entry = self._windows.get((prefix, start_after, n))
        return entry is not None and self.clock() - entry[1] >= self.ttl / 2

    def ticket(self) -> Ticket:
        """Take one before a LIST; pass it to ``put`` with the keys it got."""
        return Ticket(self._last, self.clock())

    def put(self, prefix: str, start_after: str | None, n: int, keys: list[str], *, since: Ticket) -> None:
        if self.ttl <= 0 or self._written.get(prefix, 0) > since.last:
            return  # a write here under the prefix came after this LIST was sent: what it got may miss it
        self._windows[(prefix, start_after, n)] = (keys, since.sent_at)
        self._windows.move_to_end((prefix, start_after, n))
        while len(self._windows) > self.size:
            self._windows.popitem(last=False)

    def add(self, prefix: str, key: str) -> None:
        """This process wrote the index ``key`` under ``prefix``: the kept windows it falls in take it,
        as a LIST now would show them; the LISTs on their way are out of date."""
        self._stamp(prefix)
        for (kept_prefix, start_after, n), (keys, listed_at) in list(self._windows.items()):
            if kept_prefix != prefix or (start_after is not None and key <= start_after) or key in keys:
                continue
            if len(keys) < n or key < keys[-1]:
                self._windows[(prefix, start_after, n)] = (sorted([*keys, key])[:n], listed_at)

    def forget(self, prefix: str) -> None:
        """This process deleted under ``prefix``: its windows, kept or on their way, are out of date."""
        self._stamp(prefix)
        for window in [w for w in self._windows if w[0] == prefix]:
            del self._windows[window]

    def _stamp(self, prefix: str) -> None:
        self._last = next(self._tickets)
        self._written[prefix] = self._last

    def __len__(self) -> int:
        return len(self._windows)
