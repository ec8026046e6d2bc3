"""The ordered gate chain driftd runs between plan and act (pure).

Pipeline position: plan → **gate** → act.  Order matters: the first hold decides, and
only a plan every earlier gate allows may spend budget.  A new gate is one module of
``driftd.safety`` plus one line here.
"""

from __future__ import annotations

from driftd.safety.breaker import BreakerGate
from driftd.safety.breakglass import BreakGlassGate
from driftd.safety.budget import BudgetGate
from driftd.safety.dryrun import DryRunGate
from driftd.safety.flap import FlapGate
from driftd.safety.gates import Gate
from driftd.safety.grace import GraceGate
from driftd.safety.retire import RetireGate
from driftd.settings import SafetySettings


def default_chain(cfg: SafetySettings, *, dry_run: bool, break_glass: BreakGlassGate | None = None) -> list[Gate]:
    b = cfg.budget
    return [
        DryRunGate(dry_run),
        break_glass or BreakGlassGate(),
        GraceGate(),
        FlapGate(reverts=cfg.flap.reverts, window=cfg.flap.window_seconds),
        BreakerGate(),
        RetireGate(after=cfg.retire.after_seconds, dry_run=cfg.retire.dry_run),
        BudgetGate(interval=b.interval_seconds, reverts_per_node=b.reverts_per_node,
                   reverts_per_baseline=b.reverts_per_baseline, retirements_per_node=b.retirements_per_node,
                   retirements_per_baseline=b.retirements_per_baseline),
    ]
