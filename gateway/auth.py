"""Bearer-token authentication for tenant routes and the admin token for /admin.

Token lookups are cached in this process for ``TOKEN_CACHE_SECONDS`` (2 s) at
most, so a revoked token stops working on every replica within that long;
expiry is checked on every request against the cached record.

Unknown tokens are remembered for ``UNKNOWN_TOKEN_SECONDS`` (5 s, at most
``_UNKNOWN_MAX_ENTRIES`` of them), so a flood of the same garbage token costs one
S3 read, not one per request. A token created through this replica's
``/admin/tokens`` is forgotten as unknown at once (create-then-use works); one
created elsewhere (the CLI, another replica) works here within 5 s at most.

Every failed attempt (no token, an unknown, revoked or expired one, a wrong
admin token) spends one of the caller address's attempts
(``gateway.ratelimit.AttemptLimiter``); an address with none left is answered
429 before any S3 read.
"""

from __future__ import annotations

import functools
import hmac
import ipaddress
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response

from dropbatch.auth.tokens import TokenRecord, Tokens
from dropbatch.errors import AuthenticationFailed, DropbatchError, NotFound, PermissionDenied, RateLimited
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
        *,
        cache_seconds: float = TOKEN_CACHE_SECONDS,
        unknown_seconds: float = UNKNOWN_TOKEN_SECONDS,
        attempts: AttemptLimiter | None = None,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.tokens = tokens
        self.cache_seconds = cache_seconds
        self.unknown_seconds = unknown_seconds
        self.attempts = attempts or AttemptLimiter()
        self.monotonic = monotonic
        self._cache: dict[str, tuple[float, TokenRecord]] = {}
        self._unknown: OrderedDict[str, float] = OrderedDict()
        self._lock = threading.Lock()

    def _cached(self, token: str) -> TokenRecord | None:
        if self.cache_seconds <= 0:
            return None
        with self._lock:
            hit = self._cache.get(token)
            if hit is None:
                return None
            if self.monotonic() - hit[0] >= self.cache_seconds:
                return None  # kept (stale) until replaced: ``_was_good`` still knows it
            return hit[1]

    def _was_good(self, token: str, now: int) -> bool:
        """True if this replica's last lookup of ``token``, however stale, found it usable."""
        with self._lock:
            hit = self._cache.get(token)
        return hit is not None and hit[1].usable(now)

    def _remember(self, token: str, record: TokenRecord) -> None:
        if self.cache_seconds <= 0:
            return
        with self._lock:
            if len(self._cache) >= _CACHE_MAX_ENTRIES:
                self._cache.clear()
            self._cache[token] = (self.monotonic(), record)

    def _known_unknown(self, token: str) -> bool:
        """True while ``token`` is remembered as not existing."""
        with self._lock:
            since = self._unknown.get(token)
            if since is None:
                return False
            if self.monotonic() - since >= self.unknown_seconds:
                del self._unknown[token]
                return False
            return True

    def _remember_unknown(self, token: str) -> None:
        if self.unknown_seconds <= 0:
            return
        with self._lock:
            self._unknown.pop(token, None)
            while len(self._unknown) >= _UNKNOWN_MAX_ENTRIES:
                self._unknown.popitem(last=False)
            self._unknown[token] = self.monotonic()

    def forget_unknown(self, token: str) -> None:
        """``token`` exists now (this replica just issued it): stop answering it as unknown."""
        with self._lock:
            self._unknown.pop(token, None)

    def resolve(self, token: str) -> TokenRecord | None:
        """The record for ``token`` (usable or not) from the caches or S3; None if unknown."""
        record = self._cached(token)
        if record is not None:
            return record
        if self._known_unknown(token):
            return None
        record = self.tokens.lookup(token)
        if record is None:
            self._remember_unknown(token)
            return None
        if record.usable(int(self.tokens.clock())):
            record = self._touch(record)
        self._remember(token, record)
        return record

    def authenticate_sync(self, token: str | None, address: str = "unknown") -> Principal:
        """Blocking (S3 on a cache miss): call through a thread from async code."""
        if token is None:
            self.attempts.spend(address)
            raise AuthenticationFailed(
                "You didn't provide an API key. Send it in the Authorization header: 'Bearer YOUR_KEY'.",
                code="missing_api_key",
            )
        now = int(self.tokens.clock())
        record = self._cached(token)
        if record is None:
            # Re-checking a token this replica found good costs no attempt: many clients behind one
            # address (a NAT, a load balancer) re-check theirs every cache period, all at once.
            spent = not self._was_good(token, now)
            if spent:
                self.attempts.spend(address)  # before any S3 read; given back below if the token is good
            record = self.resolve(token)
            if spent and record is not None and record.usable(now):
                self.attempts.refund(address)
        elif not record.usable(now):
            self.attempts.spend(address)
        record = self.tokens.check(record)
        return Principal(tenant=record.tenant, token_id=record.id, tier=record.tier)

    def _touch(self, record: TokenRecord) -> TokenRecord:
        """Stamp last_used; bookkeeping, so a failure to write it never fails the request."""
        try:
            return self.tokens.touch(record)
        except DropbatchError as exc:
            log.warning("could not record token use", extra={"token_id": record.id, "error": str(exc)})
            return record

    async def authenticate(self, request: Request) -> Principal:
        """A cached usable token is answered on the event loop; a lookup in S3 goes through a thread."""
        token = bearer(request)
        if token is not None:
            record = self._cached(token)
            if record is not None and record.usable(int(self.tokens.clock())):
                return Principal(tenant=record.tenant, token_id=record.id, tier=record.tier)
        return await run_in_threadpool(self.authenticate_sync, token, client_address(request))


def check_admin(request: Request, admin_token: str | None, auth: TokenAuth) -> None:
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
    record = auth.resolve(token)
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
