"""API-call rate limits per token: a token bucket per token id, sized by the token's tier.

This limits HTTP calls, not request lines (the hourly request-line quota is the
watcher's, at admission, for the drop-box and the gateway alike). The buckets
live in this process: with N gateway replicas behind a load balancer a token
gets up to N times these rates. That is deliberate (no shared state on the hot
path); the request-line quota is the limit that holds across replicas.

    tier        sustained          burst
    free           60 calls/min       20
    basic         300 calls/min       60
    premium     1 200 calls/min      200
    enterprise  6 000 calls/min    1 000

A tier not in the table (custom tiers from DROPBATCH_TIER_QUOTAS) gets the
``free`` row. Exceeding the bucket answers 429 with ``retry-after``: the whole
seconds until one call's worth of tokens has refilled.

Failed attempts are limited per client address before any token is looked up
(``AttemptLimiter``): a missing, unknown, revoked or expired bearer token, or a
wrong admin token, spends one of ``ATTEMPT_RATE`` (30/min, bursts of 10). A
lookup of a token this replica has not seen reserves one attempt while it
reads S3 and spends it only if the token turns out bad: a valid token's first
use is never a failed login, however many new tokens one address brings at
once (lookups past the reserved budget wait for the ones in flight instead of
failing). While an address has none left, every request from it that is not
already authenticated by the token cache (the admin token included) answers
429 without touching S3. The address is the TCP peer (an IPv6 peer's /64):
behind a load balancer that does not preserve it, all callers share one
bucket.
"""

from __future__ import annotations

import asyncio
import math
import threading
import time
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass

from dropbatch.errors import RateLimited


@dataclass(frozen=True)
class TierRate:
    per_minute: float
    burst: int

    @property
    def per_second(self) -> float:
        return self.per_minute / 60.0


DEFAULT_RATES: dict[str, TierRate] = {
    "free": TierRate(per_minute=60, burst=20),
    "basic": TierRate(per_minute=300, burst=60),
    "premium": TierRate(per_minute=1200, burst=200),
    "enterprise": TierRate(per_minute=6000, burst=1000),
}
ATTEMPT_RATE = TierRate(per_minute=30, burst=10)  # failed authentication attempts per client address
FALLBACK_TIER = "free"
MAX_TRACKED_TOKENS = 100_000  # buckets of idle tokens are dropped past this many


@dataclass
class _Bucket:
    tokens: float
    updated: float


class RateLimiter:
    """Token buckets keyed by token id; ``check`` spends one call or raises ``RateLimited``."""

    def __init__(
        self, rates: Mapping[str, TierRate] | None = None, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.rates = dict(DEFAULT_RATES if rates is None else rates)
        self.clock = clock
        self._buckets: dict[str, _Bucket] = {}
        self._lock = threading.Lock()

    def rate(self, tier: str) -> TierRate:
        return self.rates.get(tier) or self.rates.get(FALLBACK_TIER) or DEFAULT_RATES[FALLBACK_TIER]

    def check(self, key: str, tier: str) -> None:
        """Spend one call from ``key``'s bucket, or raise ``RateLimited``."""
        rate = self.rate(tier)
        now = self.clock()
        with self._lock:
            bucket = self._buckets.get(key)
            if bucket is None:
                if len(self._buckets) >= MAX_TRACKED_TOKENS:
                    self._forget_full(now)
                bucket = self._buckets[key] = _Bucket(tokens=float(rate.burst), updated=now)
            bucket.tokens = _refilled(bucket, rate, now)
            bucket.updated = now
            if bucket.tokens >= 1.0:
                bucket.tokens -= 1.0
                return
            wait = (1.0 - bucket.tokens) / rate.per_second if rate.per_second > 0 else 120.0
        raise RateLimited(
            f"Rate limit reached for this API key ({tier} tier: {rate.per_minute:g} calls per minute, "
            f"bursts of {rate.burst}). Retry in {math.ceil(wait)} s.",
            retry_after=max(1, math.ceil(wait)),
        )

    def available(self, key: str, tier: str) -> float:
        """The calls ``key`` could spend now (fractions included), spending none."""
        rate = self.rate(tier)
        with self._lock:
            bucket = self._buckets.get(key)
            return float(rate.burst) if bucket is None else _refilled(bucket, rate, self.clock())

    def allows(self, key: str, tier: str) -> bool:
        """Spend one call if ``key`` has one left; False (spending nothing) when its bucket is empty."""
        try:
            self.check(key, tier)
        except RateLimited:
            return False
        return True

    def refund(self, key: str, tier: str) -> None:
        """Give back one call ``check`` spent (up to the burst)."""
        with self._lock:
            bucket = self._buckets.get(key)
            if bucket is not None:
                bucket.tokens = min(float(self.rate(tier).burst), bucket.tokens + 1.0)

    def _forget_full(self, now: float) -> None:
        """Drop buckets that would have refilled anyway (their tokens are idle)."""
        for key, bucket in list(self._buckets.items()):
            if now - bucket.updated > 600:
                del self._buckets[key]


def _refilled(bucket: _Bucket, rate: TierRate, now: float) -> float:
    return min(float(rate.burst), bucket.tokens + (now - bucket.updated) * rate.per_second)


@dataclass
class Attempt:
    """The outcome of one reserved attempt: set ``failed`` when the credentials were bad."""

    failed: bool = False


class AttemptLimiter:
    """Failed authentication attempts per client address.

    ``spend`` counts a failure now (a missing token, a wrong admin token).
    ``async with attempt(address) as a`` reserves one attempt around a token
    lookup and spends it only if ``a.failed`` is set. Reserving first keeps the
    bound under concurrency: however many lookups of one address run at once,
    at most its remaining attempts of them are in flight (the rest wait for
    those to settle), so at most the burst of failures reach S3.
    """

    def __init__(self, rate: TierRate = ATTEMPT_RATE, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._buckets = RateLimiter({"attempts": rate}, clock=clock)
        self.rate = rate
        self._pending: dict[str, int] = {}
        self._settled: asyncio.Event | None = None

    @asynccontextmanager
    async def attempt(self, address: str) -> AsyncIterator[Attempt]:
        """Reserve one attempt of ``address`` (``RateLimited`` if it has none), spent only if it fails."""
        await self._reserve(address)
        outcome = Attempt()
        try:
            yield outcome
        finally:
            left = self._pending.pop(address) - 1
            if left:
                self._pending[address] = left
            if outcome.failed:
                self._buckets.allows(address, "attempts")
            if self._settled is not None:
                self._settled.set()
                self._settled = None

    async def _reserve(self, address: str) -> None:
        while True:
            pending = self._pending.get(address, 0)
            available = self._buckets.available(address, "attempts")
            if available - pending >= 1:
                self._pending[address] = pending + 1
                return
            if pending == 0:  # none left and none in flight
                per_second = self.rate.per_second
                raise self._limited(max(1, math.ceil((1.0 - available) / per_second)) if per_second > 0 else 120)
            if self._settled is None:
                self._settled = asyncio.Event()
            await self._settled.wait()  # an attempt in flight holds the last ones: see how it ends

    def spend(self, address: str) -> None:
        """Spend one attempt of ``address``, or raise ``RateLimited`` (429) when it has none left."""
        try:
            self._buckets.check(address, "attempts")
        except RateLimited as exc:
            raise self._limited(exc.retry_after) from None

    def _limited(self, retry_after: int) -> RateLimited:
        return RateLimited(
            f"Too many failed authentication attempts from this address ({self.rate.per_minute:g} per "
            f"minute, bursts of {self.rate.burst}). Retry in {retry_after} s.",
            retry_after=retry_after,
        )

    def refund(self, address: str) -> None:
        """The attempt succeeded: it does not count."""
        self._buckets.refund(address, "attempts")
