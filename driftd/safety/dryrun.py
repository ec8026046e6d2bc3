"""Gate ``dry-run`` (pure): the global dry-run and each baseline's own enforcement mode.

Pipeline position: first gate of the chain.  Dry-run is one more gate, not a special case:
a plan of a dry-run agent, or of a ``warn``/``dryrun`` baseline, is held and reported.
"""

from __future__ import annotations

from driftd.models.baseline import Enforcement
from driftd.safety.gates import ALLOWED, GateInput, SafetyView, Verdict


class DryRunGate:
    name = "dry-run"

    def __init__(self, dry_run: bool) -> None:
        self.dry_run = dry_run

    def check(self, inp: GateInput, view: SafetyView) -> Verdict:
        if self.dry_run:
            return Verdict(self.name, "driftd runs in dry-run: nothing is changed", mode=Enforcement.DRYRUN)
        if inp.plan.mode is not Enforcement.ENFORCE:
            return Verdict(inp.plan.mode.value, f"baseline {inp.desired.baseline} is in {inp.plan.mode.value} mode",
                           mode=inp.plan.mode)
        return ALLOWED
