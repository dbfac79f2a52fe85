"""A real Prometheus scrapes the live gateway, watcher and runner; the dashboard and the alerts are checked through it.

Prometheus runs on deploy/prometheus/prometheus.yml and alerts.yml as shipped,
through ``local_config``: only the targets, the intervals (1 s) and the alerts'
``for:`` durations are changed, every expression and threshold is the shipped one
(tests/observability/test_prometheus_rules.py checks that). The services are the session's: the gateway at
``stack.gateway_url``, the watcher and runner of ``stack.drain()`` with their
metrics on ``/metrics`` ports, the one warm vLLM.

The runner's metrics are this module's own (``Metrics("runner")`` from the start,
as a runner process restarted with Prometheus watching): its last-progress gauge
is 0 until it finishes a line, which is how DropbatchNoProgress's 15-minute
threshold is met in a short run: the engine is stopped (SIGSTOP) before the
runner's first line, with work queued. An expiry is provoked as in
test_lifecycle.py, by moving the services' clock past the deadline mid-run. The SLA
alert fires for a 1h batch (its window shortened to a minute by setting) queued behind
the runner's own measured line rate, while its deadline is still ahead.
"""

from __future__ import annotations

import json
import math
import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import httpx
import psutil
import pytest
from helpers import load_bench
from soak import engine_processes, submit

from dropbatch.context import Context
from dropbatch.errors import DropbatchError
from dropbatch.models import BatchStatus
from dropbatch.observability.health import Health, ServiceHttp
from dropbatch.observability.metrics import Metrics
from dropbatch.observability.prometheus import (
    PrometheusServer,
    dashboard_targets,
    local_config,
    query_range,
)
from runner.observe import observe_queue
from watcher.service import Watcher

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
SHIPPED = REPO / "deploy" / "prometheus" / "prometheus.yml"
DASHBOARD = REPO / "deploy" / "grafana" / "dashboard.json"
MODEL = "dropbatch-tiny"
TENANT, FREE_TENANT, SLA_TENANT = "e2e-prom", "e2e-prom-free", "e2e-prom-sla"
SCRAPE = "1s"
# Grafana's $__rate_interval: max(step + scrape interval, 4 × scrape interval), step = 1 s here.
RATE_INTERVAL = "4s"
FOR = "2s"  # every non-zero `for:` of alerts.yml, so a test waits seconds, not minutes
ALERT_SECONDS = 60.0
QUEUE_METRICS_EVERY = 0.5  # as the runner's queue-metrics thread does, faster


def chat_lines(n: int, prefix: str, *, max_tokens: int = 24, overlong: frozenset[int] = frozenset()) -> list[dict]:
    return [
        {
            "custom_id": f"{prefix}-{i}",
            "method": "POST",
            "url": "/v1/chat/completions",
            "body": {
                "model": MODEL,
                "messages": [
                    {"role": "user", "content": ("tell me a very long story " * 200) if i in overlong else f"{prefix} {i}"}
                ],
                "max_tokens": max_tokens,
                "temperature": 0,
                "ignore_eos": True,
            },
        }
        for i in range(n)
    ]


@dataclass
class Observed:
    prometheus: PrometheusServer
    runner: Metrics
    started: float

    def alerts(self) -> dict[str, dict]:
        """Active alerts (pending or firing) by name, from /api/v1/alerts."""
        return {a["labels"]["alertname"]: a for a in self.prometheus.api("alerts")["alerts"]}

    def state(self, alert: str) -> str:
        found = self.alerts().get(alert)
        return "inactive" if found is None else found["state"]

    def wait(self, what: str, done: Callable[[], bool], timeout: float = ALERT_SECONDS) -> None:
        deadline = time.monotonic() + timeout
        while not done():
            if time.monotonic() > deadline:
                raise AssertionError(f"{what}: not within {timeout:.0f} s; alerts now: {self.alerts()}")
            time.sleep(0.25)  # Prometheus evaluates on its own (real) clock

    def wait_scraped_after(self, t: float, job: str = "dropbatch-runner") -> None:
        """Until ``job`` has been scraped (and the rules evaluated, same 1 s interval) after unix time ``t``."""
        self.wait(
            f"{job} scraped after {t:.0f}",
            lambda: (self.value(f'max(timestamp(up{{job="{job}"}}))') or 0) > t + 1,
            timeout=30,
        )

    def value(self, expr: str) -> float | None:
        result = self.prometheus.api("query", query=expr)["result"]
        return float(result[0]["value"][1]) if result else None


@pytest.fixture(scope="module")
def observed(stack, prometheus, tmp_path_factory) -> Iterator[Observed]:
    runner_metrics = Metrics("runner")
    runner_metrics.engine_up.set(1)  # the session's engine is started (Runner.run sets this)
    previous, stack.metrics = stack.metrics, runner_metrics
    stop = threading.Event()

    def observe_forever() -> None:
        while not stop.wait(QUEUE_METRICS_EVERY):
            try:
                observe_queue(stack.ctx, runner_metrics)
            except DropbatchError:  # as the runner's thread: the next refresh tries again
                continue

    with ExitStack() as resources:
        runner_http = ServiceHttp("127.0.0.1", 0, Health("runner"), runner_metrics).start()
        resources.callback(runner_http.stop)
        watcher_http = ServiceHttp("127.0.0.1", 0, Health("watcher"), stack.watcher_metrics).start()
        resources.callback(watcher_http.stop)
        targets = {
            "dropbatch-gateway": [urlparse(stack.gateway_url).netloc],
            "dropbatch-watcher": [f"127.0.0.1:{watcher_http.port}"],
            "dropbatch-runner": [f"127.0.0.1:{runner_http.port}"],
        }
        config, rules = local_config(
            SHIPPED, targets, scrape_interval=SCRAPE, evaluation_interval=SCRAPE, for_duration=FOR
        )
        observe_queue(stack.ctx, runner_metrics)
        observer = threading.Thread(target=observe_forever, name="queue-metrics", daemon=True)
        observer.start()
        resources.callback(observer.join, 5)
        resources.callback(stop.set)
        started = time.time()
        server = resources.enter_context(
            PrometheusServer(prometheus, tmp_path_factory.mktemp("prometheus"), config, rules)
        )
        try:
            yield Observed(server, runner_metrics, started)
        finally:
            stack.metrics = previous


def test_prometheus_scrapes_all_three_services_and_nothing_fires_while_idle(observed):
    def all_up() -> bool:
        return observed.value('sum(up{job=~"dropbatch-.*"})') == 3

    observed.wait("the gateway, watcher and runner scraped", all_up, timeout=30)
    jobs = {t["labels"]["job"]: t["health"] for t in observed.prometheus.api("targets")["activeTargets"]}
    assert jobs == {"dropbatch-gateway": "up", "dropbatch-watcher": "up", "dropbatch-runner": "up"}
    groups = observed.prometheus.api("rules")["groups"]
    assert sum(len(g["rules"]) for g in groups) == 8 and all(r["health"] == "ok" for g in groups for r in g["rules"])
    observed.wait_scraped_after(time.time() + 2)  # a few evaluations with the queue empty: idle is not stuck
    assert observed.alerts() == {}


def test_no_progress_fires_while_the_engine_is_stalled_and_clears_when_it_resumes(stack, observed):
    stack.ctx.tenants.create(TENANT, "enterprise")
    lines = chat_lines(60, "stalled", overlong=frozenset({7}))  # one line fails: the failure panels get data
    ref = submit(stack.ctx, TENANT, "stalled", lines)
    cores = engine_processes(stack.engine.engine._session)
    assert cores, "the warm engine's vLLM processes"
    for proc in cores:
        proc.suspend()  # SIGSTOP: requests reach the engine, none finishes
    errors: list[BaseException] = []

    def drain() -> None:
        try:
            stack.drain()
        except BaseException as exc:  # noqa: BLE001 - reported by the test thread
            errors.append(exc)

    drainer = threading.Thread(target=drain, name="drain", daemon=True)
    drainer.start()
    try:
        observed.wait("DropbatchNoProgress firing", lambda: observed.state("DropbatchNoProgress") == "firing")
        last_progress = observed.runner.registry.get_sample_value("dropbatch_last_progress_timestamp_seconds")
        assert last_progress == 0, "no line finished while the engine was stopped"
        alert = observed.alerts()["DropbatchNoProgress"]
        assert alert["labels"]["severity"] == "critical"
        assert alert["annotations"]["summary"] == "No request line finished for 15 minutes while work is queued"
    finally:
        for proc in cores:
            try:
                proc.resume()
            except psutil.NoSuchProcess:
                pass
    drainer.join(timeout=600)
    assert not drainer.is_alive() and not errors, errors
    record = stack.ctx.batches.for_job(ref)
    assert record.status == BatchStatus.COMPLETED
    assert (record.request_counts.completed, record.request_counts.failed) == (59, 1)
    observed.wait("DropbatchNoProgress resolved", lambda: observed.state("DropbatchNoProgress") == "inactive")


def test_batches_expired_fires_after_a_batch_expires(stack, observed):
    assert observed.state("DropbatchBatchesExpired") == "inactive"
    ref = submit(stack.ctx, TENANT, "expiring", chat_lines(300, "expiring", max_tokens=64))
    window = stack.settings.limits.completion_windows["24h"]
    stack.engine.after(60, lambda: stack.clock.advance(window + 1))
    try:
        stack.drain(progress_seconds=0)  # Ray hands rows over in blocks: look after every result
    finally:
        stack.clock.advance(-(window + 1))
    assert stack.ctx.batches.for_job(ref).status == BatchStatus.EXPIRED
    observed.wait("DropbatchBatchesExpired firing", lambda: observed.state("DropbatchBatchesExpired") == "firing")
    alert = observed.alerts()["DropbatchBatchesExpired"]
    assert alert["labels"]["severity"] == "critical"
    # increase() extrapolates to the window's edges: one expiry reads as 1 or a little more.
    assert 1 <= float(alert["value"]) < 2
    assert alert["annotations"]["description"].endswith("their unfinished lines got batch_expired errors.")


def test_sla_at_risk_fires_while_the_deadline_is_still_ahead(stack, observed):
    """A 1h batch (the window shortened to a minute by setting) queued behind a line rate that cannot
    finish it in time: DropbatchSlaAtRisk fires through Prometheus before its deadline, not after.

    The rate is the runner's own, measured from a real pass through the warm engine just before.
    """
    window = 60
    settings = stack.settings.model_copy(update={"limits": stack.settings.limits.model_copy(
        update={"completion_windows": {"24h": 86_400, "1h": window}, "sla_admission": "warn"})})
    ctx = Context.from_settings(settings, clock=stack.clock)
    ctx.tenants.create(SLA_TENANT, "premium")  # a tier that may use the 1h window
    submit(ctx, SLA_TENANT, "sla-measured", chat_lines(40, "sla-measured"))
    stack.drain()
    rate = observed.runner.lines_rate.per_second()
    assert rate > 0
    lines = math.ceil(rate * window * 1.5)  # 1.5 windows of work at the measured rate
    ref = submit(ctx, SLA_TENANT, "sla-late", chat_lines(lines, "sla-late"), window="1h")
    Watcher(ctx, metrics=Metrics("watcher")).run_once()
    record = ctx.batches.for_job(ref)
    assert record.status == BatchStatus.IN_PROGRESS and record.expires_at is not None
    try:
        observed.wait("DropbatchSlaAtRisk firing", lambda: observed.state("DropbatchSlaAtRisk") == "firing")
        assert record.expires_at - ctx.now() > 0, "the alert fired before the deadline"
        alert = observed.alerts()["DropbatchSlaAtRisk"]
        assert alert["labels"]["severity"] == "critical" and float(alert["value"]) > 0
    finally:  # leave the queue as found: the late batch is cancelled before it runs
        ctx.batches.update(SLA_TENANT, record.id, lambda b: b.transition(BatchStatus.CANCELLING, ctx.now()))
        stack.drain()
    assert ctx.batches.get(SLA_TENANT, record.id).status == BatchStatus.CANCELLED
    observed.wait("DropbatchSlaAtRisk resolved", lambda: observed.state("DropbatchSlaAtRisk") == "inactive")


def test_every_dashboard_query_returns_data(stack, observed):
    """query_range over the run for every target of dashboard.json, Grafana's variables filled in."""
    stack.ctx.tenants.create(FREE_TENANT, "free")
    statuses = []
    with httpx.Client(base_url=stack.gateway_url, timeout=30) as client:
        for tenant, calls in ((TENANT, 3), (FREE_TENANT, 30)):  # free: a burst of 20, then 429s
            token = stack.ctx.tokens.create(tenant).token
            for i in range(calls):
                statuses.append(client.get("/v1/batches", headers={"Authorization": f"Bearer {token}"}).status_code)
                if i == 0 and tenant == TENANT:
                    # A scrape between the first call and the rest: the route's series exists before
                    # the others, so rate() sees them (a series born with every call has no rate).
                    observed.wait_scraped_after(time.time(), "dropbatch-gateway")
    assert 429 in statuses and 200 in statuses
    observed.wait(
        "the gateway's 429s scraped",
        lambda: (observed.value("sum(dropbatch_rate_limited_total)") or 0) >= statuses.count(429),
        timeout=30,
    )
    observed.wait_scraped_after(time.time() + 1, "dropbatch-gateway")  # rate() over RATE_INTERVAL sees the calls

    end = time.time()
    range_ = f"{math.ceil(end - observed.started)}s"
    empty = []
    for target in dashboard_targets(DASHBOARD):
        expr = target.promql(rate_interval=RATE_INTERVAL, range_=range_)
        series = query_range(observed.prometheus.url, expr, observed.started, end, 1)
        values = [float(v) for s in series for _, v in s["values"]]
        if not any(not math.isnan(v) for v in values):
            empty.append(f"{target.panel} [{target.legend}]: {expr} → {json.dumps(series)[:200]}")
    assert not empty, "dashboard queries without data:\n" + "\n".join(empty)


def test_the_dashboard_picture_is_drawn_from_this_run(observed, tmp_path):
    """bench/render_dashboard.py over this module's run; DROPBATCH_E2E_DASHBOARD=path keeps the PNG (docs/)."""
    render_dashboard = load_bench("render_dashboard")
    end = time.time()
    grid = render_dashboard.panels(observed.prometheus.url, observed.started, end, scrape_seconds=1)
    assert not [p.title for p in grid if not any(line.has_data for line in p.lines)]
    out = Path(os.environ.get("DROPBATCH_E2E_DASHBOARD") or tmp_path / "dashboard.png")
    render_dashboard.draw(observed.prometheus.url, observed.started, end, out, scrape_seconds=1)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
