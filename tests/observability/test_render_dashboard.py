"""bench/render_dashboard.py draws Prometheus's answers to the dashboard's own queries.

A real Prometheus (the shipped config through ``local_config``, 1 s scrapes)
scrapes three live ServiceHttp endpoints whose Metrics a thread moves for a few
seconds; the script's panels must be what Prometheus answers, and it renders.
"""

from __future__ import annotations

import math
import struct
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import pytest

from dropbatch.observability.health import Health, ServiceHttp
from dropbatch.observability.metrics import Metrics
from dropbatch.observability.prometheus import PrometheusServer, api, local_config

SHIPPED = Path(__file__).resolve().parents[2] / "deploy" / "prometheus" / "prometheus.yml"

TENANT, CHAT, MODEL = "acme", "/v1/chat/completions", "dropbatch-tiny"
SCRAPES = 8  # seconds of moving metrics after the first scrape
QUEUED = 420


@dataclass
class Run:
    url: str
    start: float
    end: float


def wait_until(what: str, done, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not done():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout:.0f} s")
        time.sleep(0.2)  # Prometheus scrapes on its own (real) clock


@pytest.fixture(scope="module")
def run(prometheus, tmp_path_factory) -> Iterator[Run]:
    """The three services, scraped by a real Prometheus while their metrics move; yields the time range."""
    services = {name: Metrics(name) for name in ("gateway", "watcher", "runner")}
    runner, gateway, watcher = services["runner"], services["gateway"], services["watcher"]
    with ExitStack() as resources:
        targets = {}
        for name, metrics in services.items():
            http = ServiceHttp("127.0.0.1", 0, Health(name), metrics).start()
            resources.callback(http.stop)
            targets[f"dropbatch-{name}"] = [f"127.0.0.1:{http.port}"]
        config, rules = local_config(SHIPPED, targets, scrape_interval="1s")
        server = resources.enter_context(PrometheusServer(prometheus, tmp_path_factory.mktemp("prom"), config, rules))
        runner.queue_requests.set(QUEUED)
        watcher.manifests.labels("admitted", "queued").inc()
        wait_until("three targets up", lambda: len(api(server.url, "query", query="up == 1")["result"]) == 3)
        start = time.time()
        stop = threading.Event()

        def move() -> None:
            while not stop.wait(0.25):
                runner.requests_completed.labels(TENANT, CHAT, MODEL).inc(5)
                runner.record_tokens(TENANT, MODEL, prompt=40, generated=32)
                gateway.http_requests.labels("/v1/batches/{batch_id}", "GET", "200").inc()
                gateway.http_duration.labels("/v1/batches/{batch_id}", "GET").observe(0.02)
                gateway.http_duration.labels("/metrics", "GET").observe(3.0)  # a scrape: left out of the latency

        mover = threading.Thread(target=move, daemon=True)
        mover.start()
        wait_until(f"{SCRAPES} s of scrapes", lambda: time.time() > start + SCRAPES, timeout=SCRAPES + 10)
        stop.set()
        mover.join(timeout=5)
        yield Run(server.url, start, time.time())


def test_panels_are_prometheus_answers_to_the_dashboard_queries(render_dashboard, run):
    grid = {p.title: p for p in render_dashboard.panels(run.url, run.start, run.end, scrape_seconds=1)}
    (completed,) = grid["Requests completed /s"].lines
    assert completed.label == f"{TENANT} {CHAT}"
    rates = [v for v in completed.y if not math.isnan(v)]
    assert rates and 0 < max(rates) <= 25  # 5 lines every 0.25 s at most: 20/s, and less on a loaded machine
    (queued,) = grid["Queued request lines"].lines
    assert {v for v in queued.y if not math.isnan(v)} == {QUEUED}
    latency = grid["HTTP latency"]
    assert {line.label for line in latency.lines} == {"p50 /v1/batches/{batch_id}", "p99 /v1/batches/{batch_id}"}
    for line in latency.lines:  # seconds: every API call took 0.02 s, the /metrics ones 3 s are left out
        assert line.has_data and all(0.01 <= v <= 0.025 for v in line.y if not math.isnan(v)), line.label
    assert grid["Engine memory"].unit == "GiB"


def png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", data[16:24])
    return width, height


def test_cli_draws_every_time_series_panel_from_a_prometheus(render_dashboard, run, tmp_path, capsys):
    argv = ["--prometheus", run.url, "--start", str(run.start), "--end", str(run.end), "--scrape-interval", "1"]
    assert render_dashboard.main([*argv, "--out", str(tmp_path)]) == 0
    png = tmp_path / "dashboard.png"
    assert capsys.readouterr().out.strip() == str(png)
    width, height = png_size(png.read_bytes())
    assert width > height > 0
    grid = render_dashboard.panels(run.url, run.start, run.end, scrape_seconds=1)
    assert len(grid) == 19  # every time-series panel of dashboard.json


def test_cli_starts_its_own_prometheus_beside_a_run(render_dashboard, prometheus, tmp_path, capsys, monkeypatch):
    metrics = Metrics("runner")
    metrics.requests_completed.labels(TENANT, CHAT, MODEL).inc(3)
    http = ServiceHttp("127.0.0.1", 0, Health("runner"), metrics).start()
    monkeypatch.setattr(render_dashboard, "SCRAPE_SECONDS", 1.0)
    try:
        argv = ["--runner", f"127.0.0.1:{http.port}", "--gateway", "", "--watcher", "", "--duration", "8"]
        code = render_dashboard.main([*argv, "--prometheus-binary", prometheus, "--out", str(tmp_path)])
    finally:
        http.stop()
    assert code == 0
    captured = capsys.readouterr()
    assert captured.out.strip() == str(tmp_path / "dashboard.png")
    assert "dropbatch-runner=1" in captured.err
    png_size((tmp_path / "dashboard.png").read_bytes())
