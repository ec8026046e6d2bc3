"""The Kubernetes target against a real kube-apiserver (etcd + API server, no kubelet).

Pods are bound to per-test Node objects by ``spec.nodeName``; the tests write pod and PDB
status themselves and a :class:`k8s_support.FakeKubelet` force-deletes pods left Terminating
where a drain must complete.  The API server's audit log shows which calls driftd made.
"""

from __future__ import annotations

import contextlib
import json
import queue
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import host_baseline
from k8s_support import DIGEST_APPROVED, DIGEST_OTHER, KUBELET_AGENT

from driftd.engine.once import run_once
from driftd.engine.reconciler import Engine
from driftd.targets.base import TargetError
from driftd.targets.kubernetes import RETIRED_LABEL, TAINT_KEY, KubernetesTarget

pytestmark = pytest.mark.real

REPO = Path(__file__).resolve().parent.parent
LEASE = "driftd-node-retirement"


def pod_baseline(ns: str, **spec: Any) -> str:
    """The shipped restricted profile, limited to ``ns``, with approved image digests."""
    doc = yaml.safe_load((REPO / "baselines" / "pod-restricted.yaml").read_text())
    doc["spec"]["selector"]["namespaces"] = [ns]
    doc["spec"]["images"] = {"approved": [DIGEST_APPROVED]}
    doc["spec"].update(spec)
    return yaml.safe_dump(doc)


def key(ns: str, name: str) -> str:
    return f"pod:{ns}/{name}"


def reasons(events: list[dict[str, Any]]) -> list[str]:
    return sorted(e["reason"] for e in events)


def terminating_or_gone(pod: dict[str, Any] | None) -> bool:
    return pod is None or bool(pod["metadata"].get("deletionTimestamp"))


def wait_for(cond: Any, timeout: float = 20.0, interval: float = 0.1) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        got = cond()
        if got or time.monotonic() > deadline:
            return got
        time.sleep(interval)


def remediation_count(rt: Any, action: str, result: str, target: str = "kubernetes") -> float:
    return rt.metrics.registry.get_sample_value(
        "driftd_remediations_total", {"target": target, "action": action, "result": result}) or 0.0


def driftd_writes(cluster: Any, name: str) -> list[tuple[str, str, int]]:
    """(verb, subresource, HTTP code) of every write on one pod not made by the tests (helpers, fake kubelet, kubectl)."""
    return [(e["verb"], e["objectRef"].get("subresource", ""), e["responseStatus"]["code"])
            for e in cluster.audit(name=name, resource="pods")
            if not e.get("userAgent", "").startswith(("driftd-tests", KUBELET_AGENT, "kubectl"))]


def report_of(cluster: Any, node: str) -> dict[str, Any]:
    return cluster.rest.get(f"/apis/wgpolicyk8s.io/v1alpha2/namespaces/{cluster.ns}/policyreports/driftd-{node}")


@pytest.fixture
def setup(k8s_cluster: Any, k8s_runtime: Any, baselines_dir: Any) -> Any:
    """One node with driftd's runtime for it; ``setup.runtime(**kw)`` builds the runtime when the pods exist."""

    class Setup:
        cluster = k8s_cluster
        ns = k8s_cluster.ns
        node = k8s_cluster.make_node("node-a")

        def runtime(self, files: dict[str, str] | None = None, **kw: Any) -> Any:
            bdir = baselines_dir(files or {"pods.yaml": pod_baseline(self.ns)})
            return k8s_runtime(bdir, node_name=kw.pop("node_name", self.node), **kw)

    return Setup()


def target_of(rt: Any) -> KubernetesTarget:
    t = rt.engine.targets["kubernetes"]
    assert isinstance(t, KubernetesTarget)
    return t


# ---------------------------------------------------------------------------- eviction
class TestEviction:
    def test_unapproved_image_is_evicted_through_the_eviction_api_with_events(self, setup):
        """A pod running an unapproved digest is evicted (never deleted) and gets DriftDetected and DriftReverted Events."""
        c, ns = setup.cluster, setup.ns
        c.make_pod("web-1", setup.node, image_id=DIGEST_OTHER)
        c.make_pod("web-2", setup.node)
        rt = setup.runtime()
        summary = run_once(rt.engine, rt.queue, attempts=1)
        got = {o.key: (o.status, o.actions) for o in summary.outcomes}
        assert got == {key(ns, "web-1"): ("remediated", ["evict"])}
        assert terminating_or_gone(c.pod("web-1"))
        assert not terminating_or_gone(c.pod("web-2"))
        assert driftd_writes(c, "web-1") == [("create", "eviction", 201)]  # the Eviction API; no DELETE
        assert driftd_writes(c, "web-2") == []
        events = c.events("web-1")
        assert reasons(events) == ["DriftDetected", "DriftReverted"]
        detected = next(e for e in events if e["reason"] == "DriftDetected")
        assert "unapprovedImages" in detected["message"] and detected["type"] == "Warning"
        assert detected["involvedObject"]["uid"] == c.rest.get(c.pod_path("web-1"))["metadata"]["uid"]
        assert c.events("web-2") == []
        assert remediation_count(rt, "evict", "succeeded") == 1

    def test_replacement_breaking_the_same_rules_again_is_not_evicted_again(self, setup):
        """When a compliant template's next pod breaks the same rule again (a webhook?), it is not evicted again."""
        c, ns = setup.cluster, setup.ns
        c.make_pod("web-1", setup.node, privileged=True)  # the ReplicaSet's template complies
        rt = setup.runtime()
        first = run_once(rt.engine, rt.queue, attempts=1)
        assert [(o.key, o.status) for o in first.outcomes] == [(key(ns, "web-1"), "remediated")]
        c.make_pod("web-2", setup.node, privileged=True)  # what came back from the ReplicaSet
        second = run_once(rt.engine, rt.queue, attempts=3)
        (o,) = [o for o in second.outcomes if o.key == key(ns, "web-2")]
        assert o.status == "failed" and not o.retry
        assert f"replacement from ReplicaSet {ns}/web broke allowPrivilegeEscalation, privileged again" in (o.error or "")
        assert "its template does not break them" in (o.error or "")
        assert not terminating_or_gone(c.pod("web-2")) and driftd_writes(c, "web-2") == []
        c.make_pod("web-3", setup.node, owner_name="other")  # another controller is unaffected
        c.make_pod("api-1", setup.node, owner_name="api", privileged=True)
        third = run_once(rt.engine, rt.queue, attempts=1)
        assert {o.key: o.status for o in third.outcomes}[key(ns, "api-1")] == "remediated"

    def test_events_show_in_kubectl_describe_pod(self, setup, kubectl):
        """kubectl describe pod lists driftd's Events (involvedObject matches the pod's uid)."""
        setup.cluster.make_pod("web-1", setup.node, privileged=True)
        rt = setup.runtime()
        run_once(rt.engine, rt.queue, attempts=1)
        out = kubectl("describe", "pod", "-n", setup.ns, "web-1").stdout
        assert "DriftDetected" in out and "DriftReverted" in out

    def test_privileged_pod_is_evicted(self, setup):
        """A privileged container breaks the restricted profile: the pod is evicted."""
        c = setup.cluster
        c.make_pod("web-1", setup.node, privileged=True)
        rt = setup.runtime()
        summary = run_once(rt.engine, rt.queue, attempts=1)
        (o,) = summary.outcomes
        assert (o.key, o.status, o.actions) == (key(setup.ns, "web-1"), "remediated", ["evict"])
        assert {d["field"] for d in o.drift} >= {"privileged", "allowPrivilegeEscalation"}
        assert terminating_or_gone(c.pod("web-1"))
        assert ("create", "eviction", 201) in driftd_writes(c, "web-1")

    def test_pdb_refusal_is_retried_and_reported_never_forced(self, setup):
        """With a PDB allowing no disruption the eviction gets 429: failed, retried, counted, reported, pod kept."""
        c, ns = setup.cluster, setup.ns
        c.make_pod("web-1", setup.node, privileged=True)
        c.make_pdb("web", {"app": "web"}, disruptions_allowed=0)
        rt = setup.runtime()
        summary = run_once(rt.engine, rt.queue, attempts=2)
        (o,) = summary.outcomes
        assert o.key == key(ns, "web-1") and o.status == "failed" and o.retry
        assert "PodDisruptionBudget" in (o.error or "")
        pod = c.pod("web-1")
        assert pod is not None and not pod["metadata"].get("deletionTimestamp")
        assert driftd_writes(c, "web-1") == [("create", "eviction", 429)] * 2  # retried, never a DELETE
        assert remediation_count(rt, "evict", "failed") == 2
        assert remediation_count(rt, "evict", "succeeded") == 0
        assert "RemediationFailed" in reasons(c.events("web-1"))
        rec = rt.state.get_active(key(ns, "web-1"))
        assert rec is not None and rec.last_result == "failed"
        row = next(r for r in report_of(c, setup.node)["results"] if r["resources"][0]["name"] == "web-1")
        assert row["result"] == "fail"

    def test_pods_on_other_nodes_are_never_touched(self, setup):
        """The same violation on another node's pod is neither listed, evicted nor annotated with Events."""
        c, ns = setup.cluster, setup.ns
        node_b = c.make_node("node-b")
        c.make_pod("web-a", setup.node, privileged=True)
        c.make_pod("web-b", node_b, privileged=True)
        before = c.pod("web-b")
        rt = setup.runtime()
        summary = run_once(rt.engine, rt.queue, attempts=1)
        assert [o.key for o in summary.outcomes] == [key(ns, "web-a")]
        assert summary.resources == 1
        assert terminating_or_gone(c.pod("web-a"))
        after = c.pod("web-b")
        assert after is not None and before is not None
        assert after["metadata"]["resourceVersion"] == before["metadata"]["resourceVersion"]
        assert driftd_writes(c, "web-b") == [] and c.events("web-b") == []
        assert target_of(rt).resolve(key(ns, "web-b")) is None  # even asked directly: not governed here

    def test_bare_pod_is_blocked_not_evicted(self, setup):
        """A pod without a controller would not come back: it is reported as blocked and left running."""
        c, ns = setup.cluster, setup.ns
        c.make_pod("lonely", setup.node, owner=None, privileged=True)
        rt = setup.runtime()
        summary = run_once(rt.engine, rt.queue, attempts=1)
        (o,) = summary.outcomes
        assert (o.key, o.status) == (key(ns, "lonely"), "blocked")
        assert "bare pod" in (o.error or "")
        assert not terminating_or_gone(c.pod("lonely"))
        assert driftd_writes(c, "lonely") == []
        assert reasons(c.events("lonely")) == ["DriftDetected", "RemediationBlocked"]
        assert summary.exit_code != 0


# ---------------------------------------------------------------------------- template at fault (no eviction churn)
def events_about(cluster: Any, kind: str, name: str) -> list[dict[str, Any]]:
    return [e for e in cluster.events(name) if e["involvedObject"].get("kind") == kind]


def evictions(cluster: Any, name: str) -> list[tuple[str, str, int]]:
    return [w for w in driftd_writes(cluster, name) if w[1] == "eviction"]


class TestTemplateAtFault:
    def test_daemonset_pod_with_a_non_compliant_template_is_never_evicted_even_after_a_restart(self, setup):
        """A DaemonSet whose template breaks the profile: no eviction (also after a restart), failed "template at fault", Events on pod and DaemonSet."""
        c, ns = setup.cluster, setup.ns
        ds = c.make_owner("DaemonSet", "agent", privileged=True)
        c.make_pod("agent-x1", setup.node, owner="DaemonSet", owner_name="agent", privileged=True)
        rt = setup.runtime()
        summary = run_once(rt.engine, rt.queue, attempts=3)
        (o,) = summary.outcomes
        assert (o.key, o.status, o.retry) == (key(ns, "agent-x1"), "failed", False)
        assert f"template at fault: the pod template of DaemonSet {ns}/agent violates allowPrivilegeEscalation, privileged" \
            in (o.error or "")
        assert not terminating_or_gone(c.pod("agent-x1")) and evictions(c, "agent-x1") == []
        assert [e["reason"] for e in events_about(c, "Pod", "agent-x1")].count("TemplateAtFault") == 1
        (owner_event,) = events_about(c, "DaemonSet", "agent")
        assert owner_event["reason"] == "TemplateAtFault" and owner_event["involvedObject"]["uid"] == ds["uid"]
        assert "privileged" in owner_event["message"] and owner_event["type"] == "Warning"
        rec = rt.state.get_active(key(ns, "agent-x1"))
        assert rec is not None and rec.last_result == "failed" and "template at fault" in (rec.last_error or "")
        # the next scans: still not evicted, and the Events are not repeated
        rt.engine.clock.advance(3600)
        again = run_once(rt.engine, rt.queue, attempts=1)
        assert [o.status for o in again.outcomes] == ["failed"]
        # a driftd restart (a new target on the same state directory) does not evict either
        rt2 = setup.runtime(state_dir=rt.settings.state_dir)
        assert target_of(rt2) is not target_of(rt)
        after = run_once(rt2.engine, rt2.queue, attempts=3)
        assert [(o.status, "template at fault" in (o.error or "")) for o in after.outcomes] == [("failed", True)]
        assert not terminating_or_gone(c.pod("agent-x1")) and evictions(c, "agent-x1") == []
        assert len(events_about(c, "DaemonSet", "agent")) == 1
        assert [e["reason"] for e in events_about(c, "Pod", "agent-x1")].count("TemplateAtFault") == 1

    def test_deployment_replicaset_pod_blames_the_deployment_template(self, setup):
        """A pod of a Deployment's ReplicaSet whose template breaks the profile is not evicted; the Deployment is at fault."""
        c, ns = setup.cluster, setup.ns
        c.make_owner("ReplicaSet", "web-5d8f7", deployment="web", compliant=False)
        c.make_pod("web-5d8f7-abcde", setup.node, owner_name="web-5d8f7", compliant=False)
        rt = setup.runtime()
        (o,) = run_once(rt.engine, rt.queue, attempts=2).outcomes
        assert o.status == "failed" and not o.retry
        assert (f"template at fault: the pod template of Deployment {ns}/web (through ReplicaSet {ns}/web-5d8f7) "
                "violates allowPrivilegeEscalation") in (o.error or "")
        assert not terminating_or_gone(c.pod("web-5d8f7-abcde")) and evictions(c, "web-5d8f7-abcde") == []
        assert [e["reason"] for e in events_about(c, "Deployment", "web")] == ["TemplateAtFault"]

    def test_old_replicaset_of_a_fixed_deployment_is_at_fault_itself(self, setup):
        """A Deployment already fixed, its old ReplicaSet's pod: not evicted (the old RS would recreate it), the RS is named."""
        c, ns = setup.cluster, setup.ns
        c.make_owner("Deployment", "web")  # current template complies
        c.make_owner("ReplicaSet", "web-old", deployment="web", compliant=False)
        c.make_pod("web-old-1", setup.node, owner_name="web-old", compliant=False)
        rt = setup.runtime()
        (o,) = run_once(rt.engine, rt.queue, attempts=1).outcomes
        assert o.status == "failed"
        assert (f"the pod template of ReplicaSet {ns}/web-old, an older revision of Deployment {ns}/web whose current "
                "template complies") in (o.error or "")
        assert evictions(c, "web-old-1") == []

    def test_statefulset_pod_with_a_non_compliant_template_is_not_evicted(self, setup):
        """A StatefulSet whose template mounts a hostPath: its pod is not evicted, the StatefulSet is at fault."""
        c, ns = setup.cluster, setup.ns
        host = {"volumes": [{"name": "data", "hostPath": {"path": "/srv/data"}}]}
        c.make_owner("StatefulSet", "db", spec=host)
        c.make_pod("db-0", setup.node, owner="StatefulSet", owner_name="db", spec=host)
        rt = setup.runtime()
        (o,) = run_once(rt.engine, rt.queue, attempts=1).outcomes
        assert o.status == "failed" and f"StatefulSet {ns}/db violates hostPathVolumes (hostPathVolumes: data=/srv/data)" \
            in (o.error or "")
        assert evictions(c, "db-0") == [] and [e["reason"] for e in events_about(c, "StatefulSet", "db")] == ["TemplateAtFault"]

    def test_template_pinned_to_an_unapproved_digest_is_at_fault(self, setup):
        """An image pinned by an unapproved digest in the template is decidable: no eviction, template at fault."""
        c, ns = setup.cluster, setup.ns
        c.make_owner("DaemonSet", "agent", image=f"registry.invalid/app@{DIGEST_OTHER}")
        c.make_pod("agent-x1", setup.node, owner="DaemonSet", owner_name="agent", image_id=DIGEST_OTHER)
        rt = setup.runtime()
        (o,) = run_once(rt.engine, rt.queue, attempts=1).outcomes
        assert o.status == "failed" and f"DaemonSet {ns}/agent violates unapprovedImages" in (o.error or "")
        assert evictions(c, "agent-x1") == []

    def test_unapproved_digest_behind_a_tag_is_evicted_once_and_the_guard_survives_a_restart(self, setup):
        """A tag the template cannot decide: one eviction, then the replacement is held by a guard kept across restarts."""
        c, ns = setup.cluster, setup.ns
        c.make_owner("DaemonSet", "agent")  # compliant, image by tag
        c.make_pod("agent-1", setup.node, owner="DaemonSet", owner_name="agent", image_id=DIGEST_OTHER)
        rt = setup.runtime()
        first = run_once(rt.engine, rt.queue, attempts=1)
        assert [(o.status, o.actions) for o in first.outcomes] == [("remediated", ["evict"])]
        assert evictions(c, "agent-1") == [("create", "eviction", 201)]
        c.make_pod("agent-2", setup.node, owner="DaemonSet", owner_name="agent", image_id=DIGEST_OTHER)  # its replacement
        second = run_once(rt.engine, rt.queue, attempts=2)
        (o,) = [o for o in second.outcomes if o.key == key(ns, "agent-2")]
        assert o.status == "failed" and f"replacement from DaemonSet {ns}/agent broke unapprovedImages again" in (o.error or "")
        # driftd restarts (new target, same state directory): the guard still holds
        rt2 = setup.runtime(state_dir=rt.settings.state_dir)
        after = run_once(rt2.engine, rt2.queue, attempts=2)
        (o2,) = [o for o in after.outcomes if o.key == key(ns, "agent-2")]
        assert o2.status == "failed" and "again" in (o2.error or "")
        assert not terminating_or_gone(c.pod("agent-2")) and evictions(c, "agent-2") == []
        guard = rt2.state.get_guard(f"evict-owner:{ns}/DaemonSet/agent", time.time())  # in the state store
        assert guard is not None and guard["rules"] == ["unapprovedImages"]
        assert guard["until"] > time.time() + 800  # template_guard_seconds (900) of wall-clock time

    def test_guard_expires_and_a_changed_template_releases_it(self, setup):
        """The guard holds template_guard_seconds of wall-clock time, and only for the template it was set for."""
        c, ns = setup.cluster, setup.ns
        c.make_owner("DaemonSet", "agent")
        c.make_pod("agent-1", setup.node, owner="DaemonSet", owner_name="agent", image_id=DIGEST_OTHER)
        rt = setup.runtime()
        t = target_of(rt)
        now = [time.time()]
        t.clock = lambda: now[0]
        assert [o.status for o in run_once(rt.engine, rt.queue, attempts=1).outcomes] == ["remediated"]
        c.make_pod("agent-2", setup.node, owner="DaemonSet", owner_name="agent", image_id=DIGEST_OTHER)
        assert {o.key: o.status for o in run_once(rt.engine, rt.queue, attempts=1).outcomes}[key(ns, "agent-2")] == "failed"
        now[0] += 901  # past template_guard_seconds
        assert {o.key: o.status for o in run_once(rt.engine, rt.queue, attempts=1).outcomes}[key(ns, "agent-2")] == \
            "remediated"
        c.make_pod("agent-3", setup.node, owner="DaemonSet", owner_name="agent", image_id=DIGEST_OTHER)
        assert {o.key: o.status for o in run_once(rt.engine, rt.queue, attempts=1).outcomes}[key(ns, "agent-3")] == "failed"
        ds = c.owner("DaemonSet", "agent")  # someone changes the template (e.g. a new tag)
        ds["spec"]["template"]["spec"]["containers"][0]["image"] = "registry.invalid/app:2"
        c.rest.put(f"/apis/apps/v1/namespaces/{ns}/daemonsets/agent", ds)
        assert {o.key: o.status for o in run_once(rt.engine, rt.queue, attempts=1).outcomes}[key(ns, "agent-3")] == \
            "remediated"

    def test_controller_of_an_unknown_kind_falls_back_to_the_guard(self, setup):
        """A controller driftd does not read (a CRD kind) gets one eviction, then the guard holds its replacement."""
        c, ns = setup.cluster, setup.ns
        rollout = {"apiVersion": "argoproj.io/v1alpha1", "kind": "Rollout", "name": "web",
                   "uid": "0b1c2d3e-0000-4000-8000-000000000001", "controller": True}
        for name in ("web-1", "web-2"):
            m = c.pod_manifest(name, setup.node, owner=None, privileged=True)
            m["metadata"]["ownerReferences"] = [rollout]
            c.rest.post(f"/api/v1/namespaces/{ns}/pods", m)
            c.set_pod_status(name)
            if name == "web-1":
                rt = setup.runtime()
                assert [o.status for o in run_once(rt.engine, rt.queue, attempts=1).outcomes] == ["remediated"]
        (o,) = [o for o in run_once(rt.engine, rt.queue, attempts=1).outcomes if o.key == key(ns, "web-2")]
        assert o.status == "failed" and "driftd cannot read the template of a Rollout" in (o.error or "")
        assert evictions(c, "web-2") == []

    def test_extra_excluded_namespaces_are_never_governed(self, setup):
        """kubernetes.exclude_namespaces (glob patterns) keeps a namespace's pods out, whatever the baseline selects."""
        c, ns = setup.cluster, setup.ns
        c.make_pod("web-1", setup.node, privileged=True)
        rt = setup.runtime(kubernetes={"exclude_namespaces": ["kube-*", ns[:4] + "*"]})
        summary = run_once(rt.engine, rt.queue, attempts=1)
        assert summary.outcomes == [] and summary.resources == 0
        assert target_of(rt).resolve(key(ns, "web-1")) is None
        assert not terminating_or_gone(c.pod("web-1")) and driftd_writes(c, "web-1") == []


# ---------------------------------------------------------------------------- node retirement
def drain_dry_run(kubectl: Any, node: str) -> set[str]:
    """What `kubectl drain --ignore-daemonsets --delete-emptydir-data` would evict (server-side dry run)."""
    r = kubectl("drain", node, "--ignore-daemonsets", "--delete-emptydir-data", "--dry-run=server")
    return {line.split()[2] for line in r.stdout.splitlines() if line.startswith("evicting pod ")}


class TestNodeRetirement:
    def test_retire_node_cordons_taints_labels_and_drains_like_kubectl(self, setup, kubectl, fake_kubelet):
        """retire_node marks the node and evicts exactly what kubectl drain would, leaving DaemonSet and mirror pods."""
        c, ns, node = setup.cluster, setup.ns, setup.node
        node_b = c.make_node("node-b")
        c.make_pod("web-1", node)
        c.make_pod("web-2", node, privileged=True)
        c.make_pod("cache-1", node, owner_name="cache", emptydir=True)
        c.make_pod("db-0", node, owner="StatefulSet", owner_name="db")
        c.make_pod("agent-1", node, owner="DaemonSet", owner_name="agent")
        c.make_pod("static-1", node, owner=None, mirror=True)
        c.make_pod("web-b", node_b)
        expected = drain_dry_run(kubectl, node)
        assert expected == {f"{ns}/{p}" for p in ("web-1", "web-2", "cache-1", "db-0")}
        assert not c.node(node)["spec"].get("unschedulable")  # the dry run changed nothing
        rt = setup.runtime()
        kubelet = fake_kubelet(node, node_b)
        result = target_of(rt).retire_node("kernel 5.10 is out of patch")
        assert set(result["evicted"]) == expected
        n = c.node(node)
        assert n["spec"]["unschedulable"] is True
        assert {"key": TAINT_KEY, "value": "kernel-5.10-is-out-of-patch", "effect": "NoSchedule"} in n["spec"]["taints"]
        assert any(t["key"] == "node.kubernetes.io/not-ready" for t in n["spec"]["taints"])  # others kept
        assert n["metadata"]["labels"][RETIRED_LABEL] == "true"
        assert n["metadata"]["annotations"]["driftd.io/retired-reason"] == "kernel 5.10 is out of patch"
        left = {p["metadata"]["name"] for p in c.pods_on(node)}
        assert left == {"agent-1", "static-1"}
        assert sorted(kubelet.deleted) == sorted(expected)  # evicted pods were only Terminating until "the kubelet" acted
        for name in ("web-1", "web-2", "cache-1", "db-0"):
            assert [w[:2] for w in driftd_writes(c, name)] == [("create", "eviction")]
        assert driftd_writes(c, "agent-1") == [] and driftd_writes(c, "static-1") == []
        assert not terminating_or_gone(c.pod("web-b")) and driftd_writes(c, "web-b") == []
        assert not c.node(node_b)["spec"].get("unschedulable")
        lease = c.rest.get(f"/apis/coordination.k8s.io/v1/namespaces/{ns}/leases/{LEASE}")
        # not released after the drain: the slot stays this node's for the cooldown (cluster-wide cap)
        assert lease["spec"]["holderIdentity"] == node and lease["spec"]["leaseDurationSeconds"] >= 3600

    def test_bare_pod_is_left_and_reported_like_kubectl_without_force(self, setup, kubectl, fake_kubelet):
        """kubectl drain refuses bare pods without --force; retire_node leaves them and reports them."""
        c, ns, node = setup.cluster, setup.ns, setup.node
        c.make_pod("web-1", node)
        c.make_pod("lonely", node, owner=None)
        r = kubectl("drain", node, "--ignore-daemonsets", "--dry-run=server", check=False)
        assert r.returncode != 0 and "lonely" in r.stderr  # kubectl: "cannot delete Pods that declare no controller"
        rt = setup.runtime()
        fake_kubelet(node)
        result = target_of(rt).retire_node("test")
        assert result["evicted"] == [f"{ns}/web-1"] and result["not_evicted_bare"] == [f"{ns}/lonely"]
        assert not terminating_or_gone(c.pod("lonely")) and driftd_writes(c, "lonely") == []

    def test_drain_waits_for_pdb_then_completes(self, setup, fake_kubelet):
        """A PDB refusal during drain is retried until the budget allows it, never bypassed by a delete."""
        c, node = setup.cluster, setup.node
        c.make_pod("web-1", node)
        c.make_pdb("web", {"app": "web"}, disruptions_allowed=0)
        rt = setup.runtime()
        fake_kubelet(node)
        t = target_of(rt)
        done: dict[str, Any] = {}
        th = threading.Thread(target=lambda: done.update(r=t.retire_node("test")), daemon=True)
        th.start()
        assert wait_for(lambda: len(driftd_writes(c, "web-1")) >= 2)  # refused, retried
        assert not terminating_or_gone(c.pod("web-1"))
        c.rest.patch(f"/apis/policy/v1/namespaces/{c.ns}/poddisruptionbudgets/web/status",
                     {"status": {"disruptionsAllowed": 1, "currentHealthy": 2}})
        th.join(timeout=30)
        assert done.get("r", {}).get("evicted") == [f"{c.ns}/web-1"]
        writes = driftd_writes(c, "web-1")
        assert all(w[:2] == ("create", "eviction") for w in writes)
        assert [w[2] for w in writes][-1] == 201 and 429 in [w[2] for w in writes]

    @pytest.mark.parametrize("slots", [1, 3])
    def test_the_cluster_retires_at_most_one_node_per_hour_and_holds_the_others(self, setup, fake_kubelet, slots):
        """Every node failing a kernel rule: the first retires, the others wait (one slot, or one start per hour)."""
        c, ns, node = setup.cluster, setup.ns, setup.node
        others = [c.make_node(f"node-{i}") for i in range(1, 5)]  # a 5-node cluster
        fake_kubelet(node, *others)
        kube = {"max_concurrent_retirements": slots, "max_retirements_per_hour": 1}
        first = target_of(setup.runtime(kubernetes=kube)).retire_node("kernel 5.10 is out of patch")
        assert first["node"] == node and c.node(node)["spec"]["unschedulable"] is True
        for other in others:
            rt = setup.runtime(node_name=other, kubernetes=kube)
            with pytest.raises(TargetError) as e:
                target_of(rt).retire_node("kernel 5.10 is out of patch")
            assert e.value.transient and "cluster retirement cap" in str(e.value)
            assert ("in the last hour" in str(e.value)) == (slots > 1), str(e.value)  # the slot, or the hourly cap
            assert not c.node(other)["spec"].get("unschedulable")  # held: not cordoned, not drained
        ledger = c.rest.get(f"/apis/coordination.k8s.io/v1/namespaces/{ns}/leases/{LEASE}-ledger")
        starts = json.loads(ledger["metadata"]["annotations"]["driftd.io/retirement-starts"])
        assert [s[0] for s in starts] == [node]

    def test_lease_held_by_another_node_blocks_retirement(self, setup):
        """While another node holds an unexpired retirement Lease, retire_node fails transiently and changes nothing."""
        c, ns, node = setup.cluster, setup.ns, setup.node
        now = datetime.now(UTC)
        c.rest.post(f"/apis/coordination.k8s.io/v1/namespaces/{ns}/leases", {
            "apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": {"name": LEASE},
            "spec": {"holderIdentity": "some-other-node", "leaseDurationSeconds": 900,
                     "acquireTime": now.strftime("%Y-%m-%dT%H:%M:%S.%fZ"), "renewTime": now.strftime("%Y-%m-%dT%H:%M:%S.%fZ")}})
        rt = setup.runtime()
        before = c.node(node)["metadata"]["resourceVersion"]
        with pytest.raises(TargetError) as e:
            target_of(rt).retire_node("test")
        assert e.value.transient and "lease" in str(e.value)
        assert c.node(node)["metadata"]["resourceVersion"] == before
        lease = c.rest.get(f"/apis/coordination.k8s.io/v1/namespaces/{ns}/leases/{LEASE}")
        assert lease["spec"]["holderIdentity"] == "some-other-node"

    def test_expired_lease_is_taken_over(self, setup):
        """A Lease its holder stopped renewing long ago does not block retirement."""
        c, ns, node = setup.cluster, setup.ns, setup.node
        old = (datetime.now(UTC) - timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        c.rest.post(f"/apis/coordination.k8s.io/v1/namespaces/{ns}/leases", {
            "apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": {"name": LEASE},
            "spec": {"holderIdentity": "crashed-node", "leaseDurationSeconds": 60, "acquireTime": old, "renewTime": old}})
        rt = setup.runtime()
        assert target_of(rt).retire_node("test") == {"node": node, "evicted": [], "not_evicted_bare": []}
        assert c.node(node)["spec"]["unschedulable"] is True

    def test_kernel_below_minimum_retires_the_node_in_one_pass(self, setup, host_root, fake_kubelet):
        """A HostBaseline kernel rule the host fails makes the Engine cordon, taint, label and drain this node."""
        c, node = setup.cluster, setup.node
        (host_root / "proc/sys/kernel").mkdir(parents=True)
        (host_root / "proc/sys/kernel/osrelease").write_text("5.10.0-test\n")
        c.make_pod("web-1", node)
        fake_kubelet(node)
        rt = setup.runtime({"host.yaml": host_baseline("kernel", 'kernel: {minimumRelease: "99.0"}')})
        summary = run_once(rt.engine, rt.queue, attempts=1)
        got = {o.key: o.status for o in summary.outcomes}
        assert got == {"host:kernel:release": "retired"}
        n = c.node(node)
        assert n["spec"]["unschedulable"] is True
        assert any(t["key"] == TAINT_KEY and t["effect"] == "NoSchedule" for t in n["spec"]["taints"])
        assert n["metadata"]["labels"][RETIRED_LABEL] == "true"
        assert "5.10.0-test" in n["metadata"]["annotations"]["driftd.io/retired-reason"]
        assert c.pod("web-1") is None  # drained (the fake kubelet finished the termination)
        node_events = [e for e in c.events(ns="default") if e["involvedObject"].get("name") == node]
        assert "NodeRetired" in reasons(node_events)
        assert remediation_count(rt, "retire_node", "succeeded", target="host") == 1

    def test_node_events_show_in_kubectl_describe_node(self, setup, host_root, kubectl):
        """kubectl describe node lists driftd's node Events (the involvedObject uid is the Node's)."""
        (host_root / "proc/sys/kernel").mkdir(parents=True)
        (host_root / "proc/sys/kernel/osrelease").write_text("5.10.0-test\n")
        rt = setup.runtime({"host.yaml": host_baseline("kernel", 'kernel: {minimumRelease: "99.0"}')})
        run_once(rt.engine, rt.queue, attempts=1)
        out = kubectl("describe", "node", setup.node).stdout
        assert "NodeRetired" in out and "DriftDetected" in out


# ---------------------------------------------------------------------------- dry run
class TestDryRun:
    def test_dry_run_pass_changes_no_pod_or_node(self, setup, host_root):
        """With dry_run=True neither the drifted pods nor the node change, though a kernel rule asks for retirement."""
        c, ns, node = setup.cluster, setup.ns, setup.node
        (host_root / "proc/sys/kernel").mkdir(parents=True)
        (host_root / "proc/sys/kernel/osrelease").write_text("5.10.0-test\n")
        c.make_pod("web-1", node, privileged=True)
        c.make_pod("web-2", node, image_id=DIGEST_OTHER)
        c.make_pod("lonely", node, owner=None, compliant=False)
        pods = ("web-1", "web-2", "lonely")
        before = {p: c.pod(p)["metadata"]["resourceVersion"] for p in pods}
        node_rv = c.node(node)["metadata"]["resourceVersion"]
        rt = setup.runtime({"pods.yaml": pod_baseline(ns),
                            "host.yaml": host_baseline("kernel", 'kernel: {minimumRelease: "99.0"}')}, dry_run=True)
        summary = run_once(rt.engine, rt.queue, attempts=1)
        statuses = {o.key: o.status for o in summary.outcomes}
        assert statuses[key(ns, "web-1")] == "reported" and statuses[key(ns, "web-2")] == "reported"
        assert statuses["host:kernel:release"] == "reported"
        assert {p: c.pod(p)["metadata"]["resourceVersion"] for p in pods} == before
        assert c.node(node)["metadata"]["resourceVersion"] == node_rv
        for p in pods:
            assert driftd_writes(c, p) == []
        assert remediation_count(rt, "evict", "skipped") == 2
        # like kubectl drain without --force, a bare pod is never evicted by a drain
        assert rt.engine.targets["kubernetes"].would_evict() == [
            f"{ns}/{p}" for p in sorted(pods) if p != "lonely"]
        assert c.node(node)["metadata"]["resourceVersion"] == node_rv
        assert c.rest.get_or_none(f"/apis/coordination.k8s.io/v1/namespaces/{ns}/leases/{LEASE}") is None


# ---------------------------------------------------------------------------- PolicyReport
class TestPolicyReport:
    def test_report_holds_fail_and_pass_results_with_summary(self, setup):
        """The node's PolicyReport lists a fail for the drifted pod, a pass for the compliant one, and the counts."""
        c, ns, node = setup.cluster, setup.ns, setup.node
        c.make_pod("web-1", node, spec={"containers": [{
            "name": "app", "image": "registry.invalid/app:1",  # no memory limit: a report-only rule
            "securityContext": {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}}}]})
        c.make_pod("web-2", node)
        rt = setup.runtime()
        summary = run_once(rt.engine, rt.queue, attempts=1)
        assert {o.key: o.status for o in summary.outcomes} == {key(ns, "web-1"): "reported"}
        rep = report_of(c, node)
        assert rep["summary"] == {"pass": 1, "fail": 1, "warn": 0, "error": 0, "skip": 0}
        assert rep["scope"] == {"apiVersion": "v1", "kind": "Node", "name": node}
        assert rep["metadata"]["labels"]["driftd.io/node"] == node
        fail, ok = rep["results"]  # failures first
        assert fail["result"] == "fail" and fail["resources"][0]["name"] == "web-1"
        assert "missingLimits" in fail["message"] and fail["policy"] == "pod-restricted"
        assert fail["resources"][0]["uid"] == c.pod("web-1")["metadata"]["uid"]
        assert ok["result"] == "pass" and ok["resources"][0]["name"] == "web-2"
        assert rep == {**rep, **rt.engine.targets["kubernetes"].last_report, "metadata": rep["metadata"]}  # nothing pruned

    def test_report_stays_within_report_max_results(self, setup):
        """More results than report_max_results: failures are kept first, the summary still counts all."""
        c, node = setup.cluster, setup.node
        for i in range(3):
            c.make_pod(f"ok-{i}", node)
        for i in range(2):
            c.make_pod(f"bad-{i}", node, spec={"containers": [{
                "name": "app", "image": "registry.invalid/app:1",
                "securityContext": {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}}}]})
        rt = setup.runtime(kubernetes={"report_max_results": 3})
        run_once(rt.engine, rt.queue, attempts=1)
        rep = report_of(c, node)
        assert len(rep["results"]) == 3
        assert [r["result"] for r in rep["results"]] == ["fail", "fail", "pass"]
        assert rep["summary"]["fail"] == 2 and rep["summary"]["pass"] == 3
        assert rep["metadata"]["annotations"]["driftd.io/truncated"] == "2"
        assert rep["metadata"]["annotations"]["driftd.io/baseline-set"] == rt.engine.baselines.version  # the set judged by

    def test_report_is_replaced_not_duplicated_on_the_next_pass(self, setup):
        """A second pass updates the same PolicyReport (one per node) with the new state."""
        c, node = setup.cluster, setup.node
        c.make_pod("web-1", node)
        rt = setup.runtime()
        run_once(rt.engine, rt.queue, attempts=1)
        first = report_of(c, node)
        c.make_pod("web-2", node)
        run_once(rt.engine, rt.queue, attempts=1)
        items = c.rest.get(f"/apis/wgpolicyk8s.io/v1alpha2/namespaces/{c.ns}/policyreports")["items"]
        assert [i["metadata"]["name"] for i in items] == [f"driftd-{node}"]
        assert items[0]["metadata"]["uid"] == first["metadata"]["uid"]
        assert items[0]["summary"]["pass"] == 2


    def test_identical_scans_write_the_report_once(self, setup):
        """Scans whose results did not change (timestamps aside) do not write the PolicyReport, also after a restart; a change does."""
        c, node = setup.cluster, setup.node
        c.make_pod("web-1", node)
        c.make_pod("web-2", node, spec={"containers": [{
            "name": "app", "image": "registry.invalid/app:1",  # no memory limit: a report-only rule, stays failing
            "securityContext": {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}}}]})

        def report_writes() -> list[str]:
            return [e["verb"] for e in c.audit(resource="policyreports")
                    if e["verb"] in ("create", "update", "patch") and e["responseStatus"]["code"] < 300]

        rt = setup.runtime()
        run_once(rt.engine, rt.queue, attempts=1)
        first = report_of(c, node)
        assert report_writes() == ["create"]
        for _ in range(3):
            rt.engine.clock.advance(300)  # every row carries a new timestamp
            run_once(rt.engine, rt.queue, attempts=1)
        assert report_writes() == ["create"]
        assert report_of(c, node)["metadata"]["resourceVersion"] == first["metadata"]["resourceVersion"]
        rt2 = setup.runtime()  # a restarted agent compares with what is on the server
        rt2.engine.clock.advance(900)
        run_once(rt2.engine, rt2.queue, attempts=1)
        assert report_writes() == ["create"]
        c.make_pod("web-3", node)  # a new result: written
        run_once(rt.engine, rt.queue, attempts=1)
        assert report_writes() == ["create", "update"]
        assert report_of(c, node)["summary"]["pass"] == 2

# ---------------------------------------------------------------------------- watch
class TestWatch:
    def test_watch_recovers_after_apiserver_restart(self, setup, k8s_env):
        """The pod watch reconnects after kube-apiserver restarts on the same port and delivers new pods."""
        c, ns, node = setup.cluster, setup.ns, setup.node
        rt = setup.runtime()
        t = target_of(rt)
        keys: queue.Queue[str] = queue.Queue()
        stop = threading.Event()
        th = threading.Thread(target=t.watch, args=(keys.put, stop), kwargs={"max_backoff": 1.0}, daemon=True)
        th.start()

        def arrives(k: str, timeout: float = 30.0) -> bool:
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                with contextlib.suppress(queue.Empty):
                    if keys.get(timeout=0.5) == k:
                        return True
            return False

        downs: list[bool] = []
        real_set_up = t._set_up
        t._set_up = lambda up, error="": (downs.append(up), real_set_up(up, error))[1]  # type: ignore[method-assign]
        try:
            c.make_pod("before", node)
            assert arrives(key(ns, "before"))
            k8s_env.restart_apiserver(down_seconds=1.0)
            c.make_pod("after", node)
            assert arrives(key(ns, "after"))
            assert False in downs and t.up is True  # the outage was seen, and is over
        finally:
            stop.set()
            t.close()
            started = time.monotonic()
            th.join(timeout=15)
        assert not th.is_alive() and time.monotonic() - started < 5  # close() unblocks the pending read

    def test_close_unblocks_an_idle_watch(self, setup):
        """close() ends a watch blocked waiting for events at once (daemon shutdown does not hang)."""
        rt = setup.runtime()
        t = target_of(rt)
        seen: list[str] = []
        stop = threading.Event()
        th = threading.Thread(target=t.watch, args=(seen.append, stop), daemon=True)
        th.start()
        assert wait_for(lambda: t.up is True and t._stream is not None)
        time.sleep(0.5)  # blocked in the read now
        stop.set()
        t.close()
        th.join(timeout=5)
        assert not th.is_alive()

    def test_watch_sees_only_this_node(self, setup):
        """The watch is limited to this node: another node's pod never produces a key."""
        c, ns, node = setup.cluster, setup.ns, setup.node
        node_b = c.make_node("node-b")
        rt = setup.runtime()
        t = target_of(rt)
        seen: list[str] = []
        stop = threading.Event()
        th = threading.Thread(target=t.watch, args=(seen.append, stop), daemon=True)
        th.start()
        try:
            c.make_pod("other", node_b)
            c.make_pod("mine", node)
            assert wait_for(lambda: key(ns, "mine") in seen)
        finally:
            stop.set()
            t.close()
            th.join(timeout=15)
        assert key(ns, "other") not in seen


class TestDaemon:
    def test_pod_watch_event_is_reconciled_without_waiting_for_a_scan(self, setup):
        """In the daemon a new drifted pod arrives through the watch and is evicted long before the next scan."""
        from driftd.engine.daemon import BaselineManager, Daemon
        from driftd.engine.queue import KeyedQueue

        c, ns, node = setup.cluster, setup.ns, setup.node
        rt = setup.runtime(scan={"interval_seconds": 3600, "jitter_seconds": 0})
        manager = BaselineManager(rt.settings, rt.engine, rt.metrics, rt.engine.clock)
        manager.prime()
        daemon = Daemon(settings=rt.settings, engine=rt.engine, queue=KeyedQueue(), metrics=rt.metrics,
                        manager=manager, api=None)
        daemon.start()
        try:
            assert wait_for(lambda: daemon.scans_done == 1 and target_of(rt).up is True)
            c.make_pod("late", node, privileged=True)
            assert wait_for(lambda: terminating_or_gone(c.pod("late")), timeout=30)
            assert daemon.scans_done == 1
            assert rt.metrics.registry.get_sample_value("driftd_events_total", {"target": "kubernetes"}) >= 1
            assert wait_for(lambda: "DriftReverted" in reasons(c.events("late")))
            assert remediation_count(rt, "evict", "succeeded") == 1
            assert rt.state.get_active(key(ns, "late")) is None  # the drift record was closed
        finally:
            started = time.monotonic()
            daemon.stop()
        assert time.monotonic() - started < 5  # the watch thread stops at once


def test_engine_is_wired_with_the_kubernetes_target(setup):
    """With kubernetes enabled the target is the Engine's notifier, reporter and node retirer."""
    rt = setup.runtime()
    t = target_of(rt)
    e: Engine = rt.engine
    assert e.retirer is t and t in e.notifiers and t in e.reporters


def test_cli_once_against_the_api_server(setup, k8s_kubeconfig, tmp_path, host_root):
    """`driftd run --once --kubernetes --kubeconfig` evicts a drifted pod and exits 0 once it is fixed."""
    c, ns, node = setup.cluster, setup.ns, setup.node
    c.make_pod("web-1", node, privileged=True)
    bdir = tmp_path / "b"
    bdir.mkdir()
    (bdir / "pods.yaml").write_text(pod_baseline(ns))
    cfg = tmp_path / "driftd.yaml"
    cfg.write_text(yaml.safe_dump({"kubernetes": {"namespace": ns}}))
    r = subprocess.run([sys.executable, "-m", "driftd.cli", "run", "--once", "--output", "json", "--config", str(cfg),
                        "--host-root", str(host_root), "--baselines", str(bdir), "--state-dir", str(tmp_path / "s"),
                        "--node-name", node, "--kubernetes", "--kubeconfig", k8s_kubeconfig],
                       capture_output=True, text=True, timeout=120, check=False)
    assert r.returncode == 0, r.stderr
    out = yaml.safe_load(r.stdout)
    assert [(o["key"], o["status"]) for o in out["results"]] == [(key(ns, "web-1"), "reverted")]
    assert terminating_or_gone(c.pod("web-1"))
