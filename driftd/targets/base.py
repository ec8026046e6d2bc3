"""The target Protocol: what every adapter (host, Docker, Kubernetes) implements.

Pipeline position: the effectful ends of observe → diff → plan → act.  The engine only
ever talks to targets through this Protocol; each target module is the only place that
imports its client library.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from driftd.baselines.loader import BaselineSet
from driftd.models.errors import ResourceGoneError as ResourceGoneError
from driftd.models.errors import TargetError as TargetError
from driftd.models.resources import ActResult, DesiredResource, ObservedResource, Plan, ResourceResult
from driftd.safety.breakglass import AnnotatedOverride


@dataclass(frozen=True)
class NodeInfo:
    """Identity of the machine driftd runs on, used by baseline selectors."""

    name: str
    labels: dict[str, str] = field(default_factory=dict)


@runtime_checkable
class Target(Protocol):
    name: str

    def desired(self, baselines: BaselineSet, node: NodeInfo) -> Iterable[DesiredResource]:
        """Resources this target governs on this node, fully resolved (ids, digests); may be a stream."""

    def discover(self) -> list[DesiredResource]:
        """Resources that come and go (containers, pods), listed once per scan; [] for static targets."""

    def resolve(self, key: str) -> DesiredResource | None:
        """Desired state of one dynamic resource by key (None when it no longer exists)."""

    def begin_pass(self, *, full: bool) -> None:
        """Start a scan pass; ``full`` drops caches that let unchanged resources skip work."""

    def observe(self, desired: DesiredResource) -> ObservedResource:
        """Read the live state of one resource (raises TargetError)."""

    def apply(self, desired: DesiredResource, observed: ObservedResource, plan: Plan) -> ActResult:
        """Carry out ``plan``; snapshot drifted state before overwriting (raises TargetError)."""


@runtime_checkable
class EventSource(Protocol):
    """A target that can push keys as soon as something changes (Docker events, pod watch)."""

    def watch(self, on_key: Callable[[str], None], stop: threading.Event) -> None:
        """Call ``on_key`` for every changed resource until ``stop`` is set; reconnect on errors."""

    def close(self) -> None:
        """Unblock ``watch`` (called on shutdown)."""


@runtime_checkable
class Notifier(Protocol):
    """Tells people through the platform's own channel (Kubernetes Events)."""

    def notify(self, reason: str, desired: DesiredResource, message: str, *, warning: bool = True) -> None: ...


@runtime_checkable
class Reporter(Protocol):
    """Publishes the results of a full scan (one PolicyReport per node)."""

    def publish_report(self, results: Sequence[ResourceResult], *, baseline_set: str = "") -> None: ...


@runtime_checkable
class NodeRetirer(Protocol):
    """Takes this node out of service when a host rule with action retire fails."""

    def retire_node(self, reason: str) -> dict[str, Any]: ...


class Patcher(Protocol):
    """Runs the operator's patch command for a package out of patch (``patch_hook``); returns its output."""

    def patch(self, reason: str, params: dict[str, Any]) -> str: ...


@runtime_checkable
class WriteTracker(Protocol):
    """A target that can tell, after ``apply``, whether another writer changed the resource since its write."""

    def changed_by_another_writer(self, desired: DesiredResource) -> bool:
        """True when the resource no longer holds what this target wrote (replaced or rewritten since)."""


@runtime_checkable
class OverrideSource(Protocol):
    """Break-glass overrides asked for by the platform's objects (pod and node annotations)."""

    def override_requests(self) -> list[AnnotatedOverride]:
        """What the objects this adapter last saw ask for (cheap: no API call per reconcile)."""


@runtime_checkable
class GuardStore(Protocol):
    """Durable guards an adapter consults before acting (kept in the engine's state store).

    A guard is a named scope (``"evict-owner:<ns>/<Kind>/<name>"``) that holds until a wall-clock
    time, with a small JSON-able payload; it survives restarts, so "do not do X again before T"
    is not forgotten when the agent is rolled out.
    """

    def get_guard(self, scope: str, now: float) -> dict[str, Any] | None:
        """The payload of an unexpired guard, or None."""

    def set_guard(self, scope: str, *, until: float, data: dict[str, Any], now: float) -> None:
        """Create or replace a guard holding until ``until`` (wall-clock seconds)."""

    def clear_guard(self, scope: str) -> None:
        """Drop a guard (the resource or the baseline changed)."""


class Reachability:
    """Whether a target's endpoint answers; logs ``target.down``/``target.up`` once per change.

    ``on_change(up)`` (settable after construction; the composition root points it at the
    ``driftd_target_up`` gauge) is called on every change, from whichever thread saw it (an
    event stream dropping, an API call failing), so the gauge does not wait for a scan.
    """

    def __init__(self, target: str, *, on_change: Callable[[bool], None] | None = None, **context: Any) -> None:
        from driftd.observability.logging import get_logger

        self.target = target
        self.context = context
        self.up: bool | None = None
        self.on_change = on_change
        self._log = get_logger()

    def set(self, up: bool, error: str = "") -> None:
        from driftd.observability.logging import Event

        changed = self.up is not up
        if changed:
            if up:
                self._log.info(Event.TARGET_UP, target=self.target, **self.context)
            else:
                self._log.error(Event.TARGET_DOWN, target=self.target, error=error, **self.context)
        self.up = up
        if changed and self.on_change is not None:
            try:
                self.on_change(up)
            except Exception as e:  # a metrics hook must never break the caller
                self._log.warning(Event.TARGET_DOWN if not up else Event.TARGET_UP, target=self.target,
                                  note=f"reachability hook failed: {e}")
