"""What Prometheus scrapes from each service passes `promtool check metrics`, and says what happened.

The watcher and runner are served by ``ServiceHttp`` (as `dropbatch watcher|runner`
serve them) after real admission and runner passes; the gateway serves its own
/metrics, scraped through Starlette's TestClient after real API calls.
"""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Iterator

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from starlette.testclient import TestClient

from dropbatch.context import Context
from dropbatch.engine.echo import EchoEngine
from dropbatch.observability.health import Health, ServiceHttp, buckets_check
from dropbatch.observability.metrics import Metrics
from dropbatch.settings import Settings
from dropbatch.storage.keys import JobRef
from dropbatch.storage.memory import MemoryObjectStore
from gateway.app import create_app
from gateway.ratelimit import TierRate
from manifests import build_manifest, dumps, sign
from runner.service import Runner
from watcher.service import Watcher

MODEL = "dropbatch-tiny"
CHAT = "/v1/chat/completions"


def samples(text: str) -> dict[tuple[str, frozenset], float]:
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def total(scrape: dict, name: str, **labels: str) -> float:
    wanted = set(labels.items())
    return sum(v for (n, ls), v in scrape.items() if n == name and wanted <= ls)


def assert_promtool_clean(run_promtool, body: bytes) -> None:
    result = run_promtool("check", "metrics", stdin=body)
    output = (result.stdout + result.stderr).decode(errors="replace")
    # promtool lists lint problems (missing HELP, bad suffixes, ...) and exits non-zero.
    assert result.returncode == 0 and not output.strip(), output


@pytest.fixture
def serve() -> Iterator:
    servers: list[ServiceHttp] = []

    def start(service: str, metrics: Metrics, ctx: Context) -> str:
        health = Health(service)
        health.add("s3", buckets_check(ctx.store, {"inbox": ctx.inbox, "control": ctx.settings.storage.control_bucket}))
        http = ServiceHttp("127.0.0.1", 0, health, metrics).start()
        servers.append(http)
        return f"http://127.0.0.1:{http.port}"

    yield start
    for http in servers:
        http.stop()


def get(url: str) -> tuple[int, str, bytes]:
    with urllib.request.urlopen(url, timeout=10) as response:
        return response.status, response.headers["Content-Type"], response.read()


def test_runner_scrape_passes_promtool_and_counts_the_run(worked_services, serve, run_promtool):
    w = worked_services
    url = serve("runner", w.runner, w.ctx)
    status, content_type, body = get(url + "/metrics")
    assert status == 200 and content_type.startswith("text/plain")
    assert_promtool_clean(run_promtool, body)

    scrape = samples(body.decode())
    jobs = 2  # the forged third job never reaches the runner
    assert total(scrape, "dropbatch_requests_completed_total", tenant="acme") == jobs * (w.lines - len(w.failing))
    assert total(scrape, "dropbatch_requests_failed_total", tenant="acme") == jobs * len(w.failing)
    retries = w.ctx.settings.retry.max_retries
    assert total(scrape, "dropbatch_request_retries_total") == jobs * len(w.failing) * retries
    generated = total(scrape, "dropbatch_generated_tokens_total", tenant="acme")
    assert generated == jobs * (w.lines - len(w.failing)) * w.tokens_per_line
    assert total(scrape, "dropbatch_batches_finished_total", status="completed") == jobs
    assert total(scrape, "dropbatch_queue_requests") == 0
    assert total(scrape, "dropbatch_last_progress_timestamp_seconds") > 0
    assert total(scrape, "dropbatch_engine_memory_bytes", kind="rss") > 0
    assert total(scrape, "dropbatch_engine_first_result_seconds_count") >= 1


def test_watcher_scrape_passes_promtool_and_counts_manifests(worked_services, serve, run_promtool):
    w = worked_services
    url = serve("watcher", w.watcher, w.ctx)
    _, _, body = get(url + "/metrics")
    assert_promtool_clean(run_promtool, body)

    scrape = samples(body.decode())
    assert total(scrape, "dropbatch_manifests_total", result="admitted") == 2
    assert total(scrape, "dropbatch_manifests_total", result="rejected") == 1


def test_service_http_health_and_readiness(worked_services, serve):
    url = serve("watcher", worked_services.watcher, worked_services.ctx)
    status, _, body = get(url + "/health")
    assert (status, json.loads(body)) == (200, {"status": "healthy"})
    status, _, body = get(url + "/ready")
    assert status == 200 and json.loads(body) == {"status": "ready", "components": {"s3": {"status": "ok"}}}


def test_gateway_scrape_passes_promtool_and_counts_requests(run_promtool):
    settings = Settings.from_env({})
    storage = settings.storage
    ctx = Context(
        settings=settings,
        store=MemoryObjectStore([storage.inbox_bucket, storage.outbox_bucket, storage.control_bucket]),
    )
    ctx.tenants.create("acme", "basic")
    token = ctx.tokens.create("acme").token
    app = create_app(settings, ctx=ctx, token_cache_seconds=0, rate_limits={"basic": TierRate(per_minute=1, burst=1)})
    with TestClient(app) as client:
        health = client.get("/health")
        assert health.status_code == 200, health.text
        assert health.json() == {"status": "healthy"}
        auth = {"Authorization": f"Bearer {token}"}
        assert client.get("/v1/batches", headers=auth).status_code == 200
        assert client.get("/v1/batches", headers=auth).status_code == 429
        assert client.get("/v1/batches").status_code == 401
        scraped = client.get("/metrics")
    assert scraped.status_code == 200
    assert_promtool_clean(run_promtool, scraped.content)

    scrape = samples(scraped.text)
    assert total(scrape, "dropbatch_rate_limited_total", tier="basic") == 1
    for code in ("200", "429", "401"):
        assert total(scrape, "dropbatch_http_requests_total", route="/v1/batches", status=code) == 1
    assert total(scrape, "dropbatch_http_requests_total", route="/health", status="200") == 1
    assert total(scrape, "dropbatch_http_request_duration_seconds_count", route="/v1/batches") == 3


def test_request_line_counters_count_the_copies_of_duplicate_lines(tmp_path):
    """Identical deterministic lines run once (DROPBATCH_DEDUP) but are request lines each: the
    completed and failed counters agree with the batch record, so the error ratio is the lines'."""
    settings = Settings.from_env({})
    storage = settings.storage
    store = MemoryObjectStore([storage.inbox_bucket, storage.outbox_bucket, storage.control_bucket])
    ctx = Context(settings=settings, store=store)
    ctx.tenants.create("acme", "enterprise")
    key = ctx.tenants.create_signing_key("acme")

    def line(i: int, content: str) -> dict:
        body = {"model": MODEL, "messages": [{"role": "user", "content": content}], "max_tokens": 4, "temperature": 0}
        return {"custom_id": f"req-{i}", "method": "POST", "url": CHAT, "body": body}

    # Four copies of one failing request, two of one answered request: two engine calls, six lines.
    lines = [line(i, "too long") for i in range(4)] + [line(i, "hello") for i in (4, 5)]
    data = "".join(json.dumps(x) + "\n" for x in lines).encode()
    local = tmp_path / "input.jsonl"
    local.write_bytes(data)
    manifest = build_manifest([local], tenant="acme", job="dup", key_id=key.key_id, endpoint=CHAT, model=MODEL,
                              created_at=int(ctx.clock()), input_keys=["acme/dup/input.jsonl"])
    store.put(ctx.inbox, "acme/dup/input.jsonl", data)
    store.put(ctx.inbox, "acme/dup/manifest.json", dumps(sign(manifest, key.secret)))
    Watcher(ctx, metrics=Metrics("watcher")).run_once()
    engine = EchoEngine(store, settings, fail=lambda row: "RuntimeError: boom" if row["custom_id"] == "req-0" else None)
    metrics = Metrics("runner")
    runner = Runner(ctx, engine, metrics=metrics, sleep=lambda seconds: None)
    for _ in range(5):
        if not runner.run_once():
            break

    record = ctx.batches.for_job(JobRef("acme", "dup"))
    assert (record.request_counts.completed, record.request_counts.failed) == (2, 4)
    scrape = samples(generate_latest(metrics.registry).decode())
    assert total(scrape, "dropbatch_requests_completed_total", tenant="acme") == 2
    assert total(scrape, "dropbatch_requests_failed_total", tenant="acme") == 4


def test_429s_are_exported_at_zero_for_every_tier_before_the_first_one():
    """A counter series born with its first value has no increase() or rate() in Prometheus: the
    first burst of 429s after a gateway start would read 0 on the dashboard's 429s panel."""
    settings = Settings.from_env({"DROPBATCH_TIER_QUOTAS": "free=100,basic=500,premium=2000,enterprise=10000,gold=9"})
    storage = settings.storage
    ctx = Context(settings=settings, store=MemoryObjectStore([storage.inbox_bucket, storage.control_bucket]))
    with TestClient(create_app(settings, ctx=ctx)) as client:
        gateway = samples(client.get("/metrics").text)
    for tier in ("free", "basic", "premium", "enterprise", "gold"):
        assert gateway[("dropbatch_rate_limited_total", frozenset({("tier", tier)}))] == 0
