"""Compile container baselines against the containers that exist (pure).

Pipeline position: discovery → **compile** → observe.  Containers come and go, so unlike
host resources their desired state is computed per scan from a cheap listing: which
baseline governs each container (first matching baseline by name), and the expected
value of every field that baseline names, as literals or matchers (``core.matchers``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from driftd.core import selectors
from driftd.models.baseline import Enforcement
from driftd.models.container import ContainerBaseline, RuleAction, RuntimePolicy, Ungoverned
from driftd.models.keys import ResourceKey
from driftd.models.resources import ContainerPayload, DesiredResource, UngovernedPayload

OLD_SUFFIX = "-driftd-old-"
KUBELET_LABEL = "io.kubernetes.pod.uid"  # a container the kubelet runs (its pod is governed as a pod)
_STRICTNESS = {Ungoverned.IGNORE: 0, Ungoverned.REPORT: 1, Ungoverned.RETIRE: 2}


@dataclass(frozen=True)
class ContainerSummary:
    """What a container listing gives: enough to pick a baseline."""

    id: str
    name: str
    image_id: str
    labels: Mapping[str, str] = field(default_factory=dict)


def container_key(name: str, target: str = "docker") -> str:
    """Key of a container of the runtime ``target`` (the target's name is its key prefix)."""
    return ResourceKey.container(name, target)


def selects(b: ContainerBaseline, c: ContainerSummary) -> bool:
    sel = b.spec.selector
    return selectors.labels(sel.match_labels, c.labels) and selectors.globs(sel.names, c.name)


def governing(baselines: Iterable[ContainerBaseline], c: ContainerSummary) -> ContainerBaseline | None:
    """The first baseline (by name) whose selector matches the container."""
    for b in sorted(baselines, key=lambda b: b.metadata.name):
        if selects(b, c):
            return b
    return None


def ungoverned_policy(baselines: Iterable[ContainerBaseline]) -> Ungoverned:
    """The strictest ``ungoverned`` among active baselines (``report`` when there are none)."""
    values = [b.spec.ungoverned for b in baselines]
    return max(values, key=_STRICTNESS.__getitem__) if values else Ungoverned.REPORT


def runtime_expected(rt: RuntimePolicy) -> dict[str, Any]:
    """Expected observed fields for the runtime rules that are set."""
    exp: dict[str, Any] = {}
    simple = {
        "user": rt.user,
        "nonRoot": rt.non_root,
        "privileged": rt.privileged,
        "capAdd": rt.cap_add,
        "readOnlyRootFilesystem": rt.read_only_root_filesystem,
        "noNewPrivileges": rt.no_new_privileges,
        "seccompProfile": rt.seccomp_profile,
        "apparmorProfile": rt.apparmor_profile,
        "pidMode": rt.pid_mode,
        "ipcMode": rt.ipc_mode,
        "networkMode": rt.network_mode,
    }
    exp.update({k: v for k, v in simple.items() if v is not None})
    if rt.cap_drop is not None:
        exp["capDrop"] = {"$superset": rt.cap_drop}
    if rt.forbidden_host_mounts:
        exp["forbiddenHostMounts"] = {"$none_of": rt.forbidden_host_mounts}
    if rt.env is not None:
        exp["env"] = {"$contains": dict(rt.env)}
    if rt.forbidden_env:
        exp["forbiddenEnv"] = {"$none_of": sorted(rt.forbidden_env)}
    if rt.ports is not None:
        exp["ports"] = sorted(
            (
                {"containerPort": p.container_port, "protocol": p.protocol, "hostIP": p.host_ip, "hostPort": p.host_port}
                for p in rt.ports
            ),
            key=lambda p: (p["containerPort"], p["protocol"], p["hostIP"], p["hostPort"]),
        )
    if rt.resources is not None:
        for k, v in (("memory", rt.resources.memory), ("cpus", rt.resources.cpus), ("pidsLimit", rt.resources.pids_limit)):
            if v is not None:
                exp[k] = v
    if rt.restart_policy is not None:
        exp["restartPolicy"] = {"name": rt.restart_policy.name, "maximumRetryCount": rt.restart_policy.maximum_retry_count}
    if rt.labels is not None:
        exp["labels"] = {"$contains": dict(rt.labels)}
    return exp


# observed field -> the runtime rule (YAML spelling) whose action applies to it
_RULE_OF = {"forbiddenHostMounts": "forbiddenHostMounts", "memory": "resources", "cpus": "resources", "pidsLimit": "resources"}


def compile_container(
    b: ContainerBaseline, c: ContainerSummary, approved_ids: list[str], *, target: str = "docker"
) -> DesiredResource:
    """Desired state of one governed container of runtime ``target``; ``approved_ids`` are the resolved image ids."""
    spec = b.spec
    expected: dict[str, Any] = {"image": {"$in": sorted(set(approved_ids))}}
    expected.update(runtime_expected(spec.runtime))
    if spec.filesystem.allowed_changes is not None:
        expected["fsChanges"] = {"$all_match": list(spec.filesystem.allowed_changes)}
    actions: dict[str, str] = {"image": spec.images.action.value, "fsChanges": spec.filesystem.action.value}
    for f in expected:
        if f in actions:
            continue
        rule = _RULE_OF.get(f, f)
        actions[f] = spec.action_overrides.get(rule, spec.runtime_action).value
    return DesiredResource(
        key=container_key(c.name, target),
        target=target,
        kind="container",
        address=c.name,
        baseline=b.metadata.name,
        enforcement=spec.enforcement,
        window=spec.window,
        grace=spec.grace,
        expected=expected,
        sensitive=frozenset({"env"}),
        content=None,
        payload=ContainerPayload(
            actions=actions,
            approved=tuple(sorted(set(approved_ids))),
            runtime=spec.runtime.model_dump(by_alias=True, mode="json"),
            container_id=c.id,
        ),
    )


def compile_ungoverned(c: ContainerSummary, policy: Ungoverned, *, target: str = "docker") -> DesiredResource:
    """A container no baseline governs: drift by definition, handled by the ``ungoverned`` policy."""
    return DesiredResource(
        key=container_key(c.name, target),
        target=target,
        kind="ungoverned",
        address=c.name,
        baseline="(ungoverned)",
        enforcement=Enforcement.ENFORCE,
        window=timedelta(minutes=30),
        expected={"governed": True},
        sensitive=frozenset(),
        content=None,
        payload=UngovernedPayload(policy=policy.value, container_id=c.id),
    )


def desired_container(
    baselines: Iterable[ContainerBaseline], policy: Ungoverned, c: ContainerSummary,
    approved: Callable[[ContainerBaseline], list[str]], *, target: str = "docker", skip_kubelet: bool = True,
) -> DesiredResource | None:
    """Desired state of one listed container, or None when driftd leaves it alone (a container a recreate parked,
    a kubelet's container with ``skip_kubelet``, an ungoverned one under ``ungoverned: ignore``).

    ``approved`` resolves a baseline's approved image references to ids on this runtime (the adapter's I/O, or a
    captured image table when ``driftd plan --state`` replays an export).
    """
    if OLD_SUFFIX in c.name or (skip_kubelet and KUBELET_LABEL in c.labels):
        return None
    b = governing(baselines, c)
    if b is not None:
        return compile_container(b, c, approved(b), target=target)
    if policy is Ungoverned.IGNORE:
        return None
    return compile_ungoverned(c, policy, target=target)


def plan_actions(drifted_fields: Iterable[str], actions: Mapping[str, str]) -> RuleAction:
    """The strongest action any broken rule asks for: retire > revert > report."""
    chosen = {RuleAction(actions.get(f, RuleAction.REVERT.value)) for f in drifted_fields}
    for a in (RuleAction.RETIRE, RuleAction.REVERT):
        if a in chosen:
            return a
    return RuleAction.REPORT
