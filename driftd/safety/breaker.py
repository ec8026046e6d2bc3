"""Gate ``breaker`` (pure): mass drift of one baseline stops acting for it on this node.

Pipeline position: :func:`evaluate` runs at the end of every scan, before any key it found
is enqueued; the gate holds every plan of a baseline whose breaker is open.  A breaker
opens when more than ``share`` of a baseline's resources drift at once *and* at least
``min_resources`` of them (a one-file baseline on a fresh host is no mass drift) — which
is what a bad baseline change looks like — and closes when a full scan finds the share
below the threshold again, or on ``driftd breaker reset``.  Retirements have their own,
stricter breaker.  Reporting never stops.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from driftd.safety.gates import ALLOWED, RETIREMENT, REVERT, GateInput, SafetyView, Verdict, action_class


def scope(kind: str, baseline: str) -> str:
    return f"breaker:{kind}:{baseline}"


@dataclass(frozen=True)
class Threshold:
    share: float
    min_resources: int

    def trips(self, total: int, drifting: int) -> bool:
        return total > 0 and drifting >= self.min_resources and drifting / total > self.share


@dataclass(frozen=True)
class Change:
    """A breaker that opens (``reason`` set) or closes (``reason`` None) after this scan."""

    kind: str
    baseline: str
    reason: str | None


def evaluate(counts: Mapping[str, Mapping[str, tuple[int, int]]], is_open: Mapping[tuple[str, str], bool],
             thresholds: Mapping[str, Threshold]) -> list[Change]:
    """Breakers to open or close from one scan's ``{kind: {baseline: (resources, drifting)}}``.

    ``kind`` is the class of action the drift would lead to: every drift counts for the
    ``revert`` breaker, only drifts whose plan retires something for the ``retirement`` one.
    """
    out: list[Change] = []
    baselines = {b for per in counts.values() for b in per}
    for kind, th in thresholds.items():
        for baseline in sorted(baselines):
            total, drifting = counts.get(kind, {}).get(baseline, (counts.get(REVERT, {}).get(baseline, (0, 0))[0], 0))
            was = is_open.get((kind, baseline), False)
            trips = th.trips(total, drifting)
            if trips and not was:
                out.append(Change(kind, baseline, f"{drifting} of {total} resources of baseline {baseline} drift at once "
                                  f"(over {th.share:.0%}, at least {th.min_resources}): a bad baseline change "
                                  "or a mass change on this node; not acting until it settles or `driftd breaker reset`"))
            elif was and not trips:
                out.append(Change(kind, baseline, None))
    for (kind, baseline), was in is_open.items():
        if was and baseline not in baselines:
            out.append(Change(kind, baseline, None))  # baseline gone
    return out


class BreakerGate:
    name = "breaker"

    def check(self, inp: GateInput, view: SafetyView) -> Verdict:
        kinds = (REVERT, RETIREMENT) if action_class(inp.plan) == RETIREMENT else (REVERT,)
        for kind in kinds:
            g = view.guard(scope(kind, inp.desired.baseline))
            if g is not None:
                return Verdict(self.name if kind == REVERT else "retirement-breaker", str(g.get("reason", "open")))
        return ALLOWED
