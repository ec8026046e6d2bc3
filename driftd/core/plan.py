"""Plan (pure): turn drift into the actions that restore the baseline.

Pipeline position: diff → **plan** → act.  Every plan is computed, whatever the
enforcement mode; only the act stage looks at ``Plan.mode``.  A drift with no safe
remedy (a directory where a file belongs, an unknown user) yields a *blocked* plan that
is reported, never guessed at.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from driftd.core.compile_container import plan_actions
from driftd.models.baseline import Enforcement
from driftd.models.container import RuleAction
from driftd.models.resources import (
    Action,
    ContainerPayload,
    DesiredResource,
    FieldDrift,
    HostPayload,
    ObservedResource,
    Plan,
    PlannedAction,
    PodPayload,
    UngovernedPayload,
)

Planner = Callable[[DesiredResource, ObservedResource, dict[str, FieldDrift]], "tuple[list[PlannedAction], str | None]"]


def effective_mode(desired: DesiredResource, dry_run: bool) -> Enforcement:
    """The global dry-run overrides every baseline's own enforcement mode."""
    return Enforcement.DRYRUN if dry_run else desired.enforcement


def _unresolved(desired: DesiredResource) -> str | None:
    for f in ("owner", "group"):
        v = desired.expected.get(f)
        if isinstance(v, str):
            return f"{f} {v!r} is not defined on this host"
    return None


SETID_BITS = 0o6000


def _attrs_params(desired: DesiredResource, observed: ObservedResource) -> dict[str, Any]:
    """Mode/owner/group a rewritten file must carry: governed values, else the current ones.

    Current values are kept only from a resource of the right type: a symlink's 0777 mode
    and its owner must not carry over to the file that replaces it (defaults apply).
    A current mode never carries set-uid/set-gid into the rewritten file: only the baseline's
    own ``mode`` may name them (a rewrite must not re-issue a set-id binary's privilege).
    """
    exp, act = desired.expected, observed.actual
    same_type = act.get("type") == desired.expected.get("type", desired.kind)
    out = {f: exp.get(f, act.get(f) if same_type else None) for f in ("mode", "owner", "group")}
    if "mode" not in exp and isinstance(out["mode"], str) and desired.kind == "file":
        out["mode"] = f"{int(out['mode'], 8) & ~SETID_BITS:04o}"
    return out


def _hard_linked(observed: ObservedResource) -> str | None:
    links = observed.actual.get("links")
    if observed.actual.get("type") == "file" and isinstance(links, int) and links > 1:
        return (
            f"file has {links} hard links: changing its mode or owner would change every linked name, "
            "maybe outside the host root; refusing (break the link, or rewrite the content)"
        )
    return None


def _attr_actions(drift: dict[str, FieldDrift], desired: DesiredResource) -> list[PlannedAction]:
    out = []
    if "mode" in drift:
        out.append(PlannedAction(action=Action.CHMOD, reason="mode differs", params={"mode": desired.expected["mode"]}))
    if "owner" in drift or "group" in drift:
        params = {"owner": desired.expected.get("owner"), "group": desired.expected.get("group")}
        if "mode" in desired.expected:  # set-id bits survive a chown only when the baseline names them
            params["mode"] = desired.expected["mode"]
        out.append(PlannedAction(action=Action.CHOWN, reason="ownership differs", params=params))
    return out


def _plan_file(
    desired: DesiredResource, observed: ObservedResource, drift: dict[str, FieldDrift]
) -> tuple[list[PlannedAction], str | None]:
    actual_type = observed.actual.get("type")
    if desired.expected.get("present") is False:
        if actual_type not in ("file", "symlink", "other"):
            return [], f"a {actual_type} stands where an absent file is required; directories are never removed"
        return [PlannedAction(action=Action.REMOVE, reason="must be absent")], None
    if (blocked := _unresolved(desired)) is not None:
        return [], blocked
    rewrite = "present" in drift or "type" in drift or "content" in drift
    if rewrite:
        if actual_type not in (None, "file", "symlink"):
            return [], f"a {actual_type} stands where a file belongs; not replacing it"
        if desired.content is None:
            return [], "file must be rewritten but the baseline gives no content"
        reason = {"present": "missing", "type": f"is a {actual_type}"}.get(next(iter(drift)), "content differs")
        return [PlannedAction(action=Action.WRITE_FILE, reason=reason, params=_attrs_params(desired, observed))], None
    if (linked := _hard_linked(observed)) is not None:
        return [], linked
    return _attr_actions(drift, desired), None


def _plan_dir(
    desired: DesiredResource, observed: ObservedResource, drift: dict[str, FieldDrift]
) -> tuple[list[PlannedAction], str | None]:
    if (blocked := _unresolved(desired)) is not None:
        return [], blocked
    if "type" in drift:
        return [], f"a {observed.actual.get('type')} stands where a directory belongs; not replacing it"
    if "present" in drift:
        return [PlannedAction(action=Action.MKDIR, reason="missing", params=_attrs_params(desired, observed))], None
    return _attr_actions(drift, desired), None


def _plan_sysctl(
    desired: DesiredResource, observed: ObservedResource, drift: dict[str, FieldDrift]
) -> tuple[list[PlannedAction], str | None]:
    if observed.actual.get("value") is None:
        return [], "sysctl key does not exist on this kernel"
    return [PlannedAction(action=Action.WRITE_SYSCTL, reason="value differs", params={"value": desired.expected["value"]})], None


def _plan_container(
    desired: DesiredResource, observed: ObservedResource, drift: dict[str, FieldDrift]
) -> tuple[list[PlannedAction], str | None]:
    pl = desired.payload if isinstance(desired.payload, ContainerPayload) else ContainerPayload()
    actions = pl.actions
    chosen = plan_actions(drift, actions)
    broken = ", ".join(sorted(drift))
    if chosen is RuleAction.RETIRE:
        rules = ", ".join(sorted(f for f in drift if actions.get(f) == "retire"))
        return [PlannedAction(action=Action.RETIRE, reason=f"rules with action retire broken: {rules}")], None
    if chosen is RuleAction.REVERT:
        if "nonRoot" in drift and not pl.runtime.get("user"):
            return [], "runs as root and the baseline names no user to recreate it with (set runtime.user)"
        approved = pl.approved
        current = observed.actual.get("image")
        if not approved:
            return [], "no approved image is present on this host; cannot recreate"
        image = current if current in approved else approved[0]
        return [PlannedAction(action=Action.RECREATE, reason=f"drifted: {broken}", params={"image": image})], None
    return [], None  # report-only rules


def _plan_ungoverned(
    desired: DesiredResource, observed: ObservedResource, drift: dict[str, FieldDrift]
) -> tuple[list[PlannedAction], str | None]:
    if isinstance(desired.payload, UngovernedPayload) and desired.payload.policy == "retire":
        return [PlannedAction(action=Action.RETIRE, reason="no baseline governs this container")], None
    return [], None


def _plan_pod(
    desired: DesiredResource, observed: ObservedResource, drift: dict[str, FieldDrift]
) -> tuple[list[PlannedAction], str | None]:
    pl = desired.payload if isinstance(desired.payload, PodPayload) else PodPayload()
    chosen = plan_actions(drift, pl.actions)
    broken = ", ".join(sorted(drift))
    controller = pl.controller
    if chosen is RuleAction.RETIRE:
        return [PlannedAction(action=Action.EVICT, reason=f"retire: {broken}", params={"retire": True})], None
    if chosen is RuleAction.REVERT:
        if not controller:
            return [], "bare pod with no controller: eviction would not bring it back (set action retire to remove it)"
        return [
            PlannedAction(
                action=Action.EVICT, reason=f"{broken}; {controller['kind']} {controller['name']} recreates it from its template"
            )
        ], None
    return [], None


def _plan_kernel(
    desired: DesiredResource, observed: ObservedResource, drift: dict[str, FieldDrift]
) -> tuple[list[PlannedAction], str | None]:
    if isinstance(desired.payload, HostPayload) and desired.payload.kernel_action == "retire":
        release = observed.actual.get("release")
        return [PlannedAction(action=Action.RETIRE_NODE, reason=f"kernel {release} is out of patch")], None
    return [], None


PLANNERS: dict[tuple[str, str], Planner] = {
    ("host", "kernel"): _plan_kernel,
    ("kubernetes", "pod"): _plan_pod,
    ("docker", "container"): _plan_container,
    ("docker", "ungoverned"): _plan_ungoverned,
    ("host", "file"): _plan_file,
    ("host", "directory"): _plan_dir,
    ("host", "sysctl"): _plan_sysctl,
}


def register_planner(target: str, kind: str, planner: Planner) -> None:
    """Add the planner of a resource kind (an adapter outside this package, e.g. ``targets.memory``)."""
    existing = PLANNERS.get((target, kind))
    if existing is not None and existing is not planner:
        raise ValueError(f"a planner for {target}/{kind} is already registered")
    PLANNERS[(target, kind)] = planner


def register_container_runtime(target: str) -> None:
    """Plan the containers of another runtime's target exactly like Docker's (ContainerBaseline is runtime-neutral)."""
    register_planner(target, "container", _plan_container)
    register_planner(target, "ungoverned", _plan_ungoverned)


def plan(desired: DesiredResource, observed: ObservedResource, drift: tuple[FieldDrift, ...], *, dry_run: bool = False) -> Plan:
    """The plan for one resource; empty when there is no drift."""
    mode = effective_mode(desired, dry_run)
    if not drift:
        return Plan(key=desired.key, mode=mode, drift=(), actions=())
    planner = PLANNERS.get((desired.target, desired.kind))
    if planner is None:
        return Plan(
            key=desired.key, mode=mode, drift=drift, actions=(), blocked=f"no planner for {desired.target}/{desired.kind}"
        )
    actions, blocked = planner(desired, observed, {d.field: d for d in drift})
    return Plan(key=desired.key, mode=mode, drift=drift, actions=tuple(actions), blocked=blocked)
