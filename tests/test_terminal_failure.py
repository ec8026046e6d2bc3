"""An action that succeeds but leaves the same drift is terminal: stop, report, escalate; act again only on change.

The engine logic is tested over a small in-memory target (pure pipeline); the real-component
case (a Docker container with a tmpfs mount) is in tests/test_docker_safety.py.
"""

from __future__ import annotations

import os
from typing import Any

from conftest import host_baseline
from structlog.testing import capture_logs

from driftd.engine.once import run_once
from driftd.engine.reconciler import Engine
from driftd.models.resources import ActResult, DesiredResource, ObservedResource, Plan


class StuckTarget:
    """One key-value resource; ``apply`` reports success but only changes the value when ``works``."""

    name = "mem"
    capabilities = frozenset({"value"})

    def __init__(self, expected: str = "good") -> None:
        self.value = "bad"
        self.expected = expected
        self.works = False
        self.applied = 0

    def desired(self, baselines: Any, node: Any) -> list[DesiredResource]:
        name = baselines.baselines[0].metadata.name if baselines.baselines else "none"
        return [DesiredResource(key="mem:thing", target="mem", kind="value", address="thing", baseline=name,
                                expected={"value": self.expected})]

    def discover(self) -> list[DesiredResource]:
        return []

    def resolve(self, key: str) -> None:
        return None

    def begin_pass(self, *, full: bool) -> None:
        return None

    def observe(self, desired: DesiredResource) -> ObservedResource:
        return ObservedResource(key=desired.key, actual={"value": self.value})

    def apply(self, desired: DesiredResource, observed: ObservedResource, plan: Plan) -> ActResult:
        self.applied += 1
        if self.works:
            self.value = desired.expected["value"]
        return ActResult(key=desired.key, applied=tuple(a.action for a in plan.actions))


def engine_for(rt: Any, target: StuckTarget) -> Engine:
    e = Engine(targets={"mem": target}, state=rt.state, metrics=rt.metrics, node=rt.engine.node, clock=rt.engine.clock)
    e.set_baselines(rt.engine.baselines)
    return e


def _plan_value(monkeypatch: Any) -> None:
    """The memory target's kind gets a planner (the production planners know host/docker/pod kinds only)."""
    from driftd.core import kinds
    from driftd.core.kinds.base import PlanOnly
    from driftd.models.resources import Action, PlannedAction

    def plan_value(desired: Any, observed: Any, drift: Any) -> tuple[list[PlannedAction], None]:
        return [PlannedAction(action=Action.WRITE_SYSCTL, reason="value differs", params={})], None

    monkeypatch.setitem(kinds.REGISTRY, ("mem", "value"), PlanOnly(plan_value))


class TestTerminalFailure:
    def test_same_drift_after_success_is_terminal_not_a_retry_loop(self, baselines_dir, make_runtime, monkeypatch):
        """One action, then failed and escalated at once; retries in the pass and later passes do not act again."""
        _plan_value(monkeypatch)
        rt = make_runtime(baselines_dir({"b.yaml": host_baseline("b")}))
        t = StuckTarget()
        e = engine_for(rt, t)
        with capture_logs() as logs:
            s = run_once(e, rt.queue, attempts=5)
        assert t.applied == 1
        (o,) = s.outcomes
        assert o.status == "failed" and "verification still finds the same drift" in (o.error or "")
        assert s.exit_code == 4
        events = [x["event"] for x in logs]
        assert "remediation.escalated" in events
        assert rt.state.get_active("mem:thing").held is not None
        assert rt.metrics.registry.get_sample_value("driftd_remediation_failing", {"target": "mem"}) == 1

        with capture_logs() as logs:
            s2 = run_once(e, rt.queue, attempts=5)
        assert t.applied == 1  # held: not acted on again
        assert s2.outcomes[0].status == "failed" and s2.outcomes[0].error.startswith("held:")
        assert "remediation.held" in [x["event"] for x in logs]

    def test_a_changed_resource_releases_the_hold(self, baselines_dir, make_runtime, monkeypatch):
        """When the live value changes, driftd acts again (and succeeds once the adapter can)."""
        _plan_value(monkeypatch)
        rt = make_runtime(baselines_dir({"b.yaml": host_baseline("b")}))
        t = StuckTarget()
        e = engine_for(rt, t)
        run_once(e, rt.queue, attempts=3)
        t.value, t.works = "other-bad", True
        s = run_once(e, rt.queue, attempts=3)
        assert t.applied == 2 and s.exit_code == 0 and [o.status for o in s.outcomes] == ["remediated"]
        assert rt.state.get_active("mem:thing") is None
        assert run_once(e, rt.queue, attempts=3).outcomes == [] and t.applied == 2  # idempotent

    def test_a_changed_baseline_releases_the_hold(self, baselines_dir, make_runtime, monkeypatch):
        """A new baseline (new hash) for the held resource is acted on again."""
        from driftd.baselines.loader import load_set

        _plan_value(monkeypatch)
        bdir = baselines_dir({"b.yaml": host_baseline("b")})
        rt = make_runtime(bdir)
        t = StuckTarget()
        e = engine_for(rt, t)
        run_once(e, rt.queue, attempts=3)
        run_once(e, rt.queue, attempts=3)
        assert t.applied == 1
        (bdir / "b.yaml").write_text(host_baseline("b", "window: 20m"))
        e.set_baselines(load_set(bdir)[0])
        t.works = True
        s = run_once(e, rt.queue, attempts=3)
        assert t.applied == 2 and s.exit_code == 0


class BrokenResolveTarget(StuckTarget):
    """A dynamic target whose resources cannot be resolved (the engine is down mid-pass)."""

    name = "dyn"

    def desired(self, baselines: Any, node: Any) -> list[DesiredResource]:
        return []

    def resolve(self, key: str) -> None:
        from driftd.targets.base import TargetError

        raise TargetError("engine unreachable")

    def watch(self, on_key: Any, stop: Any) -> None:
        return None

    def close(self) -> None:
        return None


def test_summary_counts_never_go_negative(baselines_dir, make_runtime):
    """Outcomes for keys the scan did not observe (open records only) do not subtract from clean."""
    rt = make_runtime(baselines_dir({"b.yaml": host_baseline("b")}))
    e = Engine(targets={"dyn": BrokenResolveTarget()}, state=rt.state, metrics=rt.metrics, node=rt.engine.node,
               clock=rt.engine.clock)
    e.set_baselines(rt.engine.baselines)
    for i in range(3):
        rt.state.open_drift(key=f"dyn:c{i}", target="dyn", baseline="b", address=f"c{i}", now=1.0, window_seconds=60, fields=[])
    s = run_once(e, rt.queue, attempts=1)
    assert s.counts == {"error": 3, "clean": 0}
    assert all(v >= 0 for v in s.counts.values())


def test_a_file_replaced_by_another_writer_right_after_the_revert_is_a_new_change_not_a_terminal_failure(
        host_root, baselines_dir, make_runtime):
    """Verification finds the drift again because someone replaced the file after driftd's write landed
    (an editor, a package postinst): the revert did happen; it is not "an action that cannot take"."""
    motd = host_root / "etc/motd"
    motd.write_text("tampered\n")
    rt = make_runtime(baselines_dir({"b.yaml": host_baseline("b", 'files:\n  - {path: /etc/motd, content: "hello\\n"}')}))
    fs = rt.engine.targets["host"].fs
    real = fs.write_atomic
    seen: list[str] = []

    def write_then_competitor(path: str, data: bytes, **kw: object) -> None:
        real(path, data, **kw)
        seen.append(motd.read_text())
        tmp = motd.with_name(".motd.swp")  # the other writer saves its version by rename
        tmp.write_text("tampered\n")
        os.replace(tmp, motd)

    fs.write_atomic = write_then_competitor
    with capture_logs() as logs:
        s = run_once(rt.engine, rt.queue, attempts=1)
    assert seen == ["hello\n"]  # driftd's write landed
    assert [o.status for o in s.outcomes] == ["remediated"], [(o.status, o.error) for o in s.outcomes]
    assert any(e.get("reason", "").startswith("changed again by another writer") for e in logs)
    rec = rt.state.recent(1)[0]
    assert rec.held is None  # no terminal hold: the next change is reverted (or, if it keeps coming, quarantined)
    fs.write_atomic = real
    s2 = run_once(rt.engine, rt.queue, attempts=1)
    assert [o.status for o in s2.outcomes] == ["remediated"] and motd.read_text() == "hello\n"
