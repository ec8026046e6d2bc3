"""Safety on the Kubernetes target against a real kube-apiserver (issue 9): break-glass by pod and node
annotation, the window from the pod's own change time, a PDB-blocked eviction past its deadline.

Uses the ``setup`` fixture of tests/test_kubernetes_target.py (one Node object, driftd's runtime for it).
"""
# ruff: noqa: F811  (the imported ``setup`` fixture is every test's parameter)

from __future__ import annotations

import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from conftest import host_baseline
from test_kubernetes_target import driftd_writes, key, pod_baseline, reasons, setup, terminating_or_gone  # noqa: F401

from driftd.core.times import rfc3339
from driftd.engine.clock import FakeClock
from driftd.engine.once import run_once
from driftd.observability.logging import Event
from driftd.testing import capture_logs

pytestmark = pytest.mark.real

REASON = "driftd.io/break-glass-reason"
UNTIL = "driftd.io/break-glass-until"


def iso(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def annotate(c: Any, path: str, annotations: dict[str, str | None]) -> dict[str, Any]:
    return c.rest.patch(path, {"metadata": {"annotations": annotations}})


class TestBreakGlassAnnotations:
    def test_a_pod_annotation_suspends_that_pod_until_it_expires_then_it_is_evicted(self, setup):
        c, ns = setup.cluster, setup.ns
        c.make_pod("web-1", setup.node, privileged=True)
        c.make_pod("web-2", setup.node, privileged=True, owner_name="api")
        annotate(c, c.pod_path("web-1"), {REASON: "INC-42: live debugging", UNTIL: iso(time.time() + 600)})
        clock = FakeClock(start=time.time())
        rt = setup.runtime(clock=clock)
        s = run_once(rt.engine, rt.queue, attempts=1)
        got = {o.key: o for o in s.outcomes}
        held = got[key(ns, "web-1")]
        assert held.status == "held" and "break-glass" in (held.error or "") and "INC-42" in (held.error or "")
        assert f"pod:{ns}/web-1" in (held.error or "")  # says which object asked for it
        assert got[key(ns, "web-2")].status == "remediated"  # an annotation suspends only its own pod
        assert not terminating_or_gone(c.pod("web-1")) and driftd_writes(c, "web-1") == []
        assert "RemediationHeld" in reasons(c.events("web-1"))
        assert rt.metrics.registry.get_sample_value("driftd_overrides_active") == 1
        from driftd.cli import _guards  # `driftd status` lists it from the state directory

        assert any(f"annotation:pod:{ns}/web-1" in g.scope and "INC-42" in g.reason
                   for g in _guards(rt.settings, clock.time()))
        clock.advance(601)  # expired: enforced again
        s2 = run_once(rt.engine, rt.queue, attempts=1)
        assert [(o.key, o.status) for o in s2.outcomes] == [(key(ns, "web-1"), "remediated")]
        assert terminating_or_gone(c.pod("web-1"))

    def test_removing_the_annotation_ends_the_override_at_the_next_reconcile(self, setup):
        c, ns = setup.cluster, setup.ns
        c.make_pod("web-1", setup.node, privileged=True)
        annotate(c, c.pod_path("web-1"), {REASON: "INC-43", UNTIL: iso(time.time() + 600)})
        rt = setup.runtime(clock=FakeClock(start=time.time()))
        assert [o.status for o in run_once(rt.engine, rt.queue, attempts=1).outcomes] == ["held"]
        annotate(c, c.pod_path("web-1"), {REASON: None, UNTIL: None})
        with capture_logs() as logs:
            out = rt.engine.reconcile(key(ns, "web-1"))  # what the pod watch's MODIFIED event leads to
        assert out.status == "remediated"
        assert any(e["event"] == Event.OVERRIDE_ENDED for e in logs)

    def test_a_node_annotation_suspends_pods_and_host_files_of_that_node(self, setup, host_root):
        c = setup.cluster
        c.make_pod("web-1", setup.node, privileged=True)
        (host_root / "etc").mkdir(exist_ok=True)
        (host_root / "etc/motd").write_text("hand edit during the incident\n")
        annotate(c, f"/api/v1/nodes/{setup.node}", {REASON: "INC-44: node maintenance", UNTIL: iso(time.time() + 3600)})
        files = {"pods.yaml": pod_baseline(setup.ns),
                 "host.yaml": host_baseline("motd", 'files:\n  - {path: /etc/motd, content: "hello\\n"}')}
        rt = setup.runtime(files, clock=FakeClock(start=time.time()))
        s = run_once(rt.engine, rt.queue, attempts=1)
        assert sorted((o.target, o.status) for o in s.outcomes) == [("host", "held"), ("kubernetes", "held")]
        assert all(f"annotation:node:{setup.node}" in (o.error or "") for o in s.outcomes)
        assert (host_root / "etc/motd").read_text() == "hand edit during the incident\n"
        assert not terminating_or_gone(c.pod("web-1"))

    @pytest.mark.parametrize(("annotations", "why"), [
        ({REASON: "INC-45", UNTIL: "+48h"}, "not an RFC 3339 time"),
        ({REASON: "INC-45"}, "without driftd.io/break-glass-until"),
        ({UNTIL: "LATER"}, "not an RFC 3339 time"),
        ({REASON: "INC-45", UNTIL: "FAR"}, "over safety.break_glass.max_ttl_seconds"),
        ({REASON: " ", UNTIL: "SOON"}, "needs a reason"),
    ])
    def test_an_annotation_without_reason_or_expiry_or_over_the_max_ttl_is_refused_and_suspends_nothing(
            self, setup, annotations, why):
        c, ns = setup.cluster, setup.ns
        c.make_pod("web-1", setup.node, privileged=True)
        times = {"FAR": iso(time.time() + 48 * 3600), "SOON": iso(time.time() + 600)}
        annotate(c, c.pod_path("web-1"), {k: times.get(v, v) for k, v in annotations.items()})
        rt = setup.runtime(clock=FakeClock(start=time.time()))
        with capture_logs() as logs:
            s = run_once(rt.engine, rt.queue, attempts=1)
        assert [(o.key, o.status) for o in s.outcomes] == [(key(ns, "web-1"), "remediated")]
        refused = [e for e in logs if e["event"] == Event.OVERRIDE_REFUSED]
        assert refused and why in refused[0]["error"] and f"pod {ns}/web-1" in refused[0]["error"], refused


class TestWindowOnPods:
    def test_a_pod_created_after_driftd_began_governing_counts_its_window_from_its_creation(self, setup):
        c, ns = setup.cluster, setup.ns
        clock = FakeClock(start=time.time())
        rt = setup.runtime(clock=clock, dry_run=True)
        pod = c.make_pod("web-1", setup.node, privileged=True)
        created = rfc3339(pod["metadata"]["creationTimestamp"])
        started = rfc3339(pod["status"]["containerStatuses"][0]["state"]["running"]["startedAt"])
        clock.advance(90)  # seen at the next scan, a minute and a half later
        run_once(rt.engine, rt.queue, attempts=1)
        rec = rt.state.get_active(key(ns, "web-1"))
        assert rec.changed_at == pytest.approx(max(created, started))
        assert rec.deadline == pytest.approx(rec.changed_at + 1800)
        detect = rt.metrics.registry.get_sample_value("driftd_time_to_detect_seconds_sum", {"target": "kubernetes"})
        assert detect == pytest.approx(clock.time() - rec.changed_at)

    def test_a_pdb_blocked_eviction_past_its_deadline_is_a_breach_counted_evented_and_escalated(self, setup):
        c, ns = setup.cluster, setup.ns
        c.make_pod("web-1", setup.node, privileged=True)
        c.make_pdb("web", {"app": "web"}, disruptions_allowed=0)
        clock = FakeClock(start=time.time())
        rt = setup.runtime({"pods.yaml": pod_baseline(ns, window="2m")}, clock=clock)
        reg = rt.metrics.registry
        s = run_once(rt.engine, rt.queue, attempts=1)
        assert [o.status for o in s.outcomes] == ["failed"]
        assert reg.get_sample_value("driftd_drifts_past_deadline", {"target": "kubernetes"}) == 0
        clock.advance(121)
        with capture_logs() as logs:
            s2 = run_once(rt.engine, rt.queue, attempts=3)
        assert [o.status for o in s2.outcomes] == ["failed"]
        assert not terminating_or_gone(c.pod("web-1"))  # never forced past the PDB
        assert reg.get_sample_value("driftd_window_breaches_total", {"target": "kubernetes", "baseline": "pod-restricted"}) == 1
        assert reg.get_sample_value("driftd_drifts_past_deadline", {"target": "kubernetes"}) == 1  # DriftdDriftPastDeadline
        assert [e["event"] for e in logs].count(Event.DRIFT_WINDOW_BREACHED) == 1
        assert any(e["event"] == Event.REMEDIATION_ESCALATED for e in logs)
        assert {"DriftWindowBreached", "RemediationEscalated"} <= set(reasons(c.events("web-1")))
        assert rt.state.get_active(key(ns, "web-1")).breached
        assert rt.engine.outcomes[key(ns, "web-1")].urgent  # goes first among the node's work


class TestBreakerOnPods:
    def test_every_pod_of_a_baseline_drifting_trips_the_breaker_and_nothing_is_evicted(self, setup):
        c = setup.cluster
        for i in range(3):
            c.make_pod(f"web-{i}", setup.node, privileged=True, owner_name=f"rs{i}")
        rt = setup.runtime(safety={"breaker": {"min_resources": 2}, "retire": {"after_seconds": 0}})
        s = run_once(rt.engine, rt.queue, attempts=1)
        assert [o.status for o in s.outcomes] == ["held"] * 3, [(o.key, o.status, o.error) for o in s.outcomes]
        assert all("held: breaker: 3 of 3 resources of baseline pod-restricted" in (o.error or "") for o in s.outcomes)
        assert all(driftd_writes(c, f"web-{i}") == [] for i in range(3))  # not one eviction
        assert rt.metrics.registry.get_sample_value("driftd_breaker_open",
                                                    {"baseline": "pod-restricted", "kind": "revert"}) == 1


class TestClusterRetirementCap:
    def test_a_kernel_rule_failing_on_all_five_nodes_retires_exactly_one_node_per_hour_and_holds_the_others(
            self, setup, host_root, fake_kubelet):
        """Five drivers of five Node objects, one kernel rule everyone fails: one retirement per hour, the rest held."""
        from test_kubernetes_target import target_of

        c = setup.cluster
        (host_root / "proc/sys/kernel").mkdir(parents=True)
        (host_root / "proc/sys/kernel/osrelease").write_text("5.10.0-test\n")
        nodes = [setup.node] + [c.make_node(f"node-{i}") for i in range(1, 5)]
        fake_kubelet(*nodes)
        clock = FakeClock(start=time.time())
        kube = {"max_concurrent_retirements": 5, "max_retirements_per_hour": 1, "retirement_cooldown_seconds": 60}
        files = {"host.yaml": host_baseline("kernel", 'kernel: {minimumRelease: "99.0"}')}
        rts = [setup.runtime(files, node_name=n, clock=clock, kubernetes=kube) for n in nodes]
        for rt in rts:
            target_of(rt).ledger_clock = clock.time  # the hourly ledger on the test's clock
        retired: list[list[str]] = []
        for _hour in range(3):
            outs = {n: run_once(rt.engine, rt.queue, attempts=1).outcomes[0] for n, rt in zip(nodes, rts, strict=True)}
            before = [n for r in retired for n in r]
            retired.append([n for n, o in outs.items() if o.status == "retired" and n not in before])
            held = [o for o in outs.values() if o.status == "held"]
            assert all("held: retirement-cap: cluster retirement cap" in (o.error or "") for o in held)
            assert len(held) + len(before) + len(retired[-1]) == 5, {n: (o.status, o.error) for n, o in outs.items()}
            clock.advance(3601)
        assert [len(r) for r in retired] == [1, 1, 1]  # exactly one node per hour
        cordoned = [n for n in nodes if c.node(n)["spec"].get("unschedulable")]
        assert sorted(cordoned) == sorted(n for r in retired for n in r)
        assert not any(rt.state.get_active("host:kernel:release").consecutive_failures for rt in rts)  # never "failed"


class TestPackagesOutOfPatch:
    def test_out_of_patch_packages_retire_exactly_one_node_under_the_cluster_cap(self, setup, host_root, fake_kubelet):
        """Three nodes with openssl and openssh-server out of patch (action retire), one retirement an hour allowed:
        exactly one node is cordoned, once (one ledger start, not one per package); the others are held by the cap;
        the PolicyReport names each package with its rule's severity."""
        import json

        from packages_support import write_dpkg
        from test_kubernetes_target import report_of, target_of

        from driftd.targets.kubernetes.retirement import LEDGER_ANNOTATION

        c = setup.cluster
        write_dpkg(host_root, {"openssl": "3.0.11-1~deb12u2", "openssh-server": "1:9.2p1-2+deb12u2", "bash": "5.2.15-2+b7"})
        nodes = [setup.node] + [c.make_node(f"pkg-{i}") for i in range(1, 3)]
        fake_kubelet(*nodes)
        clock = FakeClock(start=time.time())
        kube = {"max_concurrent_retirements": 3, "max_retirements_per_hour": 1, "retirement_cooldown_seconds": 60}
        rules = ('packages:\n'
                 '  - {name: openssl, minimum: "3.0.15-1~deb12u1", action: retire, severity: critical, reason: DSA-5764-1}\n'
                 '  - {name: openssh-server, minimum: "1:9.2p1-2+deb12u3", action: retire, severity: high}\n'
                 '  - {name: bash, minimum: "5.2.15-2"}')
        rts = [setup.runtime({"host.yaml": host_baseline("patch", rules)}, node_name=n, clock=clock, kubernetes=kube)
               for n in nodes]
        for rt in rts:
            target_of(rt).ledger_clock = clock.time
        outs = {n: run_once(rt.engine, rt.queue, attempts=1).outcomes for n, rt in zip(nodes, rts, strict=True)}
        retired = [n for n, os_ in outs.items() if all(o.status == "retired" for o in os_)]
        held = [n for n, os_ in outs.items() if all(o.status == "held" for o in os_)]
        assert len(retired) == 1 and len(held) == 2, {n: [(o.key, o.status, o.error) for o in os_] for n, os_ in outs.items()}
        assert all("retirement-cap" in (o.error or "") for n in held for o in outs[n])
        assert [n for n in nodes if c.node(n)["spec"].get("unschedulable")] == retired
        ledger = c.rest.get(f"/apis/coordination.k8s.io/v1/namespaces/{setup.ns}/leases/driftd-node-retirement-ledger")
        starts = json.loads(ledger["metadata"]["annotations"][LEDGER_ANNOTATION])
        assert [s[0] for s in starts] == retired  # one retirement of that node, not one per package
        audit = [json.loads(line) for f in sorted((Path(rts[nodes.index(retired[0])].settings.state_dir) / "audit")
                                                  .glob("audit*.jsonl")) for line in f.read_text().splitlines()]
        done = [(r["key"], r["result"]) for r in audit if r["action"] == "retire_node"]
        # the second package found the node retired: no second cordon and drain, recorded as skipped
        assert sorted(res for _, res in done) == ["skipped", "succeeded"], done
        reason = c.node(retired[0])["metadata"]["annotations"]["driftd.io/retired-reason"]
        assert "is out of patch" in reason and "patch:" in reason
        # a second pass on the retired node retires nothing again
        again = run_once(rts[nodes.index(retired[0])].engine, rts[nodes.index(retired[0])].queue, attempts=1).outcomes
        assert {o.status for o in again} == {"retired"}
        starts2 = json.loads(c.rest.get(f"/apis/coordination.k8s.io/v1/namespaces/{setup.ns}/leases/"
                                        "driftd-node-retirement-ledger")["metadata"]["annotations"][LEDGER_ANNOTATION])
        assert starts2 == starts
        rows = {r["properties"]["key"]: r for r in report_of(c, retired[0])["results"]}
        assert rows["host:package:openssl"]["severity"] == "critical" and rows["host:package:openssl"]["result"] == "fail"
        assert "3.0.11-1~deb12u2" in rows["host:package:openssl"]["message"]
        assert "DSA-5764-1" in rows["host:package:openssl"]["message"]
        assert rows["host:package:openssh-server"]["severity"] == "high"
        assert rows["host:package:bash"]["result"] == "pass"
