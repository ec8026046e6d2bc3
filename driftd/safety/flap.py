"""Gate ``flap`` (pure): a resource reverted again and again is fighting something; stop.

Pipeline position: a gate of the chain.  The same resource remediated ``reverts`` times
within ``window`` seconds (another controller, a package postinst, a config-management
tool rewriting it) is quarantined: acting stops, it stays reported, an alert fires, until
``driftd flap reset`` or a change of its baseline.  The engine persists the quarantine.
"""

from __future__ import annotations

from driftd.safety.gates import ALLOWED, GateInput, SafetyView, Verdict


def scope(key: str) -> str:
    return f"flap:{key}"


class FlapGate:
    name = "flap"

    def __init__(self, *, reverts: int, window: float) -> None:
        self.reverts = reverts
        self.window = window

    def check(self, inp: GateInput, view: SafetyView) -> Verdict:
        q = view.guard(scope(inp.desired.key))
        if q is not None and q.get("baseline_hash") == inp.baseline_hash:
            return Verdict(self.name, str(q.get("reason", "flapping")))
        n = view.count_key_actions(inp.desired.key, inp.now - self.window)
        if n >= self.reverts:
            why = (f"remediated {n} times in the last {self.window / 60:.0f} min and drifted again: something keeps "
                   "changing it back; not acting until `driftd flap reset` or a baseline change")
            return Verdict(self.name, why, quarantine=True)
        return ALLOWED
