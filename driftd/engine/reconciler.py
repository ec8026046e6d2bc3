"""The reconciler: scan and per-key reconcile over the pure core (engine).

Pipeline position: this is where observe → diff → plan → act is wired together.

* :meth:`Engine.scan` observes and diffs every governed resource of every target (cheap,
  read-only) and enqueues the keys that drifted or still have an open drift record.
* :meth:`Engine.reconcile` handles one key: observe again, diff, plan, act if the plan
  applies (dry-run is decided only here, through ``Plan.applies``), verify by observing
  once more, and record the outcome in state, metrics and logs.
* Every outcome that acted or chose not to act is one record in the audit log
  (:meth:`Engine._audit`, ``observability/audit.py``), written before the state; while that log
  cannot be written, acting is held (``held: audit``): no action without its record.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from driftd.baselines.loader import BaselineSet
from driftd.core.diff import diff, reportable
from driftd.core.plan import plan as make_plan
from driftd.engine.clock import Clock, SystemClock
from driftd.engine.queue import KeyedQueue
from driftd.engine.state import DriftRecord, StateError, StateStore
from driftd.models.errors import HeldError
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
    PlannedAction,
    PodPayload,
    RemediationResult,
    ReportResult,
    ResourceResult,
)
from driftd.models.table import DesiredTable
from driftd.models.wording import drifts_text
from driftd.observability.audit import AuditLog, drift_digests
from driftd.observability.logging import Event, get_logger, set_baseline_version
from driftd.safety.breaker import Threshold, evaluate
from driftd.safety.breaker import scope as breaker_scope
from driftd.safety.breakglass import BreakGlassGate, Override, OverrideError, OverrideStore, from_annotations
from driftd.safety.budget import BudgetGate
from driftd.safety.chain import default_chain
from driftd.safety.dryrun import DryRunGate
from driftd.safety.flap import scope as flap_scope
from driftd.safety.gates import RETIREMENT, REVERT, Gate, GateInput, Verdict, action_class, run_chain
from driftd.safety.snapshots import SnapshotStore
from driftd.settings import RetentionSettings, SafetySettings
from driftd.targets.base import (
    EventSource,
    NodeInfo,
    NodeRetirer,
    Notifier,
    OverrideSource,
    Patcher,
    Reporter,
    ResourceGoneError,
    Target,
    TargetError,
    WriteTracker,
)

if TYPE_CHECKING:
    from driftd.observability.metrics import Metrics  # prometheus_client: not imported by a --once pass


_FOREVER = 1e18  # a guard that holds until someone (or a later scan) clears it


class _View:
    """The state store as the gates see it (``safety.gates.SafetyView``), for one plan, at one moment.

    The guards the chain asks about for this resource (its flap quarantine, its baseline's breakers) and the
    budget's oldest held drift of its baseline are read together, in one statement, when a gate first asks;
    the action counts come from the store's in-memory window.  Anything else is read when asked.
    """

    def __init__(self, state: StateStore, now: float, d: DesiredResource) -> None:
        self.state, self.now = state, now
        self._scopes = (flap_scope(d.key), breaker_scope(REVERT, d.baseline), breaker_scope(RETIREMENT, d.baseline))
        self._held = (BudgetGate.name, d.baseline)
        self._read: tuple[dict[str, dict[str, Any]], tuple[float, str] | None] | None = None

    def _inputs(self) -> tuple[dict[str, dict[str, Any]], tuple[float, str] | None]:
        if self._read is None:
            self._read = self.state.gate_inputs(self._scopes, self._held, self.now)
        return self._read

    def count_actions(self, kind: str, since: float, *, baseline: str | None = None) -> int:
        return self.state.count_actions(kind, since, baseline=baseline)

    def count_key_actions(self, key: str, since: float) -> int:
        return self.state.count_key_actions(key, since)

    def oldest_held(self, gate: str, *, baseline: str | None = None) -> tuple[float, str] | None:
        if (gate, baseline) == self._held:
            return self._inputs()[1]
        return self.state.oldest_held(gate, baseline=baseline)

    def guard(self, scope: str) -> dict[str, object] | None:
        if scope in self._scopes:
            return self._inputs()[0].get(scope)
        return self.state.get_guard(scope, self.now)


@runtime_checkable
class DeferredSync(Protocol):
    """A target that batches the directory fsync after its atomic renames while ``defer_dir_sync`` is set (host).

    The engine sets it and then settles: after every reconcile (``settle(key)``: the target syncs a directory
    once no other key is writing there), or once at the end of a batch (``settle(None)``: ``run --once``), and
    before it publishes a report.  ``settle`` returns (key, error) for every write whose fsync failed.
    """

    name: str
    defer_dir_sync: bool

    def settle(self, key: str | None = None) -> list[tuple[str, str]]: ...


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
    urgent: bool = False  # at or near its deadline: the queue takes it before other keys
    until: float | None = None  # a gate's hold lifts by itself then: come back at that time
    retired: bool = False  # the verified action retired the instance (a container, a pod) rather than reverting it


@dataclass
class ScanReport:
    resources: int = 0
    drifted: int = 0
    errors: int = 0
    duration: float = 0.0
    errors_by_key: dict[str, str] = field(default_factory=dict)
    targets_down: dict[str, str] = field(default_factory=dict)  # target -> why it could not be listed
    keys: frozenset[str] = frozenset()  # the resources this scan observed


def _scan_order(static: DesiredTable, discovered: dict[str, DesiredResource]) -> Iterator[tuple[str, DesiredResource]]:
    """Every resource of a scan once, each built as it is reached; a discovered one wins over a static one."""
    for key, d in static.items():
        yield key, discovered.get(key, d)
    for key, d in discovered.items():
        if key not in static:
            yield key, d


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
        patcher: Patcher | None = None,
        safety: SafetySettings | None = None,
        overrides: OverrideStore | None = None,
        audit: AuditLog | None = None,
        plan_only: bool = False,
    ) -> None:
        self.targets = targets
        # ``driftd plan``: every stage and gate runs as in ``run`` (a warn baseline still only reports), but a plan
        # every gate allows is recorded as done in the plan's throwaway state instead of acted on (_planned)
        self.plan_only = plan_only
        self.state = state
        self.metrics = metrics
        self.node = node
        self.dry_run = dry_run
        self.escalate_after = escalate_after
        self.clock = clock or SystemClock()
        self._scans: dict[str, dict[str, Any]] = {}  # target → its last full scan (one entry per target)
        self.notifiers: list[Notifier] = [t for t in targets.values() if isinstance(t, Notifier)]
        self.reporters: list[Reporter] = [t for t in targets.values() if isinstance(t, Reporter)]
        self._report_rows: dict[str, ResourceResult] = {}
        self._report_dirty = False
        self.retirer: NodeRetirer | None = retirer or next((t for t in targets.values() if isinstance(t, NodeRetirer)), None)
        self.patcher = patcher
        # a key's prefix names its target, unless the target declares another (pods: "pod:<ns>/<name>")
        self._by_prefix: dict[str, str] = {str(getattr(t, "key_prefix", name)): name for name, t in targets.items()}
        self.log = get_logger()
        self.baselines = BaselineSet.empty()
        self._desired: DesiredTable = DesiredTable()
        self._set_info: dict[str, Any] = {"version": "none", "hashes": {}}
        self._swap = threading.Lock()
        self.outcomes: dict[str, Outcome] = {}
        self._last_full = -float("inf")
        self._clean_at: dict[str, float] = {}  # when each key was last seen clean (a change after it can be dated)
        self._forgotten = 0  # outcomes dropped since the last prune (counted in driftd_state_pruned_total{kind="outcome"})
        self.snapshots: SnapshotStore | None = None  # the snapshot store retention prunes (set by the runtime)
        self._watching_since: dict[str, float] = {}  # target -> when the current baselines began governing it
        self.safety = safety or SafetySettings()
        self.overrides = overrides
        self.audit = audit
        self._audited: dict[str, tuple[float, str, str, str]] = {}  # key -> the last non-action recorded for it
        self.break_glass = BreakGlassGate()
        self._overrides_read = -float("inf")
        self._file_overrides: list[Override] = []
        self._file_problems: list[str] = []
        self.override_sources: list[OverrideSource] = [t for t in targets.values() if isinstance(t, OverrideSource)]
        self.override_problems: list[str] = []
        self.gates: list[Gate] = default_chain(self.safety, dry_run=dry_run, break_glass=self.break_glass)
        br = self.safety.breaker
        self.breaker_thresholds = {
            REVERT: Threshold(br.share, br.min_resources),
            RETIREMENT: Threshold(br.retirement_share, br.retirement_min_resources),
        }
        self._acting: dict[str, DriftRecord] = {}  # key -> its open record while the target acts (for the journal)
        self._deferring: list[DeferredSync] = [t for t in targets.values() if isinstance(t, DeferredSync)]
        for dt in self._deferring:
            dt.defer_dir_sync = True  # settled after every reconcile, or at the end of a batch (deferred_sync)
        self._batch = 0  # deferred_sync() blocks open (run --once; one thread)
        for t in targets.values():
            if hasattr(t, "journal"):  # adapters that record snapshot ids durably before overwriting
                t.journal = self._journal

    def _journal(self, key: str, snapshots: tuple[str, ...]) -> None:
        """Snapshot-before-overwrite as a precondition: no durable record of the snapshot, no overwrite."""
        try:
            self.state.journal_snapshots(key, snapshots, self.clock.time(), rec=self._acting.get(key))
        except StateError as e:
            raise TargetError(f"snapshot saved but not recorded ({e}); not overwriting", escalate=True) from None

    def _audit(self, d: DesiredResource, action: str, result: str, reason: str = "", *,
               fields: list[dict[str, Any]] | None = None, restored: bool = False, snapshots: list[str] | tuple[str, ...] = (),
               once: tuple[float, str] | None = None, output: str | None = None) -> None:
        """One audit record (``observability/audit.py``) for an outcome that acted or chose not to act.

        ``once`` = (the drift's first seen, why) records a non-action only when it changes: a drift
        held or skipped at every scan is one record per decision, not one per scan.
        """
        if self.audit is None:
            return
        if once is not None:
            mark = (once[0], action, result, once[1])
            if self._audited.get(d.key) == mark:
                return
            self._audited[d.key] = mark
        else:
            self._audited.pop(d.key, None)
        before, after = drift_digests(fields or (), restored=restored)
        self.audit.record(time=self.clock.time(), key=d.key, target=d.target, baseline=d.baseline,
                          set_version=self.baselines.version, action=action, result=result, reason=reason,
                          before=before, after=after, snapshots=d.shown_snapshots(tuple(snapshots)), output=output)

    # ------------------------------------------------------------------ safety
    def _load_overrides(self, *, force: bool = False) -> None:
        """Re-read the break-glass files (at most every 2 s) and the overrides annotations ask for (as the
        adapters last saw them): an operator's override takes effect at once."""
        now = self.clock.time()
        mono = self.clock.monotonic()
        if self.overrides is not None and (force or mono - self._overrides_read >= 2.0):
            self._overrides_read = mono
            self._file_overrides, self._file_problems = self.overrides.load(now)
        active, problems = list(self._file_overrides), list(self._file_problems)
        max_ttl = self.safety.break_glass.max_ttl_seconds
        for src in self.override_sources:
            for req in src.override_requests():
                try:
                    o = from_annotations(req, now=now, max_ttl=max_ttl)
                except OverrideError as e:
                    problems.append(str(e))
                    continue
                if o is not None and o.expires > now:
                    active.append(o)
        for prob in problems:
            if prob not in self.override_problems:
                self.log.error(Event.OVERRIDE_REFUSED, error=prob)
        self.override_problems = problems
        old = {o.id: o for o in self.break_glass.overrides}
        for o in active:
            if old.get(o.id) != o:
                self.log.warning(Event.OVERRIDE_ACTIVE, id=o.id, scope=o.scope_text(), reason=o.reason, expires=o.expires,
                                 by=o.by)
                if o.id.startswith("annotation:"):  # kept in state too, so `driftd status` lists it
                    self.state.set_guard(f"override:{o.id}", until=o.expires, now=now, data=o.model_dump(exclude={"ttl"}))
        for gone in old.keys() - {o.id for o in active}:
            self.log.info(Event.OVERRIDE_ENDED, id=gone)
            if gone.startswith("annotation:"):
                self.state.clear_guard(f"override:{gone}")
        self.break_glass.overrides = active
        self.metrics.overrides_active.set(len(active))

    def _evaluate_breakers(self, counts: dict[str, dict[str, tuple[int, int]]], scanned_ok: set[str]) -> None:
        """Open or close each baseline's breakers from this scan's counts (before any key is enqueued)."""
        now = self.clock.time()
        open_now = self.state.guards("breaker:", now)
        known = {b for per in counts.values() for b in per}
        is_open = {}
        for sc in open_now:
            _, kind, baseline = sc.split(":", 2)
            if baseline in scanned_ok or baseline not in known:
                is_open[(kind, baseline)] = True
        ok = {k: {b: c for b, c in per.items() if b in scanned_ok} for k, per in counts.items()}
        for ch in evaluate(ok, is_open, self.breaker_thresholds):
            sc = breaker_scope(ch.kind, ch.baseline)
            if ch.reason is not None:
                self.state.set_guard(sc, until=_FOREVER, now=now, data={"reason": ch.reason, "at": now})
                self.log.error(Event.BREAKER_OPENED, baseline=ch.baseline, kind=ch.kind, reason=ch.reason)
                self.metrics.breaker_trips.labels(ch.baseline, ch.kind).inc()
                any_d = next((d for d in self.desired.values() if d.baseline == ch.baseline), None)
                if any_d is not None:
                    self._notify("BreakerOpened", any_d, ch.reason)
            else:
                self.state.clear_guard(sc)
                self.log.warning(Event.BREAKER_CLOSED, baseline=ch.baseline, kind=ch.kind)

    def reset_breakers(self, baseline: str | None = None) -> list[str]:
        """``driftd breaker reset``: close the open breakers (of one baseline); returns the scopes closed."""
        closed = []
        for sc in self.state.guards("breaker:", self.clock.time()):
            if baseline is None or sc.split(":", 2)[2] == baseline:
                self.state.clear_guard(sc)
                closed.append(sc)
        return closed

    # ------------------------------------------------------------------ baselines
    def set_baselines(self, bset: BaselineSet) -> None:
        """Swap in a complete baseline set (atomic for concurrent reconciles)."""
        # rows as each target compiles them: the set is never held as models (models/table.py)
        desired = DesiredTable(r for target in self.targets.values() for r in target.desired(bset, self.node))
        with self._swap:
            self.baselines = bset
            self._desired = desired
            self._watching_since = dict.fromkeys(self.targets, self.clock.time())
        set_baseline_version(bset.version)
        info: dict[str, Any] = {"version": bset.version, "hashes": dict(sorted(bset.hashes.items())),
                                "since": self.clock.time(), **({"signed_by": bset.signed_by} if bset.signed_by else {})}
        with self._swap:
            self._set_info = info
        try:  # what `driftd status` shows as in force; a failure here must not keep the new set out
            self.state.set_meta("baseline_set", info)
        except StateError as e:
            self.log.warning(Event.STATE_FAILED, error=f"baseline set not recorded: {e}")
        self.metrics.set_baselines(
            bset.version, ((b.metadata.name, b.kind, bset.hashes[b.metadata.name]) for b in bset.baselines), self.clock.time()
        )

    def baseline_set_info(self) -> dict[str, Any]:
        """The set in force as the drifts API, ``status`` and the PolicyReport name it: version, per-baseline hashes."""
        with self._swap:
            return dict(self._set_info)

    def target_name(self, key: str) -> str:
        """The name of the target a key belongs to."""
        prefix = ResourceKey.parse(key).prefix
        return self._by_prefix.get(prefix, prefix)

    @property
    def desired(self) -> DesiredTable:
        """The static desired set (host resources, compiled at load); containers and pods are discovered per scan."""
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
        static = self.desired
        discovered: dict[str, DesiredResource] = {}
        per_target: dict[str, list[int]] = {name: [0, 0, 0] for name in self.targets}
        down: dict[str, str] = {}
        for name, t in self.targets.items():
            t.begin_pass(full=full)
            try:
                for r in t.discover():
                    discovered[r.key] = r
            except TargetError as e:
                down[name] = str(e)
                per_target[name][2] += 1
                self.log.warning(Event.OBSERVE_FAILED, target=name, error=str(e))
        keys = frozenset(static).union(discovered)
        report = ScanReport(resources=len(keys), targets_down=down, keys=keys)
        self.log.debug(Event.SCAN_STARTED, resources=len(keys), full=full)
        active = self.state.active()
        rows: dict[str, ResourceResult] = {}
        to_enqueue: list[str] = []
        seen_at = self.clock.time()
        per_baseline: dict[str, list[int]] = {}  # baseline -> [resources, drifting, drifting to a retirement]
        bad_baselines: set[str] = set()  # of a target down or a resource that could not be observed
        node_retiring: set[str] = set()  # baselines with a rule that would retire this node
        packages: dict[tuple[str, str], int] = {}  # (baseline, severity) -> packages out of patch
        for key, d in _scan_order(static, discovered):
            if d.target in down:
                bad_baselines.add(d.baseline)
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
                bad_baselines.add(d.baseline)
                self.outcomes[key] = Outcome(
                    key=key, status=OutcomeStatus.ERROR, address=d.address, baseline=d.baseline, target=d.target, error=str(e)
                )
                self.log.warning(Event.OBSERVE_FAILED, key=key, target=d.target, baseline=d.baseline, error=str(e))
                if self.reporters:
                    rows[key] = self._row(d, ReportResult.ERROR, f"cannot observe: {e}")
                continue
            drift = diff(d, observed)
            if d.kind == "package" and isinstance(d.payload, HostPayload):
                pkey = (d.baseline, d.payload.severity or "medium")
                packages[pkey] = packages.get(pkey, 0) + (1 if drift and observed.actual.get("format") else 0)
            pb = per_baseline.setdefault(d.baseline, [0, 0, 0])
            pb[0] += 1
            if drift:
                report.drifted += 1
                counts[1] += 1
                pb[1] += 1
                p = make_plan(d, observed, drift)
                if action_class(p) == RETIREMENT:
                    # the retirement breaker counts what would be retired: this node once, however many of the
                    # baseline's rules (packages) ask for its retirement
                    node = any(a.action is Action.RETIRE_NODE for a in p.actions)
                    if not node or d.baseline not in node_retiring:
                        pb[2] += 1
                    if node:
                        node_retiring.add(d.baseline)
                to_enqueue.append(key)
            else:
                self._clean_at[key] = seen_at
                if key in active:
                    to_enqueue.append(key)
            if self.reporters:
                rows[key] = self._row(d, ReportResult.FAIL if drift else ReportResult.PASS,
                                      ("drifted: " + drifts_text(reportable(d, drift))) if drift else "compliant")
        if packages or "host" not in down:
            self.metrics.packages_out_of_patch.clear()
            for (b, sev), n in packages.items():
                self.metrics.packages_out_of_patch.labels(b, sev).set(n)
        self._evaluate_breakers({REVERT: {b: (c[0], c[1]) for b, c in per_baseline.items()},
                                 RETIREMENT: {b: (c[0], c[2]) for b, c in per_baseline.items()}},
                                set(per_baseline) - bad_baselines)
        due = seen_at + self.safety.deadline_margin_seconds
        for key in to_enqueue:
            rec = active.get(key)
            queue.add(key, urgent=rec is not None and rec.deadline <= due)
        for key in active.keys() - keys:
            if self.target_name(key) not in down:
                queue.add(key)  # gone or no longer governed: the reconciler closes the record
        self._forget(keys | active.keys(), down)
        queue.forget(keys | active.keys(), spare=lambda k: self.target_name(k) in down)
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
            self._scans[name] = {"at": self.clock.time(), "result": result, "resources": n}
        try:  # what `driftd status` shows as each target's last scan (DriftdScansStale's runbook points there)
            self.state.set_meta("scans", {"node": self.node.name, "targets": dict(sorted(self._scans.items()))})
        except StateError as e:
            self.log.warning(Event.STATE_FAILED, error=f"scan time not recorded: {e}")
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
        """Reconcile one key; never raises for adapter or state failures.

        Its deferred directory fsyncs are settled before it returns (outside a :meth:`deferred_sync` block):
        a failed one turns the outcome into a failure, retried.
        """
        try:
            return self._reconcile(key)
        except StateError as e:
            d = self.desired.get(key)
            self.log.error(Event.STATE_FAILED, key=key, error=str(e))
            out = Outcome(key=key, status=OutcomeStatus.ERROR, address=d.address if d else "", baseline=d.baseline if d else "",
                          target=d.target if d else self.target_name(key), error=str(e), retry=True)
            self.outcomes[key] = out
            return out
        finally:
            if not self._batch:
                self._sync_deferred(key)

    @contextlib.contextmanager
    def deferred_sync(self) -> Iterator[None]:
        """Reconciles inside the block leave their directory fsyncs to its end: one per directory per pass.

        ``run --once`` drains its queue inside one, so every rename is durable before the report and the
        summary say anything; a failed fsync makes the keys it concerns failures (exit 4).  One thread only.
        """
        self._batch += 1
        try:
            yield
        finally:
            self._batch -= 1
            if not self._batch:
                self._sync_deferred(None)

    def _sync_deferred(self, key: str | None) -> None:
        """Settle the targets' deferred fsyncs (``key`` done, or all); report each one that failed like a failed
        write: ``remediation.failed``, counted, and the outcome of its key a failure to retry."""
        for t in self._deferring:
            for k, error in t.settle(key):
                self.log.error(Event.REMEDIATION_FAILED, key=k, target=t.name, action=Action.WRITE_FILE.value, error=error)
                self.metrics.remediations.labels(t.name, Action.WRITE_FILE.value, RemediationResult.FAILED).inc()
                out = self.outcomes.get(k)
                if out is not None:
                    out.status, out.error, out.retry = OutcomeStatus.FAILED, error, True

    def _reconcile(self, key: str) -> Outcome:
        """The stages, in order: resolve → observe → diff → record → plan → gate → act → verify → record."""
        d = self._resolve_desired(key)
        if isinstance(d, Outcome):
            return d
        target = self.targets[d.target]
        log = self.log.bind(key=key, target=d.target, baseline=d.baseline)
        observed = self._observe(d, target, log)
        if isinstance(observed, Outcome):
            return observed
        drift = diff(d, observed)
        now = self.clock.time()
        if not drift:
            self._clean_at[key] = now
            rec0 = self.state.get_active(key)
            if rec0 is not None:
                self._resolve(rec0, d, now, "resolved externally" if rec0.last_result != "succeeded" else "remediated", log)
            return self._outcome(d, OutcomeStatus.CLEAN)
        fields = reportable(d, drift)
        rec = self._record_drift(d, fields, now, log, observed)
        p = make_plan(d, observed, drift)
        out = self._outcome(d, OutcomeStatus.REPORTED, mode=p.mode.value, drift=fields,
                            actions=[a.action.value for a in p.actions], first_seen=rec.first_seen, deadline=rec.deadline,
                            urgent=rec.deadline <= now + self.safety.deadline_margin_seconds)
        if p.blocked:
            return self._blocked(d, rec, p, out, now, log)
        if not p.actions:  # report-only rules
            return self._skipped(d, rec, p, out, now, log, "report", dry_run=False)
        action_names = "+".join(a.action.value for a in p.actions)
        if action_names == Action.RETIRE_NODE.value:
            if rec.last_action == action_names and rec.last_result == "succeeded":
                out.status = OutcomeStatus.RETIRED
                return out  # already retired for this drift: nothing more to do
            if (by := self._node_retired_for(key)) is not None:
                # one node, one retirement: a second package (or rule) out of patch adds no second drain or budget use
                out.status, out.error = OutcomeStatus.RETIRED, f"node already retired for {by}"
                self._audit(d, action_names, "skipped", f"node already retired for {by}", fields=fields,
                            once=(rec.first_seen, "already-retired"))
                return out
        verdict = self._gate(d, p, rec, now)
        if not verdict.allowed:
            return self._held(d, rec, p, out, verdict, now, log)
        if rec.held is not None:
            if rec.held.get("fingerprint") == self._fingerprint(d, drift):
                # acting again cannot help: the same action already "succeeded" and left this very drift
                log.warning(Event.REMEDIATION_HELD, action=action_names, reason=rec.held.get("reason"))
                self._audit(d, action_names, "held", f"terminal: {rec.held.get('reason')}", fields=fields,
                            once=(rec.first_seen, "terminal"))
                out.status, out.error = OutcomeStatus.FAILED, f"held: {rec.held.get('reason')} (not acting until the baseline or the resource changes)"
                return out
            rec = self.state.record_action(rec, now=now, action="none", result="released", attempt=False)
        if self.audit is not None and (why := self.audit.writable()) is not None:  # no action without its record
            return self._held(d, rec, p, out, Verdict("audit", f"the audit log cannot be written ({why}); not acting "
                                                      "until it can", until=now + 30.0, retry=True), now, log)
        if self.plan_only:
            return self._planned(d, rec, p, out, now)
        return self._act_and_verify(d, target, observed, drift, fields, p, rec, out, now, log)

    # ------------------------------------------------------------------ stages
    def _planned(self, d: DesiredResource, rec: DriftRecord, p: Plan, out: Outcome, now: float) -> Outcome:
        """``driftd plan``: what ``run`` would do now.  Counted as done (in the plan's copy of the state, never the
        agent's), so the budgets, the breaker's share and the flap limit meet the later plans of the pass as they
        would meet the actions."""
        self.state.record_action(rec, now=now, action="+".join(a.action.value for a in p.actions), result="succeeded",
                                 error="planned, not done", kind=action_class(p))
        out.mode = "plan"
        return out

    def _outcome(self, d: DesiredResource, status: OutcomeStatus, **kw: Any) -> Outcome:
        out = Outcome(key=d.key, status=status, address=d.address, baseline=d.baseline, target=d.target, **kw)
        self.outcomes[d.key] = out
        return out

    def _resolve_desired(self, key: str) -> DesiredResource | Outcome:
        d = self.desired.get(key)
        if d is not None:
            return d
        dynamic = self.targets.get(self.target_name(key))
        if dynamic is None or not isinstance(dynamic, EventSource):
            return self._unmanaged(key)  # a static target (host): its baseline entry was removed
        try:
            found = dynamic.resolve(key)
        except TargetError as e:
            out = Outcome(key=key, status=OutcomeStatus.ERROR, target=dynamic.name, error=str(e), retry=e.transient)
            self.outcomes[key] = out
            return out
        return found if found is not None else self._unmanaged(key, "gone")

    def _observe(self, d: DesiredResource, target: Target, log: Any) -> ObservedResource | Outcome:
        try:
            return target.observe(d)
        except ResourceGoneError:
            return self._unmanaged(d.key, "gone")
        except TargetError as e:
            log.warning(Event.OBSERVE_FAILED, error=str(e))
            return self._outcome(d, OutcomeStatus.ERROR, error=str(e), retry=e.transient)

    def _change_time(self, d: DesiredResource, observed: ObservedResource, now: float) -> float | None:
        """The change's own time, trusted only from when driftd could have seen it happen until now, else unknown.

        "Could have seen" is the last clean observation of the key, or (never seen clean: a new container or
        pod, a file changed before its first scan) when the current baselines began governing the target.
        """
        lower = self._clean_at.get(d.key, self._watching_since.get(d.target))
        t = observed.changed_at
        if t is None or lower is None or not lower - 1.0 <= t <= now + 1.0:
            return None  # a drift older than what driftd saw (or a clock skew): first seen stands for it
        return min(t, now)

    def _record_drift(self, d: DesiredResource, fields: list[dict[str, Any]], now: float, log: Any,
                      observed: ObservedResource) -> DriftRecord:
        # the change time counts only for a record this call opens (an open one keeps its first_seen and deadline)
        rec = self.state.open_drift(key=d.key, target=d.target, baseline=d.baseline, address=d.address, now=now,
                                    window_seconds=d.window.total_seconds(), fields=fields,
                                    changed_at=self._change_time(d, observed, now))
        new = rec.created
        if new:
            self.metrics.drifts_detected.labels(d.target, d.baseline).inc()
            if rec.changed_at is not None:
                self.metrics.time_to_detect.labels(d.target).observe(max(0.0, now - rec.changed_at))
            log.warning(Event.DRIFT_DETECTED, address=d.address, drift=fields, deadline=rec.deadline,
                        window_s=d.window.total_seconds())
            self._notify("DriftDetected", d, "drifted: " + drifts_text(fields))
        if now > rec.deadline and not rec.breached:
            self.state.mark_breached(rec, now)
            self.metrics.window_breaches.labels(d.target, d.baseline).inc()
            held_by = rec.last_result if (rec.last_result or "").startswith("held:") else None
            log.error(Event.DRIFT_WINDOW_BREACHED, address=d.address, first_seen=rec.first_seen, deadline=rec.deadline,
                      held_by=held_by)
            self._notify("DriftWindowBreached", d, f"not reverted within its {d.window.total_seconds():.0f}s window"
                         + (f" ({held_by}: {rec.last_error})" if held_by else f" (last result: {rec.last_result or 'none'})"))
            if (rec.last_result or "").startswith("held:"):
                self._escalate_held(d, rec, rec.last_error or rec.last_result or "", log)
        return rec

    def _blocked(self, d: DesiredResource, rec: DriftRecord, p: Plan, out: Outcome, now: float, log: Any) -> Outcome:
        assert p.blocked is not None
        self._audit(d, "+".join(a.action.value for a in p.actions) or "none", "blocked", p.blocked, fields=out.drift,
                    once=(rec.first_seen, p.blocked))
        if rec.last_result != "blocked":
            self._notify("RemediationBlocked", d, p.blocked)
        self.state.record_action(rec, now=now, action="none", result="blocked", error=p.blocked, attempt=False)
        log.error(Event.REMEDIATION_BLOCKED, reason=p.blocked, drift=out.drift)
        out.status, out.error = OutcomeStatus.BLOCKED, p.blocked
        return out

    def _skipped(self, d: DesiredResource, rec: DriftRecord, p: Plan, out: Outcome, now: float, log: Any, why: str,
                 *, dry_run: bool, reason: str = "report-only rules: nothing to do") -> Outcome:
        """Drift left in place by the mode (dry-run, a warn/dryrun baseline, report-only rules): reported."""
        self._audit(d, "+".join(a.action.value for a in p.actions) or "none", "skipped", f"{why}: {reason}",
                    fields=out.drift, once=(rec.first_seen, why))
        if rec.last_result != why:
            self.state.record_action(rec, now=now, action="none", result=why, attempt=False)
        for a in p.actions:
            self.metrics.remediations.labels(d.target, a.action.value, RemediationResult.SKIPPED).inc()
        log.info(Event.REMEDIATION_SKIPPED, mode=out.mode, dry_run=dry_run,
                 planned=[{"action": a.action.value, "reason": a.reason} for a in p.actions])
        return out

    def _gate(self, d: DesiredResource, p: Plan, rec: DriftRecord, now: float) -> Verdict:
        self._load_overrides()
        inp = GateInput(desired=d, plan=p, now=now, first_seen=rec.first_seen, deadline=rec.deadline,
                        baseline_hash=self.baselines.hashes.get(d.baseline, ""), changed_at=rec.changed_at)
        return run_chain(self.gates, inp, _View(self.state, now, d))

    def _held(self, d: DesiredResource, rec: DriftRecord, p: Plan, out: Outcome, v: Verdict, now: float,
              log: Any) -> Outcome:
        """A gate holds the plan: reported with the gate and why, recorded, counted, Evented; never dropped."""
        assert v.gate is not None
        if v.mode is not None:  # the mode gate: drift left by choice (dry-run, warn/dryrun baseline) is reported
            out.mode = v.mode.value
            return self._skipped(d, rec, p, out, now, log, v.gate, dry_run=v.gate == DryRunGate.name, reason=v.reason)
        result = f"held:{v.gate}"
        changed = rec.last_result != result or rec.last_error != v.reason
        self._audit(d, "+".join(a.action.value for a in p.actions), "held", f"{v.gate}: {v.reason}", fields=out.drift,
                    once=(rec.first_seen, v.gate))
        if v.quarantine:
            self.state.set_guard(flap_scope(d.key), until=_FOREVER, now=now, data={
                "reason": v.reason, "baseline_hash": self.baselines.hashes.get(d.baseline, ""), "at": now})
        if changed:
            self.state.record_action(rec, now=now, action="none", result=result, error=v.reason, attempt=False)
            self.metrics.held.labels(d.target, v.gate).inc()
            self._notify("RemediationHeld", d, f"held: {v.gate}: {v.reason}")
            self._update_row(d, ReportResult.FAIL, f"held: {v.gate}: {v.reason}")
            if now > rec.deadline:
                self._escalate_held(d, rec, f"{v.gate}: {v.reason}", log)
        log.warning(Event.REMEDIATION_HELD, gate=v.gate, reason=v.reason, until=v.until,
                    planned=[a.action.value for a in p.actions], first=changed)
        # not retried as a failure: the daemon comes back at ``until`` when the hold lifts by itself (a budget,
        # a grace, a persistence wait), else the next scan or change event does (a pass never sleeps on a hold)
        out.status, out.error = OutcomeStatus.HELD, f"held: {v.gate}: {v.reason}"
        out.until = v.until if v.retry else None
        return out

    def _escalate_held(self, d: DesiredResource, rec: DriftRecord, why: str, log: Any) -> None:
        """A drift held past its deadline needs a person: alert once per hold and window."""
        log.error(Event.REMEDIATION_ESCALATED, reason=f"held past its deadline: {why}", first_seen=rec.first_seen,
                  deadline=rec.deadline)
        self._notify("RemediationEscalated", d, f"held past its deadline: {why}")

    def _act_and_verify(self, d: DesiredResource, target: Target, observed: ObservedResource,
                        drift: tuple[FieldDrift, ...], fields: list[dict[str, Any]], p: Plan, rec: DriftRecord,
                        out: Outcome, now: float, log: Any) -> Outcome:
        action_names = "+".join(a.action.value for a in p.actions)
        kind = action_class(p)
        terminal: str | None = None
        try:
            self._acting[d.key] = rec
            try:
                result = self._act(target, d, observed, p)
            finally:
                self._acting.pop(d.key, None)
            if Action.RETIRE_NODE in result.applied:
                verify: tuple[FieldDrift, ...] = ()  # the node is retired; the host drift itself stays, reported
            else:
                try:
                    verify = diff(d, target.observe(d))
                except ResourceGoneError:
                    if not {Action.RETIRE, Action.EVICT} & set(result.applied):
                        raise
                    verify = ()  # retired or evicted: being gone is the remedy
            if verify and isinstance(target, WriteTracker) and target.changed_by_another_writer(d):
                # the revert landed, then another writer replaced or rewrote the resource: a new change (the flap
                # gate counts these reverts), not a revert that cannot take
                log.warning(Event.DRIFT_DETECTED, address=d.address, reason="changed again by another writer right "
                            "after the revert", drift=reportable(d, verify))
                verify = ()
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
            return self._unmanaged(d.key, "gone")
        except HeldError as e:  # a limit beyond this node (the cluster's retirement cap): a hold, not a failure
            return self._held(d, rec, p, out, Verdict(e.gate, str(e), until=now + e.retry_in, retry=True), now, log)
        except TargetError as e:
            return self._failed(d, p, rec, out, e, terminal, now, log, kind)
        return self._succeeded(d, p, rec, out, result, fields, log, kind)

    def _failed(self, d: DesiredResource, p: Plan, rec: DriftRecord, out: Outcome, e: TargetError, terminal: str | None,
                now: float, log: Any, kind: str) -> Outcome:
        action_names = "+".join(a.action.value for a in p.actions)
        held = {"fingerprint": terminal, "reason": str(e), "at": now} if terminal else None
        for a in p.actions:
            self.metrics.remediations.labels(d.target, a.action.value, RemediationResult.FAILED).inc()
        # logged before the state write: a full state disk must not swallow why the action failed
        log.error(Event.REMEDIATION_FAILED, action=action_names, error=str(e), attempts=rec.attempts + 1, transient=e.transient)
        self._audit(d, action_names, "failed", str(e), fields=out.drift)
        rec = self.state.record_action(rec, now=now, action=action_names, result="failed", error=str(e), held=held, kind=kind)
        if rec.consecutive_failures == 1:
            self._notify("RemediationFailed", d, f"{action_names} failed: {e}")
        at_threshold = rec.consecutive_failures == self.escalate_after
        if at_threshold or (e.escalate and rec.consecutive_failures == 1):
            log.error(Event.REMEDIATION_ESCALATED, action=action_names, error=str(e),
                      consecutive_failures=rec.consecutive_failures, first_seen=rec.first_seen)
            self._notify("RemediationEscalated", d, f"{action_names} failed {rec.consecutive_failures} times: {e}")
            retire = isinstance(d.payload, HostPayload) and d.payload.retire_on_failure
            if retire and (at_threshold or terminal):
                self._retire_node_on_failure(d, rec, str(e), now, log)
        out.status, out.error, out.retry = OutcomeStatus.FAILED, str(e), e.transient
        return out

    def _succeeded(self, d: DesiredResource, p: Plan, rec: DriftRecord, out: Outcome, result: ActResult,
                   fields: list[dict[str, Any]], log: Any, kind: str) -> Outcome:
        action_names = "+".join(a.action.value for a in p.actions)
        # a content hash of a secret is itself a secret: sensitive content shows no snapshot ids
        # (a container's sensitive env is no reason to hide the ids of its snapshot)
        shown = d.shown_snapshots(result.snapshots)
        self._audit(d, action_names, "succeeded", "", fields=fields, restored=Action.RETIRE_NODE not in result.applied,
                    snapshots=result.snapshots, output=result.output if Action.PATCH_HOOK in result.applied else None)
        for sid in shown:
            self.metrics.snapshots.labels(d.target).inc()
            log.info(Event.SNAPSHOT_SAVED, snapshot=sid, address=d.address)
        # a verified remediation closes its record in the same transaction (a retired node's drift stays open)
        node_retired = Action.RETIRE_NODE in result.applied
        done_at = self.clock.time()
        rec = self.state.record_action(rec, now=done_at, action=action_names, result="succeeded",
                                       snapshots=result.snapshots, kind=kind,
                                       resolution=None if node_retired else "remediated")
        for done in result.applied:
            self.metrics.remediations.labels(d.target, done.value, RemediationResult.SUCCEEDED).inc()
        log.info(Event.REMEDIATION_SUCCEEDED, action=action_names, snapshots=shown, drift=fields)
        if node_retired:
            self._notify("NodeRetired", d, f"node retired: drifted: {drifts_text(fields)}")
            out.status, out.snapshots = OutcomeStatus.RETIRED, shown
            return out  # the record stays open: the drift is still there, on a node taken out of service
        retired = {Action.RETIRE, Action.EVICT} & set(result.applied) and kind == RETIREMENT
        self._notify("DriftRetired" if retired else "DriftReverted", d,
                     f"{'retired' if retired else 'reverted'} ({action_names}): {drifts_text(fields)}", warning=False)
        self._resolve(rec, d, done_at, "remediated", log, recorded=True)
        self._update_row(d, ReportResult.PASS,
                         f"{'retired' if retired else 'reverted'} ({action_names}); was: {drifts_text(fields)}")
        out.status, out.snapshots, out.retired = OutcomeStatus.REMEDIATED, shown, bool(retired)
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
            severity=d.payload.severity if isinstance(d.payload, HostPayload) else None,
        )

    def _update_row(self, d: DesiredResource, result: ReportResult, message: str) -> None:
        if self.reporters:
            with self._swap:
                self._report_rows[d.key] = self._row(d, result, message)
                self._report_dirty = True

    def publish_report(self, *, only_if_changed: bool = False) -> None:
        """Hand the current per-resource results to every reporter (PolicyReport), once every rename is durable."""
        self._sync_deferred(None)
        with self._swap:
            if only_if_changed and not self._report_dirty:
                return
            rows = list(self._report_rows.values())
            self._report_dirty = False
        for r in self.reporters:
            try:
                r.publish_report(rows, baseline_set=self.baselines.version)
            except Exception as e:  # a report failure must not stop enforcement
                self.log.warning(Event.OBSERVE_FAILED, error=f"report not published: {e}")

    def _act(self, target: Target, d: DesiredResource, observed: ObservedResource, p: Plan) -> ActResult:
        """Apply a plan; node retirement goes to the retirer, everything else to the target."""
        if any(a.action is Action.RETIRE_NODE for a in p.actions):
            self._retire_node(d, "; ".join(a.reason for a in p.actions))
            return ActResult(key=d.key, applied=(Action.RETIRE_NODE,))
        hook = next((a for a in p.actions if a.action is Action.PATCH_HOOK), None)
        if hook is not None:
            if self.patcher is None:
                raise TargetError("a package rule asks for the patch hook but none is configured (set patch_hook)",
                                  transient=False)
            output = self.patcher.patch(f"{d.baseline}: {hook.reason}", hook.params)
            return ActResult(key=d.key, applied=(Action.PATCH_HOOK,), output=output)
        return target.apply(d, observed, p)

    def _node_retired_for(self, key: str) -> str | None:
        """The key of an open drift this node was retired for (None: the node is not retired)."""
        for k, r in self.state.active().items():
            if k != key and r.last_action == Action.RETIRE_NODE.value and r.last_result == "succeeded":
                return k
        return None

    def _retire_node(self, d: DesiredResource, reason: str) -> None:
        if self.retirer is None:
            raise TargetError(
                "node retirement requested but no retirer is configured (enable the Kubernetes target or set retire_hook)",
                transient=False,
            )
        self.retirer.retire_node(f"{d.baseline}: {d.address}: {reason}")

    def _retire_node_on_failure(self, d: DesiredResource, rec: DriftRecord, error: str, now: float, log: Any) -> None:
        """Retire the node for a resource that cannot be restored: through the same gates as any retirement."""
        if self._node_retired_for(d.key) is not None:
            return  # the node is out of service already
        p = Plan(key=d.key, mode=d.enforcement, drift=(), actions=(
            PlannedAction(action=Action.RETIRE_NODE, reason=f"cannot be restored: {error}"),))
        v = self._gate(d, p, rec, now)
        if v.allowed and self.audit is not None and (why := self.audit.writable()) is not None:
            v = Verdict("audit", f"the audit log cannot be written ({why}); not acting until it can")
        retire = Action.RETIRE_NODE.value
        if not v.allowed:
            log.warning(Event.REMEDIATION_HELD, gate=v.gate, reason=v.reason, planned=[Action.RETIRE_NODE.value])
            self.metrics.held.labels(d.target, str(v.gate)).inc()
            self._audit(d, retire, "held", f"{v.gate}: {v.reason}", fields=rec.fields)
            return
        try:
            self._retire_node(d, f"cannot be restored: {error}")
            self._audit(d, retire, "succeeded", f"cannot be restored: {error}", fields=rec.fields)
            self.state.note_action(rec, now=now, action=Action.RETIRE_NODE.value, result="succeeded", kind=RETIREMENT)
            self.metrics.remediations.labels(d.target, Action.RETIRE_NODE.value, RemediationResult.SUCCEEDED).inc()
            self._notify("NodeRetired", d, f"node retired: {d.address} cannot be restored")
        except HeldError as e:
            log.warning(Event.REMEDIATION_HELD, gate=e.gate, reason=str(e), planned=[Action.RETIRE_NODE.value])
            self.metrics.held.labels(d.target, e.gate).inc()
            self._audit(d, retire, "held", f"{e.gate}: {e}", fields=rec.fields)
        except TargetError as e:
            self.metrics.remediations.labels(d.target, Action.RETIRE_NODE.value, RemediationResult.FAILED).inc()
            log.error(Event.REMEDIATION_FAILED, action=Action.RETIRE_NODE.value, error=str(e))
            self._audit(d, retire, "failed", str(e), fields=rec.fields)

    def _notify(self, reason: str, d: DesiredResource, message: str, *, warning: bool = True) -> None:
        for n in self.notifiers:
            try:
                n.notify(reason, d, message, warning=warning)
            except Exception as e:  # telling people must never break remediation
                self.log.warning(Event.OBSERVE_FAILED, key=d.key, error=f"notification failed: {e}")

    def _resolve(self, rec: DriftRecord, d: DesiredResource, now: float, resolution: str, log: Any, *,
                 recorded: bool = False) -> None:
        """Close the drift record (``recorded``: the state write already did), count and log it."""
        if not recorded:
            self.state.resolve(rec, now=now, resolution=resolution)
        if resolution == "remediated":
            since = rec.changed_at if rec.changed_at is not None else rec.first_seen
            self.metrics.time_to_remediate.labels(d.target).observe(max(0.0, now - since))
        log.info(
            Event.DRIFT_RESOLVED,
            resolution=resolution,
            first_seen=rec.first_seen,
            seconds_open=round(now - rec.first_seen, 3),
            snapshots=d.shown_snapshots(rec.snapshots),
        )

    # ------------------------------------------------------------------ retention
    def _forget(self, keep: frozenset[str] | set[str], down: dict[str, str]) -> int:
        """Drop what the engine remembers of keys a scan no longer sees (a container or pod gone, a rule removed)
        and that have no open record; keys of a target that is down are kept.  Returns outcomes dropped."""
        dropped = 0
        for key in list(self.outcomes):
            if key not in keep and self.target_name(key) not in down:
                dropped += self.outcomes.pop(key, None) is not None
        for memo in (self._clean_at, self._audited):
            for key in list(memo):
                if key not in keep and self.target_name(key) not in down:
                    memo.pop(key, None)
        self._forgotten += dropped
        return dropped

    def prune(self, retention: RetentionSettings) -> dict[str, int]:
        """Apply the retention policy (the daemon's prune job): old resolved records and action rows, old or
        excess snapshots no open drift or latest action names, outcomes over the cap.  Counts per kind."""
        now = self.clock.time()
        # never the action rows the budget and flap gates still count (settings refuse a shorter age; clamped here too)
        keep_actions = max(retention.actions_max_age_seconds, self.safety.budget.interval_seconds,
                           self.safety.flap.window_seconds)
        counts = self.state.prune(resolved_before=now - retention.resolved_drift_max_age_seconds,
                                  actions_before=now - keep_actions)
        counts["snapshot"] = 0
        if self.snapshots is not None:
            counts["snapshot"] = self.snapshots.prune(keep=self.state.protected_snapshots(),
                                                      older_than=now - retention.snapshots_max_age_seconds,
                                                      max_total_bytes=retention.snapshots_max_bytes)
        over = len(self.outcomes) - retention.outcomes_max
        if over > 0:
            active = self.state.active()
            for key in [k for k in list(self.outcomes) if k not in active][:over]:  # oldest first (insertion order)
                self.outcomes.pop(key, None)
                self._clean_at.pop(key, None)
                self._audited.pop(key, None)
                self._forgotten += 1
        counts["outcome"], self._forgotten = self._forgotten, 0
        for kind, n in counts.items():
            if n:
                self.metrics.pruned.labels(kind).inc(n)
        self.log.info(Event.STATE_PRUNED, **counts)
        return counts

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

    def work(self, queue: KeyedQueue, key: str) -> None:
        """The daemon's worker step: reconcile ``key``, then tell the queue how and when to come back.

        A failure comes back after backoff, keeping its urgency (a drift at its deadline goes first);
        a hold that lifts by itself (``Outcome.until``) comes back when it lifts.
        """
        try:
            out = self.reconcile(key)
        except Exception as e:  # an internal error must not kill the worker: retried after backoff
            self.log.exception(Event.REMEDIATION_FAILED, key=key, error=f"internal error: {e}")
            queue.done(key, failed=True)
            return
        queue.done(key, failed=out.retry, urgent=out.urgent)
        if out.status is OutcomeStatus.HELD and out.until is not None:
            queue.add(key, max(0.0, out.until - self.clock.time()), urgent=out.urgent)
