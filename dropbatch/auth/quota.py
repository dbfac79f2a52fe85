"""The hourly request quota, per tenant, as a ledger in the control bucket.

A quota counts what the engine does, not lines: each embeddings input and each
``n`` choice is one request (``dropbatch.bodies.request_cost``), and a line
identical to an earlier deterministic line of its batch is computed once, so
it counts nothing (``dropbatch.duplicates``). Each admitted
batch appends ``(at, batch_id, lines)`` where ``lines`` holds that count (the
field keeps its name so existing ledgers still read); entries older than an hour
fall out (a rolling window). The ledger is changed only by conditional writes, so
several watchers admitting at once never over-admit.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from pydantic import BaseModel, Field

from dropbatch.errors import ObjectExists, QuotaExceeded
from dropbatch.records import Clock, Records
from dropbatch.storage.keys import ControlKeys

WINDOW_SECONDS = 3600


class QuotaEntry(BaseModel):
    at: int
    batch_id: str
    lines: int  # requests counted (embedding inputs and choices), not request lines


class QuotaLedger(BaseModel):
    tenant: str
    entries: list[QuotaEntry] = Field(default_factory=list)

    def used(self, now: int) -> int:
        return sum(e.lines for e in self.entries if e.at > now - WINDOW_SECONDS)


@dataclass(frozen=True)
class QuotaBudget:
    """What one batch may still use of its tenant's hour, read before its lines are, so reading stops past it."""

    ledger: QuotaLedger  # the other batches' entries: an admission retried after a crash has its own already
    tier: str
    limit: int
    now: int
    left: int

    def refusal(self, requests: int, lines: int) -> QuotaExceeded:
        """The ``QuotaExceeded`` of a batch whose first ``lines`` lines already ask for ``requests`` (> ``left``)."""
        return _exceeded(self.ledger, self.tier, self.limit, requests, self.now, lines, at_least=True)


class Quotas:
    def __init__(self, records: Records, *, limits: dict[str, int], clock: Clock) -> None:
        self.records = records
        self.limits = limits
        self.clock = clock

    def limit(self, tier: str) -> int:
        return self.limits[tier]

    def reserve(self, tenant: str, tier: str, batch_id: str, requests: int, *, lines: int | None = None) -> None:
        """Count ``requests`` against ``tenant``'s hour, or raise ``QuotaExceeded`` saying when it fits.

        ``requests`` is what the engine will do (embedding inputs and choices); ``lines``,
        the request lines they came from, only words the error. Reserving the same
        ``batch_id`` twice counts it once (admission is retried).
        """
        limit = self.limit(tier)
        key = ControlKeys.quota(tenant)
        try:
            self.records.create(key, QuotaLedger(tenant=tenant))
        except ObjectExists:
            pass

        def admit(ledger: QuotaLedger) -> None:
            now = int(self.clock())
            ledger.entries = [e for e in ledger.entries if e.at > now - WINDOW_SECONDS]
            if any(e.batch_id == batch_id for e in ledger.entries):
                return
            used = ledger.used(now)
            if used + requests > limit:
                raise _exceeded(ledger, tier, limit, requests, now, lines)
            ledger.entries.append(QuotaEntry(at=now, batch_id=batch_id, lines=requests))

        self.records.update(key, QuotaLedger, admit)

    def budget(self, tenant: str, tier: str, batch_id: str) -> QuotaBudget:
        """What ``batch_id`` may use of ``tenant``'s hour now (a reservation it holds already not counted); no write."""
        now = int(self.clock())
        ledger = self.records.get(ControlKeys.quota(tenant), QuotaLedger) or QuotaLedger(tenant=tenant)
        ledger.entries = [e for e in ledger.entries if e.batch_id != batch_id and e.at > now - WINDOW_SECONDS]
        limit = self.limit(tier)
        return QuotaBudget(ledger=ledger, tier=tier, limit=limit, now=now, left=limit - ledger.used(now))

    def release(self, tenant: str, batch_id: str) -> None:
        """Give back a reservation (a batch that failed before running anything)."""

        def drop(ledger: QuotaLedger) -> None:
            ledger.entries = [e for e in ledger.entries if e.batch_id != batch_id]

        if self.records.get(ControlKeys.quota(tenant), QuotaLedger) is not None:
            self.records.update(ControlKeys.quota(tenant), QuotaLedger, drop)

    def keep_share(self, tenant: str, batch_id: str, share: float) -> None:
        """Keep ``share`` (0-1) of ``batch_id``'s reservation: a batch stopped early used only what ran.

        Requests are kept in proportion to the lines that ran, rounded up; a share of 0 gives it all back.
        """

        def cut(ledger: QuotaLedger) -> None:
            for entry in ledger.entries:
                if entry.batch_id == batch_id:
                    entry.lines = min(entry.lines, math.ceil(entry.lines * max(share, 0.0)))
            ledger.entries = [e for e in ledger.entries if e.lines > 0]

        if self.records.get(ControlKeys.quota(tenant), QuotaLedger) is not None:
            self.records.update(ControlKeys.quota(tenant), QuotaLedger, cut)

    def usage(self, tenant: str, tier: str) -> tuple[int, int]:
        """(requests used in the last hour, hourly limit)."""
        ledger = self.records.get(ControlKeys.quota(tenant), QuotaLedger) or QuotaLedger(tenant=tenant)
        return ledger.used(int(self.clock())), self.limit(tier)


def _counted(requests: int, lines: int | None, *, at_least: bool = False) -> str:
    if at_least:  # admission stopped reading the batch there: it cannot fit, whatever follows
        return f"at least {_counted(requests, lines)}, read no further"
    if lines is None or lines == requests:
        return f"{requests} requests"
    return (
        f"{requests} requests (from {lines} request line{'' if lines == 1 else 's'}: each embeddings input "
        "and each of n choices counts as one request; a repeat of an identical deterministic line counts none)"
    )


def _exceeded(
    ledger: QuotaLedger, tier: str, limit: int, requests: int, now: int, lines: int | None, *, at_least: bool = False
) -> QuotaExceeded:
    used = ledger.used(now)
    asks = _counted(requests, lines, at_least=at_least)
    if requests > limit:
        return QuotaExceeded(
            f"The batch asks for {asks}; the {tier} tier allows {limit} requests per hour, "
            "so it can never fit. Split it into smaller batches or move to a higher tier.",
            retry_at=now,
        )
    needed = used + requests - limit
    retry_at = now
    for entry in sorted(ledger.entries, key=lambda e: e.at):
        needed -= entry.lines
        retry_at = entry.at + WINDOW_SECONDS
        if needed <= 0:
            break
    return QuotaExceeded(
        f"The batch asks for {asks} but the {tier} tier has {limit - used} of {limit} left "
        f"this hour; it would fit in {retry_at - now} s (at unix time {retry_at}).",
        retry_at=retry_at,
    )
