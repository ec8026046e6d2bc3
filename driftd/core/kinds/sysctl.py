"""Kind ``sysctl`` (pure): a kernel parameter under ``<host-root>/proc/sys``.

Pipeline position: compile (``spec.sysctls``), claim, observe, plan and apply of sysctls;
I/O through ``HostPort``.  A key the kernel does not have is blocked, never created.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import ClassVar

from driftd.core.kinds._host import host_resource
from driftd.core.kinds.base import DemoFS, Handler, PlanResult
from driftd.core.kinds.ports import HostPort
from driftd.models.baseline import HostBaseline, Rule, Sysctl
from driftd.models.keys import ResourceKey, sysctl_path
from driftd.models.resources import Action, DesiredResource, FieldDrift, ObservedResource, PlannedAction


class SysctlHandler(Handler[HostPort]):
    target = "host"
    kind = "sysctl"
    steps = frozenset({Action.WRITE_SYSCTL})
    rule: ClassVar[type[Rule] | None] = Sysctl
    claim_field = "key"
    order = 2

    def claim(self, rule: Sysctl) -> str:
        return f"sysctl {rule.key}"

    def compile(self, b: HostBaseline, rule: Sysctl, sources: Mapping[tuple[str, str], bytes]) -> DesiredResource:
        return host_resource(b, ResourceKey.host("sysctl", rule.key), "sysctl", rule.key, {"value": rule.value})

    def observe(self, port: HostPort, desired: DesiredResource) -> ObservedResource:
        raw = port.read_optional(sysctl_path(desired.address), 1 << 16)
        value = None if raw is None else " ".join(raw.decode("utf-8", "replace").split())
        return ObservedResource(key=desired.key, actual={"value": value})

    def plan(self, desired: DesiredResource, observed: ObservedResource, drift: dict[str, FieldDrift]) -> PlanResult:
        if observed.actual.get("value") is None:
            return [], "sysctl key does not exist on this kernel"
        step = PlannedAction(action=Action.WRITE_SYSCTL, reason="value differs", params={"value": desired.expected["value"]})
        return [step], None

    def apply(self, port: HostPort, desired: DesiredResource, observed: ObservedResource, step: PlannedAction) -> tuple[str, ...]:
        if step.action is not Action.WRITE_SYSCTL:
            return super().apply(port, desired, observed, step)
        port.write_in_place(sysctl_path(desired.address), (step.params["value"] + "\n").encode())
        return ()

    def seed(self, fs: DemoFS, desired: DesiredResource) -> None:
        fs.write(sysctl_path(desired.address), (desired.expected["value"] + "\n").encode(), 0o644)

    def inject(self, fs: DemoFS, desired: DesiredResource, done: set[str]) -> str | None:
        if "sysctl" in done:
            return None
        wrong = "1" if desired.expected["value"] == "0" else "0"
        fs.write(sysctl_path(desired.address), (wrong + "\n").encode(), 0o644)
        done.add("sysctl")
        return f"sysctl {desired.address} = {wrong} (expected {desired.expected['value']})"


HANDLERS = (SysctlHandler(),)
