"""bench/render_dashboard.py: scrapes parse, series behave like PromQL's, and the picture renders."""

from __future__ import annotations

import math
import socket
import struct

import pytest
from prometheus_client import generate_latest

from dropbatch.observability.health import Health, ServiceHttp
from dropbatch.observability.metrics import Metrics

STEP = 5.0
T0 = 1_800_000_000.0
TENANT, CHAT, MODEL = "acme", "/v1/chat/completions", "dropbatch-tiny"


@pytest.fixture
def synthetic_run(render_dashboard):
    """Twelve scrapes of three services, five seconds apart, driven through real Metrics registries.

    Returns (scrapes, per-step completed increments). The watcher misses one scrape.
    """
    rd = render_dashboard
    runner, watcher, gateway = Metrics("runner"), Metrics("watcher"), Metrics("gateway")
    completed_steps = [3 * i + 1 for i in range(12)]
    scrapes = []
    for i, completed in enumerate(completed_steps):
        runner.requests_completed.labels(TENANT, CHAT, MODEL).inc(completed)
        if i % 4 == 3:
            runner.requests_failed.labels(TENANT, CHAT, MODEL, "server_error").inc()
        runner.record_tokens(TENANT, MODEL, prompt=10 * completed, generated=8 * completed)
        runner.queue_requests.set(500 - 10 * i)
        runner.queue_batches.labels("queued").set(2)
        runner.queue_batches.labels("running").set(1)
        runner.most_urgent_deadline.set(86_400 - STEP * i)
        runner.projected_overrun.set(-80_000 + 100 * i)
        runner.engine_memory.labels("rss").set(2**30 * (1 + i / 10))
        if i == 6:
            runner.batches_finished.labels("completed").inc()
            watcher.manifests.labels("admitted", "queued").inc()
        for _ in range(i + 1):
            gateway.http_duration.labels("/v1/batches/{batch_id}", "GET").observe(0.02)
            gateway.http_duration.labels("/metrics", "GET").observe(3.0)  # a scrape: left out of the latency
        t = T0 + STEP * i
        scrapes.append(rd.Scrape(t, "runner", True, rd.parse_exposition(generate_latest(runner.registry).decode())))
        scrapes.append(rd.Scrape(t, "gateway", True, rd.parse_exposition(generate_latest(gateway.registry).decode())))
        up = i != 4
        values = rd.parse_exposition(generate_latest(watcher.registry).decode()) if up else {}
        scrapes.append(rd.Scrape(t, "watcher", up, values))
    return scrapes, completed_steps


def test_parse_drops_created_and_keeps_labels_with_braces(render_dashboard):
    metrics = Metrics("gateway")
    metrics.http_requests.labels("/v1/batches/{batch_id}", "GET", "200").inc(4)
    values = render_dashboard.parse_exposition(generate_latest(metrics.registry).decode())
    series = [render_dashboard.Series.parse(key) for key in values]
    assert not [s for s in series if s.name.endswith("_created")]
    (hit,) = [k for k, s in zip(values, series, strict=True) if s.name == "dropbatch_http_requests_total"]
    assert render_dashboard.Series.parse(hit).label("route") == "/v1/batches/{batch_id}"
    assert values[hit] == 4


def test_counter_rate_is_the_increase_per_second(render_dashboard, synthetic_run):
    scrapes, completed = synthetic_run
    run = render_dashboard.Run(scrapes)
    xs, ys = run.rate("runner", "dropbatch_requests_completed_total")
    assert xs == [STEP * i for i in range(1, len(completed))]
    assert ys == pytest.approx([c / STEP for c in completed[1:]])


def test_a_missed_scrape_is_a_gap_not_a_spike(render_dashboard, synthetic_run):
    scrapes, _ = synthetic_run
    run = render_dashboard.Run(scrapes)
    xs, ys = run.gauge("watcher", "dropbatch_manifests_total")
    assert math.isnan(ys[4])
    _, rates = run.rate("watcher", "dropbatch_manifests_total")
    assert math.isnan(rates[3]) and math.isnan(rates[4])  # into and out of the missed scrape


def test_histogram_quantile_interpolates_like_prometheus(render_dashboard):
    lower, upper, count = 0.05, 0.1, 10.0
    buckets = [(lower, 0.0), (upper, count), (math.inf, count)]
    for q in (0.5, 0.9):
        assert render_dashboard.histogram_quantile(q, buckets) == pytest.approx(lower + (upper - lower) * q)
    assert render_dashboard.histogram_quantile(0.99, [(upper, 0.0), (math.inf, count)]) == upper
    assert math.isnan(render_dashboard.histogram_quantile(0.5, [(upper, 0.0), (math.inf, 0.0)]))


def test_gateway_latency_leaves_scrapes_out(render_dashboard, synthetic_run):
    scrapes, _ = synthetic_run
    panels = {p.title: p for p in render_dashboard.panels(render_dashboard.Run(scrapes))}
    latency = panels["Gateway HTTP latency"]
    observed_ms = 20.0  # every API request above took 0.02 s; /metrics took 3 s
    bucket = [b * 1000 for b in (0.01, 0.025)]  # the HTTP buckets around it
    for line in latency.lines:
        assert line.has_data
        assert all(bucket[0] <= y <= bucket[1] for y in line.y if not math.isnan(y)), line.label
    assert observed_ms > bucket[0]


def png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", data[16:24])
    return width, height


def test_render_writes_a_png_of_every_panel(render_dashboard, synthetic_run, tmp_path):
    scrapes, _ = synthetic_run
    grid = render_dashboard.panels(render_dashboard.Run(scrapes))
    empty = [p.title for p in grid if not any(line.has_data for line in p.lines + p.right)]
    assert not empty
    out = render_dashboard.render(scrapes, tmp_path / "out" / "dashboard.png")
    width, height = png_size(out.read_bytes())
    assert width > height > 0


def test_cli_renders_stored_samples(render_dashboard, synthetic_run, tmp_path, capsys):
    scrapes, _ = synthetic_run
    store = tmp_path / "samples.jsonl"
    store.write_text("".join(s.to_json() + "\n" for s in scrapes))
    assert [s.values for s in render_dashboard.load(store)] == [s.values for s in scrapes]
    assert render_dashboard.main(["--from-samples", str(store), "--out", str(tmp_path / "out")]) == 0
    png = tmp_path / "out" / "dashboard.png"
    assert capsys.readouterr().out.strip() == str(png)
    png_size(png.read_bytes())


def test_scrape_reads_a_live_endpoint_and_marks_a_dead_one_down(render_dashboard):
    metrics = Metrics("runner")
    metrics.queue_requests.set(42)
    http = ServiceHttp("127.0.0.1", 0, Health("runner"), metrics).start()
    try:
        live = render_dashboard.scrape("runner", f"http://127.0.0.1:{http.port}/metrics")
    finally:
        http.stop()
    assert live.up
    assert render_dashboard.Run([live]).gauge("runner", "dropbatch_queue_requests")[1] == [42]

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        closed_port = sock.getsockname()[1]  # bound, never listening: connections are refused
        dead = render_dashboard.scrape("runner", f"http://127.0.0.1:{closed_port}/metrics", timeout=2)
    assert not dead.up and dead.values == {}


def test_cli_samples_live_services_then_renders(render_dashboard, tmp_path, capsys):
    metrics = Metrics("runner")
    metrics.requests_completed.labels(TENANT, CHAT, MODEL).inc(3)
    http = ServiceHttp("127.0.0.1", 0, Health("runner"), metrics).start()
    out = tmp_path / "out"
    try:
        argv = ["--runner", f"http://127.0.0.1:{http.port}/metrics", "--gateway", "", "--watcher", ""]
        code = render_dashboard.main([*argv, "--duration", "0.01", "--interval", "0", "--out", str(out)])
    finally:
        http.stop()
    assert code == 0
    stored = render_dashboard.load(out / "dashboard-samples.jsonl")
    assert stored and {s.service for s in stored} == {"runner"} and all(s.up for s in stored)
    assert capsys.readouterr().out.strip() == str(out / "dashboard.png")
    png_size((out / "dashboard.png").read_bytes())
