"""Kind handlers: one per resource kind, found by the registry, driving compile, lint, observe, plan and act."""

from __future__ import annotations

import os
import stat
import typing
from pathlib import Path

import pytest
from conftest import host_baseline

from driftd.baselines.loader import load_set
from driftd.core import kinds
from driftd.core.compile import compile_host
from driftd.core.diff import diff
from driftd.core.kinds.base import Handler, PlanOnly, PlanResult
from driftd.core.kinds.ports import HostPort
from driftd.core.plan import plan
from driftd.demo import build_tree
from driftd.models.baseline import HostSpec, Rule
from driftd.models.resources import Action, DesiredResource, FieldDrift, ObservedResource, Plan, PlannedAction
from driftd.safety.snapshots import SnapshotStore
from driftd.targets.base import TargetError
from driftd.targets.host import HostTarget

EVERY_KIND = (
    """
    directories: [{path: /etc/ssh, mode: "0755"}]
    files:
      - {path: /etc/ssh/sshd_config, content: "PermitRootLogin no\\n", mode: "0600"}
      - {path: /etc/hosts.equiv, absent: true}
    sysctls: [{key: net.ipv4.ip_forward, value: 0}]
    kernel: {minimumRelease: "1.0", action: report}
    """
)


def rule_models() -> set[type[Rule]]:
    """Every Rule model a HostSpec field can hold, read from the field annotations."""
    out: set[type[Rule]] = set()
    for info in HostSpec.model_fields.values():
        stack = [info.annotation]
        while stack:
            t = stack.pop()
            if isinstance(t, type) and issubclass(t, Rule):
                out.add(t)
            stack.extend(typing.get_args(t))
    return out


def test_every_rule_model_has_exactly_one_handler_that_compiles_it_under_its_own_key():
    models = rule_models()
    assert len(models) >= 4  # files, directories, sysctls, kernel
    for m in models:
        h = kinds.rule_handler(m.model_construct())
        assert h.rule is m
        assert kinds.handler_for(h.target, h.kind) is h


def test_compiled_resources_carry_the_key_of_the_handler_that_made_them(baselines_dir):
    bset, problems = load_set(baselines_dir({"b.yaml": host_baseline("b", EVERY_KIND)}))
    assert bset is not None, problems
    desired = compile_host(bset.baselines, bset.sources, "n", {})
    assert [d.kind for d in desired] == ["directory", "file", "file", "sysctl", "kernel"]
    for d in desired:
        assert kinds.find(d.target, d.kind) is not None


def test_an_unknown_kind_is_an_error_everywhere_never_a_default(tmp_path):
    with pytest.raises(TargetError, match="no handler for a 'service' resource of the host target"):
        kinds.handler_for("host", "service")
    d = DesiredResource(key="host:service:x", target="host", kind="service", address="x", baseline="b", expected={"v": 1})
    p = plan(d, ObservedResource(key=d.key, actual={"v": 2}), (FieldDrift(field="v", expected=1, actual=2),))
    assert p.blocked == "no planner for host/service" and not p.applies


def test_registering_a_second_handler_for_a_kind_is_refused():
    with pytest.raises(ValueError, match="host/file is already registered"):
        kinds.register(PlanOnly(lambda d, o, f: ([], None)), target="host", kind="file")


class MarkerHandler(Handler[HostPort]):
    """A kind defined outside driftd: a marker file that must exist (one module, nothing else touched)."""

    target = "host"
    kind = "marker"
    steps = frozenset({Action.WRITE_FILE})
    overwrites = frozenset({Action.WRITE_FILE})

    def observe(self, port: HostPort, desired: DesiredResource) -> ObservedResource:
        return ObservedResource(key=desired.key, actual={"present": port.lstat(desired.address) is not None})

    def plan(self, desired: DesiredResource, observed: ObservedResource, drift: dict[str, FieldDrift]) -> PlanResult:
        return [PlannedAction(action=Action.WRITE_FILE, reason="marker missing")], None

    def apply(self, port: HostPort, desired: DesiredResource, observed: ObservedResource,
              step: PlannedAction) -> tuple[str, ...]:
        port.write_atomic(desired.address, b"marked\n", mode=0o640, uid=None, gid=None)
        return ()


@pytest.fixture
def marker_kind():
    h = MarkerHandler()
    kinds.register(h)
    yield h
    del kinds.REGISTRY[("host", "marker")]


def test_a_new_kind_is_one_handler_the_host_target_observes_plans_and_applies_through_its_port(host_root, tmp_path,
                                                                                                 marker_kind):
    t = HostTarget(host_root, SnapshotStore(tmp_path / "snaps"))
    d = DesiredResource(key="host:marker:/etc/marker", target="host", kind="marker", address="/etc/marker",
                        baseline="b", expected={"present": True})
    obs = t.observe(d)
    assert obs.actual == {"present": False}
    p = plan(d, obs, diff(d, obs))
    assert p.applies
    t.apply(d, obs, p)
    assert (host_root / "etc/marker").read_bytes() == b"marked\n"
    assert stat.S_IMODE(os.stat(host_root / "etc/marker").st_mode) == 0o640
    again = t.observe(d)
    assert diff(d, again) == ()  # idempotent: nothing left to plan


def test_a_step_the_kind_cannot_carry_out_is_refused_before_any_step_runs(host_root, tmp_path):
    f = host_root / "etc/app.conf"
    f.write_text("x\n")
    os.chmod(f, 0o644)
    t = HostTarget(host_root, SnapshotStore(tmp_path / "snaps"))
    d = DesiredResource(key="host:file:/etc/app.conf", target="host", kind="file", address="/etc/app.conf",
                        baseline="b", expected={"present": True, "mode": "0600"})
    obs = t.observe(d)
    bad = Plan(key=d.key, mode=d.enforcement, drift=diff(d, obs), actions=(
        PlannedAction(action=Action.CHMOD, reason="mode differs", params={"mode": "0600"}),
        PlannedAction(action=Action.WRITE_SYSCTL, reason="not a file action", params={"value": "1"}),
    ))
    with pytest.raises(TargetError, match="cannot write_sysctl a file"):
        t.apply(d, obs, bad)
    assert stat.S_IMODE(os.stat(f).st_mode) == 0o644  # the chmod before it never ran


def test_lint_claims_come_from_the_handlers_a_file_and_a_directory_on_one_path_collide(baselines_dir):
    root = baselines_dir({
        "a.yaml": host_baseline("a", "files: [{path: /etc/x, content: 'y'}]"),
        "b.yaml": host_baseline("b", "directories: [{path: /etc/x}]"),
    })
    bset, problems = load_set(root)
    assert bset is None
    assert any("claim on path /etc/x" in p.reason and p.field.endswith(".path") for p in problems), problems


def test_each_handler_seeds_a_compliant_demo_tree(baselines_dir, make_runtime, host_root):
    """The demo's tree is built by the handlers' ``seed``: a first pass over it finds nothing to do."""
    rt = make_runtime(baselines_dir({"b.yaml": host_baseline("b", EVERY_KIND.replace('"1.0", action: report', '"0"'))}))
    (host_root / "proc/sys/kernel").mkdir(parents=True, exist_ok=True)
    (host_root / "proc/sys/kernel/osrelease").write_text("6.1.0\n")
    desired = list(rt.engine.desired.values())
    build_tree(Path(host_root), desired)
    from driftd.engine.once import run_once
    s = run_once(rt.engine, rt.queue, attempts=1)
    assert s.exit_code == 0 and not s.outcomes, [(o.key, o.status) for o in s.outcomes]
