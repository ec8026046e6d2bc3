"""Plan (pure): turn drift into the actions that restore the baseline.

Pipeline position: diff → **plan** → act.  Every plan is computed, whatever the
enforcement mode; only the act stage looks at ``Plan.mode``.  What to do is the kind
handler's business (``core.kinds``); a drift with no safe remedy (a directory where a file
belongs, an unknown user) yields a *blocked* plan that is reported, never guessed at.
"""

from __future__ import annotations

from driftd.core import kinds
from driftd.core.kinds import register_planner
from driftd.core.kinds.container import ContainerHandler, UngovernedHandler
from driftd.models.baseline import Enforcement
from driftd.models.resources import DesiredResource, FieldDrift, ObservedResource, Plan

__all__ = ["effective_mode", "plan", "register_container_runtime", "register_planner"]


def effective_mode(desired: DesiredResource, dry_run: bool) -> Enforcement:
    """The global dry-run overrides every baseline's own enforcement mode."""
    return Enforcement.DRYRUN if dry_run else desired.enforcement


def register_container_runtime(target: str) -> None:
    """Plan, observe and act on another runtime's containers exactly like Docker's (ContainerBaseline is runtime-neutral)."""
    for h in (kinds.handler_for("docker", ContainerHandler.kind), kinds.handler_for("docker", UngovernedHandler.kind)):
        kinds.register(h, target=target)


def plan(desired: DesiredResource, observed: ObservedResource, drift: tuple[FieldDrift, ...], *, dry_run: bool = False) -> Plan:
    """The plan for one resource; empty when there is no drift, blocked when no handler knows its kind."""
    mode = effective_mode(desired, dry_run)
    if not drift:
        return Plan(key=desired.key, mode=mode, drift=(), actions=())
    handler = kinds.find(desired.target, desired.kind)
    if handler is None:
        return Plan(
            key=desired.key, mode=mode, drift=drift, actions=(), blocked=f"no planner for {desired.target}/{desired.kind}"
        )
    actions, blocked = handler.plan(desired, observed, {d.field: d for d in drift})
    return Plan(key=desired.key, mode=mode, drift=drift, actions=tuple(actions), blocked=blocked)
