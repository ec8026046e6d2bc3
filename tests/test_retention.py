"""Retention: state rows, snapshots and in-memory maps stay bounded (Engine.prune, the scan's forgetting).

Store-level tests run the real SQLite state store and the real snapshot store under tmp_path;
the 24-hour soak drives a real engine with an injected clock over a target whose container
names rotate (5 of 20 replaced every 5 minutes, some drifted and reverted with a real snapshot
each), and checks every table, the snapshot store, the engine's and the queue's maps and the
traced Python memory against bounds that do not grow with the names seen.  The same soak with
retention off shows the state growing: the bounds can fail.
"""

from __future__ import annotations

import gc
import json
import os
import tracemalloc
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from pydantic import ValidationError

from driftd.engine.clock import FakeClock
from driftd.engine.state import StateStore
from driftd.models.resources import ActResult, DesiredResource, ObservedResource, Plan
from driftd.observability.metrics import Metrics, StateCollector
from driftd.safety.snapshots import SnapshotStore
from driftd.settings import RetentionSettings, load_settings
from driftd.targets.memory import MemoryTarget
from driftd.testing import Pipeline, build_engine

HOUR = 3600.0
DAY = 24 * HOUR


def store_bytes(root: Path) -> tuple[int, int]:
    """(bytes, files) of the snapshot store as the filesystem says."""
    sizes = [p.stat().st_size for p in (root / "sha256").rglob("*") if p.is_file()] if (root / "sha256").exists() else []
    return sum(sizes), len(sizes)


def open_and_resolve(state: StateStore, key: str, now: float, *, snapshots: tuple[str, ...] = (), resolve: bool = True):
    rec = state.open_drift(key=key, target="memory", baseline="b", address=key, now=now, window_seconds=1800, fields=[])
    return state.record_action(rec, now=now, action="set", result="succeeded", snapshots=snapshots, kind="revert",
                               resolution="remediated" if resolve else None)


# ---------------------------------------------------------------------------- settings
def test_action_rows_the_gates_count_cannot_be_pruned_by_configuration() -> None:
    with pytest.raises(ValidationError, match=r"actions_max_age_seconds \(600\) must be at least 3600"):
        load_settings(retention={"actions_max_age_seconds": 600})
    with pytest.raises(ValidationError, match="must be at least 7200"):
        load_settings(retention={"actions_max_age_seconds": 3600}, safety={"flap": {"window_seconds": 7200}})
    assert load_settings(retention={"actions_max_age_seconds": 3600}).retention.actions_max_age_seconds == 3600


# ---------------------------------------------------------------------------- the state store
def test_prune_removes_old_resolved_records_and_keeps_open_and_recent_ones(tmp_path: Path) -> None:
    state = StateStore(tmp_path)
    t0 = 1_800_000_000.0
    open_and_resolve(state, "memory:old", t0)
    open_and_resolve(state, "memory:recent", t0 + 5 * HOUR)
    still_open = open_and_resolve(state, "memory:open", t0, resolve=False)
    assert state.counts() == {"drift": 3, "actions": 3, "guards": 0}
    counts = state.prune(resolved_before=t0 + HOUR, actions_before=t0 + HOUR)
    assert counts == {"drift": 1, "action": 1}
    assert set(state.active()) == {"memory:open"} and state.actions(still_open.id), "an open drift keeps its history"
    assert state.counts() == {"drift": 2, "actions": 2, "guards": 0}
    assert state.prune(resolved_before=t0 + HOUR, actions_before=t0 + HOUR) == {"drift": 0, "action": 0}


def test_snapshots_an_open_drift_or_a_latest_action_names_survive_age_and_size(tmp_path: Path) -> None:
    clock = FakeClock()
    store = SnapshotStore(tmp_path / "snapshots", clock=clock.time)
    state = StateStore(tmp_path)
    old = [store.put(f"old {i}\n".encode() * 100) for i in range(4)]  # 4 x 600 bytes, dated now
    clock.advance(2 * HOUR)
    new = []
    for i in range(3):
        new.append(store.put(f"new {i}\n".encode() * 100))
        clock.advance(1)
    open_and_resolve(state, "memory:a", clock.time(), snapshots=(old[0],), resolve=False)  # open drift
    open_and_resolve(state, "memory:b", clock.time() - 3 * HOUR, snapshots=(old[1],))  # b's latest action
    assert state.protected_snapshots() == {old[0], old[1]}
    on_disk = store_bytes(store.root)
    assert store.usage() == {"bytes": on_disk[0], "count": on_disk[1]} and on_disk[1] == 7

    # by age: the two unprotected old ones go, the protected stay whatever their age
    removed = store.prune(keep=state.protected_snapshots(), older_than=clock.time() - HOUR, max_total_bytes=10**9)
    assert removed == 2
    left = {f"sha256:{p.name}" for p in (store.root / "sha256").rglob("*") if p.is_file()}
    assert left == {old[0], old[1], *new}
    assert store.usage() == dict(zip(("bytes", "count"), store_bytes(store.root), strict=True))

    # by size: the oldest unprotected go first until the store fits
    clock.advance(60)
    newest = store.put(b"newest\n" * 100)
    removed = store.prune(keep=state.protected_snapshots(), older_than=0, max_total_bytes=4 * 700)
    left = {f"sha256:{p.name}" for p in (store.root / "sha256").rglob("*") if p.is_file()}
    assert left == {old[0], old[1], new[2], newest} and removed == 2, "new[0] and new[1] were the oldest unprotected"
    assert store.usage()["bytes"] == store_bytes(store.root)[0] <= 4 * 700
    # a new put keeps the running total right
    store.put(b"after\n")
    assert store.usage() == dict(zip(("bytes", "count"), store_bytes(store.root), strict=True))


def test_the_snapshot_store_gauge_is_in_a_real_scrape(tmp_path: Path) -> None:
    store = SnapshotStore(tmp_path / "snapshots")
    store.put(b"x" * 1234)
    reg = CollectorRegistry()
    Metrics(reg)
    reg.register(StateCollector(lambda: {**StateStore(tmp_path).summary(0, 3), "snapshot_store": store.usage()}))
    text = generate_latest(reg).decode()
    assert "driftd_snapshot_store_bytes 1234.0" in text and "driftd_snapshot_store_snapshots 1.0" in text


def test_prune_touches_nothing_outside_the_state_directory(tmp_path: Path) -> None:
    """A symlink planted in the snapshot store is neither followed nor its target removed."""
    outside = tmp_path / "outside"
    outside.mkdir()
    victim = outside / ("a" * 64)
    victim.write_text("keep me")
    store = SnapshotStore(tmp_path / "state" / "snapshots")
    store.put(b"drifted\n")
    (store.root / "sha256" / "aa").symlink_to(outside)
    (store.root / "sha256" / "ab").mkdir()
    (store.root / "sha256" / "ab" / ("b" * 64)).symlink_to(victim)
    store.prune(keep=set(), older_than=float("inf"), max_total_bytes=0)
    assert victim.read_text() == "keep me" and store_bytes(store.root)[1] == 1  # only the symlink left in 'ab'


# ---------------------------------------------------------------------------- the 24-hour soak
class SnapshottingTarget(MemoryTarget):
    """Containers in memory whose reverts snapshot the drifted fields in a real snapshot store first."""

    def __init__(self, store: SnapshotStore, **kw: Any) -> None:
        super().__init__(**kw)
        self.store = store

    def apply(self, desired: DesiredResource, observed: ObservedResource, plan: Plan) -> ActResult:
        sid = self.store.put(json.dumps({"key": desired.key, "before": observed.actual}, sort_keys=True).encode())
        if self.journal is not None:
            self.journal(desired.key, (sid,))
        done = super().apply(desired, observed, plan)
        return ActResult(key=done.key, applied=done.applied, snapshots=(sid, *done.snapshots))


def traced() -> int:
    """Bytes traced by tracemalloc that were allocated outside this test module (its samples) and tracemalloc."""
    snap = tracemalloc.take_snapshot().filter_traces(
        (tracemalloc.Filter(False, __file__), tracemalloc.Filter(False, tracemalloc.__file__)))
    return sum(st.size for st in snap.statistics("filename"))


def daemon_pass(pipe: Pipeline) -> None:
    """What the daemon does every scan interval, in this thread: scan (enqueue), then a worker's ``Engine.work`` per
    ready key.  Unlike the daemon's worker the outcome is not popped after each key: the engine's own forgetting
    (and the prune job's cap) must bound ``outcomes``."""
    pipe.engine.scan(pipe.queue)
    while (key := pipe.queue.get(timeout=0)) is not None:
        pipe.engine.work(pipe.queue, key)


def soak(tmp_path: Path, hours: float, *, retention: RetentionSettings | None, mode: str = "once",
         forget: bool = True) -> list[dict[str, Any]]:
    """Every 5 minutes 5 of 20 containers are replaced by new names (2 of them drifted), a pass runs (``run --once``'s
    or the daemon's, ``mode``), and every 10 minutes the prune job; returns the sizes of everything that could grow,
    each hour.  ``forget=False`` switches off the scan's forgetting of keys gone (to show what it bounds)."""
    clock = FakeClock()
    store = SnapshotStore(tmp_path / "state" / "snapshots", clock=clock.time)
    target = SnapshottingTarget(store, name="memory", expected=lambda name: {"image": "app:1", "id": name})
    pipe = build_engine(target, state_dir=tmp_path / "state", clock=clock)
    pipe.engine.snapshots = store
    if not forget:
        pipe.engine._forget = lambda *a, **k: 0  # type: ignore[method-assign]
        pipe.queue.forget = lambda *a, **k: 0  # type: ignore[method-assign]
    serial = 0
    live: list[str] = []
    samples: list[dict[str, Any]] = []
    tracemalloc.start()
    try:
        for step in range(int(hours * 12)):
            while len(live) < 20:
                serial += 1
                name = f"web-{serial:06d}"
                drifted = serial % 5 < 2  # 2 of every 5 new containers come up drifted
                target.set(name, image="app:0" if drifted else "app:1", id=name)
                live.append(name)
            if mode == "once":
                pipe.run_once(attempts=2)
            else:
                daemon_pass(pipe)
            if retention is not None and step % 2 == 1:
                pipe.engine.prune(retention)
            for name in live[:5]:
                target.delete(name)
            live = live[5:]
            clock.advance(300)
            # the test double's own records of what it was asked to do (not driftd's memory)
            target.writes.clear()
            target.snapshots.clear()
            while not target._changes.empty():
                target._changes.get_nowait()
            if (step + 1) % 12 == 0:
                gc.collect()  # cyclic garbage awaiting the collector is not retained memory
                q = pipe.queue
                samples.append({
                    "hour": (step + 1) // 12, "names": serial, **pipe.state.counts(),
                    "snapshots": store_bytes(store.root)[1], "snapshot_bytes": store_bytes(store.root)[0],
                    "outcomes": len(pipe.engine.outcomes), "clean_at": len(pipe.engine._clean_at),
                    "audited": len(pipe.engine._audited),
                    "queue": len(q._ready_at) + len(q._dirty) + len(q._failures) + len(q._urgent),
                    "traced": traced(),
                })
    finally:
        tracemalloc.stop()
        pipe.state.close()
    return samples


SOAK_RETENTION = RetentionSettings(resolved_drift_max_age_seconds=HOUR, actions_max_age_seconds=HOUR,
                                   snapshots_max_age_seconds=HOUR, snapshots_max_bytes=64 * 1024, outcomes_max=100,
                                   interval_seconds=600)


def peak(samples: list[dict[str, Any]], key: str, hours: range) -> int:
    return max(s[key] for s in samples if s["hour"] in hours)


@pytest.mark.parametrize("mode", ["once", "daemon"])
def test_a_day_of_rotating_container_names_keeps_memory_and_state_bounded(tmp_path: Path, mode: str) -> None:
    samples = soak(tmp_path, 24, retention=SOAK_RETENTION, mode=mode)
    by_hour = {s["hour"]: s for s in samples}
    assert by_hour[24]["names"] > 1400, "names keep rotating: 5 new every 5 minutes"
    for s in samples[2:]:
        # an hour of history at 4 reverted drifts per 5 minutes is ~50 records; the live set is 20 containers
        assert s["drift"] <= 80 and s["actions"] <= 80 and s["snapshots"] <= 80, s
        assert s["outcomes"] <= 40 and s["clean_at"] <= 40 and s["audited"] <= 40 and s["queue"] <= 40, s
    # flat, not growing: the second half of the day holds no more than the first
    for k in ("drift", "actions", "snapshots", "snapshot_bytes", "outcomes", "clean_at", "audited"):
        assert by_hour[24][k] <= max(by_hour[12][k], by_hour[6][k]) * 1.2 + 5, (k, by_hour[6], by_hour[12], by_hour[24])
    # traced memory saw-tooths with the gates' hourly window; its peak in the last hours is that of hours 3-8
    late, early = peak(samples, "traced", range(19, 25)), peak(samples, "traced", range(3, 9))
    assert late <= early * 1.2 + 16 * 1024, (early, late, [s["traced"] for s in samples])
    (tmp_path / "soak.json").write_text(json.dumps(samples, indent=1))


def test_without_retention_the_same_soak_grows(tmp_path: Path) -> None:
    """The bounds above can fail: with no prune job the state and the snapshot store grow with every name seen."""
    samples = soak(tmp_path, 6, retention=None)
    last = samples[-1]
    assert last["drift"] > 120 and last["actions"] > 120 and last["snapshots"] > 120, last  # beyond the bound of 80
    assert samples[-1]["drift"] > samples[2]["drift"] * 1.5
    assert os.path.isdir(tmp_path / "state" / "snapshots")


def test_without_forgetting_the_daemons_maps_and_memory_grow(tmp_path: Path) -> None:
    """The map and memory bounds can fail too: the daemon's pass without the scan's forgetting and without the prune
    job keeps an outcome, a clean time and traced memory for every name it ever saw."""
    samples = soak(tmp_path, 8, retention=None, mode="daemon", forget=False)
    last = samples[-1]
    assert last["outcomes"] > 150 and last["clean_at"] > 400, last  # the bounds above are 40
    late, early = peak(samples, "traced", range(7, 9)), peak(samples, "traced", range(1, 3))
    assert late > early * 1.2 + 16 * 1024, (early, late)


def test_the_outcome_cap_holds_where_forgetting_does_not(tmp_path: Path) -> None:
    """retention.outcomes_max caps the outcome map on its own: without the scan's forgetting it stops at the cap."""
    samples = soak(tmp_path, 8, retention=SOAK_RETENTION, mode="daemon", forget=False)
    assert all(s["outcomes"] <= SOAK_RETENTION.outcomes_max for s in samples), samples
    assert samples[-1]["outcomes"] == SOAK_RETENTION.outcomes_max, "the cap, not the live set, is what holds it here"


# ---------------------------------------------------------------------------- the daemon's job
def test_the_daemon_prunes_on_its_schedule(tmp_path: Path, host_root: Path, baselines_dir: Any, make_runtime: Any) -> None:
    """A real Daemon (APScheduler) runs the prune job every retention.interval_seconds: an old resolved record goes,
    counted in driftd_state_pruned_total{kind="drift"}; with retention off there is no such job."""
    import time

    from conftest import host_baseline

    from driftd.engine.daemon import BaselineManager, Daemon
    from driftd.engine.queue import KeyedQueue

    bdir = baselines_dir({"m.yaml": host_baseline(spec="""
        files:
          - {path: /etc/motd, content: "hello\\n"}
    """)})
    for enabled in (True, False):
        reg = CollectorRegistry()
        rt = make_runtime(bdir, registry=reg, state_dir=tmp_path / f"state-{enabled}",
                          retention={"enabled": enabled, "interval_seconds": 0.2})
        open_and_resolve(rt.state, "host:file:/etc/old", rt.engine.clock.time() - 30 * DAY)
        manager = BaselineManager(rt.settings, rt.engine, rt.metrics, rt.engine.clock)
        manager.prime()
        daemon = Daemon(settings=rt.settings, engine=rt.engine, queue=KeyedQueue(), metrics=rt.metrics, manager=manager)
        daemon.start()
        try:
            deadline = time.monotonic() + (20 if enabled else 1.0)  # off: five intervals, a job would have run
            while time.monotonic() < deadline and not reg.get_sample_value("driftd_state_pruned_total", {"kind": "drift"}):
                time.sleep(0.05)
        finally:
            daemon.stop()
        pruned = reg.get_sample_value("driftd_state_pruned_total", {"kind": "drift"})
        assert pruned == (1.0 if enabled else 0.0), (enabled, pruned)
        assert ("host:file:/etc/old" in {r.key for r in rt.state.recent(100)}) is not enabled
