"""The gate chain (pure): what may stop a plan between *plan* and *act*.

Pipeline position: plan → **gate** → act.  Each gate is one small module of
``driftd.safety`` and a pure decision over the plan, a read-only view of state
(:class:`SafetyView`) and the time it is given; the reconciler runs the chain in order and
the first gate that holds decides.  A verdict is ``allowed`` or ``held: <gate>: <reason>``,
recorded by the engine in state, metrics, logs, Events and reports.  A new gate is one
module plus one line in :func:`default_chain`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from driftd.models.baseline import Enforcement
from driftd.models.resources import Action, DesiredResource, Plan

REVERT = "revert"
RETIREMENT = "retirement"


def action_class(plan: Plan) -> str:
    """``retirement`` when the plan takes something out of service (container/pod retire, node retirement)."""
    for a in plan.actions:
        if a.action in (Action.RETIRE, Action.RETIRE_NODE) or (a.action is Action.EVICT and a.params.get("retire")):
            return RETIREMENT
    return REVERT


@dataclass(frozen=True)
class Verdict:
    """``gate`` is None when the plan may go ahead; ``until`` is when a hold may lift by itself."""

    gate: str | None = None
    reason: str = ""
    until: float | None = None
    retry: bool = False  # the hold lifts by itself soon (a budget): ask the queue to come back
    quarantine: bool = False  # the engine persists this hold (flap) until someone resets it
    mode: Enforcement | None = None  # set by the mode gate: drift left by choice, reported (not a safety hold)

    @property
    def allowed(self) -> bool:
        return self.gate is None

    def __str__(self) -> str:
        return "allowed" if self.gate is None else f"held: {self.gate}: {self.reason}"


ALLOWED = Verdict()


@dataclass(frozen=True)
class GateInput:
    """One plan about to be acted on, with the facts about its drift the gates need."""

    desired: DesiredResource
    plan: Plan
    now: float
    first_seen: float
    deadline: float
    baseline_hash: str = ""
    changed_at: float | None = None  # the change's own time, where known


class SafetyView(Protocol):
    """Read-only state the gates decide over (the engine's state store, or a dict in tests)."""

    def count_actions(self, kind: str, since: float, *, baseline: str | None = None) -> int:
        """Actions of class ``kind`` (revert/retirement) attempted since ``since`` on this node (one baseline's only)."""

    def count_key_actions(self, key: str, since: float) -> int:
        """Successful remediations of ``key`` since ``since``."""

    def oldest_held(self, gate: str, *, baseline: str | None = None) -> tuple[float, str] | None:
        """(first seen, key) of the oldest open drift currently held by ``gate``."""

    def guard(self, scope: str) -> dict[str, object] | None:
        """An unexpired durable mark (an open breaker, a flap quarantine)."""


class Gate(Protocol):
    name: str

    def check(self, inp: GateInput, view: SafetyView) -> Verdict: ...


def run_chain(gates: Sequence[Gate], inp: GateInput, view: SafetyView) -> Verdict:
    """The first hold in chain order, else allowed."""
    for g in gates:
        v = g.check(inp, view)
        if not v.allowed:
            return v
    return ALLOWED
