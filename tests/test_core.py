"""Pure core: diff, plan and the keyed work queue, built by hand with no filesystem."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest

from driftd.core.diff import REDACTED, diff, reportable
from driftd.core.plan import plan
from driftd.engine.clock import FakeClock
from driftd.engine.queue import Backoff, KeyedQueue
from driftd.models.baseline import Enforcement
from driftd.models.resources import Action, DesiredResource, ObservedResource

HELLO = b"hello\n"
HELLO_DIGEST = "sha256:5891b5b522d5df086d0ff0b110fbd9d21bb4fc7163af34d08286a2e846f6be03"


def desired(
    expected: dict[str, Any],
    *,
    kind: str = "file",
    target: str = "host",
    content: bytes | None = None,
    enforcement: Enforcement = Enforcement.ENFORCE,
    sensitive: frozenset[str] = frozenset(),
) -> DesiredResource:
    return DesiredResource(
        key=f"{target}:{kind}:/etc/x",
        target=target,
        kind=kind,
        address="/etc/x",
        baseline="b",
        enforcement=enforcement,
        expected=expected,
        content=content,
        sensitive=sensitive,
    )


def observed(actual: dict[str, Any]) -> ObservedResource:
    return ObservedResource(key="host:file:/etc/x", actual=actual)


def a_file(**over: Any) -> dict[str, Any]:
    base: dict[str, Any] = {"present": True, "type": "file", "mode": "0644", "owner": 0, "group": 0, "content": HELLO_DIGEST}
    base.update(over)
    return base


def plan_for(d: DesiredResource, o: ObservedResource, *, dry_run: bool = False):
    return plan(d, o, diff(d, o), dry_run=dry_run)


# --------------------------------------------------------------------------- diff


class TestDiff:
    def test_only_fields_named_in_expected_are_compared(self):
        """Fields the baseline does not name never drift, however different they are."""
        d = desired({"present": True, "type": "file", "mode": "0644"})
        o = observed(a_file(owner=1000, group=1000, content="sha256:other", extra="anything"))
        assert diff(d, o) == ()

    def test_a_named_field_that_differs_is_the_only_drift(self):
        """Only the governed field that differs is reported, with expected and actual values."""
        d = desired({"present": True, "type": "file", "mode": "0600", "owner": 0})
        (fd,) = diff(d, observed(a_file(mode="0644", group=1000)))
        assert (fd.field, fd.expected, fd.actual, fd.changes) == ("mode", "0600", "0644", ())

    def test_missing_resource_reports_only_present(self):
        """A resource that should exist but does not reports only `present`, not its moot attributes."""
        d = desired({"present": True, "type": "file", "mode": "0600", "owner": 0})
        drift = diff(d, observed({"present": False}))
        assert [(x.field, x.expected, x.actual) for x in drift] == [("present", True, False)]

    def test_must_be_absent(self):
        """A must-be-absent file drifts on `present` only when it exists."""
        d = desired({"present": False})
        assert diff(d, observed({"present": False})) == ()
        assert [x.field for x in diff(d, observed(a_file(mode="0777")))] == ["present"]

    def test_type_mismatch_reports_only_type(self):
        """A directory where a file belongs drifts on `type` alone."""
        d = desired({"present": True, "type": "file", "mode": "0600"})
        drift = diff(d, observed(a_file(type="directory", mode="0755")))
        assert [(x.field, x.expected, x.actual) for x in drift] == [("type", "file", "directory")]

    def test_structured_dict_changes_are_deepdiff_paths(self):
        """A map value that differs names each changed, added and removed key as a deepdiff path."""
        d = desired({"labels": {"a": "1", "b": "2", "gone": "x"}}, target="docker", kind="container")
        o = observed({"labels": {"a": "1", "b": "3", "c": "4"}})
        (fd,) = diff(d, o)
        assert fd.field == "labels"
        assert set(fd.changes) == {"values_changed:['b']", "dictionary_item_added:['c']", "dictionary_item_removed:['gone']"}

    def test_structured_list_changes_are_deepdiff_paths(self):
        """A list value that gained an item names the added index as a deepdiff path."""
        d = desired({"caps": ["A", "B"]}, target="docker", kind="container")
        assert diff(d, observed({"caps": ["A", "B"]})) == ()
        (fd,) = diff(d, observed({"caps": ["A", "B", "C"]}))
        assert (fd.field, fd.actual, fd.changes) == ("caps", ["A", "B", "C"], ("iterable_item_added:[2]",))

    def test_matcher_values_are_rules_not_literals(self):
        """A `$in` matcher accepts any listed value and names the offending one otherwise."""
        d = desired({"image": {"$in": ["a", "b"]}}, target="docker", kind="container")
        assert diff(d, observed({"image": "b"})) == ()
        (fd,) = diff(d, observed({"image": "evil"}))
        assert fd.changes == ("not_in:evil",)

    def test_reportable_redacts_sensitive_fields_only(self):
        """Sensitive fields lose their values in reports; other fields keep them."""
        d = desired({"present": True, "type": "file", "content": HELLO_DIGEST, "mode": "0600"},
                    content=HELLO, sensitive=frozenset({"content"}))
        rows = reportable(d, diff(d, observed(a_file(content="sha256:drifted", mode="0644"))))
        by = {r["field"]: r for r in rows}
        assert by["content"]["expected"] == by["content"]["actual"] == REDACTED
        assert (by["mode"]["expected"], by["mode"]["actual"]) == ("0600", "0644")
        assert HELLO_DIGEST not in repr(rows) and "sha256:drifted" not in repr(rows)


# --------------------------------------------------------------------------- plan


class TestPlanFiles:
    def test_present_file_that_must_be_absent_is_removed(self):
        """A file that must be absent gets a REMOVE."""
        p = plan_for(desired({"present": False}), observed(a_file()))
        assert [a.action for a in p.actions] == [Action.REMOVE] and p.applies and p.blocked is None

    def test_symlink_that_must_be_absent_is_removed(self):
        """A symlink standing at a must-be-absent path is removed too (the link, not its target)."""
        p = plan_for(desired({"present": False}), observed(a_file(type="symlink")))
        assert [a.action for a in p.actions] == [Action.REMOVE]

    def test_directory_that_must_be_absent_is_blocked(self):
        """A directory at a must-be-absent path is never removed: the plan is blocked."""
        p = plan_for(desired({"present": False}), observed(a_file(type="directory")))
        assert p.actions == () and "directory" in (p.blocked or "") and not p.applies

    def test_missing_file_is_written_with_declared_attributes(self):
        """A missing file gets WRITE_FILE carrying the declared mode, owner and group."""
        d = desired({"present": True, "type": "file", "content": HELLO_DIGEST, "mode": "0640", "owner": 105, "group": 42},
                    content=HELLO)
        p = plan_for(d, observed({"present": False}))
        (a,) = p.actions
        assert a.action is Action.WRITE_FILE and a.reason == "missing"
        assert a.params == {"mode": "0640", "owner": 105, "group": 42}

    def test_missing_file_without_declared_attributes_gets_defaults(self):
        """With nothing declared and nothing present, the write carries no mode/owner (adapter defaults)."""
        d = desired({"present": True, "type": "file", "content": HELLO_DIGEST}, content=HELLO)
        (a,) = plan_for(d, observed({"present": False})).actions
        assert a.params == {"mode": None, "owner": None, "group": None}

    def test_content_rewrite_keeps_current_undeclared_attributes(self):
        """Rewriting content keeps the current mode/owner of the file where the baseline is silent."""
        d = desired({"present": True, "type": "file", "content": HELLO_DIGEST, "mode": "0600"}, content=HELLO)
        (a,) = plan_for(d, observed(a_file(content="sha256:x", mode="0644", owner=7, group=8))).actions
        assert a.action is Action.WRITE_FILE and a.reason == "content differs"
        assert a.params == {"mode": "0600", "owner": 7, "group": 8}

    def test_symlink_replaced_by_file_does_not_inherit_link_attributes(self):
        """A symlink's 0777 mode and owner are not carried over to the file that replaces it."""
        d = desired({"present": True, "type": "file", "content": HELLO_DIGEST}, content=HELLO)
        (a,) = plan_for(d, observed(a_file(type="symlink", mode="0777", owner=1000, group=1000))).actions
        assert a.action is Action.WRITE_FILE and a.reason == "is a symlink"
        assert a.params == {"mode": None, "owner": None, "group": None}

    def test_mode_drift_is_a_chmod(self):
        """Only the mode differs: a single CHMOD to the declared mode."""
        d = desired({"present": True, "type": "file", "content": HELLO_DIGEST, "mode": "0600"}, content=HELLO)
        (a,) = plan_for(d, observed(a_file(mode="0644"))).actions
        assert (a.action, a.params) == (Action.CHMOD, {"mode": "0600"})

    def test_owner_drift_is_a_chown(self):
        """Only the owner differs: a single CHOWN with the declared owner (group left alone when undeclared)."""
        d = desired({"present": True, "type": "file", "owner": 105})
        (a,) = plan_for(d, observed(a_file(owner=0))).actions
        assert (a.action, a.params) == (Action.CHOWN, {"owner": 105, "group": None})

    def test_mode_and_group_drift_give_chmod_then_chown(self):
        """Mode and group drift together give CHMOD then CHOWN."""
        d = desired({"present": True, "type": "file", "mode": "0640", "group": 42})
        p = plan_for(d, observed(a_file(mode="0644", group=0)))
        assert [a.action for a in p.actions] == [Action.CHMOD, Action.CHOWN]

    def test_directory_where_file_belongs_is_blocked(self):
        """A directory standing where a file belongs is never replaced: blocked, no actions."""
        d = desired({"present": True, "type": "file", "content": HELLO_DIGEST}, content=HELLO)
        p = plan_for(d, observed(a_file(type="directory")))
        assert p.actions == () and p.blocked and "directory" in p.blocked and not p.applies

    def test_unresolved_owner_name_is_blocked_naming_it(self):
        """An owner name that did not resolve to an id blocks the plan and the reason names the user."""
        d = desired({"present": True, "type": "file", "owner": "ghost"})
        p = plan_for(d, observed(a_file()))
        assert p.actions == () and p.blocked is not None and "'ghost'" in p.blocked

    def test_unresolved_group_name_is_blocked_naming_it(self):
        """A group name that did not resolve blocks the plan naming the group."""
        d = desired({"present": True, "type": "file", "group": "wheelz"})
        p = plan_for(d, observed(a_file()))
        assert p.blocked is not None and "group 'wheelz'" in p.blocked

    def test_no_drift_is_an_empty_plan(self):
        """Without drift the plan is empty and does not apply."""
        d = desired({"present": True, "type": "file", "mode": "0644"})
        p = plan_for(d, observed(a_file()))
        assert p.drift == () and p.actions == () and not p.applies


class TestPlanDirsAndSysctls:
    def test_missing_directory_is_mkdir_with_declared_attributes(self):
        """A missing directory gets MKDIR with its declared mode and owner."""
        d = desired({"present": True, "type": "directory", "mode": "0750", "owner": 0}, kind="directory")
        (a,) = plan_for(d, observed({"present": False})).actions
        assert a.action is Action.MKDIR and a.params == {"mode": "0750", "owner": 0, "group": None}

    def test_directory_mode_drift_is_chmod(self):
        """A directory whose mode differs gets CHMOD."""
        d = desired({"present": True, "type": "directory", "mode": "0755"}, kind="directory")
        (a,) = plan_for(d, observed(a_file(type="directory", mode="0777"))).actions
        assert (a.action, a.params) == (Action.CHMOD, {"mode": "0755"})

    def test_file_where_directory_belongs_is_blocked(self):
        """A file standing where a directory belongs is blocked."""
        d = desired({"present": True, "type": "directory"}, kind="directory")
        p = plan_for(d, observed(a_file()))
        assert p.actions == () and "where a directory belongs" in (p.blocked or "")

    def test_sysctl_value_drift_is_write_sysctl(self):
        """A sysctl whose value differs gets WRITE_SYSCTL with the expected value."""
        d = desired({"value": "0"}, kind="sysctl")
        (a,) = plan_for(d, observed({"value": "1"})).actions
        assert (a.action, a.params) == (Action.WRITE_SYSCTL, {"value": "0"})

    def test_sysctl_missing_on_kernel_is_blocked(self):
        """A sysctl key the kernel does not have is blocked, not written."""
        d = desired({"value": "0"}, kind="sysctl")
        p = plan_for(d, observed({"value": None}))
        assert p.actions == () and "does not exist" in (p.blocked or "")

    def test_unknown_target_kind_is_blocked(self):
        """A resource no planner knows is blocked rather than guessed at."""
        d = desired({"value": "0"}, target="host", kind="fifo")
        p = plan_for(d, observed({"value": "1"}))
        assert p.blocked == "no planner for host/fifo"


class TestPlanModes:
    def test_dry_run_overrides_enforce_but_keeps_the_actions(self):
        """Global dry-run plans the same actions with mode DRYRUN, and the plan does not apply."""
        d = desired({"present": True, "type": "file", "mode": "0600"})
        enforce = plan_for(d, observed(a_file()))
        dry = plan_for(d, observed(a_file()), dry_run=True)
        assert enforce.mode is Enforcement.ENFORCE and enforce.applies
        assert dry.mode is Enforcement.DRYRUN and not dry.applies
        assert dry.actions == enforce.actions and dry.actions

    @pytest.mark.parametrize("mode", [Enforcement.WARN, Enforcement.DRYRUN])
    def test_non_enforcing_baselines_never_apply(self, mode):
        """warn and dryrun baselines compute actions but never apply them."""
        d = desired({"present": True, "type": "file", "mode": "0600"}, enforcement=mode)
        p = plan_for(d, observed(a_file()))
        assert p.mode is mode and [a.action for a in p.actions] == [Action.CHMOD] and not p.applies

    def test_blocked_plan_never_applies_even_when_enforcing(self):
        """A blocked plan does not apply in enforce mode."""
        d = desired({"present": True, "type": "file", "owner": "ghost"})
        p = plan_for(d, observed(a_file()))
        assert p.mode is Enforcement.ENFORCE and not p.applies


# --------------------------------------------------------------------------- queue


class TestBackoff:
    def test_delays_double_then_cap(self):
        """Backoff doubles from the base and stops at the cap."""
        b = Backoff(base_seconds=0.5, max_seconds=5)
        assert [b.delay(n) for n in range(1, 8)] == [0.5, 1, 2, 4, 5, 5, 5]

    def test_queue_failures_requeue_after_doubling_delays(self):
        """Each consecutive failure of a key re-queues it after twice the previous delay, up to the cap."""
        clock = FakeClock()
        q = KeyedQueue(clock=clock, backoff=Backoff(1, 8))
        delays = []
        q.add("k")
        for _ in range(6):
            assert q.next_ready_in() is not None
            clock.advance(q.next_ready_in() or 0)
            assert q.get(timeout=0) == "k"
            delays.append(q.done("k", failed=True))
        assert delays == [1, 2, 4, 8, 8, 8]
        assert q.failures("k") == 6

    def test_success_resets_failures(self):
        """A success clears the failure count, so the next failure starts from the base delay again."""
        clock = FakeClock()
        q = KeyedQueue(clock=clock, backoff=Backoff(1, 60))
        for _ in range(3):
            q.add("k")
            clock.advance(100)
            assert q.get(timeout=0) == "k"
            q.done("k", failed=True, retry=False)
        q.add("k")
        assert q.get(timeout=0) == "k"
        q.done("k")
        assert q.failures("k") == 0
        q.add("k")
        assert q.get(timeout=0) == "k"
        assert q.done("k", failed=True) == 1


class TestKeyedQueue:
    def test_duplicate_adds_are_one_item(self):
        """Adding the same key several times queues it once."""
        q = KeyedQueue(clock=FakeClock())
        for _ in range(3):
            q.add("a")
        q.add("b")
        assert len(q) == 2
        got = [q.get(timeout=0), q.get(timeout=0), q.get(timeout=0)]
        assert got == ["a", "b", None]

    def test_sooner_add_wins_over_later(self):
        """A key already queued for later is moved earlier by an immediate add, never later."""
        clock = FakeClock()
        q = KeyedQueue(clock=clock)
        q.add("k", delay=10)
        assert q.get(timeout=0) is None
        q.add("k")
        assert q.get(timeout=0) == "k"
        q.done("k")
        q.add("k")
        q.add("k", delay=10)  # later: ignored
        assert q.get(timeout=0) == "k"

    def test_key_added_while_processing_is_requeued_after_done(self):
        """A key added while in flight is not handed out again until it is done, then comes back once."""
        q = KeyedQueue(clock=FakeClock())
        q.add("k")
        assert q.get(timeout=0) == "k"
        q.add("k")
        q.add("k")
        assert len(q) == 0 and q.get(timeout=0) is None
        assert q.processing == {"k"}
        q.done("k")
        assert q.processing == frozenset()
        assert q.get(timeout=0) == "k"
        q.done("k")
        assert q.get(timeout=0) is None

    def test_drain_gives_up_after_max_failures(self):
        """drain retries a failing key with backoff on the injected clock and stops after max_failures calls."""
        clock = FakeClock()
        q = KeyedQueue(clock=clock, backoff=Backoff(1, 300))
        calls: list[tuple[str, float]] = []

        def handler(key: str) -> bool:
            calls.append((key, clock.monotonic()))
            return key == "ok"

        q.add("bad")
        q.add("ok")
        start = clock.monotonic()
        q.drain(handler, max_failures=4)
        bad_times = [t - start for k, t in calls if k == "bad"]
        assert bad_times == [0, 1, 3, 7]  # waits 1, 2, 4 between the four attempts
        assert [k for k, _ in calls].count("ok") == 1
        assert len(q) == 0 and q.failures("bad") == 4

    def test_drain_counts_failures_per_pass(self):
        """A key that exhausted its attempts in one drain gets max_failures attempts again in the next."""
        clock = FakeClock()
        q = KeyedQueue(clock=clock, backoff=Backoff(1, 300))
        calls: list[str] = []

        def fail(key: str) -> bool:
            calls.append(key)
            return False

        for _ in range(2):
            q.add("bad")
            q.drain(fail, max_failures=3)
        assert calls == ["bad"] * 6
        assert q.failures("bad") == 6

    def test_drain_returns_at_once_when_empty(self):
        """drain on an empty queue calls nothing and does not sleep."""
        clock = FakeClock()
        q = KeyedQueue(clock=clock)
        q.drain(lambda k: pytest.fail("handler called"), max_failures=3)
        assert clock.monotonic() == 1000.0

    def test_close_unblocks_a_waiting_getter(self):
        """close() wakes a get() that is blocked with no timeout, which returns None."""
        q = KeyedQueue()
        got: list[str | None] = []
        t = threading.Thread(target=lambda: got.append(q.get()))
        t.start()
        time.sleep(0.05)
        q.close()
        t.join(2)
        assert not t.is_alive() and got == [None]

    def test_never_hands_the_same_key_to_two_getters(self):
        """With many worker threads re-adding keys while processing them, no key is ever in flight twice."""
        q = KeyedQueue()
        keys = [f"k{i}" for i in range(4)]
        inflight: set[str] = set()
        lock = threading.Lock()
        overlaps: list[str] = []
        handled: dict[str, int] = dict.fromkeys(keys, 0)
        stop = threading.Event()

        def worker() -> None:
            while not stop.is_set():
                key = q.get(timeout=0.05)
                if key is None:
                    continue
                with lock:
                    if key in inflight:
                        overlaps.append(key)
                    inflight.add(key)
                    handled[key] += 1
                time.sleep(0.0005)
                q.add(key)  # new work for the same key arrives while it is being processed
                with lock:
                    inflight.discard(key)
                q.done(key)

        for k in keys:
            q.add(k)
        threads = [threading.Thread(target=worker) for _ in range(8)]
        for t in threads:
            t.start()
        deadline = time.monotonic() + 10
        while sum(handled.values()) < 400 and time.monotonic() < deadline:
            time.sleep(0.01)
        stop.set()
        q.close()
        for t in threads:
            t.join(5)
        assert overlaps == []
        assert sum(handled.values()) >= 400
        assert all(n > 10 for n in handled.values()), handled


class TestSnapshotRedaction:
    def test_one_rule_for_every_surface(self):
        """Ids of sensitive content are redacted; a container's sensitive env does not hide its snapshot id."""
        ids = ("sha256:" + "a" * 64,)
        secret = desired({"content": "sha256:x"}, sensitive=frozenset({"content"}))
        container = desired({"env": {}}, kind="container", target="docker", sensitive=frozenset({"env"}))
        assert secret.shown_snapshots(ids) == ["<redacted>"]
        assert container.shown_snapshots(ids) == list(ids)
