"""Gate ``budget`` (pure): caps on reverts and on retirements per interval, per node and per baseline.

Pipeline position: last gate of the chain (only a plan every other gate allows spends
budget).  An action over budget waits (``retry``: the queue comes back), is reported as
``held: budget``, and is never dropped; when budget frees, the oldest held drift goes first.
"""

from __future__ import annotations

from driftd.safety.gates import ALLOWED, REVERT, GateInput, SafetyView, Verdict, action_class


class BudgetGate:
    name = "budget"

    def __init__(self, *, interval: float, reverts_per_node: int, reverts_per_baseline: int,
                 retirements_per_node: int, retirements_per_baseline: int) -> None:
        self.interval = interval
        self.caps = {
            REVERT: (reverts_per_node, reverts_per_baseline),
            "retirement": (retirements_per_node, retirements_per_baseline),
        }

    def check(self, inp: GateInput, view: SafetyView) -> Verdict:
        kind = action_class(inp.plan)
        per_node, per_baseline = self.caps[kind]
        since = inp.now - self.interval
        baseline = inp.desired.baseline
        used_node = view.count_actions(kind, since)
        used_baseline = view.count_actions(kind, since, baseline=baseline)
        until = inp.now + max(1.0, self.interval / 60)  # look again soon; the queue backs off further
        if used_node >= per_node:
            return Verdict(self.name, f"{used_node} {kind}s on this node in the last {self.interval:.0f}s (cap {per_node})",
                           until=until, retry=True)
        if used_baseline >= per_baseline:
            return Verdict(self.name, f"{used_baseline} {kind}s for baseline {baseline} in the last {self.interval:.0f}s "
                           f"(cap {per_baseline})", until=until, retry=True)
        oldest = view.oldest_held(self.name, baseline=baseline)
        if oldest is not None and oldest[1] != inp.desired.key and oldest[0] < inp.first_seen:
            return Verdict(self.name, f"{oldest[1]} has waited longer for this budget and goes first", until=until, retry=True)
        return ALLOWED
