"""One contract for every target: memory, host (real tree), Docker (real dockerd), Kubernetes (real apiserver).

Each parameter of the ``harness`` fixture builds the same small world for its target: one
governed resource that starts compliant (``harness.key``), plus a *bystander* resource of
another target in the same engine (a host file for Docker and Kubernetes, a memory resource
for memory and host) that shows one target's trouble never stops the others.  A harness has
one interface:

``runtime(dry_run=False)``
    an engine over the world (``.engine``, ``.queue``, ``.state``, ``.metrics``); every runtime of
    one harness shares one state directory, as restarts of one driftd would.
``drift()``
    makes a real drift: mutate the memory resource, edit the file in the tree, replace the
    container by one running as root, create a privileged pod on this node.
``is_compliant()``
    whether the governed resource matches its baseline again (for Kubernetes: no
    non-compliant pod is left running on the node).
``snapshot_of_world()``
    something to compare to prove nothing changed: the memory dict, a tree digest, the
    containers' ids and state, the pods' resourceVersions.
``writes()``
    how many writes driftd has made so far, where that can be counted (memory: the adapter's
    write log; Kubernetes: the API server's audit log), else None.
``settle()``
    waits until the world stops changing after a pass (Kubernetes: the fake kubelet removes an
    evicted pod after driftd is done); a no-op elsewhere.
``remove_resource(rt)``
    makes the governed resource go away: delete it (memory, container, pod); a host file has
    no "gone", so its baseline entry is removed.
``take_down()`` / ``bring_up()``
    makes the target unreachable and back: memory ``down = True``; host: the host root is
    replaced by a regular file (the tree cannot be read); Docker: a socket that does not exist;
    Kubernetes: a kubeconfig naming a dead 127.0.0.1 port.  The shared dockerd and API server
    are never stopped.
``bystander_drift()`` / ``bystander_compliant()`` / ``bystander_key`` / ``bystander_target``
    the same for the bystander.

A missing component (dockerd, the kube binaries) skips locally and fails under ``CI=true``
(``need()`` through the fixtures in docker_support.py and k8s_support.py).
"""

from __future__ import annotations

import contextlib
import os
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import host_baseline, tree_digest
from docker_support import IMAGE_V1, SCOPE
from k8s_support import KUBELET_AGENT

from driftd.baselines.loader import BaselineSet, load_set
from driftd.engine.once import PassSummary, run_once
from driftd.exitcodes import ExitCode
from driftd.safety.snapshots import SnapshotStore
from driftd.targets.host import HostTarget
from driftd.testing import MemoryTarget, Pipeline, build_engine

MOTD = "/etc/motd"
WELCOME = "welcome\n"
MOTD_BASELINE = host_baseline("motd", f'files:\n  - path: {MOTD}\n    content: "welcome\\n"\n    mode: "0644"\n')


def enforce(rt: Any) -> PassSummary:
    """One ``run --once`` pass over a runtime."""
    return run_once(rt.engine, rt.queue, attempts=2)


def outcome(rt: Any, key: str) -> Any:
    return rt.engine.outcomes.get(key)


def status(rt: Any, key: str) -> str | None:
    o = outcome(rt, key)
    return None if o is None else str(o.status)


def target_up(rt: Any, target: str) -> float | None:
    return rt.metrics.registry.get_sample_value("driftd_target_up", {"target": target})


# ---------------------------------------------------------------------------- harnesses
class MemoryHarness:
    """A MemoryTarget resource ``app``; the bystander is a second memory target."""

    name = "memory"
    key = "memory:app"
    bystander_target = "bystander"
    bystander_key = "bystander:other"

    def __init__(self, tmp_path: Path) -> None:
        want = {"mode": "0600", "owner": "root", "labels": {"tier": "web"}}
        self.target = MemoryTarget({"app": dict(want)}, expected={"app": want})
        self.bystander = MemoryTarget({"other": {"value": 1}}, expected={"other": {"value": 1}}, name="bystander")
        self.state_dir = tmp_path / "state"
        self.made: list[Pipeline] = []

    def runtime(self, *, dry_run: bool = False) -> Pipeline:
        p = build_engine({"memory": self.target, "bystander": self.bystander}, state_dir=self.state_dir, dry_run=dry_run)
        self.made.append(p)
        return p

    def drift(self) -> None:
        self.target.set("app", mode="0777", labels={"tier": "web", "debug": "1"})

    def is_compliant(self) -> bool:
        return self.target.get("app") == {"mode": "0600", "owner": "root", "labels": {"tier": "web"}}

    def snapshot_of_world(self) -> Any:
        return self.target.world()

    def writes(self) -> int | None:
        return len(self.target.writes)

    def remove_resource(self, rt: Any) -> None:
        self.target.delete("app")

    def settle(self) -> None:
        pass

    def take_down(self) -> None:
        self.target.down = True

    def bring_up(self) -> None:
        self.target.down = False

    def bystander_drift(self) -> None:
        self.bystander.set("other", value=2)

    def bystander_compliant(self) -> bool:
        return self.bystander.get("other") == {"value": 1}

    def close(self) -> None:
        for p in self.made:
            with contextlib.suppress(Exception):
                p.close()


class HostHarness:
    """``/etc/motd`` in a real tree under ``host_root`` (the real HostTarget); the bystander is a memory target."""

    name = "host"
    key = f"host:file:{MOTD}"
    bystander_target = "memory"
    bystander_key = "memory:other"

    def __init__(self, tmp_path: Path, host_root: Path, baselines_dir: Callable[..., Path]) -> None:
        self.root = host_root
        self.away = host_root.with_name(host_root.name + ".away")
        (host_root / MOTD.lstrip("/")).write_text(WELCOME)
        os.chmod(host_root / MOTD.lstrip("/"), 0o644)
        self.bset, problems = load_set(baselines_dir({"motd.yaml": MOTD_BASELINE}))
        assert self.bset is not None, problems
        self.bystander = MemoryTarget({"other": {"value": 1}}, expected={"other": {"value": 1}})
        self.state_dir = tmp_path / "state"
        self.made: list[Pipeline] = []

    @property
    def motd(self) -> Path:
        return self.root / MOTD.lstrip("/")

    def runtime(self, *, dry_run: bool = False) -> Pipeline:
        host = HostTarget(self.root, SnapshotStore(self.state_dir / "snapshots"))
        p = build_engine({"host": host, "memory": self.bystander}, state_dir=self.state_dir, dry_run=dry_run,
                         baselines=self.bset)
        self.made.append(p)
        return p

    def drift(self) -> None:
        self.motd.write_text("edited by hand\n")
        os.chmod(self.motd, 0o666)

    def is_compliant(self) -> bool:
        return self.motd.read_text() == WELCOME and (self.motd.stat().st_mode & 0o7777) == 0o644

    def snapshot_of_world(self) -> Any:
        return tree_digest(self.root)

    def writes(self) -> int | None:
        return None  # a tree has no write log; snapshot_of_world (mtimes included) shows any write

    def remove_resource(self, rt: Any) -> None:
        rt.engine.set_baselines(BaselineSet.empty())  # a host file is never "gone": it stops being governed

    def settle(self) -> None:
        pass

    def take_down(self) -> None:
        self.root.rename(self.away)
        self.root.write_text("not a directory tree\n")  # the host root cannot be read (a mount gone bad)

    def bring_up(self) -> None:
        self.root.unlink()
        self.away.rename(self.root)

    def bystander_drift(self) -> None:
        self.bystander.set("other", value=2)

    def bystander_compliant(self) -> bool:
        return self.bystander.get("other") == {"value": 1}

    def close(self) -> None:
        if self.away.exists() and self.root.is_file():
            self.bring_up()
        for p in self.made:
            with contextlib.suppress(Exception):
                p.close()


class HostBystander:
    """``/etc/motd`` in ``host_root``, governed next to a Docker or Kubernetes resource."""

    bystander_target = "host"
    bystander_key = f"host:file:{MOTD}"

    def __init__(self, host_root: Path) -> None:
        self.motd = host_root / MOTD.lstrip("/")
        self.motd.write_text(WELCOME)
        os.chmod(self.motd, 0o644)

    def bystander_drift(self) -> None:
        self.motd.write_text("edited by hand\n")

    def bystander_compliant(self) -> bool:
        return self.motd.read_text() == WELCOME


class DockerHarness(HostBystander):
    """A hardened running container in this test's scope; drift replaces it by one running as root."""

    name = "docker"

    def __init__(self, tmp_path: Path, host_root: Path, docker_client: Any, make: Callable[..., Any],
                 docker_runtime: Callable[..., Any], image_ids: dict[str, str], scope: str) -> None:
        from test_docker_target import HARDENED, container_baseline  # imported here: only the docker param needs it

        super().__init__(host_root)
        self.hardened = HARDENED
        self.client, self.make, self.scope = docker_client, make, scope
        self._build = docker_runtime
        self.container = make("app", **HARDENED)
        self.cname = self.container.name
        self.key = f"docker:{self.cname}"
        self.files = {"c.yaml": container_baseline(scope, [image_ids[IMAGE_V1]]), "motd.yaml": MOTD_BASELINE}
        self.url = "unix:///var/run/docker.sock"
        self.dead = f"unix://{tmp_path}/no-docker-here.sock"

    def runtime(self, *, dry_run: bool = False) -> Any:
        return self._build(self.files, dry_run=dry_run, docker={"enabled": True, "url": self.url})

    def drift(self) -> None:
        self.make("app", **{**self.hardened, "user": "0"})  # same name, a non-approved setting (root)

    def _attrs(self) -> dict[str, Any] | None:
        try:
            return self.client.api.inspect_container(self.cname)  # type: ignore[no-any-return]
        except Exception:
            return None

    def is_compliant(self) -> bool:
        a = self._attrs()
        return (a is not None and a["Config"]["User"] == "1000" and a["HostConfig"]["ReadonlyRootfs"] is True
                and a["HostConfig"]["Privileged"] is False and a["State"]["Running"] is True)

    def snapshot_of_world(self) -> Any:
        out = {}
        for c in self.client.api.containers(all=True, filters={"label": f"{SCOPE}={self.scope}"}):
            a = self.client.api.inspect_container(c["Id"])
            out[a["Name"]] = (a["Id"], a["State"]["Status"], a["State"]["StartedAt"], a["Config"]["User"],
                              a["RestartCount"], tuple(sorted(a["Config"]["Labels"].items())))
        return out

    def writes(self) -> int | None:
        return None  # snapshot_of_world shows every create, start, rename and remove (ids, states)

    def remove_resource(self, rt: Any) -> None:
        self.client.api.remove_container(self.cname, force=True, v=True)

    def settle(self) -> None:
        pass  # a recreate is finished when the pass returns

    def take_down(self) -> None:
        self.url = self.dead

    def bring_up(self) -> None:
        self.url = "unix:///var/run/docker.sock"

    def close(self) -> None:
        pass


def _terminating_or_gone(pod: dict[str, Any] | None) -> bool:
    return pod is None or bool(pod["metadata"].get("deletionTimestamp"))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class KubernetesHarness(HostBystander):
    """A node with one compliant pod; drift creates a privileged pod of a compliant ReplicaSet on it."""

    name = "kubernetes"

    def __init__(self, tmp_path: Path, host_root: Path, cluster: Any, k8s_runtime: Callable[..., Any],
                 baselines_dir: Callable[..., Path], kubeconfig: str, fake_kubelet: Callable[..., Any]) -> None:
        from test_kubernetes_target import pod_baseline  # imported here: only the kubernetes param needs it

        super().__init__(host_root)
        self.cluster, self.ns = cluster, cluster.ns
        self.node = cluster.make_node("node-a")
        fake_kubelet(self.node)  # evicted pods go away, as the kubelet would make them
        cluster.make_pod("web-0", self.node)
        self.key = f"pod:{self.ns}/web-1"
        self.bdir = baselines_dir({"pods.yaml": pod_baseline(self.ns), "motd.yaml": MOTD_BASELINE})
        self._build = k8s_runtime
        self.live = kubeconfig
        cfg = yaml.safe_load(Path(kubeconfig).read_text())
        for c in cfg["clusters"]:
            c["cluster"]["server"] = f"https://127.0.0.1:{_free_port()}"
        self.dead = tmp_path / "dead-kubeconfig"
        self.dead.write_text(yaml.safe_dump(cfg))
        self.kubeconfig = self.live

    def runtime(self, *, dry_run: bool = False) -> Any:
        return self._build(self.bdir, node_name=self.node, dry_run=dry_run, state_dir=self.bdir.parent / "state",
                           kubernetes={"kubeconfig": str(self.kubeconfig)})

    def drift(self) -> None:
        self.cluster.make_pod("web-1", self.node, privileged=True)

    def is_compliant(self) -> bool:
        return _terminating_or_gone(self.cluster.pod("web-1")) and not _terminating_or_gone(self.cluster.pod("web-0"))

    def snapshot_of_world(self) -> Any:
        pods = self.cluster.rest.get(f"/api/v1/namespaces/{self.ns}/pods").get("items") or []
        node = self.cluster.node(self.node)["metadata"]["resourceVersion"]
        return node, {p["metadata"]["name"]: p["metadata"]["resourceVersion"] for p in pods}

    def writes(self) -> int | None:
        """driftd's writes on pods (evictions, deletes, patches) and Events in this namespace."""
        return sum(1 for e in self.cluster.audit()
                   if (e.get("objectRef") or {}).get("resource") in ("pods", "events")
                   and not e.get("userAgent", "").startswith(("driftd-tests", KUBELET_AGENT, "kubectl")))

    def remove_resource(self, rt: Any) -> None:
        self.cluster.rest.delete(self.cluster.pod_path("web-1"), {"apiVersion": "v1", "kind": "DeleteOptions",
                                                                  "gracePeriodSeconds": 0})

    def settle(self) -> None:
        """Wait until the (fake) kubelet has removed an evicted pod: the world stops changing on its own."""
        deadline = time.monotonic() + 30
        while self.cluster.pod("web-1") is not None and time.monotonic() < deadline:
            time.sleep(0.1)

    def take_down(self) -> None:
        self.kubeconfig = str(self.dead)

    def bring_up(self) -> None:
        self.kubeconfig = self.live

    def close(self) -> None:
        pass


TARGETS = [
    "memory",
    "host",
    pytest.param("docker", marks=pytest.mark.real),
    pytest.param("kubernetes", marks=pytest.mark.real),
]


@pytest.fixture(params=TARGETS)
def harness(request: pytest.FixtureRequest, tmp_path: Path, host_root: Path,
            baselines_dir: Callable[..., Path]) -> Iterator[Any]:
    """The contract's world for one target (fixtures of the real components only for their own parameter)."""
    get = request.getfixturevalue
    h: Any
    if request.param == "memory":
        h = MemoryHarness(tmp_path)
    elif request.param == "host":
        h = HostHarness(tmp_path, host_root, baselines_dir)
    elif request.param == "docker":
        h = DockerHarness(tmp_path, host_root, get("docker_client"), get("make"), get("docker_runtime"),
                          get("image_ids"), get("scope"))
    else:
        h = KubernetesHarness(tmp_path, host_root, get("k8s_cluster"), get("k8s_runtime"), baselines_dir,
                              get("k8s_kubeconfig"), get("fake_kubelet"))
    yield h
    h.close()


# ---------------------------------------------------------------------------- the contract
def test_compliant_world_is_clean_and_untouched(harness: Any) -> None:
    """A world that matches its baselines passes clean, with no outcome, no write and no change."""
    assert harness.is_compliant() and harness.bystander_compliant()
    before, writes = harness.snapshot_of_world(), harness.writes()
    rt = harness.runtime()
    summary = enforce(rt)
    assert summary.exit_code == ExitCode.CLEAN, summary
    assert summary.outcomes == [] and summary.targets_down == {}
    assert harness.key not in rt.engine.outcomes or status(rt, harness.key) == "clean"
    assert harness.snapshot_of_world() == before and harness.writes() == writes


def test_scan_discovers_and_observes_the_drift(harness: Any) -> None:
    """A scan (observe + diff, read-only) finds the drifted resource and queues its key, changing nothing."""
    harness.drift()
    before = harness.snapshot_of_world()
    rt = harness.runtime()
    report = rt.engine.scan(rt.queue)
    assert harness.key in report.keys
    assert report.drifted == 1 and report.errors == 0 and report.targets_down == {}
    queued = []
    while (k := rt.queue.get(timeout=0)) is not None:
        queued.append(k)
        rt.queue.done(k)
    assert queued == [harness.key]
    assert harness.snapshot_of_world() == before


def test_enforce_reverts_the_drift_and_verification_passes(harness: Any) -> None:
    """An enforcing pass acts on the drift, verifies it is gone, closes the drift record and exits clean."""
    harness.drift()
    rt = harness.runtime()
    summary = enforce(rt)
    o = outcome(rt, harness.key)
    assert o is not None and str(o.status) == "remediated", summary
    assert o.drift and o.actions and o.error is None
    assert [x.key for x in summary.outcomes] == [harness.key]
    assert summary.exit_code == ExitCode.CLEAN
    assert harness.is_compliant()
    assert rt.state.get_active(harness.key) is None  # the record was closed as remediated


def test_enforce_twice_the_second_pass_does_nothing(harness: Any) -> None:
    """After an enforcing pass, a second one finds no drift, plans no action and writes nothing."""
    harness.drift()
    rt = harness.runtime()
    first = enforce(rt)
    assert status(rt, harness.key) == "remediated", first
    harness.settle()
    after, writes = harness.snapshot_of_world(), harness.writes()
    second = enforce(rt)
    assert second.outcomes == [], second
    assert second.counts.get("remediated", 0) == 0 and second.exit_code == ExitCode.CLEAN
    assert harness.snapshot_of_world() == after
    assert harness.writes() == writes
    assert harness.is_compliant()


def test_dry_run_changes_nothing_but_reports_the_drift(harness: Any) -> None:
    """A dry-run pass reports the drift with the actions it would take, exits "drift remained" and changes nothing."""
    harness.drift()
    before = harness.snapshot_of_world()
    rt = harness.runtime(dry_run=True)
    summary = enforce(rt)
    o = outcome(rt, harness.key)
    assert o is not None and str(o.status) == "reported", summary
    assert o.drift and o.actions  # what it would do
    assert summary.exit_code == ExitCode.DRIFT_REMAINED and summary.dry_run
    assert harness.snapshot_of_world() == before
    assert not harness.is_compliant()
    assert rt.state.get_active(harness.key) is not None  # the drift is on record, first seen now


def test_gone_resource_closes_its_drift_record(harness: Any) -> None:
    """A drifted resource that goes away (or stops being governed) has its open record closed, not reported as an error."""
    harness.drift()
    rt = harness.runtime(dry_run=True)  # leaves the drift on record
    enforce(rt)
    assert rt.state.get_active(harness.key) is not None
    harness.remove_resource(rt)
    summary = enforce(rt)
    assert status(rt, harness.key) in ("gone", "unmanaged"), summary
    assert rt.state.get_active(harness.key) is None
    assert summary.exit_code == ExitCode.CLEAN, summary
    assert summary.targets_down == {}


def test_target_down_is_reported_and_the_others_are_still_enforced(harness: Any) -> None:
    """An unreachable target fails the pass (exit ERROR, target_up 0) while the other target's drift is still reverted."""
    harness.drift()
    harness.bystander_drift()
    harness.take_down()
    rt = harness.runtime()
    summary = enforce(rt)
    down = harness.name in summary.targets_down
    errored = status(rt, harness.key) == "error"
    assert down or errored, summary  # listed as down (dynamic targets) or its resources as errors (host)
    assert summary.exit_code == ExitCode.ERROR
    assert target_up(rt, harness.name) == 0
    assert status(rt, harness.key) != "remediated"
    assert harness.bystander_compliant(), summary
    assert status(rt, harness.bystander_key) == "remediated"
    assert target_up(rt, harness.bystander_target) == 1

    harness.bring_up()
    rt = harness.runtime()
    again = enforce(rt)
    assert status(rt, harness.key) == "remediated", again
    assert again.exit_code == ExitCode.CLEAN and again.targets_down == {}
    assert harness.is_compliant()


@pytest.fixture
def host_without_root(tmp_path: Path, host_root: Path, baselines_dir: Callable[..., Path]) -> Iterator[HostHarness]:
    """The host harness with a drift, whose host root then vanishes (a hostPath mount gone)."""
    h = HostHarness(tmp_path, host_root, baselines_dir)
    h.drift()
    h.root.rename(h.away)
    yield h
    if h.away.exists() and not h.root.exists():
        h.away.rename(h.root)
    h.close()


def test_host_root_missing_is_a_target_down(host_without_root: HostHarness) -> None:
    """A host root that does not exist is an unreachable target (exit ERROR, outcome error), not missing files."""
    rt = host_without_root.runtime()
    summary = enforce(rt)
    assert status(rt, host_without_root.key) == "error", summary
    assert summary.exit_code == ExitCode.ERROR


def test_host_root_missing_writes_nothing(host_without_root: HostHarness) -> None:
    """Whatever it is reported as, an enforcing pass over a vanished host root creates nothing there."""
    rt = host_without_root.runtime()
    summary = enforce(rt)
    assert summary.exit_code != ExitCode.CLEAN
    assert not host_without_root.root.exists()


def test_memory_watch_pushes_changed_keys() -> None:
    """The memory target's watch delivers the key of each set/delete and close() ends it (the EventSource half)."""
    import threading

    t = MemoryTarget({"a": {"v": 1}}, expected={"a": {"v": 1}})
    seen: list[str] = []
    stop = threading.Event()
    th = threading.Thread(target=t.watch, args=(seen.append, stop), daemon=True)
    th.start()
    t.set("a", v=2)
    t.delete("a")
    for _ in range(100):
        if len(seen) == 2:
            break
        threading.Event().wait(0.02)
    t.close()
    th.join(timeout=2)
    assert seen == ["memory:a", "memory:a"] and not th.is_alive()

