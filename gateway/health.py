"""GET /health: is the gateway up, and can it reach S3 and its three buckets (no auth)."""

from __future__ import annotations

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from dropbatch import __version__
from dropbatch.context import Context
from dropbatch.errors import DropbatchError, ObjectNotFound
from gateway.state import gateway_of

SERVICE = "dropbatch-gateway"


def bucket_status(ctx: Context, bucket: str) -> str:
    try:
        next(iter(ctx.store.list(bucket, "health-check/")), None)
    except ObjectNotFound:
        return "missing"
    except DropbatchError:
        return "unreachable"
    return "ok"


def check(ctx: Context) -> dict:
    storage = ctx.settings.storage
    buckets = {
        name: {"bucket": bucket, "status": bucket_status(ctx, bucket)}
        for name, bucket in (
            ("inbox", storage.inbox_bucket),
            ("outbox", storage.outbox_bucket),
            ("control", storage.control_bucket),
        )
    }
    reachable = any(b["status"] != "unreachable" for b in buckets.values())
    healthy = all(b["status"] == "ok" for b in buckets.values())
    return {
        "status": "ok" if healthy else "degraded",
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


async def health(request: Request) -> Response:
    """Liveness: 200 while the process serves; the body says how its components are."""
    return JSONResponse(await run_in_threadpool(check, gateway_of(request).ctx))


async def ready(request: Request) -> Response:
    """Readiness: 503 with the reasons while S3 or a bucket is not usable."""
    report = await run_in_threadpool(check, gateway_of(request).ctx)
    return JSONResponse(report, status_code=200 if report["status"] == "ok" else 503)


ROUTES = [Route("/health", health, methods=["GET"]), Route("/ready", ready, methods=["GET"])]
