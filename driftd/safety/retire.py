"""Gate ``retire`` (pure): retirement's stricter conditions.

Pipeline position: a gate of the chain, for plans that take something out of service only.
A finding must persist ``after`` seconds before anything is retired for it (a transient
reading never drains a node), and retirement has its own dry-run, independent of reverts.
(The stricter retirement breaker is the ``breaker`` gate's.)
"""

from __future__ import annotations

from driftd.safety.gates import ALLOWED, RETIREMENT, GateInput, SafetyView, Verdict, action_class


class RetireGate:
    name = "retire"

    def __init__(self, *, after: float, dry_run: bool) -> None:
        self.after = after
        self.dry_run = dry_run

    def check(self, inp: GateInput, view: SafetyView) -> Verdict:
        if action_class(inp.plan) != RETIREMENT:
            return ALLOWED
        if self.dry_run:
            return Verdict("retire-dry-run", "retirements run in dry-run (safety.retire.dry_run): reported only")
        ready = inp.first_seen + self.after
        if inp.now < ready:
            return Verdict(self.name, f"finding must persist {self.after:.0f}s before retiring "
                           f"({ready - inp.now:.0f}s to go)", until=ready, retry=True)
        return ALLOWED
