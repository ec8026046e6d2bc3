"""Metrics that record nothing, for one-shot runs (observability edge).

Pipeline position: ``driftd run --once`` hands the engine these instead of
:class:`driftd.observability.metrics.Metrics`: nothing scrapes a process that exits after
one pass, and importing ``prometheus_client`` and pre-creating every series is a visible
share of its start-up.  Same surface, name for name: :data:`METRIC_NAMES` lists the
metric attributes of ``Metrics`` (``tests/test_perf_paths.py`` holds the two equal), each
accepting ``labels(...)`` followed by ``inc``/``set``/``observe``/``clear``; any other name
is an ``AttributeError``, as on the real metrics.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any


class _NullSeries:
    def labels(self, *_values: Any, **_kw: Any) -> _NullSeries:
        return self

    def inc(self, _amount: float = 1.0) -> None:
        pass

    def set(self, _value: float) -> None:
        pass

    def observe(self, _value: float) -> None:
        pass

    def clear(self) -> None:
        pass


_SERIES = _NullSeries()


class NullMetrics:
    """Drop-in for :class:`~driftd.observability.metrics.Metrics` that records nothing."""

    registry: Any = None

    scans = _SERIES
    scan_duration = _SERIES
    resources = _SERIES
    drifts_detected = _SERIES
    remediations = _SERIES
    time_to_remediate = _SERIES
    time_to_detect = _SERIES
    window_breaches = _SERIES
    snapshots = _SERIES
    baseline_info = _SERIES
    baseline_set_info = _SERIES
    baseline_load_errors = _SERIES
    baseline_last_reload = _SERIES
    events = _SERIES
    target_up = _SERIES
    last_scan = _SERIES
    held = _SERIES
    breaker_trips = _SERIES
    overrides_active = _SERIES
    inotify_watches = _SERIES
    inotify_degraded = _SERIES
    audit_write_errors = _SERIES
    pruned = _SERIES
    packages_out_of_patch = _SERIES

    def set_baselines(self, version: str, baselines: Iterable[tuple[str, str, str]], when: float) -> None:
        pass


METRIC_NAMES: tuple[str, ...] = tuple(name for name, value in vars(NullMetrics).items() if value is _SERIES)
"""Every metric attribute, in definition order: the same names ``Metrics`` defines."""
