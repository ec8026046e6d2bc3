"""Pod policy: the restricted profile evaluated on pod manifests, and the pod plan."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest

from driftd.baselines.loader import load_set
from driftd.core.diff import diff
from driftd.core.plan import plan
from driftd.core.pod_policy import compile_pod, evaluate, governing, is_mirror
from driftd.models.container import RuleAction
from driftd.models.pod import PodBaseline
from driftd.models.resources import Action, ObservedResource

REPO = Path(__file__).resolve().parent.parent
DIGEST = "sha256:" + "d" * 64


@pytest.fixture(scope="module")
def restricted() -> PodBaseline:
    bset, problems = load_set(REPO / "baselines")
    assert bset is not None, problems
    (b,) = [b for b in bset.baselines if isinstance(b, PodBaseline) and b.metadata.name == "pod-restricted"]
    return b


def compliant_pod() -> dict:
    return {
        "metadata": {"name": "web-1", "namespace": "apps", "labels": {"app": "web"}, "uid": "u1",
                     "ownerReferences": [{"kind": "ReplicaSet", "name": "web-abc", "controller": True}]},
        "spec": {
            "securityContext": {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}},
            "containers": [{"name": "app", "image": "app:1", "resources": {"limits": {"memory": "64Mi"}},
                            "securityContext": {"allowPrivilegeEscalation": False,
                                                "capabilities": {"drop": ["ALL"], "add": ["NET_BIND_SERVICE"]}}}],
        },
        "status": {"containerStatuses": [{"name": "app", "imageID": f"docker-pullable://app@{DIGEST}"}]},
    }


def offenders(b: PodBaseline, pod: dict) -> dict[str, list[str]]:
    return {k: v for k, v in evaluate(b, pod).items() if v}


class TestRestrictedProfile:
    def test_compliant_pod_has_no_offenders(self, restricted):
        """A pod that meets the restricted profile yields empty lists only."""
        assert offenders(restricted, compliant_pod()) == {}

    @pytest.mark.parametrize(("mutate", "field", "who"), [
        (lambda p: p["spec"]["containers"][0]["securityContext"].update(privileged=True), "privileged", ["app"]),
        (lambda p: p["spec"]["containers"][0]["securityContext"].pop("allowPrivilegeEscalation"), "allowPrivilegeEscalation", ["app"]),
        (lambda p: p["spec"]["securityContext"].pop("runAsNonRoot"), "runAsNonRoot", ["app"]),
        (lambda p: p["spec"]["containers"][0]["securityContext"].update(runAsUser=0), "runAsNonRoot", ["app"]),
        (lambda p: p["spec"]["containers"][0]["securityContext"]["capabilities"].update(drop=[]), "capabilitiesNotDropped", ["app"]),
        (lambda p: p["spec"]["containers"][0]["securityContext"]["capabilities"].update(add=["SYS_ADMIN"]), "capabilitiesAdded", ["app=SYS_ADMIN"]),
        (lambda p: p["spec"].pop("securityContext") and p["spec"]["containers"][0]["securityContext"].update(runAsNonRoot=True), "seccompProfile", ["app"]),
        (lambda p: p["spec"].update(hostNetwork=True, hostPID=True), "hostNamespaces", ["hostNetwork", "hostPID"]),
        (lambda p: p["spec"].update(volumes=[{"name": "root", "hostPath": {"path": "/"}}]), "hostPathVolumes", ["root=/"]),
        (lambda p: p["spec"].update(ephemeralContainers=[{"name": "debugger", "image": "busybox"}]), "ephemeralContainers", ["debugger"]),
        (lambda p: p["spec"]["containers"][0].pop("resources"), "missingLimits", ["app=memory"]),
    ])
    def test_each_rule_names_its_offender(self, restricted, mutate, field, who):
        """Breaking one rule makes exactly that rule report the offender."""
        pod = compliant_pod()
        mutate(pod)
        got = offenders(restricted, pod)
        assert got.get(field) == who

    def test_ephemeral_debug_container_is_checked_for_security_too(self, restricted):
        """An ephemeral container is both forbidden and held to the security rules."""
        pod = compliant_pod()
        pod["spec"]["ephemeralContainers"] = [{"name": "dbg", "image": "busybox"}]
        got = offenders(restricted, pod)
        assert got["ephemeralContainers"] == ["dbg"] and "dbg" in got["allowPrivilegeEscalation"]

    def test_images_checked_against_what_runs(self):
        """Approved digests are compared with status imageID, not the spec's tag."""
        b = PodBaseline.model_validate({"apiVersion": "driftd.io/v1alpha1", "kind": "PodBaseline",
                                        "metadata": {"name": "img"}, "spec": {"images": {"approved": [DIGEST]}}})
        pod = compliant_pod()
        assert offenders(b, pod) == {}
        pod["status"]["containerStatuses"][0]["imageID"] = "containerd://sha256:" + "e" * 64
        assert offenders(b, pod)["unapprovedImages"] == ["app=containerd://sha256:" + "e" * 64]

    def test_unpinned_image_is_a_schema_error(self):
        """A tag is not accepted as an approved pod image."""
        with pytest.raises(ValueError, match="not pinned by digest"):
            PodBaseline.model_validate({"apiVersion": "driftd.io/v1alpha1", "kind": "PodBaseline",
                                        "metadata": {"name": "img"}, "spec": {"images": {"approved": ["app:1"]}}})

    def test_kube_system_excluded_and_mirror_detected(self, restricted):
        """kube-system pods are not governed; mirror pods are recognised."""
        pod = compliant_pod()
        pod["metadata"]["namespace"] = "kube-system"
        assert governing([restricted], pod) is None
        pod["metadata"]["annotations"] = {"kubernetes.io/config.mirror": "x"}
        assert is_mirror(pod)


class TestPodPlan:
    def _plan(self, b, pod):
        d = compile_pod(b, pod)
        obs = ObservedResource(key=d.key, actual=evaluate(b, pod))
        return plan(d, obs, diff(d, obs))

    def test_privileged_controller_pod_is_evicted(self, restricted):
        """A broken security rule on a ReplicaSet pod plans an eviction."""
        pod = compliant_pod()
        pod["spec"]["containers"][0]["securityContext"]["privileged"] = True
        p = self._plan(restricted, pod)
        assert [a.action for a in p.actions] == [Action.EVICT] and not p.blocked

    def test_bare_pod_is_reported_not_evicted(self, restricted):
        """Without a controller nothing would recreate the pod: blocked with a reason."""
        pod = compliant_pod()
        pod["metadata"]["ownerReferences"] = []
        pod["spec"]["hostPID"] = True
        p = self._plan(restricted, pod)
        assert not p.actions and p.blocked and "bare pod" in p.blocked

    def test_bare_pod_with_retire_is_evicted(self, restricted):
        """Under action retire even a bare pod is evicted."""
        b = restricted.model_copy(update={"spec": restricted.spec.model_copy(
            update={"actions": restricted.spec.actions.model_copy(update={"host": RuleAction.RETIRE})})})
        pod = compliant_pod()
        pod["metadata"]["ownerReferences"] = []
        pod["spec"]["hostPID"] = True
        p = self._plan(b, pod)
        assert [a.action for a in p.actions] == [Action.EVICT] and p.actions[0].params == {"retire": True}

    def test_resources_are_report_only(self, restricted):
        """A missing memory limit is reported (action report), never evicted."""
        pod = copy.deepcopy(compliant_pod())
        pod["spec"]["containers"][0].pop("resources")
        p = self._plan(restricted, pod)
        assert p.drift and not p.actions and not p.blocked
