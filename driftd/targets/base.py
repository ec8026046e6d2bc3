"""The target Protocol: what every adapter (host, Docker, Kubernetes) implements.

Pipeline position: the effectful ends of observe → diff → plan → act.  The engine only
ever talks to targets through this Protocol; each target module is the only place that
imports its client library.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

from driftd.baselines.loader import BaselineSet
from driftd.models.resources import ActResult, DesiredResource, ObservedResource, Plan


@dataclass(frozen=True)
class NodeInfo:
    """Identity of the machine driftd runs on, used by baseline selectors."""

    name: str
    labels: dict[str, str] = field(default_factory=dict)


class TargetError(Exception):
    """An observe or act failure.  ``transient`` failures are retried with backoff."""

    def __init__(self, message: str, *, transient: bool = True) -> None:
        super().__init__(message)
        self.transient = transient


@runtime_checkable
class Target(Protocol):
    name: str
    capabilities: frozenset[str]

    def desired(self, baselines: BaselineSet, node: NodeInfo) -> list[DesiredResource]:
        """Resources this target governs on this node, fully resolved (ids, digests)."""

    def begin_pass(self, *, full: bool) -> None:
        """Start a scan pass; ``full`` drops caches that let unchanged resources skip work."""

    def observe(self, desired: DesiredResource) -> ObservedResource:
        """Read the live state of one resource (raises TargetError)."""

    def apply(self, desired: DesiredResource, observed: ObservedResource, plan: Plan) -> ActResult:
        """Carry out ``plan``; snapshot drifted state before overwriting (raises TargetError)."""
