"""A real Prometheus end to end: Debian's ``prometheus`` scrapes a real ``driftd run`` and evaluates the chart's rules.

Prometheus (``$PROMETHEUS`` from scripts/k8s-bins.sh; fails in CI when missing) listens on
127.0.0.1, scrapes the daemon every second and loads the PrometheusRule rendered from the chart
(selector ``job="driftd"``, ``pastDeadlineFor: 3s``).  A host baseline in ``warn`` mode with a
5-second window leaves a drift driftd may not remediate: DriftdDriftPastDeadline must go
*pending* then *firing*, name the baseline, and resolve once the file is fixed by hand.  The
dashboard's queries run through the same server's query API.
"""

from __future__ import annotations

import json
import subprocess
import time
import urllib.parse
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import host_baseline
from test_chart import one, render, tool
from test_daemon import _OPENER, DaemonProcess, child_env, free_port
from test_dashboard import dashboard, queries

ALERT = "DriftdDriftPastDeadline"
PHASE = 120.0  # seconds each phase may take on a loaded 2-CPU CI machine


class Prometheus:
    """Debian's prometheus server on 127.0.0.1 with a one-second scrape and evaluation interval."""

    def __init__(self, tmp_path: Path, target_port: int, rules: list[dict[str, Any]]) -> None:
        self.port = free_port()
        self.dir = tmp_path / "prometheus"
        self.dir.mkdir()
        (self.dir / "rules.yaml").write_text(yaml.safe_dump({"groups": rules}, sort_keys=False, width=10_000))
        (self.dir / "prometheus.yml").write_text(yaml.safe_dump({
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s", "scrape_timeout": "900ms"},
            "rule_files": ["rules.yaml"],
            "scrape_configs": [{"job_name": "driftd", "static_configs": [{"targets": [f"127.0.0.1:{target_port}"]}]}],
        }))
        self.log = (self.dir / "prometheus.log").open("wb")
        self.proc = subprocess.Popen(
            [tool("PROMETHEUS"), f"--config.file={self.dir / 'prometheus.yml'}", f"--storage.tsdb.path={self.dir / 'data'}",
             f"--web.listen-address=127.0.0.1:{self.port}", "--log.level=warn"],
            stdout=self.log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=self.dir)

    def api(self, path: str, **params: str) -> Any:
        url = f"http://127.0.0.1:{self.port}/api/v1/{path}"
        if params:
            url += "?" + urllib.parse.urlencode(params)
        with _OPENER.open(url, timeout=5) as r:
            body = json.loads(r.read())
        assert body["status"] == "success", body
        return body["data"]

    def wait(self, pred: Callable[[], Any], what: str, timeout: float = PHASE) -> Any:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"prometheus exited: {(self.dir / 'prometheus.log').read_text()[-3000:]}")
            try:
                got = pred()
            except OSError:
                got = None
            if got:
                return got
            time.sleep(0.2)
        raise AssertionError(f"timed out waiting for {what}; log: {(self.dir / 'prometheus.log').read_text()[-2000:]}")

    def alerts(self, name: str) -> list[dict[str, Any]]:
        return [a for a in self.api("alerts")["alerts"] if a["labels"]["alertname"] == name]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self.log.close()


@pytest.fixture
def run_daemon(tmp_path: Path, host_root: Path) -> Iterator[Callable[..., DaemonProcess]]:
    """A real `driftd run` (tests/test_daemon.py's DaemonProcess), killed at teardown."""
    started: list[DaemonProcess] = []

    def start(bdir: Path, env: dict[str, str]) -> DaemonProcess:
        d = DaemonProcess(tmp_path, host_root, bdir, env=env)
        started.append(d)
        return d

    yield start
    for d in started:
        d.kill()


@pytest.fixture
def prometheus(tmp_path: Path) -> Iterator[Callable[[int], Prometheus]]:
    started: list[Prometheus] = []

    def start(port: int) -> Prometheus:
        rule = one(render({"prometheusRule": {"enabled": True, "selector": 'job="driftd"', "pastDeadlineFor": "3s"}}),
                   "PrometheusRule")
        p = Prometheus(tmp_path, port, rule["spec"]["groups"])
        started.append(p)
        return p

    yield start
    for p in started:
        p.stop()


def test_an_unremediable_drift_goes_pending_firing_and_resolves(
        tmp_path: Path, host_root: Path, baselines_dir: Any, run_daemon: Callable[..., DaemonProcess],
        prometheus: Callable[[int], Prometheus]) -> None:
    motd = host_root / "etc/motd"
    motd.write_text("hello\n")
    motd.chmod(0o644)
    bdir = baselines_dir({"motd.yaml": host_baseline(name="cis-motd", enforcement="warn", spec="""
        window: 5s
        files:
          - {path: /etc/motd, mode: "0644"}
    """)})
    daemon = run_daemon(bdir, env=child_env(DRIFTD_NODE_NAME="node-e2e"))
    daemon.wait_ready()
    prom = prometheus(daemon.port)
    prom.wait(lambda: any(r["value"][1] == "1" for r in prom.api("query", query='up{job="driftd"}')["result"]),
              "Prometheus to scrape driftd (up == 1)")
    # before the first scrape absent(up) holds DriftdAgentDown pending; once driftd is scraped it clears, never firing
    prom.wait(lambda: not prom.alerts("DriftdAgentDown"), "DriftdAgentDown to clear while driftd is up", timeout=30)
    assert not prom.alerts(ALERT)

    motd.chmod(0o666)  # warn mode: reported, never reverted; past the 5 s window it is past its deadline
    states: list[str] = []

    def state_is(wanted: str) -> dict[str, Any] | None:
        found = prom.alerts(ALERT)
        for a in found:
            if not states or states[-1] != a["state"]:
                states.append(a["state"])
        return next((a for a in found if a["state"] == wanted), None)

    prom.wait(lambda: state_is("pending"), f"{ALERT} to go pending")
    firing = prom.wait(lambda: state_is("firing"), f"{ALERT} to fire")
    assert states[:2] == ["pending", "firing"], states
    assert firing["labels"]["target"] == "host" and firing["labels"]["severity"] == "critical"
    ann = firing["annotations"]
    assert "past its remediation deadline" in ann["summary"]
    assert "cis-motd (1)" in ann["description"], ann["description"]  # the drifting baseline, queried live
    assert ann["runbook_url"].endswith(f"/docs/runbooks/{ALERT}.md")
    assert (motd.stat().st_mode & 0o777) == 0o666, "warn mode never reverts"

    # the dashboard's queries run on this real server (parse and evaluate), some of them with data from this drift
    with_data = set()
    for where, expr in queries(dashboard()):
        result = prom.api("query", query=expr)["result"]
        if result:
            with_data.add(where)
    assert "Active drifts by baseline and target" in with_data and "Past deadline" in with_data, sorted(with_data)

    motd.chmod(0o644)  # fixed by hand: driftd sees it clean, the gauge drops, the alert resolves
    prom.wait(lambda: not prom.alerts(ALERT), f"{ALERT} to resolve after the fix")
    assert daemon.proc.poll() is None


def test_a_stopped_agent_is_noticed(tmp_path: Path, host_root: Path, baselines_dir: Any,
                                    run_daemon: Callable[..., DaemonProcess], prometheus: Callable[[int], Prometheus]) -> None:
    """DriftdAgentDown goes pending once the real driftd stops answering the scrape."""
    bdir = baselines_dir({"motd.yaml": host_baseline(name="cis-motd", spec="""
        files:
          - {path: /etc/motd, content: "hello\\n"}
    """)})
    daemon = run_daemon(bdir, env=child_env())
    daemon.wait_ready()
    prom = prometheus(daemon.port)
    prom.wait(lambda: prom.api("query", query='up{job="driftd"} == 1')["result"], "a first successful scrape")
    prom.wait(lambda: not prom.alerts("DriftdAgentDown"), "DriftdAgentDown to clear while driftd is up", timeout=30)
    assert daemon.stop() == 0
    down = prom.wait(lambda: [a for a in prom.alerts("DriftdAgentDown") if a["state"] == "pending"],
                     "DriftdAgentDown to go pending")
    assert down[0]["labels"]["instance"] == f"127.0.0.1:{daemon.port}" and down[0]["labels"]["job"] == "driftd"
    assert f"cannot scrape driftd at 127.0.0.1:{daemon.port}" in down[0]["annotations"]["description"]
