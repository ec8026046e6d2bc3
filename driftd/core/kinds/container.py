"""Kinds ``container`` and ``ungoverned`` (pure): containers held to a ContainerBaseline.

Pipeline position: observe, plan and apply of the containers of a runtime; I/O through
``ContainerPort``.  Compiling is per scan from a listing (``core.compile_container``) and
the runtime vocabulary (normalise, recreate body) is ``core.container_engine``; both are
runtime-neutral, so a second runtime registers these handlers under its target's name
(``register_container_runtime``) and implements the port.
"""

from __future__ import annotations

from driftd.core.compile_container import plan_actions
from driftd.core.container_engine import change_time, leaf_changes, mount_points, normalize
from driftd.core.kinds.base import Handler, PlanResult
from driftd.core.kinds.ports import ContainerPort
from driftd.models.container import RuleAction
from driftd.models.resources import (
    Action,
    ContainerPayload,
    DesiredResource,
    FieldDrift,
    ObservedResource,
    PlannedAction,
    UngovernedPayload,
    payload_of,
)


class ContainerHandler(Handler[ContainerPort]):
    target = "docker"
    kind = "container"
    steps = frozenset({Action.RECREATE, Action.RETIRE})

    def observe(self, port: ContainerPort, desired: DesiredResource) -> ObservedResource:
        ins = port.inspect(desired.address)
        fs = None
        if "fsChanges" in desired.expected:
            fs = leaf_changes(port.changes(ins["Id"]), mount_points(ins))
        env_rule = desired.expected.get("env")
        env_keys = list(env_rule["$contains"]) if isinstance(env_rule, dict) else []
        return ObservedResource(key=desired.key, actual=normalize(ins, fs, env_keys),
                                changed_at=change_time(ins, port.event_time(desired.address)))

    def plan(self, desired: DesiredResource, observed: ObservedResource, drift: dict[str, FieldDrift]) -> PlanResult:
        pl = payload_of(desired, ContainerPayload)
        chosen = plan_actions(drift, pl.actions)
        if chosen is RuleAction.RETIRE:
            rules = ", ".join(sorted(f for f in drift if pl.actions.get(f) == "retire"))
            return [PlannedAction(action=Action.RETIRE, reason=f"rules with action retire broken: {rules}")], None
        if chosen is RuleAction.REVERT:
            if "nonRoot" in drift and not pl.runtime.get("user"):
                return [], "runs as root and the baseline names no user to recreate it with (set runtime.user)"
            if not pl.approved:
                return [], "no approved image is present on this host; cannot recreate"
            current = observed.actual.get("image")
            image = current if current in pl.approved else pl.approved[0]
            reason = f"drifted: {', '.join(sorted(drift))}"
            return [PlannedAction(action=Action.RECREATE, reason=reason, params={"image": image})], None
        return [], None  # report-only rules

    def apply(self, port: ContainerPort, desired: DesiredResource, observed: ObservedResource,
              step: PlannedAction) -> tuple[str, ...]:
        if step.action is Action.RETIRE:
            port.retire(desired.address)
        elif step.action is Action.RECREATE:
            port.recreate(desired.address, payload_of(desired, ContainerPayload).runtime, step.params["image"])
        else:
            return super().apply(port, desired, observed, step)
        return ()


class UngovernedHandler(Handler[ContainerPort]):
    """A container no baseline governs: exists, and is retired only under ``ungoverned: retire``."""

    target = "docker"
    kind = "ungoverned"
    steps = frozenset({Action.RETIRE})

    def observe(self, port: ContainerPort, desired: DesiredResource) -> ObservedResource:
        port.inspect(desired.address)  # gone is gone
        return ObservedResource(key=desired.key, actual={"governed": False})

    def plan(self, desired: DesiredResource, observed: ObservedResource, drift: dict[str, FieldDrift]) -> PlanResult:
        if payload_of(desired, UngovernedPayload).policy == "retire":
            return [PlannedAction(action=Action.RETIRE, reason="no baseline governs this container")], None
        return [], None

    def apply(self, port: ContainerPort, desired: DesiredResource, observed: ObservedResource,
              step: PlannedAction) -> tuple[str, ...]:
        if step.action is not Action.RETIRE:
            return super().apply(port, desired, observed, step)
        port.retire(desired.address)
        return ()


HANDLERS = (ContainerHandler(), UngovernedHandler())
