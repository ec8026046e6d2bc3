"""Kind ``directory`` (pure): a host directory that must exist with a mode, owner and group.

Pipeline position: compile (``spec.directories``), claim, observe, plan and apply of host
directories; I/O through ``HostPort``.  A directory is created, never removed or replaced.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import ClassVar

from driftd.core.kinds._host import (
    apply_attrs,
    attr_actions,
    attrs,
    attrs_params,
    host_resource,
    id_of,
    mode_of,
    observe_path,
    unresolved,
)
from driftd.core.kinds.base import DemoFS, Handler, PlanResult
from driftd.core.kinds.ports import HostPort
from driftd.models.baseline import HostBaseline, ManagedDirectory, Rule
from driftd.models.keys import ResourceKey
from driftd.models.resources import Action, DesiredResource, FieldDrift, ObservedResource, PlannedAction


class DirectoryHandler(Handler[HostPort]):
    target = "host"
    kind = "directory"
    steps = frozenset({Action.MKDIR, Action.CHMOD, Action.CHOWN})
    rule: ClassVar[type[Rule] | None] = ManagedDirectory
    claim_field = "path"
    order = 0

    def claim(self, rule: ManagedDirectory) -> str:
        return f"path {rule.path}"  # the same claim as a file: a path is a file or a directory

    def compile(self, b: HostBaseline, rule: ManagedDirectory, sources: Mapping[tuple[str, str], bytes]) -> DesiredResource:
        expected: dict[str, object] = {"present": True, "type": "directory", **attrs(rule)}
        return host_resource(b, ResourceKey.host("directory", rule.path), "directory", rule.path, expected)

    def sort_key(self, rule: ManagedDirectory) -> tuple[int, int]:
        return (self.order, rule.path.count("/"))  # parents before children (a directory's address is its path)

    def observe(self, port: HostPort, desired: DesiredResource) -> ObservedResource:
        return observe_path(port, desired)

    def plan(self, desired: DesiredResource, observed: ObservedResource, drift: dict[str, FieldDrift]) -> PlanResult:
        if (blocked := unresolved(desired)) is not None:
            return [], blocked
        if "type" in drift:
            return [], f"a {observed.actual.get('type')} stands where a directory belongs; not replacing it"
        if "present" in drift:
            return [PlannedAction(action=Action.MKDIR, reason="missing", params=attrs_params(desired, observed))], None
        return attr_actions(drift, desired), None

    def apply(self, port: HostPort, desired: DesiredResource, observed: ObservedResource, step: PlannedAction) -> tuple[str, ...]:
        if step.action is Action.MKDIR:
            p = step.params
            port.mkdir(desired.address, mode_of(p.get("mode")), id_of(p.get("owner")), id_of(p.get("group")))
        elif not apply_attrs(port, desired, step):
            return super().apply(port, desired, observed, step)
        return ()

    def seed(self, fs: DemoFS, desired: DesiredResource) -> None:
        fs.mkdir(desired.address, int(desired.expected.get("mode", "0755"), 8))

    def inject(self, fs: DemoFS, desired: DesiredResource, done: set[str]) -> str | None:
        if "dir" in done:
            return None
        fs.chmod(desired.address, 0o777)
        done.add("dir")
        return f"{desired.address}/: chmod 0777 (directory mode drift)"


HANDLERS = (DirectoryHandler(),)
