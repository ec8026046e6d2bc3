"""Metrics that record nothing, for one-shot runs (observability edge).

Pipeline position: ``driftd run --once`` hands the engine these instead of
:class:`driftd.observability.metrics.Metrics`: nothing scrapes a process that exits after
one pass, and importing ``prometheus_client`` and pre-creating every series is a visible
share of its start-up.  Same surface: every metric attribute accepts ``labels(...)``
followed by ``inc``/``set``/``observe``/``clear``.
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

    def __getattr__(self, name: str) -> _NullSeries:
        if name.startswith("__"):
            raise AttributeError(name)
        return _SERIES

    def set_baselines(self, version: str, baselines: Iterable[tuple[str, str, str]], when: float) -> None:
        pass
