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


_SYMBOL = {
    OutcomeStatus.RETIRED: "RETIRED",
    OutcomeStatus.REMEDIATED: "fixed",
    OutcomeStatus.REPORTED: "drift",
    OutcomeStatus.BLOCKED: "BLOCKED",
    OutcomeStatus.HELD: "HELD",
    OutcomeStatus.FAILED: "FAILED",
    OutcomeStatus.ERROR: "ERROR",
}


def render_text(s: PassSummary) -> str:
    """Readable summary for a terminal."""
    lines = [
        f"driftd pass: {s.resources} resources, baseline set {s.baseline_version}"
        + (" (dry-run)" if s.dry_run else "")
        + f", {s.duration_seconds:.3f}s"
    ]
    for name, err in sorted(s.targets_down.items()):
        lines.append(f"  {'ERROR':8} target {name} unreachable: {err}")
    for o in s.outcomes:
        what = ", ".join(f"{d['field']}: {_short(d['expected'])} -> {_short(d['actual'])}" for d in o.drift) or (o.error or "")
        lines.append(f"  {_SYMBOL.get(o.status, o.status):8} {o.address or o.key}  [{o.baseline}]  {what}")
        if o.actions and o.status is not OutcomeStatus.REMEDIATED:
            lines.append(f"           would {' + '.join(o.actions)} ({o.mode})")
        if o.status is OutcomeStatus.REMEDIATED:
            lines.append(
                f"           did {' + '.join(o.actions)}"
                + (f"; drifted content kept as {', '.join(x[:19] for x in o.snapshots)}" if o.snapshots else "")
            )
        if o.error and o.drift:
            lines.append(f"           {o.error}")
    S = OutcomeStatus
    order = [S.CLEAN, S.REMEDIATED, S.REPORTED, S.BLOCKED, S.FAILED, S.ERROR]
    order += [k for k in (S.HELD, S.RETIRED, S.GONE) if s.counts.get(k)]
    lines.append(
        "result: "
        + ", ".join(f"{s.counts.get(k, 0)} {k}" for k in order)
        + f" -> exit {s.exit_code} ({ExitCode(s.exit_code).name.lower().replace('_', ' ')})"
    )
    return "\n".join(lines)


def _short(v: Any) -> str:
    text = str(v)
    if text.startswith("sha256:"):
        return text[:15]
    return text if len(text) <= 40 else text[:37] + "..."
