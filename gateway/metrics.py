"""GET /metrics (Prometheus, no auth) and the middleware that counts every HTTP request.

Labels are the route template (``/v1/batches/{batch_id}``), method and status,
never an id, so the series stay bounded. Metric names are the kernel's
(``dropbatch.observability.metrics``): dropbatch_http_requests_total,
dropbatch_http_request_duration_seconds, dropbatch_rate_limited_total.
"""

from __future__ import annotations

import time

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from dropbatch.observability.metrics import Metrics
from gateway.state import gateway_of


class HttpMetrics:
    """Pure ASGI middleware: one count and one latency observation per HTTP request."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = 500
        started = time.perf_counter()

        async def observe(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, observe)
        finally:
            route = scope.get("route")
            path = getattr(route, "path", "unmatched")
            method = scope.get("method", "")
            self.metrics.http_requests.labels(path, method, str(status)).inc()
            self.metrics.http_duration.labels(path, method).observe(time.perf_counter() - started)


async def metrics(request: Request) -> Response:
    registry = gateway_of(request).metrics.registry
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)


ROUTES = [Route("/metrics", metrics, methods=["GET"])]
