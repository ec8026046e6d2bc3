"""One pass (``driftd run --once``): scan, drain the queue in this thread, summarise.

Pipeline position: a driver of the engine, like the daemon but synchronous.  The exit
code tells "clean", "drift remained" and "error" apart (see :class:`ExitCode`).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Any

from driftd.engine.queue import KeyedQueue
from driftd.engine.reconciler import Engine, Outcome
from driftd.exitcodes import ExitCode
from driftd.models.resources import OutcomeStatus


@dataclass
class PassSummary:
    baseline_version: str
    dry_run: bool
    resources: int
    duration_seconds: float
    outcomes: list[Outcome] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)
    exit_code: int = 0
    targets_down: dict[str, str] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["exit_code"] = int(self.exit_code)
        return d


_PRIORITY = {
    OutcomeStatus.ERROR: ExitCode.ERROR,
    OutcomeStatus.FAILED: ExitCode.REMEDIATION_FAILED,
    OutcomeStatus.BLOCKED: ExitCode.DRIFT_REMAINED,
    OutcomeStatus.HELD: ExitCode.DRIFT_REMAINED,  # a safety gate held the action; the drift is still there
    OutcomeStatus.REPORTED: ExitCode.DRIFT_REMAINED,
    OutcomeStatus.RETIRED: ExitCode.DRIFT_REMAINED,  # the node was taken out of service; its drift is still there
}
_ORDER = [ExitCode.ERROR, ExitCode.REMEDIATION_FAILED, ExitCode.DRIFT_REMAINED]
_CLEAN = Outcome(key="", status=OutcomeStatus.CLEAN)  # a resource the scan found clean was not reconciled


def run_once(engine: Engine, queue: KeyedQueue, *, attempts: int, full_rehash_interval: float = 0.0) -> PassSummary:
    started = time.perf_counter()
    engine.outcomes.clear()
    report = engine.scan(queue, full_rehash_interval=full_rehash_interval)
    with engine.deferred_sync():  # directory fsyncs batched per directory, all done before the report and summary
        queue.drain(engine.handle, max_failures=attempts)
    if engine.reporters:
        engine.publish_report(only_if_changed=True)  # the report reflects what this pass did
    outcomes = sorted(engine.outcomes.values(), key=lambda o: o.key)
    counts: dict[OutcomeStatus, int] = {}
    for o in outcomes:
        counts[o.status] = counts.get(o.status, 0) + 1
    # clean: resources this scan observed that ended clean (keys reconciled from state alone,
    # e.g. a container that went away, count under their own status and never below zero)
    counts[OutcomeStatus.CLEAN] = sum(1 for k in report.keys if engine.outcomes.get(k, _CLEAN).status is OutcomeStatus.CLEAN)
    codes = {_PRIORITY[o.status] for o in outcomes if o.status in _PRIORITY}
    if report.targets_down:
        codes.add(ExitCode.ERROR)  # a whole target could not be observed
    code = next((c for c in _ORDER if c in codes), ExitCode.CLEAN)
    return PassSummary(
        baseline_version=engine.baselines.version,
        dry_run=engine.dry_run,
        resources=report.resources,
        duration_seconds=round(time.perf_counter() - started, 4),
        outcomes=[o for o in outcomes if o.status not in (OutcomeStatus.CLEAN, OutcomeStatus.UNMANAGED)],
        counts={k.value: v for k, v in counts.items()},
        exit_code=int(code),
        targets_down=dict(report.targets_down),
    )
