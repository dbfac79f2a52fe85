"""The Grafana dashboard as a picture, drawn from Prometheus, without Grafana.

Every line is Prometheus's own answer (``/api/v1/query_range``) to the
dashboard's own PromQL, read from deploy/grafana/dashboard.json with Grafana's
``$__rate_interval`` and ``$__range`` filled in as Grafana would: nothing here
computes a rate or a quantile, so the picture cannot drift from the dashboard.
Every time-series panel is drawn into ``bench/out/dashboard.png``.

From a Prometheus that scraped a run (``--minutes``: the last minutes; or
``--start``/``--end`` in unix seconds):

    .venv/bin/python bench/render_dashboard.py --prometheus http://127.0.0.1:9090 --minutes 30

Or beside a run: Prometheus (the ``prometheus`` binary, Debian's package) is
started on deploy/prometheus/prometheus.yml as shipped, with the targets given
(the `dropbatch up` ports by default) and 5 s scrapes, for ``--duration``
seconds (Ctrl-C draws early):

    DEMO_REQUESTS=2000 make demo                                   # terminal 1
    .venv/bin/python bench/render_dashboard.py --duration 900      # terminal 2
"""

from __future__ import annotations

import argparse
import math
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from dropbatch.observability.prometheus import (  # noqa: E402
    PrometheusServer,
    api,
    dashboard_targets,
    legend,
    local_config,
    query_range,
)

OUT = REPO / "bench" / "out"
DASHBOARD = REPO / "deploy" / "grafana" / "dashboard.json"
SHIPPED = REPO / "deploy" / "prometheus" / "prometheus.yml"
DEFAULT_TARGETS = {"gateway": "127.0.0.1:8000", "watcher": "127.0.0.1:9101", "runner": "127.0.0.1:9102"}
SCRAPE_SECONDS = 5.0  # the Prometheus this script starts; the shipped config says 15 s
MAX_POINTS = 300
# Grafana's unit → (axis label, factor) for the picture.
UNITS = {"bytes": ("GiB", 1 / 2**30), "percentunit": ("%", 100.0), "reqps": ("per second", 1.0), "s": ("seconds", 1.0)}


@dataclass(frozen=True)
class Line:
    """A curve of one panel: x in seconds since the start of the range, y (NaN where Prometheus had none)."""

    label: str
    x: list[float]
    y: list[float]

    @property
    def has_data(self) -> bool:
        return any(not math.isnan(v) for v in self.y)


@dataclass
class Panel:
    title: str
    unit: str
    lines: list[Line] = field(default_factory=list)


def rate_interval(step: float, scrape_seconds: float) -> str:
    """Grafana's ``$__rate_interval``: max(step + scrape interval, 4 × scrape interval)."""
    return f"{max(step + scrape_seconds, 4 * scrape_seconds):g}s"


def step_for(start: float, end: float) -> float:
    return max(1.0, math.ceil((end - start) / MAX_POINTS))


def panels(url: str, start: float, end: float, *, scrape_seconds: float, dashboard: Path = DASHBOARD) -> list[Panel]:
    """Every time-series panel of the dashboard, its lines from ``query_range`` over [start, end]."""
    step = step_for(start, end)
    by_title: dict[str, Panel] = {}
    for target in dashboard_targets(dashboard):
        if target.panel_type != "timeseries":
            continue  # the stat row repeats the time series' queries as single numbers
        label, factor = UNITS.get(target.unit, ("", 1.0))
        panel = by_title.setdefault(target.panel, Panel(target.panel, label))
        expr = target.promql(rate_interval=rate_interval(step, scrape_seconds), range_=f"{math.ceil(end - start)}s")
        for series in query_range(url, expr, start, end, step):
            xs = [float(t) - start for t, _ in series["values"]]
            ys = [float(v) * factor for _, v in series["values"]]
            panel.lines.append(Line(legend(target.legend, series["metric"]), xs, ys))
    for panel in by_title.values():
        peak = max((abs(v) for line in panel.lines for v in line.y if not math.isnan(v)), default=0.0)
        if panel.unit == "seconds" and peak > 2 * 3600:
            panel.unit = "hours"
            panel.lines = [Line(line.label, line.x, [v / 3600 for v in line.y]) for line in panel.lines]
    return list(by_title.values())


def summary(url: str, start: float, end: float) -> str:
    def total(name: str) -> float:
        result = api(url, "query", query=f"sum({name})", time=f"{end:.3f}")["result"]
        return float(result[0]["value"][1]) if result else 0.0

    return (
        f"{(end - start) / 60:.1f} min; "
        f"{total('dropbatch_requests_completed_total'):,.0f} requests completed, "
        f"{total('dropbatch_requests_failed_total'):,.0f} failed, "
        f"{total('dropbatch_generated_tokens_total'):,.0f} tokens generated (runner counters since its start)"
    )


def render(grid: Sequence[Panel], out: Path, *, title: str = "dropbatch") -> Path:
    """Draw ``grid`` into a PNG at ``out`` (Grafana's dark colours); returns ``out``."""
    import matplotlib

    matplotlib.use("Agg")  # no display here, and none needed
    import matplotlib.pyplot as plt

    cols = 4
    rows = max(1, math.ceil(len(grid) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(5 * cols, 3.2 * rows), squeeze=False)
    fig.patch.set_facecolor("#111217")
    for ax, panel in zip(axes.flat, grid, strict=False):
        ax.set_facecolor("#181b1f")
        ax.set_title(panel.title, color="#d8d9da", fontsize=11, loc="left")
        ax.tick_params(colors="#9fa7b3", labelsize=8)
        for spine in ax.spines.values():
            spine.set_color("#2c3235")
        ax.grid(True, color="#2c3235", linewidth=0.6)
        ax.set_ylabel(panel.unit, color="#9fa7b3", fontsize=8)
        ax.set_xlabel("minutes", color="#9fa7b3", fontsize=8)
        drawn = [line for line in panel.lines if line.has_data]
        for line in drawn:
            ax.plot([x / 60 for x in line.x], line.y, label=line.label, linewidth=1.4)
        if drawn:
            ax.legend(fontsize=7, loc="upper left", facecolor="#181b1f", edgecolor="#2c3235", labelcolor="#d8d9da")
        else:
            ax.text(0.5, 0.5, "no data", ha="center", va="center", color="#9fa7b3", transform=ax.transAxes)
    for ax in list(axes.flat)[len(grid) :]:
        ax.set_visible(False)
    fig.suptitle(title, color="#d8d9da", fontsize=12, x=0.01, ha="left")
    fig.tight_layout(rect=(0, 0, 1, 0.97))
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=90, facecolor=fig.get_facecolor())
    plt.close(fig)
    return out


def draw(url: str, start: float, end: float, out: Path, *, scrape_seconds: float) -> Path:
    """Query every panel over [start, end] from the Prometheus at ``url`` and render the PNG."""
    grid = panels(url, start, end, scrape_seconds=scrape_seconds)
    return render(grid, out, title=f"dropbatch — {summary(url, start, end)}")


def sample(binary: str, targets: dict[str, str], duration: float | None, out: Path) -> Path:
    """Run Prometheus on the shipped config against ``targets`` for ``duration`` s (or until Ctrl-C), then draw."""
    jobs = {f"dropbatch-{service}": [address] for service, address in targets.items()}
    scrape = f"{SCRAPE_SECONDS:g}s"
    config, rules = local_config(SHIPPED, jobs, scrape_interval=scrape, evaluation_interval=scrape, for_duration=None)
    workdir = Path(tempfile.mkdtemp(prefix="dropbatch-prometheus-"))
    try:
        with PrometheusServer(binary, workdir, config, rules) as server:
            print(f"prometheus at {server.url}, scraping {', '.join(targets.values())}", file=sys.stderr)
            start = time.time()
            try:
                while duration is None or time.time() - start < duration:
                    time.sleep(1)
            except KeyboardInterrupt:
                print("stopped; drawing", file=sys.stderr)
            end = time.time()
            up = api(server.url, "query", query="up")["result"]
            print("targets: " + ", ".join(f"{r['metric']['job']}={r['value'][1]}" for r in up), file=sys.stderr)
            return draw(server.url, start, end, out, scrape_seconds=SCRAPE_SECONDS)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--prometheus", default=None, help="URL of a Prometheus that scraped a run (no sampling)")
    parser.add_argument("--minutes", type=float, default=None, help="with --prometheus: the last N minutes")
    parser.add_argument("--start", type=float, default=None, help="with --prometheus: range start, unix seconds")
    parser.add_argument("--end", type=float, default=None, help="with --prometheus: range end (default: now)")
    parser.add_argument("--scrape-interval", type=float, default=15.0, help="with --prometheus: its scrape interval, s")
    for service, address in DEFAULT_TARGETS.items():
        parser.add_argument(f"--{service}", default=address, help=f"{service} host:port to scrape ('' to skip)")
    parser.add_argument("--duration", type=float, default=None, help="seconds to sample (default: until Ctrl-C)")
    parser.add_argument("--prometheus-binary", default=shutil.which("prometheus") or "prometheus")
    parser.add_argument("--out", type=Path, default=OUT, help="output directory")
    args = parser.parse_args(argv)

    out = args.out / "dashboard.png"
    if args.prometheus:
        end = args.end if args.end is not None else time.time()
        start = args.start if args.start is not None else end - 60 * (args.minutes or 15)
        png = draw(args.prometheus.rstrip("/"), start, end, out, scrape_seconds=args.scrape_interval)
    else:
        targets = {service: address for service in DEFAULT_TARGETS if (address := getattr(args, service))}
        png = sample(args.prometheus_binary, targets, args.duration, out)
    print(png)
    return 0


if __name__ == "__main__":
    sys.exit(main())
