"""Bearer-token authentication for tenant routes and the admin token for /admin.

Token records are read from the control bucket with the gateway's async store,
on the event loop, and cached in this process for ``TOKEN_CACHE_SECONDS`` (2 s)
at most, so a revoked token stops working on every replica within that long;
expiry is checked on every request against the cached record. A cached record
past half its life is re-read in the background while it keeps answering, so
a token in steady use never waits for S3; one read per token is in flight at
a time, however many requests ask. A token's first use is one GET: its
``last_used`` stamp (once a minute) is written in the background.

Unknown tokens are remembered for ``UNKNOWN_TOKEN_SECONDS`` (5 s, at most
``_UNKNOWN_MAX_ENTRIES`` of them), so a flood of the same garbage token costs one
S3 read, not one per request. A token created through this replica's
``/admin/tokens`` is forgotten as unknown at once (create-then-use works); one
created elsewhere (the CLI, another replica) works here within 5 s at most.

Every failed attempt (no token, an unknown, revoked or expired one, a wrong
admin token) spends one of the caller address's attempts
(``gateway.ratelimit.AttemptLimiter``); a good token never does, not even on
its first use. An address with none left is answered 429 before any S3 read.
"""

from __future__ import annotations

import asyncio
import functools
import hmac
import ipaddress
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from starlette.requests import Request
from starlette.responses import Response

from dropbatch.aiorecords import AsyncRecords
from dropbatch.auth.tokens import TokenRecord, Tokens, last_used_stamp, lookup_key, matching, needs_touch
from dropbatch.errors import AuthenticationFailed, DropbatchError, NotFound, PermissionDenied, RateLimited
from dropbatch.storage.keys import ControlKeys
from gateway.ratelimit import AttemptLimiter

log = logging.getLogger("dropbatch.gateway")

TOKEN_CACHE_SECONDS = 2.0
_CACHE_MAX_ENTRIES = 10_000
UNKNOWN_TOKEN_SECONDS = 5.0
_UNKNOWN_MAX_ENTRIES = 10_000  # the oldest unknown token is forgotten first past this many


@dataclass(frozen=True)
class Principal:
    """Who is calling: a tenant, through one token."""

    tenant: str
    token_id: str
    tier: str


def client_address(request: Request) -> str:
    """Whose failed attempts a request spends: the TCP peer's address, or its /64 for IPv6.

    One IPv6 host usually holds a whole /64, so keying by single addresses would
    give it billions of buckets to rotate through.
    """
    host = request.client.host if request.client else "unknown"
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return host
    if not isinstance(address, ipaddress.IPv6Address):
        return host
    if address.ipv4_mapped is not None:
        return str(address.ipv4_mapped)
    return str(ipaddress.IPv6Network((address, 64), strict=False))


def bearer(request: Request) -> str | None:
    header = request.headers.get("authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "bearer" or not value.strip():
        return None
    return value.strip()


class TokenAuth:
    """Looks tokens up in the control bucket through a short-lived cache, failed attempts limited per address."""

    def __init__(
        self,
        tokens: Tokens,
        records: AsyncRecords,
        *,
        cache_seconds: float = TOKEN_CACHE_SECONDS,
        unknown_seconds: float = UNKNOWN_TOKEN_SECONDS,
        attempts: AttemptLimiter | None = None,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.tokens = tokens
        self.records = records
        self.cache_seconds = cache_seconds
        self.unknown_seconds = unknown_seconds
        self.attempts = attempts or AttemptLimiter()
        self.monotonic = monotonic
        self._cache: dict[str, tuple[float, TokenRecord]] = {}
        self._unknown: OrderedDict[str, float] = OrderedDict()
        self._reading: dict[str, asyncio.Task[TokenRecord | None]] = {}
        self._stamping: dict[str, asyncio.Task[None]] = {}  # by token id: held so no task is collected early

    def _known_unknown(self, token: str) -> bool:
        """True while ``token`` is remembered as not existing."""
        since = self._unknown.get(token)
        if since is None:
            return False
        if self.monotonic() - since >= self.unknown_seconds:
            del self._unknown[token]
            return False
        return True

    def _remember(self, token: str, record: TokenRecord | None) -> None:
        if record is None:
            if self.unknown_seconds > 0:
                self._unknown.pop(token, None)
                while len(self._unknown) >= _UNKNOWN_MAX_ENTRIES:
                    self._unknown.popitem(last=False)
                self._unknown[token] = self.monotonic()
        elif self.cache_seconds > 0:
            if len(self._cache) >= _CACHE_MAX_ENTRIES:
                self._cache.clear()
            self._cache[token] = (self.monotonic(), record)

    def forget_unknown(self, token: str) -> None:
        """``token`` exists now (this replica just issued it): stop answering it as unknown."""
        self._unknown.pop(token, None)

    async def resolve(self, token: str) -> TokenRecord | None:
        """The record for ``token`` (usable or not) from the caches or S3; None if unknown."""
        hit = self._cache.get(token)
        if hit is not None:
            age = self.monotonic() - hit[0]
            if age < self.cache_seconds:
                if age >= self.cache_seconds / 2 and token not in self._reading:
                    self._read(token).add_done_callback(_log_failed_refresh)  # answered from the cache meanwhile
                return hit[1]
        if self._known_unknown(token):
            return None
        return await asyncio.shield(self._read(token))  # a caller that goes away leaves the read to the others

    def _read(self, token: str) -> asyncio.Task[TokenRecord | None]:
        """The one read of ``token`` in flight, started if there is none."""
        task = self._reading.get(token)
        if task is None:
            task = self._reading[token] = asyncio.ensure_future(self._lookup(token))
            task.add_done_callback(lambda _: self._reading.pop(token, None))
        return task

    async def _lookup(self, token: str) -> TokenRecord | None:
        where = lookup_key(token)
        record = matching(await self.records.get(where[0], TokenRecord), where[1]) if where else None
        self._remember(token, record)
        if record is not None and record.usable(int(self.tokens.clock())):
            self._stamp_soon(record)
        return record

    def _stamp_soon(self, record: TokenRecord) -> None:
        """Stamp last_used in the background (once a minute at most): bookkeeping no request waits for."""
        if record.id in self._stamping or not needs_touch(record, int(self.tokens.clock())):
            return
        task = self._stamping[record.id] = asyncio.ensure_future(self._touch(record))
        task.add_done_callback(lambda _: self._stamping.pop(record.id, None))

    async def _touch(self, record: TokenRecord) -> None:
        """A failure to write last_used never fails anything: it is logged."""
        stamp = last_used_stamp(int(self.tokens.clock()))
        try:
            await self.records.update(ControlKeys.token(record.token_hash), TokenRecord, stamp)
        except DropbatchError as exc:
            log.warning("could not record token use", extra={"token_id": record.id, "error": str(exc)})

    async def authenticate(self, request: Request) -> Principal:
        """The caller of a tenant route, or ``AuthenticationFailed`` / ``RateLimited``."""
        token = bearer(request)
        address = client_address(request)
        if token is None:
            self.attempts.spend(address)
            raise AuthenticationFailed(
                "You didn't provide an API key. Send it in the Authorization header: 'Bearer YOUR_KEY'.",
                code="missing_api_key",
            )
        now = int(self.tokens.clock())
        hit = self._cache.get(token)
        if hit is not None and hit[1].usable(now):
            # A token this replica found good (however long ago) spends no attempt to be re-checked: many
            # clients behind one address (a NAT, a load balancer) re-check theirs every cache period.
            record = await self.resolve(token)
        else:
            async with self.attempts.attempt(address) as attempt:
                record = await self.resolve(token)
                attempt.failed = record is None or not record.usable(now)
        record = self.tokens.check(record)
        return Principal(tenant=record.tenant, token_id=record.id, tier=record.tier)


def _log_failed_refresh(task: asyncio.Task) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.warning("could not refresh a cached token", extra={"error": str(task.exception())})


async def check_admin(request: Request, admin_token: str | None, auth: TokenAuth) -> None:
    """Allow only the configured admin token: 404 if none is configured, 401/403 otherwise, 429 when guessing."""
    if not admin_token:
        raise NotFound(f"Unknown request URL: {request.method} {request.url.path}.", code="not_found")
    address = client_address(request)
    auth.attempts.spend(address)  # even the right token waits past the burst: else 200 vs 429 would tell
    token = bearer(request)
    if token is not None and hmac.compare_digest(token.encode(), admin_token.encode()):
        auth.attempts.refund(address)
        return
    if token is None:
        raise AuthenticationFailed(
            "This route needs the admin token as 'Authorization: Bearer …'.", code="missing_api_key"
        )
    record = await auth.resolve(token)
    if record is None or not record.usable(int(auth.tokens.clock())):
        raise AuthenticationFailed("Incorrect admin token provided.")
    raise PermissionDenied("Tenant API keys cannot use admin routes.", code="admin_only")


Endpoint = Callable[[Request], Awaitable[Response]]


def tenant_route(handler: Callable[[Request, Principal], Awaitable[Response]]) -> Endpoint:
    """Wrap ``handler(request, principal)``: authenticate the bearer token, then spend one API call."""

    @functools.wraps(handler)
    async def endpoint(request: Request) -> Response:
        gateway = request.app.state.gateway
        principal = await gateway.auth.authenticate(request)
        request.scope.setdefault("state", {})["tenant"] = principal.tenant  # for the access log
        try:
            gateway.limiter.check(principal.token_id, principal.tier)
        except RateLimited:
            gateway.metrics.rate_limited.labels(principal.tier).inc()
            raise
        return await handler(request, principal)

    return endpoint
