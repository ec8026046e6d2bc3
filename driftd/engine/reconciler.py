"""The reconciler: scan and per-key reconcile over the pure core (engine).

Pipeline position: this is where observe → diff → plan → act is wired together.

* :meth:`Engine.scan` observes and diffs every governed resource of every target (cheap,
  read-only) and enqueues the keys that drifted or still have an open drift record.
* :meth:`Engine.reconcile` handles one key: observe again, diff, plan, act if the plan
  applies (dry-run is decided only here, through ``Plan.applies``), verify by observing
  once more, and record the outcome in state, metrics and logs.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from driftd.baselines.loader import BaselineSet
from driftd.core.diff import diff, reportable
from driftd.core.plan import plan as make_plan
from driftd.engine.clock import Clock, SystemClock
from driftd.engine.queue import KeyedQueue
from driftd.engine.state import DriftRecord, StateError, StateStore
from driftd.models.baseline import Enforcement
from driftd.models.keys import ResourceKey
from driftd.models.resources import (
    Action,
    ActResult,
    DesiredResource,
    FieldDrift,
    HostPayload,
    ObservedResource,
    OutcomeStatus,
    Plan,
    PodPayload,
    RemediationResult,
    ReportResult,
    ResourceResult,
)
from driftd.observability.logging import Event, get_logger, set_baseline_version
from driftd.targets.base import (
    EventSource,
    NodeInfo,
    NodeRetirer,
    Notifier,
    Reporter,
    ResourceGoneError,
    Target,
    TargetError,
)

if TYPE_CHECKING:
    from driftd.observability.metrics import Metrics  # prometheus_client: not imported by a --once pass


@dataclass
class Outcome:
    """Result of reconciling one key, as shown in the pass summary."""

    key: str
    status: OutcomeStatus
    address: str = ""
    baseline: str = ""
    target: str = ""
    mode: str = ""
    drift: list[dict[str, Any]] = field(default_factory=list)
    actions: list[str] = field(default_factory=list)
    snapshots: list[str] = field(default_factory=list)
    error: str | None = None
    first_seen: float | None = None
    deadline: float | None = None
    retry: bool = False


@dataclass
class ScanReport:
    resources: int = 0
    drifted: int = 0
    errors: int = 0
    duration: float = 0.0
    errors_by_key: dict[str, str] = field(default_factory=dict)
    targets_down: dict[str, str] = field(default_factory=dict)  # target -> why it could not be listed
    keys: frozenset[str] = frozenset()  # the resources this scan observed


class Engine:
    """Owns the desired state of every target and reconciles keys against it."""

    def __init__(
        self,
        *,
        targets: dict[str, Target],
        state: StateStore,
        metrics: Metrics,
        node: NodeInfo,
        dry_run: bool = False,
        escalate_after: int = 3,
        clock: Clock | None = None,
        retirer: NodeRetirer | None = None,
    ) -> None:
        self.targets = targets
        self.state = state
        self.metrics = metrics
        self.node = node
        self.dry_run = dry_run
        self.escalate_after = escalate_after
        self.clock = clock or SystemClock()
        self.notifiers: list[Notifier] = [t for t in targets.values() if isinstance(t, Notifier)]
        self.reporters: list[Reporter] = [t for t in targets.values() if isinstance(t, Reporter)]
        self._report_rows: dict[str, ResourceResult] = {}
        self._report_dirty = False
        self.retirer: NodeRetirer | None = retirer or next((t for t in targets.values() if isinstance(t, NodeRetirer)), None)
        # a key's prefix names its target, unless the target declares another (pods: "pod:<ns>/<name>")
        self._by_prefix: dict[str, str] = {str(getattr(t, "key_prefix", name)): name for name, t in targets.items()}
        self.log = get_logger()
        self.baselines = BaselineSet.empty()
        self._desired: dict[str, DesiredResource] = {}
        self._swap = threading.Lock()
        self.outcomes: dict[str, Outcome] = {}
        self._last_full = -float("inf")
        for t in targets.values():
            if hasattr(t, "journal"):  # adapters that record snapshot ids durably before overwriting
                t.journal = self._journal

    def _journal(self, key: str, snapshots: tuple[str, ...]) -> None:
        """Snapshot-before-overwrite as a precondition: no durable record of the snapshot, no overwrite."""
        try:
            self.state.journal_snapshots(key, snapshots, self.clock.time())
        except StateError as e:
            raise TargetError(f"snapshot saved but not recorded ({e}); not overwriting", escalate=True) from None

    # ------------------------------------------------------------------ baselines
    def set_baselines(self, bset: BaselineSet) -> None:
        """Swap in a complete baseline set (atomic for concurrent reconciles)."""
        desired: dict[str, DesiredResource] = {}
        for target in self.targets.values():
            for r in target.desired(bset, self.node):
                desired[r.key] = r
        with self._swap:
            self.baselines = bset
            self._desired = desired
        set_baseline_version(bset.version)
        self.metrics.set_baselines(
            bset.version, ((b.metadata.name, b.kind, bset.hashes[b.metadata.name]) for b in bset.baselines), self.clock.time()
        )

    def target_name(self, key: str) -> str:
        """The name of the target a key belongs to."""
        prefix = ResourceKey.parse(key).prefix
        return self._by_prefix.get(prefix, prefix)

    @property
    def desired(self) -> dict[str, DesiredResource]:
        with self._swap:
            return self._desired

    # ------------------------------------------------------------------ scan
    def scan(self, queue: KeyedQueue, *, full_rehash_interval: float = 0.0) -> ScanReport:
        """Observe + diff everything; enqueue drifted keys and keys with open records."""
        started = time.perf_counter()
        mono = self.clock.monotonic()
        full = mono - self._last_full >= full_rehash_interval
        if full:
            self._last_full = mono
        desired = dict(self.desired)
        per_target: dict[str, list[int]] = {name: [0, 0, 0] for name in self.targets}
        down: dict[str, str] = {}
        for name, t in self.targets.items():
            t.begin_pass(full=full)
            try:
                for r in t.discover():
                    desired[r.key] = r
            except TargetError as e:
                down[name] = str(e)
                per_target[name][2] += 1
                self.log.warning(Event.OBSERVE_FAILED, target=name, error=str(e))
        report = ScanReport(resources=len(desired), targets_down=down, keys=frozenset(desired))
        self.log.debug(Event.SCAN_STARTED, resources=len(desired), full=full)
        active = self.state.active()
        rows: dict[str, ResourceResult] = {}
        for key, d in desired.items():
            counts = per_target[d.target]
            counts[0] += 1
            try:
                observed = self.targets[d.target].observe(d)
            except ResourceGoneError:
                counts[0] -= 1
                continue
            except TargetError as e:
                report.errors += 1
                counts[2] += 1
                report.errors_by_key[key] = str(e)
                self.outcomes[key] = Outcome(
                    key=key, status=OutcomeStatus.ERROR, address=d.address, baseline=d.baseline, target=d.target, error=str(e)
                )
                self.log.warning(Event.OBSERVE_FAILED, key=key, target=d.target, baseline=d.baseline, error=str(e))
                if self.reporters:
                    rows[key] = self._row(d, ReportResult.ERROR, f"cannot observe: {e}")
                continue
            drift = diff(d, observed)
            if drift:
                report.drifted += 1
                counts[1] += 1
                queue.add(key)
            elif key in active:
                queue.add(key)
            if self.reporters:
                rows[key] = self._row(d, ReportResult.FAIL if drift else ReportResult.PASS,
                                      ", ".join(f.field for f in drift) or "compliant")
        for key in active.keys() - desired.keys():
            if self.target_name(key) not in down:
                queue.add(key)  # gone or no longer governed: the reconciler closes the record
        report.duration = time.perf_counter() - started
        if self.reporters:
            with self._swap:
                self._report_rows = rows
            self.publish_report()
        for name, (n, drifted, errors) in per_target.items():
            result = "error" if errors else ("drift" if drifted else "clean")
            self.metrics.scans.labels(name, result).inc()
            self.metrics.scan_duration.labels(name).observe(report.duration)
            self.metrics.resources.labels(name).set(n)
            self.metrics.target_up.labels(name).set(0 if name in down or (errors and errors == n) else 1)
            self.metrics.last_scan.labels(name).set(self.clock.time())
        self.log.info(
            Event.SCAN_FINISHED,
            resources=report.resources,
            drifted=report.drifted,
            errors=report.errors,
            duration_s=round(report.duration, 4),
            full=full,
        )
        return report

    # ------------------------------------------------------------------ reconcile
    def reconcile(self, key: str) -> Outcome:
        """Reconcile one key; never raises for adapter or state failures."""
        try:
            return self._reconcile(key)
        except StateError as e:
            d = self.desired.get(key)
            self.log.error(Event.STATE_FAILED, key=key, error=str(e))
            out = Outcome(key=key, status=OutcomeStatus.ERROR, address=d.address if d else "", baseline=d.baseline if d else "",
                          target=d.target if d else self.target_name(key), error=str(e), retry=True)
            self.outcomes[key] = out
            return out

    def _reconcile(self, key: str) -> Outcome:
        d = self.desired.get(key)
        if d is None:
            dynamic = self.targets.get(self.target_name(key))
            if dynamic is None or not isinstance(dynamic, EventSource):
                return self._unmanaged(key)  # a static target (host): its baseline entry was removed
            try:
                d = dynamic.resolve(key)
            except TargetError as e:
                out = Outcome(key=key, status=OutcomeStatus.ERROR, target=dynamic.name, error=str(e), retry=e.transient)
                self.outcomes[key] = out
                return out
            if d is None:
                return self._unmanaged(key, "gone")
        target = self.targets[d.target]

        def outcome(status: OutcomeStatus, **kw: Any) -> Outcome:
            out = Outcome(key=key, status=status, address=d.address, baseline=d.baseline, target=d.target, **kw)
            self.outcomes[key] = out
            return out

        log = self.log.bind(key=key, target=d.target, baseline=d.baseline)
        try:
            observed = target.observe(d)
        except ResourceGoneError:
            return self._unmanaged(key, "gone")
        except TargetError as e:
            log.warning(Event.OBSERVE_FAILED, error=str(e))
            return outcome(OutcomeStatus.ERROR, error=str(e), retry=e.transient)
        drift = diff(d, observed)
        now = self.clock.time()
        rec = self.state.get_active(key)
        if not drift:
            if rec is not None:
                self._resolve(rec, d, now, "resolved externally" if rec.last_result != "succeeded" else "remediated", log)
            return outcome(OutcomeStatus.CLEAN)

        fields = reportable(d, drift)
        new = rec is None
        rec = self.state.open_drift(
            key=key,
            target=d.target,
            baseline=d.baseline,
            address=d.address,
            now=now,
            window_seconds=d.window.total_seconds(),
            fields=fields,
        )
        if new:
            self.metrics.drifts_detected.labels(d.target, d.baseline).inc()
            log.warning(
                Event.DRIFT_DETECTED, address=d.address, drift=fields, deadline=rec.deadline, window_s=d.window.total_seconds()
            )
            self._notify(
                "DriftDetected",
                d,
                "drifted: "
                + ", ".join(f"{f['field']}" + (f" ({'; '.join(f['changes'])})" if f.get("changes") else "") for f in fields),
            )
        if now > rec.deadline and not rec.breached:
            self.state.mark_breached(rec, now)
            self.metrics.window_breaches.labels(d.target, d.baseline).inc()
            log.error(Event.DRIFT_WINDOW_BREACHED, address=d.address, first_seen=rec.first_seen, deadline=rec.deadline)

        p = make_plan(d, observed, drift, dry_run=self.dry_run)
        out = outcome(
            OutcomeStatus.REPORTED,
            mode=p.mode.value,
            drift=fields,
            actions=[a.action.value for a in p.actions],
            first_seen=rec.first_seen,
            deadline=rec.deadline,
        )
        if p.blocked:
            if rec.last_result != "blocked":
                self._notify("RemediationBlocked", d, p.blocked)
            self.state.record_action(rec, now=now, action="none", result="blocked", error=p.blocked, attempt=False)
            log.error(Event.REMEDIATION_BLOCKED, reason=p.blocked, drift=fields)
            out.status, out.error = OutcomeStatus.BLOCKED, p.blocked
            return out
        if not p.applies:
            why = "dry-run" if self.dry_run else ("report" if p.mode is Enforcement.ENFORCE else p.mode.value)
            if rec.last_result != why:
                self.state.record_action(rec, now=now, action="none", result=why, attempt=False)
            for a in p.actions:
                self.metrics.remediations.labels(d.target, a.action.value, RemediationResult.SKIPPED).inc()
            log.info(
                Event.REMEDIATION_SKIPPED,
                mode=p.mode.value,
                dry_run=self.dry_run,
                planned=[{"action": a.action.value, "reason": a.reason} for a in p.actions],
            )
            return out

        action_names = "+".join(a.action.value for a in p.actions)
        if action_names == Action.RETIRE_NODE.value and rec.last_action == action_names and rec.last_result == "succeeded":
            out.status = OutcomeStatus.RETIRED
            return out  # already retired for this drift: nothing more to do
        if rec.held is not None:
            if rec.held.get("fingerprint") == self._fingerprint(d, drift):
                # acting again cannot help: the same action already "succeeded" and left this very drift
                log.warning(Event.REMEDIATION_HELD, action=action_names, reason=rec.held.get("reason"))
                out.status, out.error = OutcomeStatus.FAILED, f"held: {rec.held.get('reason')} (not acting until the baseline or the resource changes)"
                return out
            rec = self.state.record_action(rec, now=now, action="none", result="released", attempt=False)
        terminal: str | None = None
        try:
            result = self._act(target, d, observed, p)
            if Action.RETIRE_NODE in result.applied:
                verify: tuple[FieldDrift, ...] = ()  # the node is retired; the host drift itself stays, reported
            else:
                try:
                    verify = diff(d, target.observe(d))
                except ResourceGoneError:
                    if not {Action.RETIRE, Action.EVICT} & set(result.applied):
                        raise
                    verify = ()  # retired or evicted: being gone is the remedy
            if verify:
                same = sorted({v.field for v in verify} & {f.field for f in drift})
                if same:
                    terminal = self._fingerprint(d, verify)
                    raise TargetError(
                        f"{action_names} succeeded but verification still finds the same drift ({', '.join(same)}): "
                        "the baseline or the adapter cannot fix this; stopped acting on it",
                        transient=False,
                        escalate=True,
                    )
                raise TargetError("verification failed: still drifted after acting: " + ", ".join(v.field for v in verify))
        except ResourceGoneError:
            return self._unmanaged(key, "gone")
        except TargetError as e:
            held = {"fingerprint": terminal, "reason": str(e), "at": now} if terminal else None
            for a in p.actions:
                self.metrics.remediations.labels(d.target, a.action.value, RemediationResult.FAILED).inc()
            # logged before the state write: a full state disk must not swallow why the action failed
            log.error(Event.REMEDIATION_FAILED, action=action_names, error=str(e), attempts=rec.attempts + 1, transient=e.transient)
            rec = self.state.record_action(rec, now=now, action=action_names, result="failed", error=str(e), held=held)
            if rec.consecutive_failures == 1:
                self._notify("RemediationFailed", d, f"{action_names} failed: {e}")
            at_threshold = rec.consecutive_failures == self.escalate_after
            if at_threshold or (e.escalate and rec.consecutive_failures == 1):
                log.error(
                    Event.REMEDIATION_ESCALATED,
                    action=action_names,
                    error=str(e),
                    consecutive_failures=rec.consecutive_failures,
                    first_seen=rec.first_seen,
                )
                self._notify("RemediationEscalated", d, f"{action_names} failed {rec.consecutive_failures} times: {e}")
                retire = isinstance(d.payload, HostPayload) and d.payload.retire_on_failure
                if retire and not self.dry_run and (at_threshold or terminal):
                    self._retire_node_on_failure(d, str(e), log)
            out.status, out.error, out.retry = OutcomeStatus.FAILED, str(e), e.transient
            return out

        # a content hash of a secret is itself a secret: sensitive content shows no snapshot ids
        # (a container's sensitive env is no reason to hide the ids of its snapshot)
        shown = d.shown_snapshots(result.snapshots)
        for sid in shown:
            self.metrics.snapshots.labels(d.target).inc()
            log.info(Event.SNAPSHOT_SAVED, snapshot=sid, address=d.address)
        rec = self.state.record_action(rec, now=now, action=action_names, result="succeeded", snapshots=result.snapshots)
        for done in result.applied:
            self.metrics.remediations.labels(d.target, done.value, RemediationResult.SUCCEEDED).inc()
        log.info(Event.REMEDIATION_SUCCEEDED, action=action_names, snapshots=shown, drift=fields)
        if Action.RETIRE_NODE in result.applied:
            self._notify("NodeRetired", d, f"node retired: {', '.join(f['field'] for f in fields)} drifted")
            out.status, out.snapshots = OutcomeStatus.RETIRED, shown
            return out  # the record stays open: the drift is still there, on a node taken out of service
        retired = {Action.RETIRE, Action.EVICT} & set(result.applied) and any(
            a.action is Action.RETIRE or a.params.get("retire") for a in p.actions
        )
        self._notify(
            "DriftRetired" if retired else "DriftReverted",
            d,
            f"{action_names}: {', '.join(f['field'] for f in fields)}",
            warning=False,
        )
        self._resolve(rec, d, self.clock.time(), "remediated", log)
        self._update_row(d, ReportResult.PASS, f"{action_names} done; was: {', '.join(f['field'] for f in fields)}")
        out.status, out.snapshots = OutcomeStatus.REMEDIATED, shown
        return out

    def _fingerprint(self, d: DesiredResource, drift: tuple[FieldDrift, ...]) -> str:
        """What a terminal hold is tied to: the baseline's content and the drifted fields' live values."""
        h = hashlib.sha256(self.baselines.hashes.get(d.baseline, d.baseline).encode())
        h.update(json.dumps([[f.field, f.actual] for f in sorted(drift, key=lambda f: f.field)], sort_keys=True, default=str).encode())
        return h.hexdigest()[:24]

    # ------------------------------------------------------------------ reports
    def _row(self, d: DesiredResource, result: ReportResult, message: str) -> ResourceResult:
        """The latest result of one resource for the reporters (field names only, never values)."""
        return ResourceResult(
            key=d.key,
            baseline=d.baseline,
            baseline_hash=self.baselines.hashes.get(d.baseline, ""),
            target=d.target,
            kind=d.kind,
            address=d.address,
            result=result,
            message=message,
            at=self.clock.time(),
            subject=d.payload if isinstance(d.payload, PodPayload) else None,
        )

    def _update_row(self, d: DesiredResource, result: ReportResult, message: str) -> None:
        if self.reporters:
            with self._swap:
                self._report_rows[d.key] = self._row(d, result, message)
                self._report_dirty = True

    def publish_report(self, *, only_if_changed: bool = False) -> None:
        """Hand the current per-resource results to every reporter (PolicyReport)."""
        with self._swap:
            if only_if_changed and not self._report_dirty:
                return
            rows = list(self._report_rows.values())
            self._report_dirty = False
        for r in self.reporters:
            try:
                r.publish_report(rows)
            except Exception as e:  # a report failure must not stop enforcement
                self.log.warning(Event.OBSERVE_FAILED, error=f"report not published: {e}")

    def _act(self, target: Target, d: DesiredResource, observed: ObservedResource, p: Plan) -> ActResult:
        """Apply a plan; node retirement goes to the retirer, everything else to the target."""
        if any(a.action is Action.RETIRE_NODE for a in p.actions):
            self._retire_node(d, "; ".join(a.reason for a in p.actions))
            return ActResult(key=d.key, applied=(Action.RETIRE_NODE,))
        return target.apply(d, observed, p)

    def _retire_node(self, d: DesiredResource, reason: str) -> None:
        if self.retirer is None:
            raise TargetError(
                "node retirement requested but no retirer is configured (enable the Kubernetes target or set retire_hook)",
                transient=False,
            )
        self.retirer.retire_node(f"{d.baseline}: {d.address}: {reason}")

    def _retire_node_on_failure(self, d: DesiredResource, error: str, log: Any) -> None:
        try:
            self._retire_node(d, f"cannot be restored: {error}")
            self.metrics.remediations.labels(d.target, Action.RETIRE_NODE.value, RemediationResult.SUCCEEDED).inc()
            self._notify("NodeRetired", d, f"node retired: {d.address} cannot be restored")
        except TargetError as e:
            self.metrics.remediations.labels(d.target, Action.RETIRE_NODE.value, RemediationResult.FAILED).inc()
            log.error(Event.REMEDIATION_FAILED, action=Action.RETIRE_NODE.value, error=str(e))

    def _notify(self, reason: str, d: DesiredResource, message: str, *, warning: bool = True) -> None:
        for n in self.notifiers:
            try:
                n.notify(reason, d, message, warning=warning)
            except Exception as e:  # telling people must never break remediation
                self.log.warning(Event.OBSERVE_FAILED, key=d.key, error=f"notification failed: {e}")

    def _resolve(self, rec: DriftRecord, d: DesiredResource, now: float, resolution: str, log: Any) -> None:
        self.state.resolve(rec, now=now, resolution=resolution)
        if resolution == "remediated":
            self.metrics.time_to_remediate.labels(d.target).observe(max(0.0, now - rec.first_seen))
        log.info(
            Event.DRIFT_RESOLVED,
            resolution=resolution,
            first_seen=rec.first_seen,
            seconds_open=round(now - rec.first_seen, 3),
            snapshots=d.shown_snapshots(rec.snapshots),
        )

    def _unmanaged(self, key: str, why: str = "no longer governed") -> Outcome:
        """The key has no desired state any more (baseline removed, container gone): close its record."""
        rec = self.state.get_active(key)
        if rec is not None:
            self.state.resolve(rec, now=self.clock.time(), resolution=why)
            self.log.info(Event.DRIFT_RESOLVED, key=key, target=rec.target, baseline=rec.baseline, resolution=why)
        out = Outcome(key=key, status=OutcomeStatus.GONE if why == "gone" else OutcomeStatus.UNMANAGED)
        self.outcomes[key] = out
        return out

    def handle(self, key: str) -> bool:
        """Queue handler: False asks the queue to retry the key after backoff."""
        return not self.reconcile(key).retry
