"""The gateway: a Starlette app speaking OpenAI's /v1/files and /v1/batches over the dropbatch buckets.

It never runs inference and imports no ray, vllm or torch: a batch created here
is a server-signed manifest in the inbox (``gateway.submit``), admitted by the
watcher and run by the runner exactly like a drop-box job; reads come from the
same records and outbox objects. All state is in S3, so replicas are stateless
(save the per-replica rate-limit buckets, a token cache of at most 2 s and
an unknown-token cache of at most 5 s).

Each process keeps one aiobotocore client (``DROPBATCH_GATEWAY_S3_POOL``
connections) that the polled routes await on the event loop; it is closed at
shutdown. ``DROPBATCH_GATEWAY_WORKERS`` > 1 runs that many worker processes on
one port (uvicorn's supervisor); each builds its app with ``worker_app()`` from
the same environment, and each is a replica: its own rate limits, token cache
and /metrics registry.

    create_app(settings, ctx=...)  the ASGI app (tests pass their own Context); /metrics for Prometheus
    serve(settings)                uvicorn on DROPBATCH_GATEWAY_HOST:PORT (default 127.0.0.1:8000)
"""

from __future__ import annotations

import gc
import logging
import os
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager

import uvicorn
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import ClientDisconnect

from dropbatch.aiorecords import AsyncRecords
from dropbatch.context import Context
from dropbatch.errors import DropbatchError
from dropbatch.observability.logging import configure_logging
from dropbatch.observability.metrics import Metrics
from dropbatch.settings import Settings
from dropbatch.storage.aio import async_twin
from gateway import admin, batches, compat, estimate, files, health, jobs, metrics, models, openapi, validation
from gateway.auth import TOKEN_CACHE_SECONDS, TokenAuth
from gateway.errors import (
    handle_client_disconnect,
    handle_dropbatch_error,
    handle_http_exception,
    handle_unexpected,
)
from gateway.metrics import HttpMetrics
from gateway.ratelimit import ATTEMPT_RATE, AttemptLimiter, RateLimiter, TierRate
from gateway.state import Gateway

log = logging.getLogger("dropbatch.gateway")

# Compat routes first: /v1/batches/validate must not be taken for a batch id.
ROUTE_MODULES = (health, metrics, openapi, validation, compat, estimate, files, batches, jobs, models, admin)


def settle_heap() -> None:
    """Take what the process has built so far out of the garbage collector's full passes.

    Imports, settings, the app and the S3 client's service model (~108,000 objects) live as
    long as the process, and every full collection walked them all: 31 ms each on the idle
    machine, every request in flight waiting through it. Frozen, a full collection walks
    only what came later; bench/gateway_load.py at 150 requests/s: retrieve p99 20 → 13 ms
    (README, "The gateway under load").
    """
    gc.collect()
    gc.freeze()


def create_app(
    settings: Settings,
    *,
    ctx: Context | None = None,
    token_cache_seconds: float = TOKEN_CACHE_SECONDS,
    rate_limits: Mapping[str, TierRate] | None = None,
    attempt_rate: TierRate = ATTEMPT_RATE,
    own_process: bool = False,
) -> Starlette:
    """The ASGI app. Building it does no I/O (the Context connects on first use).

    ``rate_limits`` are API calls per token by tier; ``attempt_rate`` is failed
    authentication attempts per client address (``gateway.ratelimit``). With
    ``own_process`` (``serve``, ``worker_app``) its start-up settles the process's heap
    (``settle_heap``); an app embedded elsewhere (the tests) leaves its host's alone.
    """
    ctx = ctx or Context.from_settings(settings)
    registry = Metrics("gateway")
    registry.export_tiers(settings.limits.tier_quotas)
    pool = settings.service.gateway_s3_pool
    store = async_twin(ctx.store, settings.storage, pool_size=pool)
    records = AsyncRecords(store, settings.storage.control_bucket, concurrency=pool)

    @asynccontextmanager
    async def lifespan(_app: Starlette) -> AsyncIterator[None]:
        try:
            await store.open()  # botocore's S3 model, loaded now, is settled with the rest
        except DropbatchError as exc:  # the first request builds it again, and answers the error
            log.warning("S3 client not built at start-up", extra={"error": str(exc)})
        if own_process:
            settle_heap()
        try:
            yield
        finally:
            await app.state.gateway.close()

    app = Starlette(
        routes=[route for module in ROUTE_MODULES for route in module.ROUTES],
        lifespan=lifespan,
        middleware=[Middleware(HttpMetrics, metrics=registry)],
        exception_handlers={
            DropbatchError: handle_dropbatch_error,
            HTTPException: handle_http_exception,
            ClientDisconnect: handle_client_disconnect,
            Exception: handle_unexpected,
        },
    )
    app.state.gateway = Gateway(
        settings=settings,
        ctx=ctx,
        auth=TokenAuth(ctx.tokens, records, cache_seconds=token_cache_seconds, attempts=AttemptLimiter(attempt_rate)),
        limiter=RateLimiter(rate_limits),
        metrics=registry,
        store=store,
        records=records,
    )
    return app


def worker_app() -> Starlette:
    """The app of one worker process when ``DROPBATCH_GATEWAY_WORKERS`` > 1 (uvicorn imports it by name)."""
    settings = Settings.from_env(os.environ)  # a worker process is an entrypoint of its own
    configure_logging("gateway", settings.service.log_level)
    return create_app(settings, own_process=True)


def serve(settings: Settings) -> None:
    """Serve until stopped (SIGINT/SIGTERM), on the configured host and port."""
    service = settings.service
    options = {
        "host": service.gateway_host,
        "port": service.gateway_port,
        "log_config": None,  # keep the JSON logging `dropbatch` configured
        "log_level": service.log_level.lower(),
        "access_log": False,
    }
    url = f"http://{service.gateway_host}:{service.gateway_port}"
    log.info("gateway listening", extra={"url": url, "workers": service.gateway_workers})
    if service.gateway_workers > 1:
        # Worker processes build their own app (and S3 client) from the environment, by import name.
        uvicorn.run(f"{__name__}:worker_app", factory=True, workers=service.gateway_workers, **options)
        return
    uvicorn.Server(uvicorn.Config(create_app(settings, own_process=True), **options)).run()
