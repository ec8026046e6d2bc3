"""Metrics (in-process, fresh registry, fake clock) and structured logs (fixed vocabulary, set version on every line)."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from conftest import host_baseline
from prometheus_client import CollectorRegistry
from structlog.testing import capture_logs

from driftd.baselines.loader import load_set
from driftd.engine.clock import FakeClock
from driftd.engine.once import run_once
from driftd.observability.logging import Event, _add_context, configure_logging
from driftd.observability.metrics import ACTIONS, RESULTS, Metrics

DRIFTD = str(Path(sys.executable).with_name("driftd"))
VOCABULARY = {e.value for e in Event}
H = {"target": "host"}

FOUR_FILES = host_baseline(spec="""
    files:
      - {path: /etc/motd, content: "hello\\n", mode: "0644"}
      - {path: /etc/issue, content: "issue\\n", mode: "0644"}
      - {path: /etc/hosts.allow, content: "ALL: LOCAL\\n", mode: "0644"}
      - {path: /etc/hostname, content: "node-a\\n"}
""")


def drift_three(host_root: Path) -> None:
    """Two files with the wrong content and one missing; /etc/hostname is already right."""
    (host_root / "etc/motd").write_text("hacked\n")
    (host_root / "etc/hosts.allow").write_text("ALL: ALL\n")
    for p in ("etc/motd", "etc/hosts.allow"):
        (host_root / p).chmod(0o644)


class TestMetricsInProcess:
    def test_label_values_exist_before_anything_happened(self, baselines_dir, make_runtime):
        """Every action/result series the host can have and the per-target gauges exist at 0 before the first scan;
        actions the host never takes (a pod's evict, a container's recreate) have no series."""
        reg = CollectorRegistry()
        make_runtime(baselines_dir({"b.yaml": FOUR_FILES}), registry=reg)
        g = reg.get_sample_value
        assert g("driftd_remediations_total", {"target": "host", "action": "chmod", "result": "failed"}) == 0.0
        host_actions = {"write_file", "chmod", "chown", "remove", "mkdir", "write_sysctl", "retire_node", "patch_hook"}
        for action in ACTIONS:
            for result in RESULTS:
                value = g("driftd_remediations_total", {"target": "host", "action": action, "result": result})
                assert value == (0.0 if action in host_actions else None), (action, result)
        for result in ("clean", "drift", "error"):
            assert g("driftd_scans_total", {"target": "host", "result": result}) == 0.0
        assert g("driftd_time_to_remediate_seconds_count", H) == 0.0
        assert g("driftd_snapshots_total", H) == 0.0
        assert g("driftd_baseline_load_errors_total") == 0.0
        # scrape-time gauges say 0 for a known target with no drift ("0 when none")
        assert g("driftd_oldest_unremediated_drift_age_seconds", H) == 0.0
        assert g("driftd_remediation_failing", H) == 0.0
        assert g("driftd_drifts_past_deadline", H) == 0.0

    def test_metrics_without_a_runtime_precreate_the_same_series(self):
        """Metrics() alone pre-creates label values for every default target."""
        m = Metrics(CollectorRegistry())
        assert m.registry.get_sample_value(
            "driftd_remediations_total", {"target": "host", "action": "write_sysctl", "result": "skipped"}
        ) == 0.0
        assert m.registry.get_sample_value(
            "driftd_remediations_total", {"target": "host", "action": "evict", "result": "skipped"}
        ) is None

    def test_each_target_gets_only_its_own_actions(self):
        """Docker recreates and retires, Kubernetes evicts: the label values follow each target's kind handlers."""
        m = Metrics(CollectorRegistry(), targets=["host", "docker", "kubernetes"])
        present = {
            (s.labels["target"], s.labels["action"])
            for fam in m.registry.collect() if fam.name == "driftd_remediations"
            for s in fam.samples
        }
        assert {a for t, a in present if t == "docker"} == {"recreate", "retire"}
        assert {a for t, a in present if t == "kubernetes"} == {"evict"}
        assert "evict" not in {a for t, a in present if t == "host"}
        assert m.registry.get_sample_value("driftd_resources_observed", H) == 0.0

    def test_counters_after_a_pass_that_reverts_three_drifts(self, host_root, baselines_dir, make_runtime):
        """Detections, remediations, snapshots, scan results and time-to-remediate count each reverted drift once."""
        drift_three(host_root)
        reg = CollectorRegistry()
        rt = make_runtime(baselines_dir({"b.yaml": FOUR_FILES}), registry=reg)
        summary = run_once(rt.engine, rt.queue, attempts=2)
        assert summary.exit_code == 0, summary
        g = reg.get_sample_value
        assert g("driftd_drifts_detected_total", {"target": "host", "baseline": "test"}) == 3.0
        assert g("driftd_remediations_total", {"target": "host", "action": "write_file", "result": "succeeded"}) == 3.0
        assert g("driftd_remediations_total", {"target": "host", "action": "write_file", "result": "failed"}) == 0.0
        assert g("driftd_resources_observed", H) == 4.0
        assert g("driftd_scans_total", {"target": "host", "result": "drift"}) == 1.0
        assert g("driftd_scans_total", {"target": "host", "result": "clean"}) == 0.0
        assert g("driftd_time_to_remediate_seconds_count", H) == 3.0
        assert g("driftd_time_to_remediate_seconds_sum", H) == 0.0  # the fake clock never moved
        assert g("driftd_snapshots_total", H) == 2.0  # the missing file had nothing to keep
        assert g("driftd_target_up", H) == 1.0
        assert g("driftd_last_scan_timestamp_seconds", H) == rt.engine.clock.time()
        assert g("driftd_active_drifts", {"target": "host", "baseline": "test"}) is None
        assert g("driftd_oldest_unremediated_drift_age_seconds", H) == 0.0

        # a second, clean pass counts a clean scan and detects nothing new
        assert run_once(rt.engine, rt.queue, attempts=2).exit_code == 0
        assert g("driftd_scans_total", {"target": "host", "result": "clean"}) == 1.0
        assert g("driftd_drifts_detected_total", {"target": "host", "baseline": "test"}) == 3.0
        assert g("driftd_time_to_remediate_seconds_count", H) == 3.0

    def test_active_drift_and_its_age_are_computed_at_scrape_time(self, tmp_path, host_root, baselines_dir, make_runtime):
        """A dry-run drift is active; its age follows the clock with no new scan; past the window it is counted."""
        (host_root / "etc/motd").write_text("hacked\n")
        bdir = baselines_dir({"b.yaml": host_baseline(spec="""
            window: 10m
            files:
              - {path: /etc/motd, content: "hello\\n"}
        """)})
        clock = FakeClock()
        reg = CollectorRegistry()
        rt = make_runtime(bdir, dry_run=True, clock=clock, registry=reg)
        assert run_once(rt.engine, rt.queue, attempts=1).exit_code == 3
        g = reg.get_sample_value
        active = {"target": "host", "baseline": "test"}
        assert g("driftd_active_drifts", active) == 1.0
        assert g("driftd_oldest_unremediated_drift_age_seconds", H) == 0.0
        assert g("driftd_remediations_total", {"target": "host", "action": "write_file", "result": "skipped"}) == 1.0
        clock.advance(120)
        assert g("driftd_oldest_unremediated_drift_age_seconds", H) == 120.0
        assert g("driftd_drifts_past_deadline", H) == 0.0
        clock.advance(481)
        assert g("driftd_oldest_unremediated_drift_age_seconds", H) == 601.0
        assert g("driftd_drifts_past_deadline", H) == 1.0
        assert not g("driftd_window_breaches_total", active)  # counted by the reconciler, not at scrape
        assert run_once(rt.engine, rt.queue, attempts=1).exit_code == 3
        assert g("driftd_window_breaches_total", active) == 1.0
        assert g("driftd_drifts_detected_total", active) == 1.0  # the same drift, not a new one
        rt.state.close()

        # an enforcing driftd on the same state reverts it; time to remediate runs from first detection
        reg2 = CollectorRegistry()
        rt2 = make_runtime(bdir, clock=clock, registry=reg2)
        assert run_once(rt2.engine, rt2.queue, attempts=1).exit_code == 0
        g2 = reg2.get_sample_value
        assert g2("driftd_time_to_remediate_seconds_sum", H) == 601.0
        assert g2("driftd_time_to_remediate_seconds_bucket", {"target": "host", "le": "300.0"}) == 0.0
        assert g2("driftd_time_to_remediate_seconds_bucket", {"target": "host", "le": "900.0"}) == 1.0
        assert g2("driftd_active_drifts", active) is None
        assert g2("driftd_oldest_unremediated_drift_age_seconds", H) == 0.0
        assert not g2("driftd_drifts_detected_total", active)  # not a new drift for this process either

    def test_failed_remediation_counts_and_escalates(self, host_root, baselines_dir, make_runtime):
        """Each failed attempt is counted; after escalate_after failures in a row the drift is 'failing'."""
        reg = CollectorRegistry()
        rt = make_runtime(baselines_dir({"b.yaml": host_baseline(spec="""
            files:
              - {path: /etc/nodir/conf, content: "x\\n"}
        """)}), registry=reg)
        assert run_once(rt.engine, rt.queue, attempts=2).exit_code == 4
        g = reg.get_sample_value
        assert g("driftd_remediations_total", {"target": "host", "action": "write_file", "result": "failed"}) == 2.0
        assert g("driftd_remediation_failing", H) == 0.0
        assert run_once(rt.engine, rt.queue, attempts=1).exit_code == 4
        assert g("driftd_remediations_total", {"target": "host", "action": "write_file", "result": "failed"}) == 3.0
        assert g("driftd_remediation_failing", H) == 1.0
        assert g("driftd_active_drifts", {"target": "host", "baseline": "test"}) == 1.0

    def test_observe_error_marks_the_scan_as_error(self, tmp_path, host_root, baselines_dir, make_runtime):
        """A scan with an unobservable resource counts result=error; the target stays up when others were observed."""
        real = tmp_path / "elsewhere"
        real.mkdir()
        (host_root / "etc/ssh").symlink_to(real)
        reg = CollectorRegistry()
        rt = make_runtime(baselines_dir({"b.yaml": host_baseline(spec="""
            files:
              - {path: /etc/ssh/sshd_config, content: "x\\n"}
              - {path: /etc/hostname, content: "node-a\\n"}
        """)}), registry=reg)
        assert run_once(rt.engine, rt.queue, attempts=1).exit_code == 1
        g = reg.get_sample_value
        assert g("driftd_scans_total", {"target": "host", "result": "error"}) == 1.0
        assert g("driftd_target_up", H) == 1.0


# --------------------------------------------------------------------------- logs


@pytest.fixture
def debug_logs() -> None:
    configure_logging("json", "debug")


def capture() -> Any:
    return capture_logs(processors=[_add_context])


@pytest.mark.usefixtures("debug_logs")
class TestLogVocabulary:
    def test_every_event_of_an_eventful_pass_is_in_the_vocabulary(self, tmp_path, host_root, baselines_dir, make_runtime):
        """Detect, snapshot, remediate, resolve, block, fail, escalate and observe errors all log vocabulary events."""
        drift_three(host_root)
        (host_root / "etc/dirfile").mkdir()  # a directory where a file belongs: blocked
        real = tmp_path / "elsewhere"
        real.mkdir()
        (host_root / "etc/ssh").symlink_to(real)
        bdir = baselines_dir({"b.yaml": FOUR_FILES, "c.yaml": host_baseline(name="extra", spec="""
            files:
              - {path: /etc/dirfile, content: "x\\n"}
              - {path: /etc/ssh/sshd_config, content: "x\\n"}
              - {path: /etc/nodir/conf, content: "x\\n"}
        """)})
        rt = make_runtime(bdir)
        version = rt.engine.baselines.version
        with capture() as logs:
            summary = run_once(rt.engine, rt.queue, attempts=3)
        assert summary.exit_code == 1
        events = [e["event"] for e in logs]
        assert set(events) <= VOCABULARY, set(events) - VOCABULARY
        assert {
            "scan.started", "scan.finished", "drift.detected", "snapshot.saved", "remediation.succeeded",
            "drift.resolved", "remediation.blocked", "remediation.failed", "remediation.escalated", "observe.failed",
        } <= set(events)
        assert events[:1] == ["scan.started"]
        assert events.count("drift.resolved") == 3 and events.count("snapshot.saved") == 2
        assert all(e["baseline_version"] == version for e in logs)
        reconcile_events = {"drift.detected", "drift.resolved", "remediation.succeeded", "remediation.failed",
                            "remediation.blocked", "remediation.escalated", "observe.failed"}
        for e in logs:
            if e["event"] in reconcile_events:
                assert {"key", "target", "baseline"} <= e.keys(), e
        (esc,) = [e for e in logs if e["event"] == "remediation.escalated"]
        assert esc["key"] == "host:file:/etc/nodir/conf" and esc["consecutive_failures"] == 3

    def test_dry_run_window_breach_and_removed_baseline(self, host_root, baselines_dir, make_runtime):
        """Skipped plans, breached windows and drifts closed by a removed baseline log vocabulary events."""
        (host_root / "etc/motd").write_text("hacked\n")
        bdir = baselines_dir({"b.yaml": host_baseline(spec="""
            window: 1m
            files:
              - {path: /etc/motd, content: "hello\\n"}
        """)})
        clock = FakeClock()
        rt = make_runtime(bdir, dry_run=True, clock=clock)
        with capture() as logs:
            run_once(rt.engine, rt.queue, attempts=1)
            clock.advance(61)
            run_once(rt.engine, rt.queue, attempts=1)
        events = [e["event"] for e in logs if not e["event"].startswith("scan.")]
        # the audit log records the skip once (started, then the record), not again at the next pass
        assert events == ["drift.detected", "audit", "audit", "remediation.skipped", "drift.window_breached",
                          "remediation.skipped"]
        assert set(e["event"] for e in logs) <= VOCABULARY

        (bdir / "b.yaml").write_text(host_baseline(spec="""
            files:
              - {path: /etc/hostname, content: "node-a\\n"}
        """))
        new, _ = load_set(bdir)
        assert new is not None
        with capture() as logs:
            rt.engine.set_baselines(new)
            run_once(rt.engine, rt.queue, attempts=1)
        (resolved,) = [e for e in logs if e["event"] == "drift.resolved"]
        assert resolved["resolution"] == "no longer governed"
        assert (resolved["key"], resolved["target"], resolved["baseline"]) == ("host:file:/etc/motd", "host", "test")
        assert all(e["baseline_version"] == new.version for e in logs)
        assert rt.state.active() == {}

    def test_sensitive_content_never_reaches_the_logs(self, host_root, baselines_dir, make_runtime):
        """Neither the bytes of a sensitive file nor the digest of its expected content appear in any log line."""
        secret, old = "token=0123456789abcdef\n", "token=leaked-old-value\n"
        (host_root / "etc/token").write_text(old)
        rt = make_runtime(baselines_dir({"b.yaml": host_baseline(spec=f"""
            files:
              - {{path: /etc/token, content: {json.dumps(secret)}, sensitive: true}}
        """)}))
        with capture() as logs:
            assert run_once(rt.engine, rt.queue, attempts=1).exit_code == 0
        text = json.dumps(logs, default=str)
        for needle in (secret.strip(), old.strip(), hashlib.sha256(secret.encode()).hexdigest()):
            assert needle not in text
        (detected,) = [e for e in logs if e["event"] == "drift.detected"]
        assert detected["drift"][0]["field"] == "content"
        assert detected["drift"][0]["expected"] == detected["drift"][0]["actual"] == "<redacted>"


def run_once_cli(tmp_path: Path, host_root: Path, bdir: Path, **env: str) -> subprocess.CompletedProcess[str]:
    child = {k: v for k, v in os.environ.items() if not k.startswith("DRIFTD_") and k != "NODE_NAME"}
    child.update(env)
    return subprocess.run(
        [DRIFTD, "run", "--once", "--host-root", str(host_root), "--baselines", str(bdir), "--state-dir",
         str(tmp_path / "state")],
        capture_output=True, text=True, env=child, timeout=20, stdin=subprocess.DEVNULL,
    )


class TestCliLogLines:
    @pytest.mark.parametrize("fmt", ["json", "auto"])
    def test_every_stderr_line_is_a_vocabulary_json_event_with_the_set_version(self, tmp_path, host_root,
                                                                               baselines_dir, fmt):
        """With JSON logs (explicit, or auto off a terminal) every stderr line is one event carrying the set version."""
        drift_three(host_root)
        bdir = baselines_dir({"b.yaml": FOUR_FILES})
        version = load_set(bdir)[0].version
        r = run_once_cli(tmp_path, host_root, bdir, DRIFTD_LOG__FORMAT=fmt, DRIFTD_LOG__LEVEL="debug")
        assert r.returncode == 0, r.stderr
        lines = r.stderr.splitlines()
        assert lines
        events = []
        for line in lines:
            e = json.loads(line)
            assert e["event"] in VOCABULARY, e
            assert e["baseline_version"] == version, e
            assert {"level", "timestamp"} <= e.keys()
            events.append(e["event"])
        assert {"scan.started", "scan.finished", "drift.detected", "snapshot.saved", "remediation.succeeded",
                "drift.resolved"} <= set(events)
        assert r.stdout.startswith("driftd run on node-a: 4 resources, baseline set " + version)  # the summary: stdout only

    def test_level_filter(self, tmp_path, host_root, baselines_dir):
        """At level warning only warnings and errors are written (drift.detected is a warning), and the audit
        log's shipped copy (``audit``, info), which is written at every level."""
        drift_three(host_root)
        bdir = baselines_dir({"b.yaml": FOUR_FILES})
        r = run_once_cli(tmp_path, host_root, bdir, DRIFTD_LOG__FORMAT="json", DRIFTD_LOG__LEVEL="warning")
        assert r.returncode == 0
        levels = {json.loads(x)["level"] for x in r.stderr.splitlines()}
        events = {json.loads(x)["event"] for x in r.stderr.splitlines()}
        assert levels == {"warning", "info"} and events == {"drift.detected", "audit"}
        assert {json.loads(x)["level"] for x in r.stderr.splitlines() if json.loads(x)["event"] != "audit"} == {"warning"}


def test_docs_list_every_outcome_status_and_the_exit_code_it_leads_to():
    """docs/operations.md documents exactly the OutcomeStatus values, with the exit codes once.py gives them."""
    import re

    from driftd.engine.once import _PRIORITY
    from driftd.exitcodes import ExitCode
    from driftd.models.resources import OutcomeStatus

    text = (Path(__file__).resolve().parent.parent / "docs/operations.md").read_text()
    section = text.split("## Outcome statuses", 1)[1].split("\n## ", 1)[0]
    rows = dict(re.findall(r"^\| `([a-z]+)` \|.*\| (\d) \|$", section, re.M))
    assert set(rows) == {s.value for s in OutcomeStatus}
    for status, code in rows.items():
        assert int(code) == int(_PRIORITY.get(OutcomeStatus(status), ExitCode.CLEAN)), status
