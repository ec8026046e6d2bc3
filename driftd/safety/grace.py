"""Gate ``grace`` (pure): a change the baseline allows to settle is not acted on yet.

Pipeline position: a gate of the chain, after break-glass.  A baseline's ``grace`` (default 0)
is waited out from the change (its own time where known, else first seen) before a revert or
retirement; the hold lifts by itself (``until``), so the queue comes back then.  ``grace`` is
shorter than ``window`` (the baseline schema enforces it): the deadline is never spent waiting.
"""

from __future__ import annotations

from driftd.safety.gates import ALLOWED, GateInput, SafetyView, Verdict


class GraceGate:
    name = "grace"

    def check(self, inp: GateInput, view: SafetyView) -> Verdict:
        grace = inp.desired.grace.total_seconds()
        if grace <= 0:
            return ALLOWED
        since = inp.changed_at if inp.changed_at is not None else inp.first_seen
        ready = since + grace
        if inp.now < ready:
            return Verdict(self.name, f"the baseline lets a change settle for {grace:.0f}s ({ready - inp.now:.0f}s to go)",
                           until=ready, retry=True)
        return ALLOWED
