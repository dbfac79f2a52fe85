"""Bearer-token authentication for tenant routes and the admin token for /admin.

Token lookups are cached in this process for ``TOKEN_CACHE_SECONDS`` (2 s) at
most, so a revoked token stops working on every replica within that long;
expiry is checked on every request against the cached record. Unknown tokens
are never cached (a token created a moment ago works at once).
"""

from __future__ import annotations

import functools
import hmac
import logging
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response

from dropbatch.auth.tokens import TokenRecord, Tokens
from dropbatch.errors import AuthenticationFailed, DropbatchError, NotFound, PermissionDenied, RateLimited

log = logging.getLogger("dropbatch.gateway")

TOKEN_CACHE_SECONDS = 2.0
_CACHE_MAX_ENTRIES = 10_000


@dataclass(frozen=True)
class Principal:
    """Who is calling: a tenant, through one token."""

    tenant: str
    token_id: str
    tier: str


def bearer(request: Request) -> str | None:
    header = request.headers.get("authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "bearer" or not value.strip():
        return None
    return value.strip()


class TokenAuth:
    """Looks tokens up in the control bucket through a short-lived cache."""

    def __init__(
        self,
        tokens: Tokens,
        *,
        cache_seconds: float = TOKEN_CACHE_SECONDS,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.tokens = tokens
        self.cache_seconds = cache_seconds
        self.monotonic = monotonic
        self._cache: dict[str, tuple[float, TokenRecord]] = {}
        self._lock = threading.Lock()

    def _cached(self, token: str) -> TokenRecord | None:
        if self.cache_seconds <= 0:
            return None
        with self._lock:
            hit = self._cache.get(token)
            if hit is None:
                return None
            if self.monotonic() - hit[0] >= self.cache_seconds:
                del self._cache[token]
                return None
            return hit[1]

    def _remember(self, token: str, record: TokenRecord) -> None:
        if self.cache_seconds <= 0:
            return
        with self._lock:
            if len(self._cache) >= _CACHE_MAX_ENTRIES:
                self._cache.clear()
            self._cache[token] = (self.monotonic(), record)

    def authenticate_sync(self, token: str | None) -> Principal:
        """Blocking (S3 on a cache miss): call through a thread from async code."""
        if token is None:
            raise AuthenticationFailed(
                "You didn't provide an API key. Send it in the Authorization header: 'Bearer YOUR_KEY'.",
                code="missing_api_key",
            )
        record = self._cached(token)
        if record is None:
            record = self.tokens.lookup(token)
            if record is not None:
                if record.usable(int(self.tokens.clock())):
                    record = self._touch(record)
                self._remember(token, record)
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
        return await run_in_threadpool(self.authenticate_sync, bearer(request))


def check_admin(request: Request, admin_token: str | None, auth: TokenAuth) -> None:
    """Allow only the configured admin token: 404 if none is configured, 401/403 otherwise."""
    if not admin_token:
        raise NotFound(f"Unknown request URL: {request.method} {request.url.path}.", code="not_found")
    token = bearer(request)
    if token is None:
        raise AuthenticationFailed(
            "This route needs the admin token as 'Authorization: Bearer …'.", code="missing_api_key"
        )
    if hmac.compare_digest(token.encode(), admin_token.encode()):
        return
    try:
        auth.authenticate_sync(token)
    except DropbatchError:
        raise AuthenticationFailed("Incorrect admin token provided.") from None
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
