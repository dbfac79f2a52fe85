"""A picture of the Grafana dashboard from a real run, without Grafana.

Scrapes the gateway's, watcher's and runner's ``/metrics`` every few seconds,
keeps every scrape in ``bench/out/dashboard-samples.jsonl``, and renders the
dashboard's main panels (deploy/grafana/dashboard.json) with matplotlib into
``bench/out/dashboard.png``: tokens/s, requests completed/failed, the queue,
seconds to deadline and projected overrun, engine memory, gateway latency,
batches finished by status, manifests admitted/rejected.

Beside a real demo (terminal 1 starts the stack and drops a 2000-line batch):

    DEMO_REQUESTS=2000 make demo
    .venv/bin/python bench/render_dashboard.py --duration 900    # terminal 2; Ctrl-C stops early

The default URLs are the `dropbatch up` ports (gateway 8000, watcher 9101,
runner 9102). A target that does not answer is recorded as down and drawn as a
gap. ``--from-samples FILE`` re-renders a stored run without scraping.
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

OUT = Path(__file__).resolve().parent / "out"
DEFAULT_TARGETS = {
    "gateway": "http://127.0.0.1:8000/metrics",
    "watcher": "http://127.0.0.1:9101/metrics",
    "runner": "http://127.0.0.1:9102/metrics",
}
# The dashboard leaves scrapes and probes out of the gateway's API latency.
NOT_API_ROUTES = frozenset({"/metrics", "/health", "/ready"})


# -- samples ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Series:
    """One sample name and its labels, e.g. ``dropbatch_requests_completed_total{tenant="acme"}``."""

    name: str
    labels: tuple[tuple[str, str], ...] = ()

    def key(self) -> str:
        """A JSON key: label values may hold any character (route templates hold braces)."""
        return json.dumps([self.name, dict(self.labels)], sort_keys=True)

    @staticmethod
    @functools.lru_cache(maxsize=65536)
    def parse(key: str) -> Series:
        name, labels = json.loads(key)
        return Series(name, tuple(sorted(labels.items())))

    def label(self, name: str) -> str:
        return dict(self.labels).get(name, "")


def parse_exposition(text: str) -> dict[str, float]:
    """Prometheus text format → {series key: value}; ``_created`` timestamps are dropped."""
    values: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name.endswith("_created"):
                continue
            values[Series(sample.name, tuple(sorted(sample.labels.items()))).key()] = float(sample.value)
    return values


@dataclass
class Scrape:
    """One scrape of one service: ``up`` False when it did not answer."""

    t: float
    service: str
    up: bool
    values: dict[str, float] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps({"t": self.t, "service": self.service, "up": self.up, "values": self.values})

    @classmethod
    def from_json(cls, line: str) -> Scrape:
        raw = json.loads(line)
        return cls(t=raw["t"], service=raw["service"], up=raw["up"], values=raw["values"])


def scrape(service: str, url: str, timeout: float = 3.0) -> Scrape:
    now = time.time()
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            text = response.read().decode("utf-8")
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return Scrape(now, service, up=False)
    return Scrape(now, service, up=True, values=parse_exposition(text))


def sample(targets: dict[str, str], *, interval: float, duration: float | None, store: Path) -> list[Scrape]:
    """Scrape every target each ``interval`` seconds until ``duration`` or Ctrl-C; append each to ``store``."""
    scrapes: list[Scrape] = []
    started = time.monotonic()
    store.parent.mkdir(parents=True, exist_ok=True)
    with store.open("a", encoding="utf-8") as out:
        try:
            while duration is None or time.monotonic() - started < duration:
                tick = time.monotonic()
                for service, url in targets.items():
                    taken = scrape(service, url)
                    scrapes.append(taken)
                    out.write(taken.to_json() + "\n")
                out.flush()
                up = ", ".join(f"{s.service}={'up' if s.up else 'down'}" for s in scrapes[-len(targets) :])
                print(f"{len(scrapes) // len(targets)} scrapes ({up})", file=sys.stderr)
                time.sleep(max(0.0, interval - (time.monotonic() - tick)))
        except KeyboardInterrupt:
            print("stopped; rendering", file=sys.stderr)
    return scrapes


def load(path: Path) -> list[Scrape]:
    return [Scrape.from_json(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


# -- time series ------------------------------------------------------------------------


Match = Callable[[Series], bool]


@dataclass(frozen=True)
class Line:
    """A curve of one panel: x in seconds since the first scrape, y (NaN where unknown)."""

    label: str
    x: list[float]
    y: list[float]

    @property
    def has_data(self) -> bool:
        return any(not math.isnan(v) for v in self.y)


class Run:
    """The scrapes of one run, queried the way the dashboard's PromQL does."""

    def __init__(self, scrapes: Iterable[Scrape]) -> None:
        self.scrapes = sorted(scrapes, key=lambda s: s.t)
        self.t0 = self.scrapes[0].t if self.scrapes else 0.0

    def of(self, service: str) -> list[Scrape]:
        return [s for s in self.scrapes if s.service == service]

    def groups(self, service: str, name: str, by: Sequence[str] = (), match: Match | None = None) -> list[str]:
        """The distinct label-value groups of ``name`` (what ``sum by (...)`` would return)."""
        found = set()
        for s in self.of(service):
            for key in s.values:
                series = Series.parse(key)
                if series.name == name and (match is None or match(series)):
                    found.add(" ".join(series.label(b) for b in by))
        return sorted(found)

    def _values(
        self,
        service: str,
        name: str,
        by: Sequence[str],
        group: str,
        match: Match | None,
        agg: Callable[[list[float]], float],
    ) -> tuple[list[float], list[float], list[bool]]:
        xs, ys, ups = [], [], []
        for s in self.of(service):
            picked = []
            for key, value in s.values.items():
                series = Series.parse(key)
                if series.name != name or (match is not None and not match(series)):
                    continue
                if by and " ".join(series.label(b) for b in by) != group:
                    continue
                picked.append(value)
            xs.append(s.t - self.t0)
            ys.append(agg(picked) if picked else math.nan)
            ups.append(s.up)
        return xs, ys, ups

    def gauge(
        self,
        service: str,
        name: str,
        *,
        by: Sequence[str] = (),
        group: str = "",
        match: Match | None = None,
        agg: Callable[[list[float]], float] = sum,
    ) -> tuple[list[float], list[float]]:
        """``agg`` over the matching series at each scrape (NaN when down or absent)."""
        xs, ys, _ = self._values(service, name, by, group, match, agg)
        return xs, ys

    def rate(
        self, service: str, name: str, *, by: Sequence[str] = (), group: str = "", match: Match | None = None
    ) -> tuple[list[float], list[float]]:
        """Per-second increase of a counter sum between consecutive scrapes, like ``rate()``.

        A series that appears while its service answers counts from 0 (a labelled
        counter is born at its first increment); a drop is a restart, counted from 0.
        After a scrape the service did not answer, the rate is unknown (NaN).
        """
        xs, ys, ups = self._values(service, name, by, group, match, sum)
        out_x, out_y = [], []
        for i in range(1, len(xs)):
            dt = xs[i] - xs[i - 1]
            if dt <= 0:
                continue
            prev, cur = ys[i - 1], ys[i]
            if math.isnan(cur):
                delta = math.nan
            elif math.isnan(prev):
                delta = cur if ups[i - 1] else math.nan
            else:
                delta = cur - prev if cur >= prev else cur
            out_x.append(xs[i])
            out_y.append(delta / dt)
        return out_x, out_y

    def quantile(
        self, service: str, name: str, q: float, *, window: int = 3, match: Match | None = None
    ) -> tuple[list[float], list[float]]:
        """``histogram_quantile(q, sum by (le) (increase(name_bucket[window scrapes])))``."""
        scrapes = self.of(service)
        cumulative: list[dict[float, float]] = []
        for s in scrapes:
            buckets: dict[float, float] = {}
            for key, value in s.values.items():
                series = Series.parse(key)
                if series.name != name + "_bucket" or (match is not None and not match(series)):
                    continue
                le = float(series.label("le"))
                buckets[le] = buckets.get(le, 0.0) + value
            cumulative.append(buckets)
        xs, ys = [], []
        for i in range(window, len(scrapes)):
            old, new = cumulative[i - window], cumulative[i]
            delta = sorted((le, new[le] - old.get(le, 0.0)) for le in new)
            xs.append(scrapes[i].t - self.t0)
            ys.append(histogram_quantile(q, delta))
        return xs, ys


def histogram_quantile(q: float, buckets: Sequence[tuple[float, float]]) -> float:
    """Prometheus's estimate: linear interpolation inside the bucket holding rank q·count.

    ``buckets`` are (upper bound, cumulative count) sorted by bound, ending at +Inf.
    NaN when there were no observations.
    """
    if not buckets or buckets[-1][1] <= 0:
        return math.nan
    total = buckets[-1][1]
    rank = q * total
    lower, below = 0.0, 0.0
    for le, count in buckets:
        if count >= rank:
            if math.isinf(le):
                return lower  # Prometheus answers the highest finite bound
            if count == below:
                return le
            return lower + (le - lower) * (rank - below) / (count - below)
        lower, below = le, count
    return lower


# -- rendering --------------------------------------------------------------------------


@dataclass(frozen=True)
class Panel:
    """One plot: ``lines`` on the left axis, ``right`` (another unit) dashed on a right axis."""

    title: str
    unit: str
    lines: list[Line]
    empty: str = "no data in this run"
    right: list[Line] = field(default_factory=list)
    right_unit: str = ""
    from_zero: bool = False


def _line(label: str, xy: tuple[list[float], list[float]], scale: float = 1.0) -> Line:
    xs, ys = xy
    return Line(label, xs, [y * scale for y in ys])


def _api(series: Series) -> bool:
    return series.label("route") not in NOT_API_ROUTES


def panels(run: Run) -> list[Panel]:
    """The dashboard's main panels, computed from the scrapes."""
    gib = 1 / 2**30
    memory = [
        _line(kind or "engine", run.gauge("runner", "dropbatch_engine_memory_bytes", by=("kind",), group=kind), gib)
        for kind in run.groups("runner", "dropbatch_engine_memory_bytes", ("kind",))
    ]
    queue_batches = [
        _line(f"batches {state}", run.gauge("runner", "dropbatch_queue_batches", by=("state",), group=state, agg=max))
        for state in run.groups("runner", "dropbatch_queue_batches", ("state",))
    ]
    finished = [
        _line(status, run.gauge("runner", "dropbatch_batches_finished_total", by=("status",), group=status))
        for status in run.groups("runner", "dropbatch_batches_finished_total", ("status",))
    ]
    manifests = [
        _line(group, run.gauge("watcher", "dropbatch_manifests_total", by=("result", "reason"), group=group))
        for group in run.groups("watcher", "dropbatch_manifests_total", ("result", "reason"))
    ]
    return [
        Panel(
            "Generated tokens /s",
            "tokens/s",
            [
                _line("generated (rate)", run.rate("runner", "dropbatch_generated_tokens_total")),
                _line("prompt (rate)", run.rate("runner", "dropbatch_prompt_tokens_total")),
                _line("generated (runner, last minute)", run.gauge("runner", "dropbatch_generated_tokens_per_second")),
            ],
        ),
        Panel(
            "Requests /s",
            "requests/s",
            [
                _line("completed", run.rate("runner", "dropbatch_requests_completed_total")),
                _line("failed", run.rate("runner", "dropbatch_requests_failed_total")),
            ],
            from_zero=True,
        ),
        Panel(
            "Queue",
            "request lines",
            [_line("request lines", run.gauge("runner", "dropbatch_queue_requests", agg=max))],
            right=queue_batches,
            right_unit="batches",
            from_zero=True,
        ),
        Panel(
            "Deadline and projected overrun",
            "hours",
            [
                _line(
                    "seconds to deadline", run.gauge("runner", "dropbatch_sla_seconds_to_deadline", agg=min), 1 / 3600
                ),
                _line(
                    "projected overrun",
                    run.gauge("runner", "dropbatch_sla_projected_overrun_seconds", agg=max),
                    1 / 3600,
                ),
            ],
        ),
        Panel("Engine memory", "GiB", memory, from_zero=True),
        Panel(
            "Gateway HTTP latency",
            "ms",
            [
                _line(
                    f"p{int(q * 100)}",
                    run.quantile("gateway", "dropbatch_http_request_duration_seconds", q, match=_api),
                    1000,
                )
                for q in (0.5, 0.99)
            ],
            empty="no gateway API requests in this run",
        ),
        Panel("Batches finished (cumulative)", "batches", finished, from_zero=True),
        Panel("Manifests (cumulative)", "manifests", manifests, from_zero=True),
    ]


def summary(run: Run) -> str:
    last = {s.service: s for s in run.scrapes if s.up}
    runner = last.get("runner")

    def total(name: str) -> float:
        if runner is None:
            return 0.0
        return sum(v for k, v in runner.values.items() if Series.parse(k).name == name)

    minutes = (run.scrapes[-1].t - run.t0) / 60 if run.scrapes else 0.0
    rounds = max((len(run.of(service)) for service in {s.service for s in run.scrapes}), default=0)
    return (
        f"{minutes:.1f} min, {rounds} scrapes per service; "
        f"{total('dropbatch_requests_completed_total'):,.0f} requests completed, "
        f"{total('dropbatch_requests_failed_total'):,.0f} failed, "
        f"{total('dropbatch_generated_tokens_total'):,.0f} tokens generated"
    )


def _top(lines: Sequence[Line]) -> float:
    """An upper y limit with headroom for the legend (1 when every value is 0)."""
    highest = max(v for line in lines for v in line.y if not math.isnan(v))
    return highest * 1.25 if highest > 0 else 1.0


def render(scrapes: Sequence[Scrape], out: Path, *, title: str = "dropbatch") -> Path:
    """Draw the panels of ``scrapes`` into a PNG at ``out``; returns ``out``."""
    import matplotlib

    matplotlib.use("Agg")  # no display here, and none needed
    import matplotlib.pyplot as plt

    run = Run(scrapes)
    grid = panels(run)
    cols = 4
    rows = math.ceil(len(grid) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5 * cols, 3.4 * rows), squeeze=False)
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
        handles = [ax.plot([x / 60 for x in line.x], line.y, label=line.label, linewidth=1.4)[0] for line in drawn]
        right = [line for line in panel.right if line.has_data]
        if right:
            twin = ax.twinx()
            twin.tick_params(colors="#9fa7b3", labelsize=8)
            for spine in twin.spines.values():
                spine.set_color("#2c3235")
            twin.set_ylabel(panel.right_unit, color="#9fa7b3", fontsize=8)
            colors = iter(plt.rcParams["axes.prop_cycle"].by_key()["color"][len(drawn) :])
            for line in right:
                handles += twin.plot(
                    [x / 60 for x in line.x],
                    line.y,
                    label=line.label,
                    linewidth=1.2,
                    linestyle="--",
                    color=next(colors, None),
                )
            if panel.from_zero:
                twin.set_ylim(bottom=0, top=_top(right))
        if panel.from_zero and drawn:
            ax.set_ylim(bottom=0, top=_top(drawn))
        if handles:
            ax.legend(
                handles=handles,
                fontsize=7,
                loc="upper left",
                facecolor="#181b1f",
                edgecolor="#2c3235",
                labelcolor="#d8d9da",
            )
        else:
            ax.text(0.5, 0.5, panel.empty, ha="center", va="center", color="#9fa7b3", transform=ax.transAxes)
    for ax in list(axes.flat)[len(grid) :]:
        ax.set_visible(False)
    fig.suptitle(f"{title} — {summary(run)}", color="#d8d9da", fontsize=12, x=0.01, ha="left")
    fig.tight_layout(rect=(0, 0, 1, 0.95))
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100, facecolor=fig.get_facecolor())
    plt.close(fig)
    return out


# -- command line -----------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--gateway", default=DEFAULT_TARGETS["gateway"], help="gateway /metrics URL ('' to skip)")
    parser.add_argument("--watcher", default=DEFAULT_TARGETS["watcher"], help="watcher /metrics URL ('' to skip)")
    parser.add_argument("--runner", default=DEFAULT_TARGETS["runner"], help="runner /metrics URL ('' to skip)")
    parser.add_argument("--interval", type=float, default=5.0, help="seconds between scrapes")
    parser.add_argument("--duration", type=float, default=None, help="seconds to sample (default: until Ctrl-C)")
    parser.add_argument("--out", type=Path, default=OUT, help="output directory")
    parser.add_argument("--from-samples", type=Path, default=None, help="render a stored samples file, no scraping")
    args = parser.parse_args(argv)

    if args.from_samples is not None:
        scrapes = load(args.from_samples)
    else:
        targets = {name: url for name in ("gateway", "watcher", "runner") if (url := getattr(args, name))}
        store = args.out / "dashboard-samples.jsonl"
        store.unlink(missing_ok=True)
        scrapes = sample(targets, interval=args.interval, duration=args.duration, store=store)
        print(f"samples: {store}", file=sys.stderr)
    if not scrapes:
        print("no scrapes to render", file=sys.stderr)
        return 1
    png = render(scrapes, args.out / "dashboard.png")
    print(png)
    return 0


if __name__ == "__main__":
    sys.exit(main())
