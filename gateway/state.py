"""What every route shares, built once per app: settings, the kernel Context, async stores, auth, limits.

``store``/``records``/``batches``/``files``/``tenants``/``grants``/``tokens`` are
the async twins over the same buckets as ``ctx``: every route awaits S3 through
them on the event loop (polls, lists, uploads, batch creation, results, jobs,
cost estimates, admin tokens), the independent calls of one request together
(``gateway.together``). A worker thread takes only CPU work that would stall
the loop: validating a request body (``gateway.validation``), and parsing and
tokenizing a cost estimate's lines (``gateway.estimate``). ``ctx`` itself is
read by no route for S3; it gives the clock, settings and the token check.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from starlette.requests import Request

from dropbatch.aiorecords import AsyncBatchStore, AsyncFileStore, AsyncRecords
from dropbatch.auth.grants import AsyncGrants
from dropbatch.auth.tenants import AsyncTenants
from dropbatch.auth.tokens import AsyncTokens
from dropbatch.context import Context
from dropbatch.observability.metrics import Metrics
from dropbatch.settings import Settings
from dropbatch.storage.base import AsyncObjectStore
from gateway.auth import TokenAuth
from gateway.ratelimit import RateLimiter


@dataclass
class Gateway:
    settings: Settings
    ctx: Context
    auth: TokenAuth
    limiter: RateLimiter
    metrics: Metrics
    store: AsyncObjectStore
    records: AsyncRecords
    tokens: AsyncTokens = field(init=False)
    batches: AsyncBatchStore = field(init=False)
    files: AsyncFileStore = field(init=False)
    tenants: AsyncTenants = field(init=False)
    grants: AsyncGrants = field(init=False)
    caches: dict[str, Any] = field(default_factory=dict)  # lazily built helpers (the tokenizer)

    def __post_init__(self) -> None:
        pages = self.settings.service.gateway_page_cache_seconds
        self.batches = AsyncBatchStore(self.records, cache_seconds=pages)
        self.files = AsyncFileStore(self.records, clock=self.ctx.clock, cache_seconds=pages)
        self.tenants = AsyncTenants(self.records, clock=self.ctx.clock)
        tiers = self.settings.limits.tier_quotas
        self.tokens = AsyncTokens(self.records, self.tenants, tiers=tiers, clock=self.ctx.clock)
        self.grants = AsyncGrants(self.records, storage=self.settings.storage)


    async def close(self) -> None:
        """Stop the list pages' background re-reads, then the S3 client they use."""
        await self.batches.refreshes.close()
        await self.files.refreshes.close()
        await self.store.close()


def gateway_of(request: Request) -> Gateway:
    return request.app.state.gateway

