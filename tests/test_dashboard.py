"""The Grafana dashboard shipped in the chart (charts/driftd/dashboards/driftd.json).

Every panel query must parse as PromQL (``promtool check rules`` over the queries written as
recording rules; Debian's Prometheus tools, failing in CI when missing) and name only metrics in
the catalogue (docs/metrics.md) or Prometheus's own ``up``.  The chart ships the same file in a
ConfigMap with the label Grafana's dashboard sidecar looks for.  tests/test_prometheus_e2e.py runs
the queries against a real Prometheus scraping a real driftd.
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

import yaml
from test_chart import CHART, one, render, tool
from test_metrics_catalogue import catalogue

DASHBOARD = CHART / "dashboards" / "driftd.json"
# Grafana's variables, as Grafana substitutes them before sending a query
GRAFANA_VARS = {"$__rate_interval": "5m", "$__interval": "1m", "$__range": "24h", "$job": ".+", "$node": ".*"}
# what the issue asks the dashboard to show, each by a phrase of a panel title
REQUIRED = ("Active drifts by baseline and target", "Time to detect", "Time to remediate", "Oldest open drift",
            "Remediations", "Held by safety gates", "Retirements", "Scan duration", "Scans by result",
            "Time since last scan", "Target up")
HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")


def dashboard() -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return doc


def panels(doc: dict[str, Any]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for p in doc["panels"]:
        out.append(p)
        out.extend(p.get("panels", []))
    return out


def queries(doc: dict[str, Any]) -> list[tuple[str, str]]:
    """(where, PromQL with Grafana's variables substituted) for every panel target, variable and annotation."""
    found = [(p["title"], t["expr"]) for p in panels(doc) for t in p.get("targets", [])]
    for v in doc["templating"]["list"]:
        if v["type"] == "query":
            m = re.fullmatch(r"label_values\((.+), \w+\)", v["query"]["query"])
            assert m, v
            found.append((f"variable {v['name']}", m.group(1)))
    found += [(f"annotation {a['name']}", a["expr"]) for a in doc["annotations"]["list"]]
    subst = []
    for where, expr in found:
        for var, value in GRAFANA_VARS.items():
            expr = expr.replace(var, value)
        assert "$" not in expr, f"{where}: unknown variable in {expr}"
        subst.append((where, expr))
    return subst


def test_every_query_parses(tmp_path: Path) -> None:
    qs = queries(dashboard())
    rules = {"groups": [{"name": "dashboard", "rules": [{"record": f"dashboard:query_{i}", "expr": e}
                                                          for i, (_, e) in enumerate(qs)]}]}
    path = tmp_path / "dashboard-queries.yaml"
    path.write_text(yaml.safe_dump(rules, width=10_000))
    r = subprocess.run([tool("PROMTOOL"), "check", "rules", str(path)], capture_output=True, text=True, timeout=60, check=False)
    assert r.returncode == 0 and f"SUCCESS: {len(qs)} rules found" in r.stdout, r.stdout + r.stderr


def test_the_parse_check_catches_a_broken_query(tmp_path: Path) -> None:
    """The check above can fail: a query with a missing bracket is refused by promtool."""
    path = tmp_path / "broken.yaml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "d", "rules": [
        {"record": "dashboard:broken", "expr": "sum(rate(driftd_scans_total[5m])"}]}]}))
    r = subprocess.run([tool("PROMTOOL"), "check", "rules", str(path)], capture_output=True, text=True, timeout=60, check=False)
    assert r.returncode != 0


def test_queries_name_only_catalogued_metrics() -> None:
    cat = catalogue()
    used: set[str] = set()
    for where, expr in queries(dashboard()):
        names = set(re.findall(r"\b(driftd_[a-z_]+|up)\b", expr))
        assert names, f"{where}: no metric in {expr}"
        for n in names:
            base = n
            for suffix in HISTOGRAM_SUFFIXES:
                if n.endswith(suffix) and cat.get(n[: -len(suffix)], ("",))[0] == "histogram":
                    base = n[: -len(suffix)]
            assert base == "up" or base in cat, f"{where}: {n} is not in docs/metrics.md"
            used.add(base)
    # the dashboard shows the metrics an SRE needs: every state gauge of the catalogue is on it
    for needed in ("driftd_active_drifts", "driftd_oldest_unremediated_drift_age_seconds", "driftd_drifts_past_deadline",
                   "driftd_time_to_detect_seconds", "driftd_time_to_remediate_seconds", "driftd_remediations_total",
                   "driftd_drifts_held", "driftd_target_up", "driftd_scan_duration_seconds", "driftd_last_scan_timestamp_seconds"):
        assert needed in used, needed


def test_panels_cover_the_dashboard_and_fit_the_grid() -> None:
    doc = dashboard()
    assert doc["uid"] == "driftd-overview" and doc["title"] == "driftd"
    ps = panels(doc)
    ids = [p["id"] for p in ps]
    assert len(ids) == len(set(ids)), "panel ids are unique"
    titles = [p["title"] for p in ps]
    for phrase in REQUIRED:
        assert any(phrase in t for t in titles), f"no panel for {phrase!r}"
    cells: set[tuple[int, int]] = set()
    for p in ps:
        g = p["gridPos"]
        assert g["x"] >= 0 and g["x"] + g["w"] <= 24, p["title"]
        mine = {(x, y) for x in range(g["x"], g["x"] + g["w"]) for y in range(g["y"], g["y"] + g["h"])}
        assert not cells & mine, f"{p['title']} overlaps another panel"
        cells |= mine
        if p["type"] != "row":
            assert p["datasource"]["uid"] == "${datasource}" and p["targets"] and p["description"], p["title"]
    # the window the promise is about is drawn on the time-to-remediate and oldest-drift panels
    for p in ps:
        if "Time to remediate" in p["title"] or p["title"].startswith("Oldest open drift by"):
            steps = p["fieldConfig"]["defaults"]["thresholds"]["steps"]
            assert {"color": "red", "value": 1800} in steps, p["title"]


def test_the_chart_ships_the_dashboard_for_the_grafana_sidecar() -> None:
    docs = render({"grafanaDashboard": {"enabled": True, "annotations": {"grafana_folder": "Compliance"}}})
    cm = one(docs, "ConfigMap", "driftd-dashboard")
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert cm["metadata"]["annotations"] == {"grafana_folder": "Compliance"}
    assert json.loads(cm["data"]["driftd.json"]) == dashboard()
    moved = one(render({"grafanaDashboard": {"enabled": True, "namespace": "monitoring",
                                             "labels": {"dashboards": "driftd"}}}), "ConfigMap", "driftd-dashboard")
    assert moved["metadata"]["namespace"] == "monitoring" and moved["metadata"]["labels"]["dashboards"] == "driftd"
    assert not [d for d in render() if d["metadata"]["name"] == "driftd-dashboard"], "off by default"
