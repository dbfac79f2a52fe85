"""deploy/prometheus: the scrape config, the alerting rules and their unit tests pass promtool."""

from __future__ import annotations

import json
import re
from pathlib import Path

import yaml

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"

PROMETHEUS = DEPLOY / "prometheus"
# Grafana's own variables, given values so the PromQL parses as Prometheus would see it.
GRAFANA_VARIABLES = {"$__rate_interval": "1m", "$__interval": "1m", "$__range": "6h"}


def _ok(result) -> str:
    output = (result.stdout + result.stderr).decode(errors="replace")
    assert result.returncode == 0, output
    return output


def test_alerting_rules_pass_promtool_check(run_promtool):
    output = _ok(run_promtool("check", "rules", str(PROMETHEUS / "alerts.yml")))
    rules = sum(len(group["rules"]) for group in yaml.safe_load((PROMETHEUS / "alerts.yml").read_text())["groups"])
    assert f"SUCCESS: {rules} rules found" in output


def test_scrape_config_passes_promtool_check_with_its_rule_files(run_promtool):
    output = _ok(run_promtool("check", "config", str(PROMETHEUS / "prometheus.yml")))
    assert "SUCCESS: 1 rule files found" in output


def test_alert_unit_tests_pass(run_promtool):
    # promtool resolves rule_files relative to the test file, wherever it runs from.
    _ok(run_promtool("test", "rules", str(PROMETHEUS / "alerts.test.yml")))


def test_alert_unit_tests_cover_the_sla_and_progress_alerts():
    tests = yaml.safe_load((PROMETHEUS / "alerts.test.yml").read_text())["tests"]
    firing = {case["alertname"] for test in tests for case in test.get("alert_rule_test", []) if case.get("exp_alerts")}
    defined = {rule["alert"] for group in _groups() for rule in group["rules"]}
    assert {"DropbatchSlaAtRisk", "DropbatchNoProgress"} <= firing
    assert firing == defined, f"alerts without a firing unit test: {sorted(defined - firing)}"


def _groups() -> list[dict]:
    return yaml.safe_load((PROMETHEUS / "alerts.yml").read_text())["groups"]


def test_every_alert_has_a_duration_a_severity_and_both_annotations():
    for group in _groups():
        for rule in group["rules"]:
            assert "for" in rule, rule["alert"]
            assert rule["labels"]["severity"] in {"warning", "critical"}, rule["alert"]
            assert {"summary", "description"} <= set(rule["annotations"]), rule["alert"]


def test_selected_jobs_are_the_scrape_configs_jobs():
    jobs = {job["job_name"] for job in yaml.safe_load((PROMETHEUS / "prometheus.yml").read_text())["scrape_configs"]}
    text = (PROMETHEUS / "alerts.yml").read_text() + (DEPLOY / "grafana" / "dashboard.json").read_text()
    selected = set(re.findall(r'job=\\?"([a-z-]+)\\?"', text))
    assert selected, "the rules and dashboard select the runner's gauges by job"
    assert selected <= jobs
    assert set(re.findall(r'job=~\\?"([a-z-]+)\.\*\\?"', text)) == {"dropbatch-"}
    assert all(job.startswith("dropbatch-") for job in jobs)


def test_every_dashboard_query_is_valid_promql(run_promtool, tmp_path):
    """promtool parses each dashboard expression as a recording rule."""
    dashboard = json.loads((DEPLOY / "grafana" / "dashboard.json").read_text())
    rules = []
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            expr = target["expr"]
            for variable, value in GRAFANA_VARIABLES.items():
                expr = expr.replace(variable, value)
            rules.append({"record": f"dashboard:panel_{panel['id']}:{target['refId'].lower()}", "expr": expr})
    assert rules
    path = tmp_path / "dashboard-rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    output = _ok(run_promtool("check", "rules", str(path)))
    assert f"SUCCESS: {len(rules)} rules found" in output
