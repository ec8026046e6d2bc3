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
import logging
import os
import tracemalloc
from pathlib import Path
from typing import Any

import pytest
import structlog
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


def test_retention_settings_come_from_the_environment_the_chart_sets(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DRIFTD_RETENTION__SNAPSHOTS_MAX_BYTES", "1048576")
    monkeypatch.setenv("DRIFTD_RETENTION__INTERVAL_SECONDS", "30")
    r = load_settings().retention
    assert (r.snapshots_max_bytes, r.interval_seconds, r.outcomes_max) == (1048576, 30.0, 50_000)
    monkeypatch.setenv("DRIFTD_RETENTION__ACTIONS_MAX_AGE_SECONDS", "60")
    with pytest.raises(ValidationError, match="must be at least 3600"):
        load_settings()


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


@pytest.mark.parametrize(("budget", "kept"), [(3600.0, {"memory:30m"}), (7200.0, {"memory:30m", "memory:90m"})])
def test_engine_prune_clamps_action_rows_to_the_gate_windows(tmp_path: Path, budget: float, kept: set[str]) -> None:
    """Settings refuse an actions_max_age_seconds below the budget interval and the flap window; Engine.prune also
    clamps to them, so a RetentionSettings built alone (60 s) never deletes a row the budget gate still counts."""
    from driftd.settings import SafetySettings
    from driftd.testing import capture_logs

    pipe = build_engine(MemoryTarget(name="memory"), state_dir=tmp_path / "state", clock=FakeClock())
    pipe.engine.safety = SafetySettings(budget={"interval_seconds": budget})
    now = pipe.clock.time()
    for key, age in (("memory:30m", 1800.0), ("memory:90m", 5400.0), ("memory:3h", 3 * HOUR)):
        open_and_resolve(pipe.state, key, now - age)
    assert pipe.state.count_actions("revert", now - budget) == len(kept)
    with capture_logs() as logs:
        counts = pipe.engine.prune(RetentionSettings(actions_max_age_seconds=60, resolved_drift_max_age_seconds=30 * DAY))
    assert counts == {"drift": 0, "action": 3 - len(kept), "snapshot": 0, "outcome": 0}
    left = {r[0] for r in pipe.state._read("SELECT key FROM actions")}
    assert left == kept
    assert pipe.state.count_actions("revert", now - budget) == len(kept), "the budget still counts what it counted"
    assert StateStore(tmp_path / "state").count_actions("revert", now - budget) == len(kept)  # by SQL, a fresh store
    assert [e for e in logs if e["event"] == "state.pruned"] == [
        {"event": "state.pruned", "log_level": "info", **counts}], logs
    assert pipe.metrics.registry.get_sample_value("driftd_state_pruned_total", {"kind": "action"}) == 3 - len(kept)


def test_the_runtime_feeds_the_snapshot_store_gauges_from_running_totals(tmp_path: Path, baselines_dir: Any,
                                                                         make_runtime: Any) -> None:
    """build_runtime's StateCollector: driftd_snapshot_store_bytes/_snapshots in a real scrape equal the bytes on disk
    after saves and after a prune, without walking the store per scrape."""
    from conftest import host_baseline

    bdir = baselines_dir({"m.yaml": host_baseline(spec="""
        files:
          - {path: /etc/motd, content: "hello\\n"}
    """)})
    reg = CollectorRegistry()
    rt = make_runtime(bdir, registry=reg)
    store = rt.engine.snapshots
    assert store is not None and store.root == tmp_path / "state" / "snapshots"

    def scraped() -> tuple[float, float]:
        text = generate_latest(reg).decode()
        values = {ln.split()[0]: float(ln.split()[1]) for ln in text.splitlines() if ln.startswith("driftd_snapshot_store_")}
        return values["driftd_snapshot_store_bytes"], values["driftd_snapshot_store_snapshots"]

    assert scraped() == (0.0, 0.0)
    for i in range(3):
        store.put(bytes([65 + i]) * 1000)
        rt.engine.clock.advance(60)
    on_disk = store_bytes(store.root)
    assert on_disk == (3000, 3) and scraped() == (3000.0, 3.0)
    walks = []
    store._entries = lambda: walks.append(1) or []  # type: ignore[method-assign]
    assert scraped() == (3000.0, 3.0) and not walks, "a scrape reads the running totals, it does not walk the store"
    del store._entries
    counts = rt.engine.prune(RetentionSettings(snapshots_max_bytes=1500))
    assert counts["snapshot"] == 2
    assert store_bytes(store.root) == (1000, 1) and scraped() == (1000.0, 1.0)
    assert reg.get_sample_value("driftd_state_pruned_total", {"kind": "snapshot"}) == 2.0


def test_the_queue_forgets_failure_counts_of_keys_gone() -> None:
    from driftd.engine.queue import KeyedQueue

    q = KeyedQueue(clock=FakeClock())
    for key in ("memory:gone", "memory:live", "down:x", "memory:queued"):
        q.add(key, urgent=True)
        assert q.get(timeout=0) == key
        q.done(key, failed=True, retry=key == "memory:queued")
    assert all(q.failures(k) == 1 for k in ("memory:gone", "memory:live", "down:x", "memory:queued"))
    assert q.forget({"memory:live"}, spare=lambda k: k.startswith("down:")) == 1
    assert q.failures("memory:gone") == 0, "gone, not queued, not spared: forgotten"
    assert q.failures("memory:live") == q.failures("down:x") == q.failures("memory:queued") == 1
    assert "memory:gone" not in q._urgent and len(q) == 1


def test_a_pod_gone_on_resolve_is_forgotten_by_the_pod_adapter(tmp_path: Path) -> None:
    """The pod adapter keeps nothing of a pod the apiserver no longer has (the listing's copy, its break-glass)."""
    from driftd.targets.kubernetes.client import KubeError
    from driftd.targets.kubernetes.pods import MemoryGuards, PodAdapter

    def api(method: str, path: str, **kw: Any) -> Any:
        raise KubeError(404, "not found")

    pods = PodAdapter(api, SnapshotStore(tmp_path / "snapshots"), None, node_name="node-a", target="kubernetes",  # type: ignore[arg-type]
                      exclude_namespaces=(), template_guard_seconds=60, clock=lambda: 0.0, guards=MemoryGuards(),
                      log=None)
    pods._pods["pod:ns/web-1"] = {"metadata": {"name": "web-1"}}
    pods._glass["pod:ns/web-1"] = None  # type: ignore[assignment]
    assert pods.resolve("pod:ns/web-1") is None
    assert pods._pods == {} and pods._glass == {}


def test_prune_in_dry_run_touches_only_the_state_directory(tmp_path: Path, host_root: Path, baselines_dir: Any,
                                                           make_runtime: Any) -> None:
    """A dry-run daemon's prune job deletes its own old records and snapshots and nothing else: the host tree and a
    directory beside the state directory are byte-for-byte (and mtime-for-mtime) as before."""
    from conftest import host_baseline, tree_digest

    from driftd.engine.once import run_once

    (host_root / "etc/motd").write_text("drifted\n")
    bdir = baselines_dir({"m.yaml": host_baseline(spec="""
        files:
          - {path: /etc/motd, content: "hello\\n"}
    """)})
    beside = tmp_path / "beside"
    beside.mkdir()
    (beside / "old.txt").write_text("keep\n")
    os.utime(beside / "old.txt", (1.0, 1.0))
    rt = make_runtime(bdir, dry_run=True)
    old_sid = rt.engine.snapshots.put(b"an old snapshot\n")
    open_and_resolve(rt.state, "host:file:/etc/old", rt.engine.clock.time())
    rt.engine.clock.advance(30 * DAY)
    run_once(rt.engine, rt.queue, attempts=1)
    assert (host_root / "etc/motd").read_text() == "drifted\n" and "host:file:/etc/motd" in rt.state.active()
    before = tree_digest(host_root), tree_digest(beside), tree_digest(bdir)
    counts = rt.engine.prune(rt.settings.retention)
    assert counts["drift"] == 1 and counts["snapshot"] == 1, counts
    assert not (rt.engine.snapshots.root / "sha256" / old_sid[7:9] / old_sid[7:]).exists()
    assert (tree_digest(host_root), tree_digest(beside), tree_digest(bdir)) == before
    assert "host:file:/etc/motd" in rt.state.active(), "an open drift is never pruned"


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


BIG_BLOCK = 256 * 1024


def traced() -> tuple[int, int]:
    """(bytes, blocks) traced by tracemalloc outside this test module (its samples) and tracemalloc itself.

    Blocks of BIG_BLOCK or more are left out: an interpreter-wide table that predates tracing (the interned strings)
    is rebuilt, one block of megabytes, when its deleted entries pile up, and only then counts as traced; what driftd
    keeps per key is many small blocks, and their number is counted too."""
    snap = tracemalloc.take_snapshot().filter_traces(
        (tracemalloc.Filter(False, __file__), tracemalloc.Filter(False, tracemalloc.__file__)))
    small = [t.size for t in snap.traces if t.size < BIG_BLOCK]
    return sum(small), len(small)


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
    # log lines leave the process (stderr); pytest would hold them in memory, so the soak drops them instead
    logging_config = structlog.get_config()
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.CRITICAL))
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
                    **dict(zip(("traced", "blocks"), traced(), strict=True)),
                })
    finally:
        tracemalloc.stop()
        structlog.configure(**logging_config)
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
    for k, slack in (("traced", 16 * 1024), ("blocks", 100)):
        late, early = peak(samples, k, range(19, 25)), peak(samples, k, range(3, 9))
        assert late <= early * 1.2 + slack, (k, early, late, [s[k] for s in samples])
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
    for k, slack in (("traced", 16 * 1024), ("blocks", 100)):
        late, early = peak(samples, k, range(7, 9)), peak(samples, k, range(1, 3))
        assert late > early * 1.2 + slack, (k, early, late)


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
