"""deploy/prometheus: the scrape config, the alerting rules and their unit tests pass promtool."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from dropbatch.errors import ConfigError
from dropbatch.observability.prometheus import dashboard_targets, local_config

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"

PROMETHEUS = DEPLOY / "prometheus"


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
    """promtool parses each dashboard expression (Grafana's variables filled in) as a recording rule."""
    targets = dashboard_targets(DEPLOY / "grafana" / "dashboard.json")
    rules = [
        {"record": f"dashboard:query_{i}", "expr": target.promql(rate_interval="1m", range_="6h")}
        for i, target in enumerate(targets)
    ]
    assert len(rules) == 37
    path = tmp_path / "dashboard-rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    output = _ok(run_promtool("check", "rules", str(path)))
    assert f"SUCCESS: {len(rules)} rules found" in output


def test_the_local_copy_changes_only_targets_intervals_and_durations(run_promtool, tmp_path):
    """What the e2e test and bench/render_dashboard.py run: the shipped expressions, shorter waits."""
    shipped_config = yaml.safe_load((PROMETHEUS / "prometheus.yml").read_text())
    targets = {"dropbatch-runner": ["127.0.0.1:19102"], "dropbatch-gateway": ["127.0.0.1:18000"]}
    config, rules = local_config(PROMETHEUS / "prometheus.yml", targets, scrape_interval="1s", for_duration="2s")
    assert config["global"] == {"scrape_interval": "1s", "evaluation_interval": "1s"}
    assert [job["job_name"] for job in config["scrape_configs"]] == ["dropbatch-gateway", "dropbatch-runner"]
    for job in config["scrape_configs"]:
        (shipped,) = [j for j in shipped_config["scrape_configs"] if j["job_name"] == job["job_name"]]
        assert {**job, "static_configs": shipped["static_configs"]} == shipped
        assert job["static_configs"] == [{"targets": targets[job["job_name"]]}]
    pairs = [
        (a, b)
        for group_a, group_b in zip(_groups(), rules["groups"], strict=True)
        for a, b in zip(group_a["rules"], group_b["rules"], strict=True)
    ]
    assert len(pairs) == 8
    for a, b in pairs:
        assert {k: v for k, v in a.items() if k != "for"} == {k: v for k, v in b.items() if k != "for"}
        assert b["for"] == ("0m" if a["for"] == "0m" else "2s")
    _, as_shipped = local_config(PROMETHEUS / "prometheus.yml", targets, for_duration=None)
    assert [r["for"] for g in as_shipped["groups"] for r in g["rules"]] == [a["for"] for a, _ in pairs]
    with pytest.raises(ConfigError, match="dropbatch-typo"):
        local_config(PROMETHEUS / "prometheus.yml", {"dropbatch-typo": ["127.0.0.1:1"]})
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    (tmp_path / "alerts.yml").write_text(yaml.safe_dump(rules))
    assert "SUCCESS: 1 rule files found" in _ok(run_promtool("check", "config", str(tmp_path / "prometheus.yml")))
