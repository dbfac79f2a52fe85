"""A real Prometheus server over the shipped config, and the dashboard's own PromQL.

Used by the e2e test that checks the dashboard and the alerts on a live run, and
by bench/render_dashboard.py. Nothing here evaluates PromQL: Prometheus does.

``local_config`` derives a local copy of ``deploy/prometheus/prometheus.yml`` and
``alerts.yml`` in which only the scrape targets, the scrape and evaluation
intervals and the alerts' ``for:`` durations change; every expression, label and
annotation is the shipped one, so thresholds cannot drift. ``PrometheusServer``
runs the ``prometheus`` binary on it and answers its HTTP API.
``dashboard_targets`` reads every query of ``deploy/grafana/dashboard.json``.
"""

from __future__ import annotations

import json
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from dropbatch.emulator import free_port
from dropbatch.errors import ConfigError, PrometheusUnavailable

START_SECONDS = 30.0


def local_config(
    prometheus_yml: Path,
    targets: Mapping[str, Sequence[str]],
    *,
    scrape_interval: str = "1s",
    evaluation_interval: str = "1s",
    for_duration: str | None = "1s",
) -> tuple[dict, dict]:
    """The shipped scrape config and rules with local targets and short intervals: (config, rules).

    ``targets`` maps each shipped job name to its ``host:port`` targets; a job it
    does not name is dropped (it would only be down). A rule's ``for:`` becomes
    ``for_duration`` unless it is zero (an alert meant to fire at once stays so), or
    stays as shipped when ``for_duration`` is None.
    """
    config = yaml.safe_load(prometheus_yml.read_text(encoding="utf-8"))
    (rules_file,) = config["rule_files"]
    rules = yaml.safe_load((prometheus_yml.parent / rules_file).read_text(encoding="utf-8"))
    shipped_jobs = {job["job_name"] for job in config["scrape_configs"]}
    unknown = set(targets) - shipped_jobs
    if unknown:
        raise ConfigError(f"not a job of {prometheus_yml.name}: {', '.join(sorted(unknown))}")
    config["global"] = {**config.get("global", {}), "scrape_interval": scrape_interval,
                        "evaluation_interval": evaluation_interval}
    config["rule_files"] = ["alerts.yml"]
    config["scrape_configs"] = [
        {**job, "static_configs": [{"targets": list(targets[job["job_name"]])}]}
        for job in config["scrape_configs"]
        if job["job_name"] in targets
    ]
    for group in rules["groups"]:
        group["interval"] = evaluation_interval
        for rule in group["rules"]:
            if for_duration is not None and "for" in rule and not _is_zero(rule["for"]):
                rule["for"] = for_duration
    return config, rules


def _is_zero(duration: str) -> bool:
    return duration.strip().rstrip("smhdwy") in ("0", "")


@dataclass(frozen=True)
class DashboardTarget:
    """One query of one dashboard panel."""

    panel: str
    panel_type: str
    unit: str
    legend: str
    expr: str

    def promql(self, *, rate_interval: str, range_: str) -> str:
        """The expression with Grafana's variables filled in, as Grafana would send it."""
        return self.expr.replace("$__rate_interval", rate_interval).replace("$__range", range_)


def dashboard_targets(dashboard_json: Path) -> list[DashboardTarget]:
    """Every Prometheus query of the dashboard, in panel order."""
    dashboard = json.loads(dashboard_json.read_text(encoding="utf-8"))
    found = []
    for panel in dashboard["panels"]:
        unit = panel.get("fieldConfig", {}).get("defaults", {}).get("unit", "")
        for target in panel.get("targets", []):
            found.append(
                DashboardTarget(panel["title"], panel["type"], unit, target.get("legendFormat", ""), target["expr"])
            )
    return found


def legend(template: str, labels: Mapping[str, str]) -> str:
    """Grafana's ``{{label}}`` legend filled from a series' labels."""
    text = template
    for name, value in labels.items():
        text = text.replace("{{" + name + "}}", value)
    return text.strip() or ", ".join(f"{k}={v}" for k, v in labels.items()) or "value"


class PrometheusServer:
    """The ``prometheus`` binary on a config, on a free loopback port; ``start()``/``stop()`` or ``with``."""

    def __init__(self, binary: str, workdir: Path, config: dict, rules: dict) -> None:
        self.binary = binary
        self.workdir = workdir
        self.config = config
        self.rules = rules
        self.url = ""
        self._proc: subprocess.Popen | None = None

    def start(self) -> PrometheusServer:
        self.workdir.mkdir(parents=True, exist_ok=True)
        config_path = self.workdir / "prometheus.yml"
        config_path.write_text(yaml.safe_dump(self.config, sort_keys=False), encoding="utf-8")
        (self.workdir / "alerts.yml").write_text(yaml.safe_dump(self.rules, sort_keys=False), encoding="utf-8")
        port = free_port()
        self.url = f"http://127.0.0.1:{port}"
        log = (self.workdir / "prometheus.log").open("wb")
        self._proc = subprocess.Popen(
            [
                self.binary,
                f"--config.file={config_path}",
                f"--storage.tsdb.path={self.workdir / 'data'}",
                f"--web.listen-address=127.0.0.1:{port}",
                "--log.level=warn",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        deadline = time.monotonic() + START_SECONDS
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise PrometheusUnavailable(f"prometheus exited with {self._proc.returncode}: {self.log_tail()}")
            try:
                with urllib.request.urlopen(self.url + "/-/ready", timeout=2) as response:
                    if response.status == 200:
                        return self
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            time.sleep(0.2)
        self.stop()
        raise PrometheusUnavailable(f"prometheus was not ready within {START_SECONDS:.0f} s: {self.log_tail()}")

    def stop(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait(timeout=10)
        self._proc = None

    def __enter__(self) -> PrometheusServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def log_tail(self, lines: int = 20) -> str:
        path = self.workdir / "prometheus.log"
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.exists() else ""

    # -- HTTP API ---------------------------------------------------------------------

    def api(self, path: str, **params: Any) -> Any:
        """GET ``/api/v1/<path>``; returns the ``data`` of a success answer."""
        return api(self.url, path, **params)


def api(url: str, path: str, **params: Any) -> Any:
    """GET ``<url>/api/v1/<path>`` of any Prometheus; returns the ``data`` of a success answer."""
    query = urllib.parse.urlencode({k: v for k, v in params.items() if v is not None})
    try:
        with urllib.request.urlopen(f"{url}/api/v1/{path}?{query}", timeout=30) as response:
            body = json.loads(response.read())
    except urllib.error.HTTPError as exc:
        raise PrometheusUnavailable(f"{path} answered {exc.code}: {exc.read()[:500]!r}") from exc
    except (urllib.error.URLError, ConnectionError, TimeoutError) as exc:
        raise PrometheusUnavailable(f"{url} did not answer: {exc}") from exc
    if body.get("status") != "success":
        raise PrometheusUnavailable(f"{path} failed: {body}")
    return body["data"]


def query_range(url: str, expr: str, start: float, end: float, step: float) -> list[dict]:
    """``/api/v1/query_range``: one ``{"metric": labels, "values": [[t, "v"], ...]}`` per series."""
    return api(url, "query_range", query=expr, start=f"{start:.3f}", end=f"{end:.3f}", step=f"{step:g}")["result"]
