"""GET /metrics (Prometheus, no auth) and the middleware that counts every HTTP request.

Labels are the route template (``/v1/batches/{batch_id}``), method and status,
never an id, so the series stay bounded. Metric names are the kernel's
(``dropbatch.observability.metrics``): dropbatch_http_requests_total,
dropbatch_http_request_duration_seconds, dropbatch_rate_limited_total.
"""

from __future__ import annotations

import logging
import re
import secrets
import time

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from dropbatch.observability.metrics import Metrics
from gateway.state import gateway_of

log = logging.getLogger("dropbatch.gateway.access")
_QUIET = {"/metrics", "/health", "/ready"}  # scrapes and probes would drown the log
_SANE_ID = re.compile(r"[A-Za-z0-9._-]{1,128}")


def _request_id(scope: Scope) -> str:
    for name, value in scope.get("headers", []):
        if name == b"x-request-id":
            text = value.decode("latin-1")
            if _SANE_ID.fullmatch(text):
                return text
    return "req_" + secrets.token_hex(8)


class HttpMetrics:
    """Pure ASGI middleware: a count, a latency observation and one JSON access-log line per request.

    Every response carries ``x-request-id`` (the client's, if it sent a sane one); the
    log line has it, with route, status, duration and tenant, never headers or bodies.
    """

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = 500
        started = time.perf_counter()
        request_id = _request_id(scope)

        async def observe(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message.setdefault("headers", [])
                message["headers"] = [*message["headers"], (b"x-request-id", request_id.encode())]
            await send(message)

        try:
            await self.app(scope, receive, observe)
        finally:
            route = scope.get("route")
            path = getattr(route, "path", "unmatched")
            method = scope.get("method", "")
            elapsed = time.perf_counter() - started
            self.metrics.http_requests.labels(path, method, str(status)).inc()
            self.metrics.http_duration.labels(path, method).observe(elapsed)
            if path not in _QUIET:
                log.info(
                    "request",
                    extra={
                        "request_id": request_id,
                        "method": method,
                        "route": path,
                        "status": status,
                        "duration_ms": round(elapsed * 1000, 1),
                        "tenant": scope.get("state", {}).get("tenant"),
                    },
                )


async def metrics(request: Request) -> Response:
    registry = gateway_of(request).metrics.registry
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)


ROUTES = [Route("/metrics", metrics, methods=["GET"])]
