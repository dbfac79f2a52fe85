"""Every metric the dashboard, the alerts and the docs name is one the services really export, with real labels."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from prometheus_client.metrics import MetricWrapperBase

from dropbatch.observability.metrics import Metrics

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
NAME = re.compile(r"dropbatch_[a-z_]+")
SELECTOR = re.compile(r"\b(dropbatch_[a-z_]+|up)\{([^}]*)\}")
MATCHER = re.compile(r"([a-zA-Z_]+)\s*(?:=~|!~|!=|=)")
BY = re.compile(r"\b(?:by|without)\s*\(([^)]*)\)")
TARGET_LABELS = {"job", "instance"}  # added by Prometheus at scrape time
HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")


def dashboard_exprs() -> list[str]:
    dashboard = json.loads((DEPLOY / "grafana" / "dashboard.json").read_text())
    return [target["expr"] for panel in dashboard["panels"] for target in panel.get("targets", [])]


def alert_exprs() -> list[str]:
    import yaml

    groups = yaml.safe_load((DEPLOY / "prometheus" / "alerts.yml").read_text())["groups"]
    return [rule["expr"] for group in groups for rule in group["rules"]]


def test_the_collected_names_are_the_exposition_names(exported_names):
    # Guards the name collection itself: a counter is scraped as _total, a histogram as its parts.
    assert "dropbatch_requests_completed_total" in exported_names
    assert "dropbatch_requests_completed" not in exported_names
    assert "dropbatch_http_request_duration_seconds_bucket" in exported_names
    assert "dropbatch_http_request_duration_seconds" not in exported_names


@pytest.mark.parametrize("path", ["grafana/dashboard.json", "prometheus/alerts.yml", "prometheus/alerts.test.yml"])
def test_every_metric_queried_in_deploy_is_exported(path, exported_names):
    text = (DEPLOY / path).read_text()
    named = set(NAME.findall(text))
    assert named, f"{path} names no dropbatch metric"
    missing = sorted(named - exported_names)
    assert not missing, f"{path} names metrics no service exports: {missing}"


def operator_docs() -> str:
    """The "Operating dropbatch" text: deploy/observability.md, or the README once it is merged there."""
    draft = DEPLOY / "observability.md"
    text = draft.read_text() if draft.exists() else (REPO / "README.md").read_text()
    assert "Operating dropbatch" in text
    return text


def test_every_metric_the_operator_docs_name_is_exported(exported_names):
    # Prose may name a histogram by its family name; queries never do.
    families = {name.removesuffix("_bucket") for name in exported_names if name.endswith("_bucket")}
    named = set(NAME.findall(operator_docs()))
    assert named
    assert not sorted(named - exported_names - families)


def test_the_operator_docs_list_every_exported_metric(exported_names):
    named = set(NAME.findall(operator_docs()))
    histogram_parts = ("_bucket", "_sum", "_count")
    families = {n for n in exported_names if n.startswith("dropbatch_") and not n.endswith(histogram_parts)}
    families |= {n.removesuffix("_bucket") for n in exported_names if n.endswith("_bucket")}
    assert not sorted(families - named), "metrics missing from the table in deploy/observability.md"


def labels_of() -> dict[str, set[str]]:
    """Sample name → the label names it is scraped with."""
    metrics = Metrics("labels")
    out: dict[str, set[str]] = {"up": set(TARGET_LABELS)}
    for value in vars(metrics).values():
        if not isinstance(value, MetricWrapperBase):
            continue
        labels = set(value._labelnames) | TARGET_LABELS
        for family in value.describe():
            if family.type == "counter":
                out[family.name + "_total"] = labels
            elif family.type == "histogram":
                for suffix in HISTOGRAM_SUFFIXES:
                    out[family.name + suffix] = labels | ({"le"} if suffix == "_bucket" else set())
            else:
                out[family.name] = labels
    return out


@pytest.mark.parametrize("source", ["dashboard", "alerts"])
def test_every_label_in_a_query_belongs_to_its_metrics(source):
    known = labels_of()
    exprs = dashboard_exprs() if source == "dashboard" else alert_exprs()
    assert exprs
    for expr in exprs:
        in_expr: set[str] = set()
        for name, matchers in SELECTOR.findall(expr):
            used = set(MATCHER.findall(matchers))
            assert used <= known[name], f"{expr}: {name} has no label {sorted(used - known[name])}"
        for name in NAME.findall(expr) + (["up"] if re.search(r"\bup\{", expr) else []):
            in_expr |= known[name]
        for group in BY.findall(expr):
            used = {label.strip() for label in group.split(",") if label.strip()}
            assert used <= in_expr, f"{expr}: grouping by unknown labels {sorted(used - in_expr)}"
