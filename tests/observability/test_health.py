"""/health and /ready of the watcher and runner: a down component turns readiness to 503 with a reason.

Both are unauthenticated, so neither names an endpoint or a bucket: a reason names the bucket's role.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request

from dropbatch.observability.health import buckets_check, observed
from dropbatch.storage import MemoryObjectStore


def get(url: str) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_ready_is_503_naming_the_component_that_is_down_while_health_stays_200():
    store = MemoryObjectStore(["inbox-7d2e"])  # the control bucket is missing
    engine = {"started": False}
    checks = {
        "s3": buckets_check(store, {"inbox": "inbox-7d2e", "control": "control-7d2e"}),
        "engine": lambda: None if engine["started"] else "the engine is not started yet",
    }
    with observed("runner", "127.0.0.1", 0, checks) as (metrics, health, port):
        base = f"http://127.0.0.1:{port}"
        assert get(base + "/health") == (200, {"status": "healthy"})
        status, body = get(base + "/ready")
        assert status == 503
        assert body["status"] == "unavailable"
        assert body["components"]["s3"] == {"status": "down", "reason": "the control bucket is missing"}
        assert body["components"]["engine"] == {"status": "down", "reason": "the engine is not started yet"}
        assert "7d2e" not in json.dumps(body), "no bucket name in an unauthenticated answer"

        store.create_bucket("control-7d2e")
        engine["started"] = True
        status, body = get(base + "/ready")
        assert status == 200
        assert body == {"status": "ready", "components": {"s3": {"status": "ok"}, "engine": {"status": "ok"}}}
        assert metrics.service == "runner"


def test_a_check_that_raises_reports_down_instead_of_crashing_the_endpoint():
    def broken() -> str | None:
        raise RuntimeError("probe exploded at http://s3.internal:9000/control-bucket")

    with observed("watcher", "127.0.0.1", 0, {"queue": broken}) as (_, _, port):
        status, body = get(f"http://127.0.0.1:{port}/ready")
    assert status == 503
    assert body["components"]["queue"] == {
        "status": "down",
        "reason": "the check failed (RuntimeError; see the watcher's log)",
    }


def test_a_check_that_hangs_is_down_after_the_timeout_and_is_never_started_twice():
    """S3 that accepts connections and never answers held /ready for 70-150 s (botocore's retries)."""
    import threading
    import time

    from dropbatch.observability.health import Health

    release, calls = threading.Event(), []

    def hanging() -> str | None:
        calls.append(1)
        release.wait(30)
        return None

    health = Health("watcher", {"s3": hanging, "fine": lambda: None}, timeout=0.3)
    began = time.monotonic()
    ready, body = health.report()
    assert time.monotonic() - began < 2
    assert not ready and body["components"] == {"s3": {"status": "down", "reason": "no answer within 0.3 s"},
                                                "fine": {"status": "ok"}}
    assert health.report()[0] is False and calls == [1]  # waited on again, not started again
    release.set()
    assert health.report()[0] is True and len(calls) <= 2


def test_the_gateway_calls_an_s3_that_does_not_answer_unreachable_within_its_timeout(monkeypatch):
    import asyncio
    import time

    from gateway import health

    class Silent:
        async def list(self, bucket, prefix, page_size=1000):
            await asyncio.sleep(60)
            yield None

    monkeypatch.setattr(health, "CHECK_SECONDS", 0.3)
    began = time.monotonic()

    async def all_three() -> list[str]:
        return await asyncio.wait_for(asyncio.gather(*(health.bucket_status(Silent(), b) for b in "abc")), 10)

    states = asyncio.run(all_three())
    assert states == ["unreachable"] * 3 and time.monotonic() - began < 2  # side by side, each bounded
