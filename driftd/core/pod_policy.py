"""Pod policy (pure): evaluate a pod manifest against a ``PodBaseline``.

Pipeline position: the Kubernetes adapter observes a pod (its manifest, as the API
serves it in camelCase JSON) and this module turns it into *facts*: for every rule, the
sorted list of offending containers, volumes or namespaces.  The desired state of every
governed rule is the empty list, so the generic diff reports exactly the offenders.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from driftd.core import selectors
from driftd.core.times import latest, rfc3339
from driftd.models.keys import ResourceKey
from driftd.models.pod import PodBaseline
from driftd.models.resources import DesiredResource, PodPayload

MIRROR_ANNOTATION = "kubernetes.io/config.mirror"

# observed field -> rule group in PodActions
RULE_GROUP = {
    "unapprovedImages": "images",
    "privileged": "security",
    "allowPrivilegeEscalation": "security",
    "runAsNonRoot": "security",
    "capabilitiesNotDropped": "security",
    "capabilitiesAdded": "security",
    "seccompProfile": "security",
    "readOnlyRootFilesystem": "security",
    "hostNamespaces": "host",
    "hostPathVolumes": "host",
    "ephemeralContainers": "ephemeral",
    "missingLimits": "resources",
    "missingRequests": "resources",
}


def pod_key(namespace: str, name: str) -> str:
    return ResourceKey.pod(namespace, name)


def _meta(pod: Mapping[str, Any]) -> Mapping[str, Any]:
    return pod.get("metadata") or {}


def selects(b: PodBaseline, pod: Mapping[str, Any]) -> bool:
    sel = b.spec.selector
    meta = _meta(pod)
    ns = meta.get("namespace", "")
    if selectors.globs(sel.exclude_namespaces, ns, empty=False):
        return False
    return selectors.globs(sel.namespaces, ns) and selectors.labels(sel.match_labels, meta.get("labels") or {})


def governing(baselines: Iterable[PodBaseline], pod: Mapping[str, Any]) -> PodBaseline | None:
    for b in sorted(baselines, key=lambda b: b.metadata.name):
        if selects(b, pod):
            return b
    return None


def controller_of(pod: Mapping[str, Any]) -> dict[str, str] | None:
    """The controlling owner (kind, name), or None for a bare pod."""
    for ref in _meta(pod).get("ownerReferences") or []:
        if ref.get("controller"):
            return {"kind": ref.get("kind", ""), "name": ref.get("name", "")}
    return None


def is_mirror(pod: Mapping[str, Any]) -> bool:
    return MIRROR_ANNOTATION in (_meta(pod).get("annotations") or {})


def _digest(ref: str) -> str:
    i = ref.find("sha256:")
    return ref[i:] if i >= 0 else ref


def _all_containers(spec: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    return [*(spec.get("initContainers") or []), *(spec.get("containers") or []), *(spec.get("ephemeralContainers") or [])]


def change_time(pod: Mapping[str, Any]) -> float | None:
    """When the pod last changed in a way drift comes from: created, or a container (debug ones too) started."""
    status = pod.get("status") or {}
    starts = [rfc3339(((c.get("state") or {}).get("running") or {}).get("startedAt"))
              for group in ("initContainerStatuses", "containerStatuses", "ephemeralContainerStatuses")
              for c in status.get(group) or []]
    return latest([rfc3339(_meta(pod).get("creationTimestamp")), *starts])


def evaluate(b: PodBaseline, pod: Mapping[str, Any]) -> dict[str, list[str]]:
    """Offenders per governed rule (an empty list is compliant)."""
    spec = pod.get("spec") or {}
    status = pod.get("status") or {}
    psc = spec.get("securityContext") or {}
    rules = b.spec.security
    out: dict[str, list[str]] = {}
    containers = _all_containers(spec)

    def each(name: str, bad: Iterable[str]) -> None:
        out[name] = sorted(set(bad))

    if b.spec.images is not None:
        approved = {_digest(r) for r in b.spec.images.approved}
        statuses = [
            *(status.get("initContainerStatuses") or []),
            *(status.get("containerStatuses") or []),
            *(status.get("ephemeralContainerStatuses") or []),
        ]
        each(
            "unapprovedImages",
            (
                f"{s.get('name')}={s.get('imageID')}"
                for s in statuses
                if s.get("imageID") and _digest(s["imageID"]) not in approved
            ),
        )

    def csc(c: Mapping[str, Any]) -> Mapping[str, Any]:
        return c.get("securityContext") or {}

    if rules.privileged is False:
        each("privileged", (c["name"] for c in containers if csc(c).get("privileged")))
    if rules.allow_privilege_escalation is False:
        each("allowPrivilegeEscalation", (c["name"] for c in containers if csc(c).get("allowPrivilegeEscalation") is not False))
    if rules.run_as_non_root:

        def root(c: Mapping[str, Any]) -> bool:
            non_root = csc(c).get("runAsNonRoot", psc.get("runAsNonRoot"))
            user = csc(c).get("runAsUser", psc.get("runAsUser"))
            return non_root is not True or user == 0

        each("runAsNonRoot", (c["name"] for c in containers if root(c)))
    if rules.required_drop_capabilities is not None:
        need = {x.upper() for x in rules.required_drop_capabilities}
        each(
            "capabilitiesNotDropped",
            (
                c["name"]
                for c in containers
                if not need <= {x.upper() for x in (csc(c).get("capabilities") or {}).get("drop") or []}
            ),
        )
    if rules.allowed_capabilities is not None:
        allowed = {x.upper() for x in rules.allowed_capabilities}
        each(
            "capabilitiesAdded",
            (
                f"{c['name']}={x}"
                for c in containers
                for x in (csc(c).get("capabilities") or {}).get("add") or []
                if x.upper() not in allowed
            ),
        )
    if rules.seccomp_profiles is not None:

        def seccomp(c: Mapping[str, Any]) -> str | None:
            prof = csc(c).get("seccompProfile") or psc.get("seccompProfile") or {}
            return prof.get("type")

        each("seccompProfile", (c["name"] for c in containers if seccomp(c) not in rules.seccomp_profiles))
    if rules.read_only_root_filesystem:
        each("readOnlyRootFilesystem", (c["name"] for c in containers if csc(c).get("readOnlyRootFilesystem") is not True))
    if b.spec.forbid_host_namespaces:
        each("hostNamespaces", (k for k in ("hostNetwork", "hostPID", "hostIPC") if spec.get(k)))
    if b.spec.allowed_host_paths is not None:
        allowed_paths = b.spec.allowed_host_paths
        each(
            "hostPathVolumes",
            (
                f"{v.get('name')}={v['hostPath'].get('path')}"
                for v in spec.get("volumes") or []
                if v.get("hostPath") and not any((v["hostPath"].get("path") or "").startswith(p) for p in allowed_paths)
            ),
        )
    if b.spec.forbid_ephemeral_containers:
        each("ephemeralContainers", (c["name"] for c in spec.get("ephemeralContainers") or []))
    regular = [*(spec.get("initContainers") or []), *(spec.get("containers") or [])]
    for field, kinds, section in (
        ("missingLimits", b.spec.resources.require_limits, "limits"),
        ("missingRequests", b.spec.resources.require_requests, "requests"),
    ):
        if kinds:
            each(field, (f"{c['name']}={k}" for c in regular for k in kinds
                         if k not in ((c.get("resources") or {}).get(section) or {})))
    return out


def governed_fields(b: PodBaseline) -> list[str]:
    """Fields ``evaluate`` reports for this baseline (same keys, without needing a pod)."""
    return list(evaluate(b, {"spec": {}, "status": {}}))


def compile_pod(b: PodBaseline, pod: Mapping[str, Any]) -> DesiredResource:
    meta = _meta(pod)
    ns, name = meta.get("namespace", ""), meta.get("name", "")
    actions = b.spec.actions.model_dump()
    fields = governed_fields(b)
    return DesiredResource(
        key=pod_key(ns, name),
        target="kubernetes",
        kind="pod",
        address=f"{ns}/{name}",
        baseline=b.metadata.name,
        enforcement=b.spec.enforcement,
        window=b.spec.window,
        grace=b.spec.grace,
        expected={f: [] for f in fields},
        sensitive=frozenset(),
        content=None,
        payload=PodPayload(
            actions={f: actions[RULE_GROUP[f]] for f in fields},
            controller=controller_of(pod),
            uid=meta.get("uid"),
            namespace=ns,
            name=name,
        ),
    )


def desired_pod(baselines: Iterable[PodBaseline], pod: Mapping[str, Any], *, node_name: str,
                exclude_namespaces: Iterable[str] = ()) -> DesiredResource | None:
    """Desired state of one listed pod of ``node_name``, or None when no baseline governs it here.

    Never another node's pod, a mirror pod, one terminating or finished, nor one in a namespace of
    ``kubernetes.exclude_namespaces`` (whatever a baseline selects).  The pods adapter calls this on every
    listing; ``driftd plan --state`` on the pods an export captured.
    """
    meta = _meta(pod)
    if (pod.get("spec") or {}).get("nodeName") != node_name:
        return None
    if is_mirror(pod) or meta.get("deletionTimestamp") or (pod.get("status") or {}).get("phase") in ("Succeeded", "Failed"):
        return None
    if selectors.globs(tuple(exclude_namespaces), meta.get("namespace", ""), empty=False):
        return None
    b = governing(baselines, pod)
    return None if b is None else compile_pod(b, pod)

