"""Health without secrets: unauthenticated probes say healthy or not, only the admin token gets the details.

A live gateway over the moto server, and the watcher's/runner's health server
over the same S3. No unauthenticated answer of /health or /ready, healthy or
broken, names the S3 endpoint or any of the three buckets.
"""

from __future__ import annotations

import httpx
import pytest

from dropbatch.emulator import free_port
from dropbatch.observability.health import buckets_check, observed
from dropbatch.queues import SqsEventQueue
from dropbatch.settings import Settings

pytestmark = pytest.mark.integration

ADMIN = "admin-1a2b3c4d5e6f7a8b9c0d1e2f3a4b5c6d"


def _secrets(settings) -> list[str]:
    storage = settings.storage
    endpoint = storage.endpoint_url or ""
    return [
        endpoint,
        endpoint.removeprefix("http://"),
        storage.inbox_bucket,
        storage.outbox_bucket,
        storage.control_bucket,
    ]


def _assert_says_nothing(answer: httpx.Response, settings) -> None:
    for secret in _secrets(settings):
        assert secret not in answer.text, f"{answer.request.url} names {secret!r}: {answer.text}"


def test_gateway_health_tells_the_public_only_healthy_or_not(make_settings, make_context, live_gateway):
    settings = make_settings(DROPBATCH_ADMIN_TOKEN=ADMIN)
    live = live_gateway(settings)
    broken_settings = make_settings(DROPBATCH_ADMIN_TOKEN=ADMIN, DROPBATCH_CONTROL_BUCKET="control-that-is-not-there")
    broken = live_gateway(broken_settings, ctx=make_context(broken_settings, bootstrap=False))
    live.ctx.tenants.create("acme", "basic")
    tenant = live.ctx.tokens.create("acme").token

    health = httpx.get(live.url + "/health")
    assert (health.status_code, health.json()) == (200, {"status": "healthy"})
    down = httpx.get(broken.url + "/health")
    assert (down.status_code, down.json()) == (503, {"status": "unhealthy"})
    for url, used in ((live.url, settings), (broken.url, broken_settings)):
        for path in ("/health", "/ready", "/health?detail=1", "/ready?verbose=true"):
            _assert_says_nothing(httpx.get(url + path), used)
        _assert_says_nothing(httpx.get(url + "/health", headers={"Authorization": f"Bearer {tenant}"}), used)

    assert httpx.get(live.url + "/admin/health").status_code == 401
    tenant_view = httpx.get(live.url + "/admin/health", headers={"Authorization": f"Bearer {tenant}"})
    assert tenant_view.status_code == 403
    _assert_says_nothing(tenant_view, settings)
    operator = httpx.get(broken.url + "/admin/health", headers={"Authorization": f"Bearer {ADMIN}"})
    assert operator.status_code == 503
    assert operator.json()["components"]["buckets"]["control"] == {
        "bucket": "control-that-is-not-there",
        "status": "missing",
    }
    assert operator.json()["components"]["s3"]["endpoint"] == settings.storage.endpoint_url


def test_watcher_and_runner_health_name_no_endpoint_or_bucket(make_settings, make_context):
    settings = make_settings()
    ctx = make_context(settings)
    storage = settings.storage
    roles = {"inbox": storage.inbox_bucket, "outbox": "outbox-that-is-not-there", "control": storage.control_bucket}
    with observed("runner", "127.0.0.1", 0, {"s3": buckets_check(ctx.store, roles)}) as (_, _, port):
        base = f"http://127.0.0.1:{port}"
        health = httpx.get(base + "/health")
        ready = httpx.get(base + "/ready")
    assert (health.status_code, health.json()) == (200, {"status": "healthy"})
    assert ready.status_code == 503
    assert ready.json()["components"]["s3"] == {"status": "down", "reason": "the outbox bucket is missing"}
    for answer in (health, ready):
        _assert_says_nothing(answer, settings)
        assert "outbox-that-is-not-there" not in answer.text


def test_watcher_queue_readiness_names_no_queue_url_or_endpoint():
    """The intake queue down: /ready says so by role, not with the queue URL (account id) or the endpoint."""
    endpoint = f"http://127.0.0.1:{free_port()}"  # nothing listens: connection refused
    settings = Settings.from_env({"DROPBATCH_S3_ENDPOINT": endpoint, "DROPBATCH_S3_MAX_ATTEMPTS": "1"})
    queue_url = f"{endpoint}/123456789012/dropbatch-intake"
    queue = SqsEventQueue(settings.storage, queue_url)
    with observed("watcher", "127.0.0.1", 0, {"queue": queue.check}) as (_, _, port):
        ready = httpx.get(f"http://127.0.0.1:{port}/ready", timeout=30)
    assert ready.status_code == 503
    assert ready.json()["components"]["queue"] == {"status": "down", "reason": "the intake queue is unreachable"}
    for secret in (endpoint, endpoint.removeprefix("http://"), "123456789012", "dropbatch-intake"):
        assert secret not in ready.text, f"/ready names {secret!r}: {ready.text}"
