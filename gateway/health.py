"""Health of the gateway: can it reach S3 and its three buckets.

    GET /health         no auth: {"status": "healthy"} (200) or {"status": "unhealthy"} (503), nothing else
    GET /ready          no auth: 200 {"status": "ready"}, or 503 with each component's state by role
                        (``s3``, ``inbox``, ``outbox``, ``control``), never an endpoint or a bucket name
    GET /admin/health   the admin token: the full report (service, version, model, the S3 endpoint,
                        each bucket's name and state), 200 or 503 like /health

The check lists three buckets; its result is reused for ``CHECK_CACHE_SECONDS``
so unauthenticated probes cannot turn into a stream of S3 requests.
"""

from __future__ import annotations

import asyncio
import time
from contextlib import aclosing
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from dropbatch import __version__
from dropbatch.context import Context
from dropbatch.errors import DropbatchError, ObjectNotFound
from dropbatch.storage.base import AsyncObjectStore
from gateway.auth import check_admin
from gateway.state import Gateway, gateway_of

SERVICE = "dropbatch-gateway"
CHECK_CACHE_SECONDS = 1.0
CHECK_SECONDS = 5.0


async def bucket_status(store: AsyncObjectStore, bucket: str) -> str:
    """``ok``, ``missing`` or ``unreachable`` (no answer within ``CHECK_SECONDS``: S3's own retries took 70 s)."""
    try:
        async with asyncio.timeout(CHECK_SECONDS), aclosing(store.list(bucket, "health-check/", page_size=1)) as listing:
            await anext(listing, None)
    except ObjectNotFound:
        return "missing"
    except (DropbatchError, TimeoutError):
        return "unreachable"
    return "ok"


async def check(ctx: Context, store: AsyncObjectStore) -> dict[str, Any]:
    """The operator's report: every component with its name and state."""
    storage = ctx.settings.storage
    roles = {"inbox": storage.inbox_bucket, "outbox": storage.outbox_bucket, "control": storage.control_bucket}
    states = await asyncio.gather(*(bucket_status(store, bucket) for bucket in roles.values()))
    buckets = {name: {"bucket": bucket, "status": state} for (name, bucket), state in zip(roles.items(), states, strict=False)}
    reachable = any(b["status"] != "unreachable" for b in buckets.values())
    healthy = all(b["status"] == "ok" for b in buckets.values())
    return {
        "status": "healthy" if healthy else "unhealthy",
        "service": SERVICE,
        "version": __version__,
        "model": ctx.settings.engine.model_name,
        # The seed's fields: the gateway hands batches to the watcher/runner through the
        # buckets, so its "processor" is ready when it can write the inbox and control bucket.
        "processor_initialized": healthy,
        "config_loaded": True,
        "components": {
            "s3": {"status": "ok" if reachable else "unreachable", "endpoint": storage.endpoint_url or "aws"},
            "buckets": buckets,
        },
    }


async def _report(gw: Gateway) -> dict[str, Any]:
    cached = gw.caches.get("health")
    if cached is not None and time.monotonic() - cached[0] < CHECK_CACHE_SECONDS:
        return cached[1]
    report = await check(gw.ctx, gw.store)
    gw.caches["health"] = (time.monotonic(), report)
    return report


def _code(report: dict[str, Any]) -> int:
    return 200 if report["status"] == "healthy" else 503


async def health(request: Request) -> Response:
    """Healthy or not, and nothing more: the details are the operator's (/admin/health)."""
    report = await _report(gateway_of(request))
    return JSONResponse({"status": report["status"]}, status_code=_code(report))


async def ready(request: Request) -> Response:
    """Readiness: 503 with the state of each component by role while S3 or a bucket is not usable."""
    report = await _report(gateway_of(request))
    if report["status"] == "healthy":
        return JSONResponse({"status": "ready"})
    components = report["components"]
    states = {"s3": components["s3"]["status"], **{n: b["status"] for n, b in components["buckets"].items()}}
    return JSONResponse({"status": "unavailable", "components": states}, status_code=503)


async def admin_health(request: Request) -> Response:
    """The full report, for the admin token only (it names the S3 endpoint and the buckets)."""
    gw = gateway_of(request)
    await check_admin(request, gw.settings.service.admin_token, gw.auth)
    report = await _report(gw)
    return JSONResponse(report, status_code=_code(report))


ROUTES = [
    Route("/health", health, methods=["GET"]),
    Route("/ready", ready, methods=["GET"]),
    Route("/admin/health", admin_health, methods=["GET"]),
]
