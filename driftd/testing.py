"""Fakes for tests of your own baselines and pipelines: clock, in-memory target, log capture.

Pipeline position: none of its own; this is a small composition root for tests.  It wires
the real :class:`~driftd.engine.reconciler.Engine` (observe → diff → plan → act → verify),
a real SQLite :class:`~driftd.engine.state.StateStore` and real metrics over the targets
you give it, usually a :class:`MemoryTarget`, with a :class:`FakeClock` that only moves
when told to.

Example (pytest)::

    from driftd.testing import FakeClock, MemoryTarget, build_engine, capture_logs

    def test_drift_is_reverted(tmp_path):
        target = MemoryTarget({"web": {"replicas": 5}}, expected={"web": {"replicas": 3}})
        pipeline = build_engine(target, state_dir=tmp_path / "state", clock=FakeClock())

        with capture_logs() as logs:
            summary = pipeline.run_once()

        assert target.get("web") == {"replicas": 3}
        assert [o.status for o in summary.outcomes] == ["remediated"]
        assert [e["event"] for e in logs if e.get("key") == "memory:web"][:1] == ["drift.detected"]
        target.set("web", replicas=7)  # someone changes it again
        pipeline.clock.advance(60)
        assert pipeline.run_once().outcomes[0].status == "remediated"

``target.down = True`` makes the target unreachable (the pass exits with ``ExitCode.ERROR``
and lists it in ``summary.targets_down``); ``target.writes`` lists every field the adapter
set, ``target.world()`` is a copy of everything to compare before and after a dry run.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping, MutableMapping
from dataclasses import dataclass
from os import PathLike
from pathlib import Path
from typing import Any

import structlog
import structlog.testing

from driftd.baselines.loader import BaselineSet
from driftd.engine.clock import Clock, FakeClock
from driftd.engine.once import PassSummary, run_once
from driftd.engine.queue import Backoff, KeyedQueue
from driftd.engine.reconciler import Engine
from driftd.engine.state import StateStore
from driftd.observability.metrics import Metrics
from driftd.targets.base import NodeInfo, Target
from driftd.targets.memory import MemoryTarget, Write


@contextlib.contextmanager
def capture_logs() -> Iterator[list[MutableMapping[str, Any]]]:
    """Every event logged inside the block, at any level, as dicts (``event``, ``log_level``, fields).

    :func:`structlog.testing.capture_logs`, plus: the level filter set by
    ``configure_logging`` is lifted for the block, so info and debug events are seen too.
    """
    wrapper = structlog.get_config().get("wrapper_class")
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(0))
    try:
        with structlog.testing.capture_logs() as logs:
            yield logs
    finally:
        structlog.configure(wrapper_class=wrapper)


@dataclass
class Pipeline:
    """An engine over some targets, with its queue, state, metrics and clock (like the CLI's runtime)."""

    engine: Engine
    queue: KeyedQueue
    state: StateStore
    metrics: Metrics
    clock: Clock

    def run_once(self, *, attempts: int = 3) -> PassSummary:
        """One pass (``driftd run --once``): scan, reconcile every queued key, summarise."""
        return run_once(self.engine, self.queue, attempts=attempts)

    def close(self) -> None:
        self.state.close()


def build_engine(
    targets: Target | Mapping[str, Target],
    *,
    state_dir: str | PathLike[str],
    dry_run: bool = False,
    clock: Clock | None = None,
    metrics: Metrics | None = None,
    baselines: BaselineSet | None = None,
    node: NodeInfo | None = None,
) -> Pipeline:
    """An :class:`Engine` over ``targets`` (one target, or ``{name: target}``) with a fresh state store.

    ``baselines`` is handed to every target's ``desired()`` (a :class:`MemoryTarget` carries
    its own desired state and ignores it); ``clock`` defaults to a new :class:`FakeClock`,
    which the queue's backoff sleeps on too, so retries take no real time; ``metrics``
    defaults to a :class:`Metrics` with its own registry (``pipeline.metrics.registry``).
    """
    by_name = dict(targets) if isinstance(targets, Mapping) else {targets.name: targets}
    clock = clock if clock is not None else FakeClock()
    Path(state_dir).mkdir(parents=True, exist_ok=True)
    state = StateStore(state_dir)
    metrics = metrics if metrics is not None else Metrics(targets=list(by_name))
    for name, t in by_name.items():
        reach = getattr(t, "reach", None)
        if reach is not None:  # as the composition root does: the target_up gauge follows reachability
            gauge = metrics.target_up.labels(name)
            reach.on_change = lambda up, _gauge=gauge: _gauge.set(1 if up else 0)
    engine = Engine(targets=by_name, state=state, metrics=metrics, node=node or NodeInfo(name="node-a"),
                    dry_run=dry_run, clock=clock)
    engine.set_baselines(baselines if baselines is not None else BaselineSet.empty())
    queue = KeyedQueue(clock=clock, backoff=Backoff(0.1, 1.0))
    return Pipeline(engine=engine, queue=queue, state=state, metrics=metrics, clock=clock)


__all__ = ["FakeClock", "MemoryTarget", "Pipeline", "Write", "build_engine", "capture_logs"]
