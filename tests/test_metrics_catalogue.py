"""The metric catalogue (docs/metrics.md) against what driftd really exports.

A runtime over a host tree with a drift is scraped over HTTP from the real ``/metrics``
listener (127.0.0.1); the scrape's families (names, types, label names) must match the
catalogue row for row, the scrape must pass ``promtool check metrics`` (Debian's Prometheus
tools; fails in CI when missing), and no label may carry a per-resource value.
"""

from __future__ import annotations

import http.client
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
from conftest import host_baseline
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families
from test_chart import tool

from driftd.baselines.loader import load_set
from driftd.engine.once import run_once
from driftd.observability.metrics import Metrics, StateCollector
from driftd.runtime import build_api_server
from driftd.settings import load_settings

ROOT = Path(__file__).resolve().parents[1]
CATALOGUE = ROOT / "docs" / "metrics.md"
# label names a bounded series may carry: fixed vocabularies, or one value per baseline of the set
BOUNDED_LABELS = {"target", "action", "result", "gate", "kind", "reason", "baseline", "name", "hash", "version", "severity"}


def catalogue() -> dict[str, tuple[str, frozenset[str]]]:
    """metric name → (type, label names), from the catalogue table of docs/metrics.md."""
    rows: dict[str, tuple[str, frozenset[str]]] = {}
    for line in CATALOGUE.read_text().splitlines():
        m = re.match(r"^\| `(driftd_[a-z_]+)` \| (counter|gauge|histogram|summary) \| ([^|]*) \| [^|]+ \| [^|]+ \|$", line)
        if m:
            assert m.group(1) not in rows, f"{m.group(1)} catalogued twice"
            labels = frozenset(re.findall(r"`([a-z_]+)`", m.group(3)))
            rows[m.group(1)] = (m.group(2), labels)
    assert len(rows) > 20, "the catalogue table was not found"
    return rows


def family_name(name: str, kind: str) -> str:
    """The exposition name of a family (the parser strips ``_total`` from counters)."""
    return f"{name}_total" if kind == "counter" else name


@pytest.fixture
def scrape(tmp_path: Path, host_root: Path, baselines_dir: Any, make_runtime: Any) -> str:
    """/metrics of a wired runtime after a dry-run pass that left a drift (so per-drift gauges have samples)."""
    (host_root / "etc/motd").write_text("hacked\n")
    bdir = baselines_dir({"b.yaml": host_baseline(spec="""
        window: 10m
        files:
          - {path: /etc/motd, content: "hello\\n", mode: "0644"}
    """)})
    reg = CollectorRegistry()
    rt = make_runtime(bdir, registry=reg, dry_run=True)
    bset, _ = load_set(bdir)
    assert bset is not None
    rt.metrics.set_baselines(bset.version, [(b.metadata.name, b.kind, "sha256:0") for b in bset.baselines], 1.0)
    run_once(rt.engine, rt.queue, attempts=1)
    srv = build_api_server(load_settings(http={"address": "127.0.0.1:0", "api_address": "127.0.0.1:0"}), registry=reg,
                           healthy=lambda: (True, "ok"), ready=lambda: (True, "ok"), drifts=lambda: [])
    srv.start()
    try:
        conn = http.client.HTTPConnection("127.0.0.1", srv.address[1], timeout=10)
        conn.request("GET", "/metrics")
        r = conn.getresponse()
        assert r.status == 200
        return r.read().decode()
    finally:
        srv.stop()


def test_the_catalogue_matches_a_real_scrape(scrape: str) -> None:
    cat = catalogue()
    scraped = {family_name(f.name, f.type): f for f in text_string_to_metric_families(scrape)}
    assert set(scraped) == set(cat), (
        f"exported but not catalogued: {sorted(set(scraped) - set(cat))}; "
        f"catalogued but not exported: {sorted(set(cat) - set(scraped))}")
    for name, fam in scraped.items():
        kind, labels = cat[name]
        assert fam.type == kind, f"{name}: exported as {fam.type}, catalogued as {kind}"
        assert fam.documentation, f"{name} has no HELP text"
        for s in fam.samples:
            assert set(s.labels) - {"le"} == labels, f"{name}: sample labels {sorted(s.labels)}, catalogued {sorted(labels)}"
    assert not any(n.endswith("_created") for n in scraped), "no *_created series"
    # the per-drift gauges really had samples: the label comparison above was not vacuous
    assert scraped["driftd_active_drifts"].samples and scraped["driftd_remediations_total"].samples


def test_every_metric_the_code_names_is_catalogued() -> None:
    """Families created lazily or only under load (breakers, holds) are in the catalogue too."""
    src = (ROOT / "driftd/observability/metrics.py").read_text()
    named = set(re.findall(r'"(driftd_[a-z_]+)"', src))
    assert named and named <= set(catalogue()), sorted(named - set(catalogue()))


def test_labels_are_bounded_vocabularies(scrape: str) -> None:
    """No per-file, per-container or per-pod label: the catalogue and the scrape use only bounded label names."""
    for name, (_, labels) in catalogue().items():
        assert labels <= BOUNDED_LABELS, (name, sorted(labels - BOUNDED_LABELS))
    for fam in text_string_to_metric_families(scrape):
        for s in fam.samples:
            assert not any("/" in v for k, v in s.labels.items() if k != "version"), (fam.name, s.labels)


def test_promtool_check_metrics_passes_on_the_scrape(scrape: str) -> None:
    r = subprocess.run([tool("PROMTOOL"), "check", "metrics"], input=scrape, capture_output=True, text=True,
                       timeout=60, check=False)
    assert r.returncode == 0 and not r.stdout.strip() and not r.stderr.strip(), r.stdout + r.stderr


def test_a_scrape_with_every_gauge_populated_matches_the_catalogue() -> None:
    """All three targets and a state summary with every kind of row: the same names, types and labels."""
    m = Metrics(CollectorRegistry(), targets=["host", "docker", "kubernetes"])
    summary = {"active": {("docker", "b"): 2}, "oldest_age": {"docker": 5.0}, "failing": {"host": 1},
               "past_deadline": {"host": 1}, "near_deadline": {"kubernetes": 1}, "held": {("host", "budget"): 1},
               "held_past_deadline": {("host", "budget"): 1}, "breakers": [("revert", "b")], "flapping": {"host": 1},
               "snapshot_store": {"bytes": 10, "count": 1}}
    m.registry.register(StateCollector(lambda: summary, targets=["host", "docker", "kubernetes"]))
    m.held.labels("host", "budget").inc()
    m.breaker_trips.labels("b", "revert").inc()
    m.drifts_detected.labels("docker", "b").inc()
    m.window_breaches.labels("host", "b").inc()
    m.last_scan.labels("host").set(1)
    m.time_to_detect.labels("host").observe(1)
    m.packages_out_of_patch.labels("b", "critical").set(1)
    cat = catalogue()
    from prometheus_client import generate_latest

    for fam in text_string_to_metric_families(generate_latest(m.registry).decode()):
        name = family_name(fam.name, fam.type)
        assert name in cat, name
        for s in fam.samples:
            assert set(s.labels) - {"le"} == cat[name][1], (name, s.labels)
