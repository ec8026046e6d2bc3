"""What a kind handler is (pure): the one place that knows a resource kind.

Pipeline position: the per-kind part of compile → observe → diff → plan → act.  A handler
never touches I/O itself: ``observe`` and ``apply`` are written against a *port*, a Protocol
the kind's adapter implements (``targets.host``'s ``HostIO`` over ``SafeRoot``, the Docker
target, the pods adapter), so what a kind means lives in one module and stays pure while
the adapter keeps only how to read and write.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, ClassVar, Generic, Protocol, TypeVar

from driftd.models.baseline import HostBaseline, Rule
from driftd.models.errors import TargetError
from driftd.models.resources import Action, DesiredResource, FieldDrift, ObservedResource, PlannedAction

PortT = TypeVar("PortT")
PlanResult = tuple[list[PlannedAction], str | None]


class DemoFS(Protocol):
    """What ``driftd demo`` lets a handler do to its demo host tree (parents are created)."""

    def write(self, path: str, data: bytes, mode: int) -> None: ...
    def append(self, path: str, data: bytes) -> None: ...
    def chmod(self, path: str, mode: int) -> None: ...
    def unlink(self, path: str) -> None: ...
    def mkdir(self, path: str, mode: int) -> None: ...


class Handler(Generic[PortT]):
    """One resource kind: how it is compiled and claimed (rule kinds), observed, planned and applied.

    ``target``/``kind`` are the registry key (``DesiredResource.target``/``.kind``).  A rule
    kind names its HostSpec model in ``rule``; a discovered kind (containers, pods) has none.
    ``steps`` are the actions ``apply`` carries out; ``overwrites`` those that destroy live
    bytes (the adapter snapshots before them).
    """

    target: ClassVar[str]
    kind: ClassVar[str]
    rule: ClassVar[type[Rule] | None] = None
    claim_field: ClassVar[str | None] = None
    order: ClassVar[int] = 50
    steps: ClassVar[frozenset[Action]] = frozenset()
    overwrites: ClassVar[frozenset[Action]] = frozenset()

    # ------------------------------------------------------------------ baselines (rule kinds)
    def claim(self, rule: Any) -> str:
        """What the rule governs, for lint's duplicate/conflict check (same claim + overlapping selectors collide)."""
        raise NotImplementedError(f"{self.kind} has no rules to claim")

    def compile(self, b: HostBaseline, rule: Any, sources: Mapping[tuple[str, str], bytes]) -> DesiredResource:
        raise NotImplementedError(f"{self.kind} is discovered, not compiled from a rule")

    def sort_key(self, rule: Any) -> tuple[int, int]:
        """Order of a rule's compiled resource (directories by depth before files, ...), known before compiling it."""
        return (self.order, 0)

    # ------------------------------------------------------------------ pipeline
    def observe(self, port: PortT, desired: DesiredResource) -> ObservedResource:
        raise TargetError(f"the {desired.target} target cannot observe a {desired.kind!r} resource", transient=False)

    def plan(self, desired: DesiredResource, observed: ObservedResource, drift: dict[str, FieldDrift]) -> PlanResult:
        return [], None

    def check(self, desired: DesiredResource, actions: Iterable[PlannedAction]) -> None:
        """Refuse a plan with a step this kind cannot carry out, before anything is touched."""
        for step in actions:
            if step.action not in self.steps:
                raise TargetError(f"the {desired.target} target cannot {step.action} a {desired.kind}", transient=False)

    def apply(self, port: PortT, desired: DesiredResource, observed: ObservedResource, step: PlannedAction) -> tuple[str, ...]:
        """Carry out one step through the port; returns ids of snapshots it took (usually none)."""
        raise TargetError(f"the {desired.target} target cannot {step.action} a {desired.kind}", transient=False)

    # ------------------------------------------------------------------ driftd demo
    def seed(self, fs: DemoFS, desired: DesiredResource) -> None:
        """Make the resource exist as its baseline wants it (the demo's compliant tree)."""

    def inject(self, fs: DemoFS, desired: DesiredResource, done: set[str]) -> str | None:
        """Inject one drift of a variety not in ``done`` (adding it); says what was done."""
        return None


class PlanOnly(Handler[Any]):
    """A handler made of a plan function alone (tests, and adapters that observe and act themselves)."""

    def __init__(self, planner: Any) -> None:
        self.planner = planner

    def plan(self, desired: DesiredResource, observed: ObservedResource, drift: dict[str, FieldDrift]) -> PlanResult:
        result: PlanResult = self.planner(desired, observed, drift)
        return result
