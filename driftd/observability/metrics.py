"""Prometheus metrics on an injected registry (observability edge).

Pipeline position: the engine records into :class:`Metrics`; ``/metrics`` exposes the
registry.  Gauges that describe current state (active drifts, oldest drift age,
persistent failures) are computed from the state store at scrape time by
:class:`StateCollector`, so they are never stale between scans.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from driftd.core.kinds import actions_of
from driftd.models.resources import Action, RemediationResult

ACTIONS = tuple(a.value for a in Action)
RESULTS = tuple(r.value for r in RemediationResult)
TARGETS = ("host",)
# why the host file watcher fell back to the scan for some or all paths (driftd.targets.inotify)
INOTIFY_DEGRADED_REASONS = ("unavailable", "watch_limit", "watch_failed", "queue_overflow", "error")
# what the retention policy prunes (driftd_state_pruned_total{kind})
PRUNED_KINDS = ("drift", "action", "snapshot", "outcome")
# no ``*_created`` series: they double every counter's and histogram's series for a value nobody alerts on
disable_created_metrics()  # type: ignore[no-untyped-call]
TTR_BUCKETS = (1, 5, 15, 30, 60, 120, 300, 600, 900, 1200, 1800, 2700, 3600, 7200)


class Metrics:
    """Every driftd metric, label values pre-created so series exist from the start.

    Remediation series are pre-created only for the actions a target can take (``actions``,
    by default its kind handlers' steps, :func:`driftd.core.kinds.actions_of`): no
    ``evict`` series for the host, no ``write_file`` for Docker.  The catalogue of every
    metric, its labels and unit is ``docs/metrics.md`` (``tests/test_metrics_catalogue.py``).
    """

    def __init__(self, registry: CollectorRegistry | None = None, targets: Iterable[str] = TARGETS,
                 actions: Mapping[str, Iterable[str]] | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.scans = Counter("driftd_scans_total", "Full scans by target and result.", ["target", "result"], registry=r)
        self.scan_duration = Histogram(
            "driftd_scan_duration_seconds",
            "Duration of a full scan (observe + diff).",
            ["target"],
            registry=r,
            buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
        )
        self.resources = Gauge("driftd_resources_observed", "Resources observed by the last scan.", ["target"], registry=r)
        self.drifts_detected = Counter("driftd_drifts_detected_total", "New drifts detected.", ["target", "baseline"], registry=r)
        self.remediations = Counter(
            "driftd_remediations_total", "Remediation actions by action and result.", ["target", "action", "result"], registry=r
        )
        self.time_to_remediate = Histogram(
            "driftd_time_to_remediate_seconds",
            "From the change (where its time is known, else first detection) to verified revert.",
            ["target"],
            buckets=TTR_BUCKETS,
            registry=r,
        )
        self.time_to_detect = Histogram(
            "driftd_time_to_detect_seconds",
            "From the change (a file's ctime) to driftd seeing the drift, where the change time is known.",
            ["target"],
            buckets=(0.1, 0.25, 0.5, 1, 2, 5, 15, 30, 60, 120, 300, 600, 1800),
            registry=r,
        )
        self.window_breaches = Counter(
            "driftd_window_breaches_total", "Drifts still present after their window ended.", ["target", "baseline"], registry=r
        )
        self.snapshots = Counter(
            "driftd_snapshots_total", "Snapshots of drifted state saved before overwriting.", ["target"], registry=r
        )
        self.baseline_info = Gauge(
            "driftd_baseline_info", "Active baselines (value 1) with their content hash.", ["name", "kind", "hash"], registry=r
        )
        self.baseline_set_info = Gauge("driftd_baseline_set_info", "Active baseline set version.", ["version"], registry=r)
        self.baseline_load_errors = Counter(
            "driftd_baseline_load_errors_total", "Baseline sets rejected (the previous set stayed in force).", registry=r
        )
        self.baseline_last_reload = Gauge(
            "driftd_baseline_last_reload_success_timestamp_seconds",
            "When a baseline set was last loaded successfully.",
            registry=r,
        )
        self.events = Counter("driftd_events_total", "Change events that queued a targeted reconcile.", ["target"], registry=r)
        self.target_up = Gauge("driftd_target_up", "1 when the target's last scan could observe it.", ["target"], registry=r)
        self.last_scan = Gauge("driftd_last_scan_timestamp_seconds", "End of the last completed scan.", ["target"], registry=r)
        self.held = Counter(
            "driftd_held_total", "Plans a safety gate started holding (budget, breaker, break-glass, flap, retire).",
            ["target", "gate"], registry=r,
        )
        self.breaker_trips = Counter(
            "driftd_breaker_trips_total", "Circuit breakers opened by a mass drift of one baseline.", ["baseline", "kind"],
            registry=r,
        )
        self.overrides_active = Gauge("driftd_overrides_active", "Active break-glass overrides on this node.", registry=r)
        self.inotify_watches = Gauge(
            "driftd_inotify_watches", "inotify watches held on host directories (0: host paths only on the scan).", registry=r
        )
        self.inotify_degraded = Counter(
            "driftd_inotify_degraded_total",
            "Times the host file watcher fell back to the scan (inotify unavailable, watches exhausted, queue overflow).",
            ["reason"],
            registry=r,
        )
        self.audit_write_errors = Counter(
            "driftd_audit_write_errors_total",
            "Audit log writes that failed (disk full, I/O error); acting is held until the log is writable again.",
            registry=r,
        )
        self.packages_out_of_patch = Gauge(
            "driftd_packages_out_of_patch",
            "Installed packages the last scan found outside their packages rule (below the minimum, outside the "
            "range, or present when they must be absent), by baseline and severity.",
            ["baseline", "severity"],
            registry=r,
        )
        self.pruned = Counter(
            "driftd_state_pruned_total",
            "Records the retention policy removed, by kind (resolved drift rows, action rows, snapshots, outcomes).",
            ["kind"],
            registry=r,
        )
        for kind in PRUNED_KINDS:
            self.pruned.labels(kind)
        for reason in INOTIFY_DEGRADED_REASONS:
            self.inotify_degraded.labels(reason)
        for t in targets:
            for res in ("clean", "drift", "error"):
                self.scans.labels(t, res)
            self.scan_duration.labels(t)
            self.resources.labels(t)
            self.time_to_remediate.labels(t)
            self.snapshots.labels(t)
            self.target_up.labels(t)
            self.events.labels(t)
            for a in sorted(actions[t] if actions is not None and t in actions else actions_of(t)):
                for res in RESULTS:
                    self.remediations.labels(t, a, res)

    def set_baselines(self, version: str, baselines: Iterable[tuple[str, str, str]], when: float) -> None:
        self.baseline_info.clear()
        for name, kind, h in baselines:
            self.baseline_info.labels(name, kind, h).set(1)
        self.baseline_set_info.clear()
        self.baseline_set_info.labels(version).set(1)
        self.baseline_last_reload.set(when)


class StateCollector(Collector):
    """Gauges read from the state store at scrape time."""

    def __init__(self, summary: Callable[[], dict[str, Any]], targets: Iterable[str] = TARGETS) -> None:
        self._summary = summary
        self._targets = tuple(targets)

    def _per_target(self, values: dict[str, Any]) -> list[tuple[str, Any]]:
        """Every known target (0 when it has no drift) plus any other reported."""
        return sorted({**dict.fromkeys(self._targets, 0), **values}.items())

    def collect(self) -> Iterable[GaugeMetricFamily]:
        s = self._summary()
        active = GaugeMetricFamily("driftd_active_drifts", "Drifts not yet remediated.", labels=["target", "baseline"])
        for (target, baseline), n in sorted(s["active"].items()):
            active.add_metric([target, baseline], n)
        yield active
        oldest = GaugeMetricFamily(
            "driftd_oldest_unremediated_drift_age_seconds",
            "Age of the oldest drift not yet remediated (0 when none).",
            labels=["target"],
        )
        for target, age in self._per_target(s["oldest_age"]):
            oldest.add_metric([target], age)
        yield oldest
        failing = GaugeMetricFamily(
            "driftd_remediation_failing",
            "Drifts whose remediation failed at least the escalation threshold in a row.",
            labels=["target"],
        )
        for target, n in self._per_target(s["failing"]):
            failing.add_metric([target], n)
        yield failing
        breached = GaugeMetricFamily("driftd_drifts_past_deadline", "Active drifts whose window has ended.", labels=["target"])
        for target, n in self._per_target(s["past_deadline"]):
            breached.add_metric([target], n)
        yield breached
        near = GaugeMetricFamily("driftd_drifts_near_deadline",
                                 "Active drifts whose deadline is within safety.deadline_margin_seconds.", labels=["target"])
        for target, n in self._per_target(s.get("near_deadline", {})):
            near.add_metric([target], n)
        yield near
        held = GaugeMetricFamily("driftd_drifts_held", "Active drifts a safety gate holds, by gate.", labels=["target", "gate"])
        overdue = GaugeMetricFamily("driftd_drifts_held_past_deadline",
                                    "Active drifts a safety gate holds after their window ended (escalated).",
                                    labels=["target", "gate"])
        for (target, gate), n in sorted(s.get("held", {}).items()):
            held.add_metric([target, gate], n)
            overdue.add_metric([target, gate], s["held_past_deadline"].get((target, gate), 0))
        yield held
        yield overdue
        breakers = GaugeMetricFamily("driftd_breaker_open",
                                     "1 for each open circuit breaker (a baseline's reverts or retirements stopped).",
                                     labels=["baseline", "kind"])
        for kind, baseline in s.get("breakers", []):
            breakers.add_metric([baseline, kind], 1)
        yield breakers
        flapping = GaugeMetricFamily("driftd_flapping_resources",
                                     "Resources quarantined as flapping (acting stopped until flap reset or a baseline change).",
                                     labels=["target"])
        for target, n in self._per_target(s.get("flapping", {})):
            flapping.add_metric([target], n)
        yield flapping
        store = s.get("snapshot_store")
        if store is not None:
            size = GaugeMetricFamily("driftd_snapshot_store_bytes",
                                     "Bytes held in the snapshot store (drifted content kept before overwrites).")
            size.add_metric([], float(store["bytes"]))
            yield size
            count = GaugeMetricFamily("driftd_snapshot_store_snapshots", "Snapshots held in the snapshot store.")
            count.add_metric([], float(store["count"]))
            yield count

    def describe(self) -> Iterable[GaugeMetricFamily]:
        return []
