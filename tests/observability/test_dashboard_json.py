"""deploy/grafana: a provisionable dashboard (datasource variable, no hard-coded uid) and provisioning examples."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

GRAFANA = Path(__file__).resolve().parents[2] / "deploy" / "grafana"
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}


@pytest.fixture(scope="module")
def dashboard() -> dict:
    return json.loads((GRAFANA / "dashboard.json").read_text())


def panels_of(dashboard: dict) -> list[dict]:
    """Every panel, including those nested in collapsed rows."""
    out = []
    for panel in dashboard["panels"]:
        out.append(panel)
        out.extend(panel.get("panels", []))
    return out


def test_has_a_prometheus_datasource_variable(dashboard):
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"


def datasources(node: object) -> list[object]:
    """Every ``datasource`` value anywhere in the JSON."""
    if isinstance(node, dict):
        found = [node["datasource"]] if "datasource" in node else []
        return found + [d for value in node.values() for d in datasources(value)]
    if isinstance(node, list):
        return [d for value in node for d in datasources(value)]
    return []


def test_no_datasource_is_hard_coded(dashboard):
    found = datasources({k: v for k, v in dashboard.items() if k != "templating"})
    assert found
    assert all(ds == DATASOURCE for ds in found), [ds for ds in found if ds != DATASOURCE]


def test_every_panel_queries_through_the_variable(dashboard):
    queried = [p for p in panels_of(dashboard) if p["type"] != "row"]
    assert len(queried) >= 20
    for panel in queried:
        assert panel["datasource"] == DATASOURCE, panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["datasource"] == DATASOURCE, panel["title"]
            assert target["expr"].strip(), panel["title"]
        ref_ids = [t["refId"] for t in panel["targets"]]
        assert len(set(ref_ids)) == len(ref_ids), panel["title"]


def test_panels_have_unique_ids_and_fit_the_grid(dashboard):
    panels = panels_of(dashboard)
    ids = [p["id"] for p in panels]
    assert len(set(ids)) == len(ids)
    cells: set[tuple[int, int]] = set()
    for panel in panels:
        pos = panel["gridPos"]
        assert pos["x"] >= 0 and pos["w"] > 0 and pos["x"] + pos["w"] <= 24, panel["title"]
        mine = {(x, y) for x in range(pos["x"], pos["x"] + pos["w"]) for y in range(pos["y"], pos["y"] + pos["h"])}
        assert not mine & cells, f"{panel['title']} overlaps another panel"
        cells |= mine


def test_covers_the_four_areas(dashboard):
    rows = {p["title"] for p in dashboard["panels"] if p["type"] == "row"}
    assert {"Queue and SLA", "Throughput", "Engine", "Intake and gateway"} <= rows


def test_provisioning_examples_point_at_prometheus_and_a_dashboard_folder():
    sources = yaml.safe_load((GRAFANA / "provisioning" / "datasources" / "prometheus.yml").read_text())
    assert [s["type"] for s in sources["datasources"]] == ["prometheus"]
    providers = yaml.safe_load((GRAFANA / "provisioning" / "dashboards" / "dropbatch.yml").read_text())
    assert providers["providers"][0]["type"] == "file"
    assert providers["providers"][0]["options"]["path"]
