"""Kind ``kernel`` (pure): the running kernel release must be at least a minimum.

Pipeline position: compile (``spec.kernel``), claim, observe and plan of the kernel rule;
I/O through ``HostPort``.  A kernel cannot be reverted: the plan retires the node (the
engine's node retirer carries that out) or only reports.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import ClassVar

from driftd.core.kinds._host import host_resource
from driftd.core.kinds.base import Handler, PlanResult
from driftd.core.kinds.ports import HostPort
from driftd.models.baseline import HostBaseline, KernelRule, Rule
from driftd.models.keys import ResourceKey
from driftd.models.resources import Action, DesiredResource, FieldDrift, HostPayload, ObservedResource, PlannedAction

OSRELEASE = "/proc/sys/kernel/osrelease"


class KernelHandler(Handler[HostPort]):
    target = "host"
    kind = "kernel"
    rule: ClassVar[type[Rule] | None] = KernelRule
    order = 3

    def claim(self, rule: KernelRule) -> str:
        return "kernel rule"  # one per node: any two kernel rules collide

    def compile(self, b: HostBaseline, rule: KernelRule, sources: Mapping[tuple[str, str], bytes]) -> DesiredResource:
        return host_resource(
            b, ResourceKey.host("kernel", "release"), "kernel", "kernel release",
            {"release": {"$version_at_least": rule.minimum_release}},
            payload=HostPayload(retire_on_failure=b.spec.retire_on_failure, kernel_action=rule.action),
        )

    def observe(self, port: HostPort, desired: DesiredResource) -> ObservedResource:
        raw = port.read(OSRELEASE, 4096)
        return ObservedResource(key=desired.key, actual={"release": raw.decode("utf-8", "replace").strip()})

    def plan(self, desired: DesiredResource, observed: ObservedResource, drift: dict[str, FieldDrift]) -> PlanResult:
        if isinstance(desired.payload, HostPayload) and desired.payload.kernel_action == "retire":
            release = observed.actual.get("release")
            return [PlannedAction(action=Action.RETIRE_NODE, reason=f"kernel {release} is out of patch")], None
        return [], None


HANDLERS = (KernelHandler(),)
