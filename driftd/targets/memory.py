"""An in-memory target: resources are dicts of fields in a Python dict (targets).

Pipeline position: an adapter at the effectful ends of observe → diff → plan → act, like
``host``, ``docker`` and ``kubernetes``, but its "world" is ``{name: {field: value}}`` held
in this object.  It exists for tests (the contract suite runs every behaviour over it and
over the real adapters; users test their own pipelines with it through
:mod:`driftd.testing`) and for pure pipeline runs without any I/O.

Like Docker containers and pods, memory resources come and go: they are *discovered* every
scan (each existing resource that has desired fields is governed) and *resolved* by key for
event-driven reconciles; a resource that was deleted is gone.  Desired state is given at
construction, as a mapping ``{name: {field: value}}`` or as a function of the resource name
(returning None for an ungoverned resource).  Values may be matchers (``{"$in": [...]}``):
drift is reported, but no value can be set, so such a plan is blocked.

Tests change the world through :meth:`MemoryTarget.set` and :meth:`MemoryTarget.delete`
(each pushes the key to a running :meth:`MemoryTarget.watch`, as a Docker event would), and
take the target down with ``target.down = True``: every call then raises
:class:`~driftd.targets.base.TargetError` like an unreachable engine.  Every write the
adapter makes is recorded in :attr:`MemoryTarget.writes`, the drifted values it overwrote
in :attr:`MemoryTarget.snapshots`.

Keys are ``memory:<name>`` (``<target name>:<name>`` for a target given another name).
"""

from __future__ import annotations

import copy
import hashlib
import json
import queue
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from driftd.baselines.loader import BaselineSet
from driftd.core.matchers import is_matcher
from driftd.core.plan import register_planner
from driftd.models.baseline import Enforcement
from driftd.models.resources import (
    Action,
    ActResult,
    DesiredResource,
    FieldDrift,
    ObservedResource,
    Plan,
    PlannedAction,
)
from driftd.targets.base import NodeInfo, Reachability, ResourceGoneError, TargetError

KIND = "resource"
SET = Action.WRITE_SYSCTL  # "set one field to a value": the closest existing action
ExpectedFn = Callable[[str], Mapping[str, Any] | None]


def plan_memory(
    desired: DesiredResource, observed: ObservedResource, drift: dict[str, FieldDrift]
) -> tuple[list[PlannedAction], str | None]:
    """One "set" action per drifted field, in field order; blocked when a field is governed by a matcher."""
    matched = sorted(f for f in drift if is_matcher(desired.expected.get(f)))
    if matched:
        return [], f"{', '.join(matched)} governed by a matcher: no single value to set"
    return [
        PlannedAction(action=SET, reason=f"{f} differs", params={"field": f, "value": desired.expected[f]})
        for f in sorted(drift)
    ], None


register_planner("memory", KIND, plan_memory)


@dataclass(frozen=True)
class Write:
    """One field the adapter set: ``(key, field, value)``."""

    key: str
    field: str
    value: Any


class MemoryTarget:
    """A Target and EventSource over ``{name: {field: value}}`` held in memory."""


    def __init__(
        self,
        resources: Mapping[str, Mapping[str, Any]] | None = None,
        *,
        expected: Mapping[str, Mapping[str, Any]] | ExpectedFn | None = None,
        name: str = "memory",
        baseline: str = "memory",
        enforcement: Enforcement = Enforcement.ENFORCE,
        window: timedelta = timedelta(minutes=30),
        sensitive: Iterable[str] = (),
    ) -> None:
        """``resources`` is the initial world; ``expected`` the desired fields per resource name."""
        self.name = name
        self.key_prefix = name
        self.baseline = baseline
        self.enforcement = enforcement
        self.window = window
        self.sensitive = frozenset(sensitive)
        self.down = False
        self.writes: list[Write] = []
        self.snapshots: dict[str, dict[str, Any]] = {}
        self.calls: dict[str, int] = {"discover": 0, "resolve": 0, "observe": 0, "apply": 0}
        # set by the engine: records snapshot ids durably in state before anything is overwritten
        self.journal: Callable[[str, tuple[str, ...]], None] | None = None
        self.reach = Reachability(name)
        self._expected = expected if expected is not None else {}
        self._world: dict[str, dict[str, Any]] = {k: dict(v) for k, v in (resources or {}).items()}
        self._lock = threading.Lock()
        self._changes: queue.Queue[str] = queue.Queue()
        self._closed = threading.Event()
        register_planner(name, KIND, plan_memory)  # the same function: a no-op for "memory"

    # ------------------------------------------------------------------ the world (tests)
    def key(self, name: str) -> str:
        """The queue key of resource ``name``."""
        return f"{self.key_prefix}:{name}"

    def set(self, name: str, **fields: Any) -> None:
        """Create resource ``name`` or change some of its fields (an outside change: a drift)."""
        with self._lock:
            self._world.setdefault(name, {}).update(copy.deepcopy(fields))
        self._changes.put(self.key(name))

    def delete(self, name: str) -> None:
        """Remove resource ``name`` (it is gone)."""
        with self._lock:
            self._world.pop(name, None)
        self._changes.put(self.key(name))

    def get(self, name: str) -> dict[str, Any] | None:
        """A copy of the fields of resource ``name``, or None."""
        with self._lock:
            fields = self._world.get(name)
            return copy.deepcopy(fields) if fields is not None else None

    def world(self) -> dict[str, dict[str, Any]]:
        """A deep copy of every resource (compare two of them to prove nothing changed)."""
        with self._lock:
            return copy.deepcopy(self._world)

    # ------------------------------------------------------------------ Target
    def _check_up(self) -> None:
        if self.down:
            self.reach.set(False, "down")
            raise TargetError(f"{self.name} target unreachable (down)")
        self.reach.set(True)

    def _expected_of(self, name: str) -> Mapping[str, Any] | None:
        exp = self._expected(name) if callable(self._expected) else self._expected.get(name)
        return exp or None

    def _desired(self, name: str) -> DesiredResource | None:
        exp = self._expected_of(name)
        if exp is None:
            return None
        return DesiredResource(
            key=self.key(name),
            target=self.name,
            kind=KIND,
            address=name,
            baseline=self.baseline,
            enforcement=self.enforcement,
            window=self.window,
            expected=copy.deepcopy(dict(exp)),
            sensitive=self.sensitive,
        )

    def desired(self, baselines: BaselineSet, node: NodeInfo) -> list[DesiredResource]:
        return []  # dynamic: every resource is discovered per scan

    def discover(self) -> list[DesiredResource]:
        self.calls["discover"] += 1
        self._check_up()
        with self._lock:
            names = sorted(self._world)
        return [d for d in map(self._desired, names) if d is not None]

    def resolve(self, key: str) -> DesiredResource | None:
        self.calls["resolve"] += 1
        self._check_up()
        name = key.removeprefix(f"{self.key_prefix}:")
        with self._lock:
            exists = name in self._world
        return self._desired(name) if exists else None

    def begin_pass(self, *, full: bool) -> None:
        return None

    def observe(self, desired: DesiredResource) -> ObservedResource:
        self.calls["observe"] += 1
        self._check_up()
        fields = self.get(desired.address)
        if fields is None:
            raise ResourceGoneError(f"{desired.address} no longer exists")
        return ObservedResource(key=desired.key, actual=fields)

    def apply(self, desired: DesiredResource, observed: ObservedResource, plan: Plan) -> ActResult:
        self.calls["apply"] += 1
        self._check_up()
        steps = list(plan.actions)
        for step in steps:
            if step.action is not SET or "field" not in step.params:
                raise TargetError(f"{self.name} target cannot {step.action}", transient=False)
        with self._lock:
            current = self._world.get(desired.address)
            if current is None:
                raise ResourceGoneError(f"{desired.address} no longer exists")
            before = {s.params["field"]: copy.deepcopy(current.get(s.params["field"])) for s in steps}
        sid = "memory:" + hashlib.sha256(
            json.dumps([desired.key, before], sort_keys=True, default=str).encode()
        ).hexdigest()[:32]
        self.snapshots[sid] = before
        if self.journal is not None:
            self.journal(desired.key, (sid,))  # raises TargetError: then nothing is overwritten
        with self._lock:
            current = self._world.get(desired.address)
            if current is None:
                raise ResourceGoneError(f"{desired.address} vanished while acting")
            for s in steps:
                current[s.params["field"]] = copy.deepcopy(s.params["value"])
                self.writes.append(Write(desired.key, s.params["field"], s.params["value"]))
        return ActResult(key=desired.key, applied=tuple(s.action for s in steps), snapshots=(sid,))

    # ------------------------------------------------------------------ EventSource
    def watch(self, on_key: Callable[[str], None], stop: threading.Event) -> None:
        """Deliver the key of every :meth:`set`/:meth:`delete` (also those made before the watch) until stopped."""
        self._closed.clear()
        while not stop.is_set() and not self._closed.is_set():
            try:
                key = self._changes.get(timeout=0.05)
            except queue.Empty:
                continue
            on_key(key)

    def close(self) -> None:
        """Unblock :meth:`watch` (within one 50 ms poll)."""
        self._closed.set()


__all__ = ["KIND", "SET", "MemoryTarget", "Write", "plan_memory"]
