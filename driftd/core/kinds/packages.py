"""Kind ``package`` (pure): an installed package held to a minimum, a range, or absence.

Pipeline position: compile (``spec.packages``), claim, observe and plan of package rules; I/O
through ``HostPort.packages()`` (the host's own package database, read by ``targets/packages.py``).
The versions compare under the database's format in ``diff`` (the ``$package`` matcher).  A
package cannot be reverted by driftd: the plan reports, retires the node (the engine's retirer),
or runs the operator's patch command (the engine's ``patch_hook``); driftd never invents a
package-manager call.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

from driftd.core.kinds._host import host_resource
from driftd.core.kinds.base import DemoFS, Handler, PlanResult
from driftd.core.kinds.ports import HostPort
from driftd.core.versions import FORMATS
from driftd.models.baseline import HostBaseline, PackageRule, Rule
from driftd.models.keys import ResourceKey
from driftd.models.resources import Action, DesiredResource, FieldDrift, HostPayload, ObservedResource, PlannedAction
from driftd.models.wording import package_requirement_text

DEMO_DB = "/var/lib/dpkg/status"


def requirement(rule: PackageRule) -> dict[str, Any]:
    """The ``$package`` matcher's argument: one of minimum / versions / absent, and the reason."""
    out: dict[str, Any] = {"absent": True} if rule.absent else (
        {"minimum": rule.minimum} if rule.minimum is not None else {"versions": rule.versions})
    if rule.reason:
        out["reason"] = rule.reason
    return out


class PackageHandler(Handler[HostPort]):
    target = "host"
    kind = "package"
    rule: ClassVar[type[Rule] | None] = PackageRule
    claim_field = "name"
    order = 4

    def claim(self, rule: PackageRule) -> str:
        return f"package {rule.name}"

    def compile(self, b: HostBaseline, rule: PackageRule, sources: Mapping[tuple[str, str], bytes]) -> DesiredResource:
        return host_resource(
            b, ResourceKey.host("package", rule.name), "package", rule.name,
            {"format": {"$in": list(FORMATS)}, "installed": {"$package": requirement(rule)}},
            payload=HostPayload(retire_on_failure=b.spec.retire_on_failure, package_action=rule.action,
                                severity=rule.severity.value),
        )

    def observe(self, port: HostPort, desired: DesiredResource) -> ObservedResource:
        db = port.packages()
        actual: dict[str, Any] = {"format": db.format, "installed": db.versions.get(desired.address), "database": db.database}
        if db.problem:
            actual["problem"] = db.problem
        return ObservedResource(key=desired.key, actual=actual)

    def plan(self, desired: DesiredResource, observed: ObservedResource, drift: dict[str, FieldDrift]) -> PlanResult:
        act = observed.actual
        if act.get("format") is None:
            return [], str(act.get("problem") or "no package database under the host root")
        unreadable = [c for f in drift.values() for c in f.changes if c.startswith("unreadable:")]
        if unreadable:
            return [], f"cannot judge package {desired.address}: {unreadable[0].removeprefix('unreadable:')}"
        payload = desired.payload if isinstance(desired.payload, HostPayload) else HostPayload()
        req = desired.expected["installed"]["$package"]
        why = (f"package {desired.address} {act.get('installed')} is installed, must be {package_requirement_text(req)}"
               if req.get("absent") else
               f"package {desired.address} {act.get('installed')} is out of patch (needs {package_requirement_text(req)})")
        if payload.package_action == "retire":
            return [PlannedAction(action=Action.RETIRE_NODE, reason=why)], None
        if payload.package_action == "hook":
            params = {"package": desired.address, "installed": act.get("installed"), "required": package_requirement_text(req)}
            return [PlannedAction(action=Action.PATCH_HOOK, reason=why, params=params)], None
        return [], None

    # ------------------------------------------------------------------ driftd demo (a dpkg status file)
    def seed(self, fs: DemoFS, desired: DesiredResource) -> None:
        req = desired.expected["installed"]["$package"]
        if req.get("minimum") is not None:
            fs.append(DEMO_DB, _stanza(desired.address, str(req["minimum"])))

    # no inject: the demo shows drift driftd reverts, and a package is never reverted by driftd (report, retire or
    # the operator's hook); the seeded status file keeps the demo's packages rules clean


def _stanza(name: str, version: str) -> bytes:
    return f"Package: {name}\nStatus: install ok installed\nVersion: {version}\nArchitecture: all\n\n".encode()


HANDLERS = (PackageHandler(),)
