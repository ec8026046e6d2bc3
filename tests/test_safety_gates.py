"""Safety gates: each gate alone over a fake view and an injected clock, then end to end on a real host tree."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from conftest import host_baseline, tree_digest

from driftd.engine.clock import FakeClock
from driftd.engine.once import run_once
from driftd.models.baseline import Enforcement
from driftd.models.resources import Action, DesiredResource, OutcomeStatus, Plan, PlannedAction
from driftd.safety.breaker import Threshold, evaluate
from driftd.safety.breakglass import BreakGlassGate, OverrideError, OverrideStore, make_override
from driftd.safety.budget import BudgetGate
from driftd.safety.flap import FlapGate
from driftd.safety.gates import GateInput
from driftd.safety.retire import RetireGate

NOW = 1_800_000_000.0


class View:
    """A SafetyView over plain data."""

    def __init__(self, actions: list[tuple[float, str, str, str]] | None = None,
                 held: list[tuple[float, str, str, str]] | None = None, guards: dict[str, dict[str, Any]] | None = None):
        self.actions = actions or []  # (at, kind, baseline, key)
        self.held = held or []  # (first_seen, key, gate, baseline)
        self.guards = guards or {}

    def count_actions(self, kind: str, since: float, *, baseline: str | None = None) -> int:
        return sum(1 for at, k, b, _ in self.actions if k == kind and at > since and baseline in (None, b))

    def count_key_actions(self, key: str, since: float) -> int:
        return sum(1 for at, _, _, k in self.actions if k == key and at > since)

    def oldest_held(self, gate: str, *, baseline: str | None = None) -> tuple[float, str] | None:
        c = sorted((f, k) for f, k, g, b in self.held if g == gate and baseline in (None, b))
        return c[0] if c else None

    def guard(self, scope: str) -> dict[str, Any] | None:
        return self.guards.get(scope)


def inp(action: Action = Action.WRITE_FILE, *, key: str = "host:file:/etc/a", baseline: str = "b",
        first_seen: float = NOW, now: float = NOW, params: dict[str, Any] | None = None, hash_: str = "h1") -> GateInput:
    d = DesiredResource(key=key, target="host", kind="file", address=key.split(":", 2)[-1], baseline=baseline,
                        expected={"present": True})
    p = Plan(key=key, mode=Enforcement.ENFORCE, drift=(), actions=(PlannedAction(action=action, reason="r", params=params or {}),))
    return GateInput(desired=d, plan=p, now=now, first_seen=first_seen, deadline=first_seen + 1800, baseline_hash=hash_)


BUDGET = {"interval": 3600.0, "reverts_per_node": 3, "reverts_per_baseline": 2, "retirements_per_node": 1,
          "retirements_per_baseline": 1}


class TestBudget:
    def test_reverts_are_capped_per_baseline_and_per_node_and_free_up_after_the_interval(self):
        g = BudgetGate(**BUDGET)
        two_b = [(NOW - 10, "revert", "b", "k1"), (NOW - 5, "revert", "b", "k2")]
        assert g.check(inp(), View(two_b)).gate == "budget"  # baseline b spent its 2
        assert g.check(inp(baseline="c"), View(two_b)).allowed  # another baseline still may
        three = [*two_b, (NOW - 1, "revert", "c", "k3")]
        v = g.check(inp(baseline="c"), View(three))
        assert v.gate == "budget" and "on this node" in v.reason  # the node spent its 3
        assert g.check(inp(now=NOW + 3600), View(three)).allowed  # an hour later the budget is back

    def test_retirements_have_their_own_smaller_budget(self):
        g = BudgetGate(**BUDGET)
        one = [(NOW - 1, "retirement", "b", "k1")]
        assert g.check(inp(Action.RETIRE), View(one)).gate == "budget"
        assert g.check(inp(Action.WRITE_FILE), View(one)).allowed  # reverts are counted apart
        assert g.check(inp(Action.EVICT, params={"retire": True}), View(one)).gate == "budget"  # a pod retire

    def test_when_budget_frees_the_oldest_held_drift_goes_first(self):
        g = BudgetGate(**BUDGET)
        waiting = [(NOW - 600, "host:file:/etc/old", "budget", "b")]
        v = g.check(inp(first_seen=NOW - 10), View(held=waiting))
        assert v.gate == "budget" and "/etc/old" in v.reason
        assert g.check(inp(key="host:file:/etc/old", first_seen=NOW - 600), View(held=waiting)).allowed


class TestBreaker:
    TH = {"revert": Threshold(0.5, 10), "retirement": Threshold(0.2, 3)}

    def test_a_mass_drift_opens_and_a_settled_scan_closes(self):
        ch = evaluate({"revert": {"b": (20, 11)}}, {}, {"revert": self.TH["revert"]})
        assert [(c.kind, c.baseline, c.reason is not None) for c in ch] == [("revert", "b", True)]
        assert "11 of 20" in str(ch[0].reason)
        closed = evaluate({"revert": {"b": (20, 3)}}, {("revert", "b"): True}, {"revert": self.TH["revert"]})
        assert [(c.kind, c.reason) for c in closed] == [("revert", None)]
        assert evaluate({"revert": {"b": (20, 12)}}, {("revert", "b"): True}, {"revert": self.TH["revert"]}) == []

    def test_a_small_baseline_never_trips_and_half_is_not_more_than_half(self):
        assert evaluate({"revert": {"b": (1, 1)}}, {}, self.TH) == []  # a one-file baseline on a fresh host
        assert evaluate({"revert": {"b": (20, 10)}}, {}, {"revert": self.TH["revert"]}) == []  # 50% is not over 50%

    def test_retirements_trip_their_stricter_breaker_on_the_drifts_that_would_retire(self):
        ch = evaluate({"revert": {"b": (10, 3)}, "retirement": {"b": (10, 3)}}, {}, self.TH)
        assert [(c.kind, c.reason is not None) for c in ch] == [("retirement", True)]


class TestFlap:
    def test_the_nth_revert_in_the_window_quarantines_and_the_quarantine_holds_until_the_baseline_changes(self):
        g = FlapGate(reverts=3, window=600)
        hist = [(NOW - 100 * i, "revert", "b", "host:file:/etc/a") for i in range(1, 4)]
        v = g.check(inp(), View(hist))
        assert v.gate == "flap" and v.quarantine
        assert g.check(inp(), View(hist[:2])).allowed
        assert g.check(inp(now=NOW + 700), View(hist)).allowed  # outside the window
        q = {"flap:host:file:/etc/a": {"reason": "flapping", "baseline_hash": "h1"}}
        assert g.check(inp(), View(guards=q)).gate == "flap"
        assert g.check(inp(hash_="h2"), View(guards=q)).allowed  # a baseline change releases it


class TestRetire:
    def test_a_retirement_waits_for_the_finding_to_persist_and_has_its_own_dry_run(self):
        g = RetireGate(after=600, dry_run=False)
        v = g.check(inp(Action.RETIRE_NODE, first_seen=NOW - 60), View())
        assert v.gate == "retire" and v.until == NOW + 540
        assert g.check(inp(Action.RETIRE_NODE, first_seen=NOW - 600), View()).allowed
        assert g.check(inp(Action.WRITE_FILE, first_seen=NOW), View()).allowed  # reverts are not retirements
        assert RetireGate(after=0, dry_run=True).check(inp(Action.RETIRE), View()).gate == "retire-dry-run"


class TestBreakGlass:
    def test_an_override_needs_a_reason_a_scope_and_a_ttl_within_the_maximum(self):
        with pytest.raises(OverrideError, match="needs a reason"):
            make_override(reason=" ", ttl="1h", now=NOW, max_ttl=7200, all=True)
        with pytest.raises(OverrideError, match="longer than"):
            make_override(reason="INC-1", ttl="3h", now=NOW, max_ttl=7200, all=True)
        with pytest.raises(OverrideError, match="must name what it suspends"):
            make_override(reason="INC-1", ttl="1h", now=NOW, max_ttl=7200)

    def test_it_holds_what_it_names_until_it_expires(self):
        o = make_override(reason="INC-1", ttl="1h", now=NOW, max_ttl=7200, key="host:file:/etc/ssh/*")
        g = BreakGlassGate([o])
        assert g.check(inp(key="host:file:/etc/ssh/sshd_config"), View()).gate == "break-glass"
        assert g.check(inp(key="host:file:/etc/passwd"), View()).allowed
        assert g.check(inp(key="host:file:/etc/ssh/sshd_config", now=NOW + 3601), View()).allowed

    def test_a_hand_written_file_is_checked_like_a_command(self, tmp_path):
        store = OverrideStore(tmp_path, max_ttl=7200)
        (tmp_path / "overrides").mkdir()
        (tmp_path / "overrides/ok.json").write_text(json.dumps({"reason": "INC-2", "ttl": "1h", "baseline": "b"}))
        (tmp_path / "overrides/noreason.json").write_text(json.dumps({"ttl": "1h", "all": True}))
        (tmp_path / "overrides/long.json").write_text(json.dumps({"reason": "x", "ttl": "9h", "all": True}))
        (tmp_path / "overrides/bad.json").write_text("{")
        active, problems = store.load(now=(tmp_path / "overrides/ok.json").stat().st_mtime + 10)
        assert [o.id for o in active] == ["ok"]
        assert len(problems) == 3 and any("reason" in p for p in problems) and any("max_ttl" in p for p in problems)


# ---------------------------------------------------------------------------- end to end, real host tree

def files_spec(n: int) -> str:
    return "files:\n" + "".join(f"  - {{path: /etc/app/f{i:02d}.conf, content: \"v{i}\\n\", mode: \"0644\"}}\n"
                                for i in range(n))


def write_tree(host: Path, n: int, drifted: set[int] = frozenset()) -> None:  # type: ignore[assignment]
    (host / "etc/app").mkdir(parents=True, exist_ok=True)
    for i in range(n):
        p = host / f"etc/app/f{i:02d}.conf"
        p.write_text(f"v{i}\n" if i not in drifted else f"drifted {i}\n")
        p.chmod(0o644)


class TestEndToEnd:
    def test_every_file_of_a_baseline_drifting_trips_the_breaker_and_nothing_is_written(self, host_root, baselines_dir,
                                                                                      make_runtime):
        write_tree(host_root, 12, drifted=set(range(12)))
        rt = make_runtime(baselines_dir({"b.yaml": host_baseline("b", files_spec(12))}), safety={})
        before = tree_digest(host_root)
        s = run_once(rt.engine, rt.queue, attempts=1)
        assert tree_digest(host_root) == before  # not one file rewritten
        assert {o.status for o in s.outcomes} == {OutcomeStatus.HELD} and len(s.outcomes) == 12
        assert all("held: breaker: 12 of 12 resources of baseline b" in (o.error or "") for o in s.outcomes)
        assert s.exit_code == 3
        # settles: the operator fixes 10 by hand; the next scan closes the breaker and driftd reverts the other two
        write_tree(host_root, 12, drifted={0, 1})
        s2 = run_once(rt.engine, rt.queue, attempts=1)
        assert sorted(o.status for o in s2.outcomes) == [OutcomeStatus.REMEDIATED] * 2
        assert (host_root / "etc/app/f00.conf").read_text() == "v0\n"

    def test_a_restart_keeps_an_open_breaker_and_breaker_reset_closes_it(self, host_root, baselines_dir, make_runtime,
                                                                         tmp_path):
        write_tree(host_root, 12, drifted=set(range(12)))
        bdir = baselines_dir({"b.yaml": host_baseline("b", files_spec(12))})
        rt = make_runtime(bdir, safety={}, state_dir=tmp_path / "st")
        run_once(rt.engine, rt.queue, attempts=1)
        rt.state.close()
        rt2 = make_runtime(bdir, safety={}, state_dir=tmp_path / "st")
        d = rt2.engine.desired["host:file:/etc/app/f00.conf"]
        assert rt2.engine.reconcile(d.key).status is OutcomeStatus.HELD  # no scan yet: the breaker persisted
        assert rt2.engine.reset_breakers("b") == ["breaker:revert:b"]
        assert rt2.engine.reconcile(d.key).status is OutcomeStatus.REMEDIATED

    def test_a_budget_holds_what_is_over_it_and_reports_it(self, host_root, baselines_dir, make_runtime):
        write_tree(host_root, 4, drifted={0, 1, 2})
        rt = make_runtime(baselines_dir({"b.yaml": host_baseline("b", files_spec(4))}),
                          safety={"budget": {"reverts_per_node": 2}})
        s = run_once(rt.engine, rt.queue, attempts=1)
        st = sorted(o.status.value for o in s.outcomes)
        assert st == ["held", "remediated", "remediated"], st
        held = next(o for o in s.outcomes if o.status is OutcomeStatus.HELD)
        assert "held: budget" in (held.error or "")
        assert rt.state.get_active(held.key).last_result == "held:budget"  # recorded, not dropped
        rt.engine.clock.advance(3600)
        s2 = run_once(rt.engine, rt.queue, attempts=1)
        assert [o.status for o in s2.outcomes] == [OutcomeStatus.REMEDIATED]

    def test_an_expired_break_glass_override_leads_to_the_revert(self, host_root, baselines_dir, make_runtime, tmp_path):
        write_tree(host_root, 2, drifted={0})
        clock = FakeClock()
        rt = make_runtime(baselines_dir({"b.yaml": host_baseline("b", files_spec(2))}), clock=clock,
                          state_dir=tmp_path / "st")
        o = make_override(reason="INC-7: hand-edited during the outage", ttl="30m", now=clock.time(), max_ttl=86400,
                          key="host:file:/etc/app/*")
        OverrideStore(tmp_path / "st", max_ttl=86400).add(o)
        s = run_once(rt.engine, rt.queue, attempts=1)
        assert [o.status for o in s.outcomes] == [OutcomeStatus.HELD]
        assert "break-glass" in (s.outcomes[0].error or "") and "INC-7" in (s.outcomes[0].error or "")
        assert (host_root / "etc/app/f00.conf").read_text() == "drifted 0\n"
        clock.advance(1801)
        s2 = run_once(rt.engine, rt.queue, attempts=1)
        assert [o.status for o in s2.outcomes] == [OutcomeStatus.REMEDIATED]
        assert (host_root / "etc/app/f00.conf").read_text() == "v0\n"

    def test_a_file_a_competing_process_keeps_rewriting_ends_up_flapping_not_reverted_forever(self, host_root,
                                                                                             baselines_dir, make_runtime):
        write_tree(host_root, 1)
        rt = make_runtime(baselines_dir({"b.yaml": host_baseline("b", files_spec(1))}),
                          safety={"flap": {"reverts": 3, "window_seconds": 600}})
        target = host_root / "etc/app/f00.conf"
        statuses = []
        for _ in range(6):
            target.write_text("the other tool's version\n")  # the competitor rewrites it every minute
            statuses.append(run_once(rt.engine, rt.queue, attempts=1).outcomes[0].status)
            rt.engine.clock.advance(60)
        assert statuses[:3] == [OutcomeStatus.REMEDIATED] * 3
        assert statuses[3:] == [OutcomeStatus.HELD] * 3  # quarantined: not reverted again
        assert target.read_text() == "the other tool's version\n"
        assert rt.state.get_guard("flap:host:file:/etc/app/f00.conf", rt.engine.clock.time()) is not None
        rt.engine.clock.advance(3600)  # long after the window: still quarantined until someone acts
        assert run_once(rt.engine, rt.queue, attempts=1).outcomes[0].status is OutcomeStatus.HELD
        rt.state.clear_guard("flap:host:file:/etc/app/f00.conf")  # driftd flap reset
        assert run_once(rt.engine, rt.queue, attempts=1).outcomes[0].status is OutcomeStatus.REMEDIATED

    def test_retirement_waits_for_the_finding_to_persist(self, host_root, baselines_dir, make_runtime, tmp_path):
        (host_root / "proc/sys/kernel").mkdir(parents=True, exist_ok=True)
        (host_root / "proc/sys/kernel/osrelease").write_text("5.10.0\n")
        marker = tmp_path / "retired"
        rt = make_runtime(baselines_dir({"k.yaml": host_baseline("k", 'kernel: {minimumRelease: "6.1"}')}),
                          safety={}, retire_hook=["/bin/sh", "-c", f"echo $DRIFTD_REASON > {marker}"])
        s = run_once(rt.engine, rt.queue, attempts=1)
        assert s.outcomes[0].status is OutcomeStatus.HELD and "held: retire" in (s.outcomes[0].error or "")
        assert not marker.exists()
        rt.engine.clock.advance(601)
        assert run_once(rt.engine, rt.queue, attempts=1).outcomes[0].status is OutcomeStatus.RETIRED
        assert marker.exists()


# ---------------------------------------------------------------------------- the commands

DRIFTD = str(Path(__import__("sys").executable).with_name("driftd"))


def cli(*args: str) -> Any:
    import os
    import subprocess

    env = {k: v for k, v in os.environ.items() if not k.startswith("DRIFTD_")}
    return subprocess.run([DRIFTD, *args], capture_output=True, text=True, timeout=30, env=env, stdin=subprocess.DEVNULL)


class TestCommands:
    def test_pause_refuses_without_reason_or_over_max_ttl_and_a_pause_holds_a_real_run_until_resume(
            self, host_root, baselines_dir, tmp_path):
        write_tree(host_root, 2, drifted={0})
        bdir = baselines_dir({"b.yaml": host_baseline("b", files_spec(2))})
        st = str(tmp_path / "st")
        common = ["--host-root", str(host_root), "--baselines", str(bdir), "--state-dir", st]
        r = cli("pause", "--state-dir", st, "--reason", "", "--ttl", "1h", "--all")
        assert r.returncode == 2 and "needs a reason" in r.stderr
        r = cli("pause", "--state-dir", st, "--reason", "INC-9", "--ttl", "25h", "--all")
        assert r.returncode == 2 and "max_ttl" in r.stderr
        r = cli("pause", "--state-dir", st, "--reason", "INC-9 hotfix", "--ttl", "1h", "--baseline", "b")
        assert r.returncode == 0, r.stderr
        oid = r.stdout.split()[1].rstrip(":")
        r = cli("run", "--once", *common)
        assert r.returncode == 3 and "  held  " in r.stdout and "INC-9 hotfix" in r.stdout, r.stdout
        assert (host_root / "etc/app/f00.conf").read_text() == "drifted 0\n"
        assert "INC-9 hotfix" in cli("status", "--state-dir", st).stdout
        assert cli("resume", "--state-dir", st, oid).returncode == 0
        r = cli("run", "--once", *common)
        assert r.returncode == 0, r.stdout + r.stderr
        assert (host_root / "etc/app/f00.conf").read_text() == "v0\n"

    def test_breaker_reset_and_flap_reset_clear_the_marks_a_run_left(self, host_root, baselines_dir, tmp_path):
        write_tree(host_root, 12, drifted=set(range(12)))
        bdir = baselines_dir({"b.yaml": host_baseline("b", files_spec(12))})
        st = str(tmp_path / "st")
        r = cli("run", "--once", "--host-root", str(host_root), "--baselines", str(bdir), "--state-dir", st)
        assert r.returncode == 3 and "held: breaker" in r.stdout
        assert "breaker OPEN (revert) for baseline b" in cli("status", "--state-dir", st).stdout
        r = cli("breaker", "reset", "--state-dir", st, "--baseline", "b")
        assert r.returncode == 0 and "cleared breaker:revert:b" in r.stdout
        assert "breaker OPEN" not in cli("status", "--state-dir", st).stdout
        assert cli("flap", "reset", "--state-dir", st).stdout.strip() == "nothing to clear"
        assert cli("breaker", "reset", "--state-dir", str(tmp_path / "nowhere")).returncode == 1  # never creates state
        assert not (tmp_path / "nowhere").exists()


class TestWindowFromTheChange:
    def test_the_deadline_counts_from_the_files_change_not_from_when_driftd_saw_it(self, host_root, baselines_dir,
                                                                                  make_runtime):
        import os
        import time

        from prometheus_client import CollectorRegistry

        write_tree(host_root, 2)
        clock = FakeClock(start=time.time())
        reg = CollectorRegistry()
        rt = make_runtime(baselines_dir({"b.yaml": host_baseline("b", files_spec(2), enforcement="warn")}), clock=clock,
                          registry=reg)
        assert run_once(rt.engine, rt.queue, attempts=1).exit_code == 0  # seen clean
        f = host_root / "etc/app/f00.conf"
        f.write_text("changed\n")
        changed = os.stat(f).st_ctime
        clock.advance(240)  # driftd looks again 4 minutes later (the next scan)
        run_once(rt.engine, rt.queue, attempts=1)
        rec = rt.state.get_active("host:file:/etc/app/f00.conf")
        assert rec.changed_at == pytest.approx(changed, abs=1.0)
        assert rec.first_seen == pytest.approx(clock.time())
        assert rec.deadline == pytest.approx(rec.changed_at + 1800)  # 4 minutes less than first seen + window
        detect = reg.get_sample_value("driftd_time_to_detect_seconds_sum", {"target": "host"})
        assert detect == pytest.approx(240, abs=2)

    def test_a_drift_already_there_when_driftd_first_looks_counts_from_first_seen(self, host_root, baselines_dir,
                                                                                  make_runtime):
        import time

        write_tree(host_root, 2, drifted={1})
        clock = FakeClock(start=time.time() + 3600)  # the file changed an hour before driftd's first look
        rt = make_runtime(baselines_dir({"b.yaml": host_baseline("b", files_spec(2), enforcement="warn")}), clock=clock)
        run_once(rt.engine, rt.queue, attempts=1)
        rec = rt.state.get_active("host:file:/etc/app/f01.conf")
        assert rec.changed_at is None and rec.deadline == pytest.approx(rec.first_seen + 1800)
        assert not rec.breached


class TestGrace:
    def test_a_change_is_left_to_settle_for_the_baselines_grace_counted_from_the_change(self):
        from datetime import timedelta

        from driftd.safety.grace import GraceGate

        g = GraceGate()
        base = inp()
        d = base.desired.model_copy(update={"grace": timedelta(seconds=120)})
        held = g.check(GateInput(desired=d, plan=base.plan, now=NOW + 30, first_seen=NOW + 30, deadline=NOW + 1800,
                                 changed_at=NOW), View())
        assert held.gate == "grace" and held.until == NOW + 120 and held.retry and "90s to go" in held.reason
        assert g.check(GateInput(desired=d, plan=base.plan, now=NOW + 120, first_seen=NOW + 30, deadline=NOW + 1800,
                                 changed_at=NOW), View()).allowed
        # the change time unknown: first seen stands for it
        assert g.check(GateInput(desired=d, plan=base.plan, now=NOW + 130, first_seen=NOW + 30, deadline=NOW + 1830),
                       View()).gate == "grace"
        assert g.check(base, View()).allowed  # no grace: acts at once

    def test_a_grace_as_long_as_the_window_is_rejected_with_its_field(self, baselines_dir):
        from driftd.baselines.loader import load_set

        bset, problems = load_set(baselines_dir({"b.yaml": host_baseline("b", "window: 10m\ngrace: 10m\n" + files_spec(1))}))
        assert bset is None
        assert any("b.yaml" in str(p) and "grace" in str(p) and "shorter than window" in str(p) for p in problems), problems

    def test_end_to_end_the_revert_waits_out_the_grace_and_the_daemon_comes_back_when_it_ends(
            self, host_root, baselines_dir, make_runtime):
        from driftd.engine.queue import KeyedQueue

        write_tree(host_root, 1, drifted={0})
        clock = FakeClock()
        rt = make_runtime(baselines_dir({"b.yaml": host_baseline("b", "grace: 2m\n" + files_spec(1))}), clock=clock)
        q = KeyedQueue(clock=clock)
        rt.engine.scan(q)
        key = q.get(timeout=0)
        assert key == "host:file:/etc/app/f00.conf"
        rt.engine.work(q, key)  # the daemon's worker step
        rec = rt.state.get_active(key)
        assert rec.last_result == "held:grace"
        assert (host_root / "etc/app/f00.conf").read_text() == "drifted 0\n"
        assert q.get(timeout=0) is None  # not retried as a failure (no backoff storm) ...
        assert q.next_ready_in() == pytest.approx(120)  # ... but queued for the moment the grace ends
        clock.advance(120)
        rt.engine.work(q, q.get(timeout=0))
        assert (host_root / "etc/app/f00.conf").read_text() == "v0\n"
        assert rt.state.get_active(key) is None


class TestHeldComesBack:
    def test_a_budget_hold_is_queued_again_for_when_the_budget_may_free(self, host_root, baselines_dir, make_runtime):
        from driftd.engine.queue import KeyedQueue

        write_tree(host_root, 2, drifted={0, 1})
        clock = FakeClock()
        rt = make_runtime(baselines_dir({"b.yaml": host_baseline("b", files_spec(2))}), clock=clock,
                          safety={"budget": {"reverts_per_node": 1, "interval_seconds": 600}})
        q = KeyedQueue(clock=clock)
        rt.engine.scan(q)
        for _ in range(2):
            rt.engine.work(q, q.get(timeout=0))
        held = [k for k, r in rt.state.active().items() if r.last_result == "held:budget"]
        assert len(held) == 1
        assert len(q) == 1 and q.next_ready_in() == pytest.approx(10)  # interval / 60: looks again soon, not never
        clock.advance(600)  # the budget frees
        rt.engine.work(q, q.get(timeout=0))
        assert rt.state.active() == {}


class TestDeadlinePriority:
    def test_an_urgent_key_goes_before_every_other_ready_key_and_keeps_its_urgency_through_a_retry(self):
        from driftd.engine.queue import KeyedQueue

        clock = FakeClock()
        q = KeyedQueue(clock=clock)
        for k in ("a", "b", "c"):
            q.add(k)
        q.add("late", urgent=True)
        assert q.get(timeout=0) == "late"
        assert q.get(timeout=0) == "a"
        q.add("b", urgent=True)  # already queued: becomes urgent in place
        assert q.get(timeout=0) == "b"
        q.done("b", failed=True, urgent=True)  # its retry after backoff stays urgent
        q.add("d")
        clock.advance(q.backoff.delay(1))
        assert q.get(timeout=0) == "b"
        assert [q.get(timeout=0), q.get(timeout=0)] == ["c", "d"]
        q.add("x", delay=5, urgent=True)  # urgent but not ready yet: ready keys are not starved
        q.add("y")
        assert q.get(timeout=0) == "y" and q.next_ready_in() == pytest.approx(5)

    def test_a_drift_past_its_deadline_is_evented_once_and_the_scan_queues_it_first(self, host_root, baselines_dir,
                                                                                    make_runtime):
        from driftd.engine.queue import KeyedQueue
        from driftd.models.resources import DesiredResource as DR

        write_tree(host_root, 3, drifted={0, 1, 2})
        clock = FakeClock()
        rt = make_runtime(baselines_dir({"b.yaml": host_baseline("b", "window: 1m\n" + files_spec(3),
                                                                 enforcement="warn")}), clock=clock,
                          safety={"deadline_margin_seconds": 10})
        seen: list[tuple[str, str]] = []

        class Notes:
            def notify(self, reason: str, d: DR, message: str, *, warning: bool = True) -> None:
                seen.append((reason, d.key))

        rt.engine.notifiers.append(Notes())
        run_once(rt.engine, rt.queue, attempts=1)
        rec = rt.state.get_active("host:file:/etc/app/f00.conf")
        rt.state.resolve(rec, now=clock.time(), resolution="test")  # f00 opens later: its window is still running
        clock.advance(30)
        run_once(rt.engine, rt.queue, attempts=1)
        clock.advance(45)  # f01 and f02 are past their deadline, f00 is not (scanned first, queued last)
        q = KeyedQueue(clock=clock)
        rt.engine.scan(q)
        first_two = {q.get(timeout=0), q.get(timeout=0)}
        assert first_two == {"host:file:/etc/app/f01.conf", "host:file:/etc/app/f02.conf"}
        assert q.get(timeout=0) == "host:file:/etc/app/f00.conf"
        for k in sorted(first_two) * 2:  # reconciled twice: the breach is Evented once
            rt.engine.reconcile(k)
        breaches = [k for r, k in seen if r == "DriftWindowBreached"]
        assert sorted(breaches) == sorted(first_two)
        assert rt.engine.outcomes["host:file:/etc/app/f01.conf"].urgent


class TestSafetyGauges:
    def test_holds_breakers_and_quarantines_are_scraped_from_state(self, host_root, baselines_dir, make_runtime):
        from prometheus_client import CollectorRegistry

        write_tree(host_root, 12, drifted=set(range(12)))
        reg = CollectorRegistry()
        clock = FakeClock()
        rt = make_runtime(baselines_dir({"b.yaml": host_baseline("b", "window: 1m\n" + files_spec(12))}), safety={},
                          registry=reg, clock=clock)
        run_once(rt.engine, rt.queue, attempts=1)
        assert reg.get_sample_value("driftd_breaker_open", {"baseline": "b", "kind": "revert"}) == 1
        assert reg.get_sample_value("driftd_drifts_held", {"target": "host", "gate": "breaker"}) == 12
        assert reg.get_sample_value("driftd_drifts_held_past_deadline", {"target": "host", "gate": "breaker"}) == 0
        clock.advance(61)
        assert reg.get_sample_value("driftd_drifts_held_past_deadline", {"target": "host", "gate": "breaker"}) == 12
        assert reg.get_sample_value("driftd_flapping_resources", {"target": "host"}) == 0
        rt.state.set_guard("flap:host:file:/etc/app/f00.conf", until=1e18, now=clock.time(), data={})
        assert reg.get_sample_value("driftd_flapping_resources", {"target": "host"}) == 1
        rt.engine.reset_breakers()
        assert reg.get_sample_value("driftd_breaker_open", {"baseline": "b", "kind": "revert"}) is None


class TestBreakGlassFromAnnotations:
    def test_an_annotation_is_judged_like_a_pause_with_its_ttl_counted_from_when_it_was_set(self):
        from driftd.safety.breakglass import AnnotatedOverride, from_annotations, set_time

        meta = {"managedFields": [
            {"manager": "kube-controller-manager", "time": "2026-12-02T09:00:00Z",
             "fieldsV1": {"f:metadata": {"f:labels": {}}}},
            {"manager": "kubectl-annotate", "time": "2026-12-02T10:00:00Z",
             "fieldsV1": {"f:metadata": {"f:annotations": {"f:driftd.io/break-glass-until": {}}}}}]}
        at, by = set_time(meta)
        ten = 1_796_205_600.0  # 2026-12-02T10:00:00Z
        assert (at, by) == (ten, "kubectl-annotate")
        ask = {"driftd.io/break-glass-reason": "INC-1", "driftd.io/break-glass-until": "2026-12-02T12:00:00Z"}
        o = from_annotations(AnnotatedOverride("pod ns/web", ask, at, by, key="pod:ns/web"), now=ten + 60, max_ttl=3 * 3600)
        assert o is not None and o.key == "pod:ns/web" and o.expires == ten + 7200 and o.by == "kubectl-annotate"
        assert o.matches("pod:ns/web", "b", "kubernetes") and not o.matches("pod:ns/api", "b", "kubernetes")
        # two hours asked an hour ago is two hours, over a 90-minute maximum however little is left
        with pytest.raises(OverrideError, match="lasts 7200s from when it was set"):
            from_annotations(AnnotatedOverride("pod ns/web", ask, at, by, key="pod:ns/web"), now=ten + 3600, max_ttl=5400)
        node = from_annotations(AnnotatedOverride("node n1", ask, at, by), now=ten, max_ttl=86400)
        assert node is not None and node.all and node.matches("host:file:/etc/motd", "x", "host")
        narrowed = from_annotations(AnnotatedOverride("node n1", {**ask, "driftd.io/break-glass-baseline": "motd"}, at),
                                    now=ten, max_ttl=86400)
        assert narrowed is not None and not narrowed.all and narrowed.baseline == "motd"
        assert from_annotations(AnnotatedOverride("pod ns/web", {"app": "web"}, None, key="pod:ns/web"),
                                now=ten, max_ttl=1) is None


class TestRestartKeepsIt:
    def test_a_restart_keeps_deadlines_change_times_budgets_and_quarantines(self, host_root, baselines_dir,
                                                                             make_runtime, tmp_path):
        import time

        write_tree(host_root, 3)
        clock = FakeClock(start=time.time())
        bdir = baselines_dir({"b.yaml": host_baseline("b", "window: 10m\n" + files_spec(3))})
        safety = {"budget": {"reverts_per_node": 3, "interval_seconds": 3600},
                  "flap": {"reverts": 2, "window_seconds": 600}}
        rt = make_runtime(bdir, clock=clock, state_dir=tmp_path / "st", safety=safety)
        run_once(rt.engine, rt.queue, attempts=1)  # seen clean: changes after this can be dated
        f0, f1 = host_root / "etc/app/f00.conf", host_root / "etc/app/f01.conf"
        for _ in range(2):  # f00 reverted twice: budget 2 of 3 spent, and the next drift of f00 is a flap
            f0.write_text("the other tool\n")
            clock.advance(0.01)  # the fake clock stays with the files' real ctimes
            run_once(rt.engine, rt.queue, attempts=1)
        f0.write_text("the other tool\n")
        f1.write_text("hand edit\n")
        clock.advance(0.01)  # the fake clock stays with the files' real ctimes
        s = {o.key: o for o in run_once(rt.engine, rt.queue, attempts=1).outcomes}
        assert s["host:file:/etc/app/f00.conf"].error.startswith("held: flap")
        assert s["host:file:/etc/app/f01.conf"].status is OutcomeStatus.REMEDIATED  # budget: 3 of 3 now
        f1.write_text("hand edit again\n")
        clock.advance(0.01)  # the fake clock stays with the files' real ctimes
        run_once(rt.engine, rt.queue, attempts=1)
        before = {k: (r.first_seen, r.changed_at, r.deadline, r.last_result) for k, r in rt.state.active().items()}
        assert before["host:file:/etc/app/f01.conf"][3] == "held:budget"
        assert before["host:file:/etc/app/f01.conf"][1] is not None  # dated from the change
        rt.state.close()

        rt2 = make_runtime(bdir, clock=clock, state_dir=tmp_path / "st", safety=safety)  # the restart
        clock.advance(5)
        s2 = {o.key: o for o in run_once(rt2.engine, rt2.queue, attempts=1).outcomes}
        assert s2["host:file:/etc/app/f00.conf"].error.startswith("held: flap")  # still quarantined
        assert s2["host:file:/etc/app/f01.conf"].error.startswith("held: budget")  # the budget spent is still spent
        after = {k: (r.first_seen, r.changed_at, r.deadline) for k, r in rt2.state.active().items()}
        assert after == {k: v[:3] for k, v in before.items()}  # same first seen, change time and deadline
        clock.advance(600)  # past f01's deadline: the breach and escalation survive the restart too
        run_once(rt2.engine, rt2.queue, attempts=1)
        assert rt2.state.get_active("host:file:/etc/app/f01.conf").breached
