"""The Docker target against the real engine: recreate, retire, snapshots, ungoverned, daemon events.

Every container is made through ``make_test_container`` (network ``none``, label
``driftd-test=1``) and carries a per-test ``driftd-scope`` label; each test's baseline
selects only that scope, and ``ungoverned: ignore`` keeps other containers on the engine
out of the pass unless a test is about the ungoverned policy itself.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import docker
import pytest
import yaml
from conftest import host_baseline, need
from docker_support import IMAGE_V1, IMAGE_V2, SCOPE, alive

from driftd.core.compile_container import OLD_SUFFIX
from driftd.engine.once import PassSummary, run_once
from driftd.exitcodes import ExitCode
from driftd.safety.snapshots import SnapshotStore

pytestmark = pytest.mark.real

REPO = Path(__file__).resolve().parent.parent
DRIFTD = REPO / ".venv" / "bin" / "driftd"
DOCKER_ENV = REPO / "scripts" / "docker-env.sh"
DOCKER_PID = Path("/var/run/docker.pid")

HARDENED_RUNTIME: dict[str, Any] = {
    "user": "1000", "privileged": False, "capAdd": [], "capDrop": ["ALL"],
    "readOnlyRootFilesystem": True, "noNewPrivileges": True,
}
# create kwargs of a container that satisfies HARDENED_RUNTIME
HARDENED: dict[str, Any] = {"user": "1000", "cap_drop": ["ALL"], "read_only": True, "security_opt": ["no-new-privileges"]}


# --------------------------------------------------------------------------- helpers


def container_baseline(scope: str, approved: list[str], *, name: str = "hardened", runtime: dict[str, Any] | None = None,
                       ungoverned: str = "ignore", selector: dict[str, Any] | None = None, **spec: Any) -> str:
    body: dict[str, Any] = {
        "selector": selector or {"matchLabels": {SCOPE: scope}},
        "images": {"approved": approved},
        "runtime": HARDENED_RUNTIME if runtime is None else runtime,
        "ungoverned": ungoverned,
        **spec,
    }
    doc = {"apiVersion": "driftd.io/v1alpha1", "kind": "ContainerBaseline", "metadata": {"name": name}, "spec": body}
    return yaml.safe_dump(doc, sort_keys=False)


def enforce(rt: Any) -> PassSummary:
    return run_once(rt.engine, rt.queue, attempts=rt.settings.retry.attempts_per_pass)


def outcome_of(summary: PassSummary, name: str) -> Any:
    found = [o for o in summary.outcomes if o.key == f"docker:{name}"]
    return found[0] if found else None


def manifest(rt: Any, snapshot_id: str) -> dict[str, Any]:
    return json.loads(SnapshotStore(Path(rt.settings.state_dir) / "snapshots").get(snapshot_id))


def state(client: docker.DockerClient, name: str) -> tuple[str, str]:
    c = client.containers.get(name)
    return c.id, c.status


def gone(client: docker.DockerClient, name: str) -> bool:
    try:
        client.containers.get(name)
    except docker.errors.NotFound:
        return True
    return False


def exec_root(c: Any, script: str) -> None:
    res = c.client.api.exec_create(c.id, ["sh", "-c", script], user="0")
    c.client.api.exec_start(res["Id"])
    assert c.client.api.exec_inspect(res["Id"])["ExitCode"] == 0, script


# --------------------------------------------------------------------------- recreate


class TestRecreate:
    def test_privileged_container_recreated_hardened(self, docker_client, make, docker_runtime, image_ids, scope):
        """A privileged container (created, not started) is replaced under the same name by an unprivileged one."""
        old = make("priv", privileged=True, start=False, **HARDENED)
        assert old.attrs["HostConfig"]["Privileged"] is True
        rt = docker_runtime({"c.yaml": container_baseline(scope, [image_ids[IMAGE_V1]])})

        summary = enforce(rt)

        o = outcome_of(summary, old.name)
        assert o is not None and o.status == "remediated" and o.actions == ["recreate"]
        assert [d["field"] for d in o.drift] == ["privileged"]
        new = docker_client.containers.get(old.name)
        assert new.id != old.id
        assert new.attrs["HostConfig"]["Privileged"] is False
        assert "label=disable" not in (new.attrs["HostConfig"]["SecurityOpt"] or [])
        assert new.status == "created"  # it was not running, so the replacement is not started
        assert gone(docker_client, old.id)
        assert summary.exit_code == ExitCode.CLEAN

    @pytest.mark.parametrize(
        ("label", "override", "check"),
        [
            ("capadd", {"cap_add": ["NET_ADMIN"]}, lambda a: not a["HostConfig"]["CapAdd"]),
            ("root", {"user": "0"}, lambda a: a["Config"]["User"] == "1000"),
            ("rwroot", {"read_only": False}, lambda a: a["HostConfig"]["ReadonlyRootfs"] is True),
        ],
    )
    def test_running_drift_recreated_and_still_running(self, docker_client, make, docker_runtime, image_ids, scope,
                                                       label, override, check):
        """An added capability, a root user or a writable root filesystem is recreated hardened and left running."""
        old = make(label, **{**HARDENED, **override})
        assert old.status == "running" and not check(old.attrs)
        rt = docker_runtime({"c.yaml": container_baseline(scope, [image_ids[IMAGE_V1]])})

        summary = enforce(rt)

        o = outcome_of(summary, old.name)
        assert o is not None and o.status == "remediated", summary
        new = docker_client.containers.get(old.name)
        assert new.id != old.id
        assert check(new.attrs)
        assert new.status == "running"
        assert new.attrs["HostConfig"]["CapDrop"] == ["ALL"]
        assert new.attrs["Config"]["User"] == "1000"
        assert summary.exit_code == ExitCode.CLEAN

    def test_file_written_under_etc_recreated_and_snapshotted(self, docker_client, make, docker_runtime, image_ids, scope):
        """A file written into /etc by exec is gone after the recreate, and its bytes and the old inspect are in the snapshot."""
        old = make("etcw", user="1000", cap_drop=["ALL"])
        secret = b"evil=1\nwritten by exec " + scope.encode() + b"\n"
        exec_root(old, f"printf '%s' '{secret.decode()}' > /etc/evil.conf")
        assert {"Path": "/etc/evil.conf", "Kind": 1} in old.diff()
        rt = docker_runtime({"c.yaml": container_baseline(scope, [image_ids[IMAGE_V1]],
                                                          runtime={"user": "1000", "capDrop": ["ALL"]})})

        summary = enforce(rt)

        o = outcome_of(summary, old.name)
        assert o is not None and o.status == "remediated", summary
        assert [d["field"] for d in o.drift] == ["fsChanges"]
        new = docker_client.containers.get(old.name)
        assert new.id != old.id and new.status == "running"
        assert not new.diff()  # fresh filesystem
        m = manifest(rt, o.snapshots[0])
        assert m["kind"] == "docker-container" and m["name"] == old.name
        assert m["inspect"]["Id"] == old.id
        sid = m["files"]["/etc/evil.conf"]
        assert sid in o.snapshots
        assert SnapshotStore(Path(rt.settings.state_dir) / "snapshots").get(sid) == secret

    def test_ungoverned_settings_and_named_volume_carried_over(self, docker_client, make, docker_runtime, image_ids, scope):
        """Command, working dir, env, labels, restart policy and a named volume (with its data) survive a recreate."""
        vol = f"vol-{scope}"
        cmd = ["sh", "-c", "trap 'exit 0' TERM; echo started > /tmp/marker; sleep 100000 & wait"]
        old = make("carry", user="0", cap_drop=["ALL"], command=cmd, working_dir="/home/app",
                   environment={"FOO": "bar baz"}, labels={"team": "blue"},
                   restart_policy={"Name": "on-failure", "MaximumRetryCount": 2},
                   volumes={vol: {"bind": "/data", "mode": "rw"}})
        exec_root(old, "echo keep-me > /data/payload")
        rt = docker_runtime({"c.yaml": container_baseline(scope, [image_ids[IMAGE_V1]],
                                                          runtime={"user": "1000", "capDrop": ["ALL"]})})

        summary = enforce(rt)

        o = outcome_of(summary, old.name)
        assert o is not None and o.status == "remediated", summary
        assert [d["field"] for d in o.drift] == ["user"]  # the volume's mount point is not a filesystem drift
        new = docker_client.containers.get(old.name)
        assert new.id != old.id and new.status == "running"
        cfg, hc = new.attrs["Config"], new.attrs["HostConfig"]
        assert cfg["User"] == "1000"
        assert cfg["Cmd"] == cmd
        assert cfg["WorkingDir"] == "/home/app"
        assert "FOO=bar baz" in cfg["Env"]
        assert cfg["Labels"]["team"] == "blue" and cfg["Labels"][SCOPE] == scope
        assert hc["RestartPolicy"] == {"Name": "on-failure", "MaximumRetryCount": 2}
        mounts = [(m["Type"], m.get("Name"), m["Destination"]) for m in new.attrs["Mounts"]]
        assert mounts == [("volume", vol, "/data")]
        code, out = new.exec_run(["cat", "/data/payload"])
        assert (code, out) == (0, b"keep-me\n")
        assert outcome_of(enforce(rt), old.name) is None  # and the replacement is clean


# --------------------------------------------------------------------------- retire / ungoverned


class TestRetire:
    def test_unapproved_image_retired_after_snapshot(self, docker_client, make, docker_runtime, image_ids, scope):
        """A container of an image that is not approved is removed, its inspect document snapshotted first."""
        old = make("v2", IMAGE_V2, **HARDENED)
        keep = make("v1", IMAGE_V1, **HARDENED)
        rt = docker_runtime({"c.yaml": container_baseline(scope, [image_ids[IMAGE_V1]])})

        summary = enforce(rt)

        o = outcome_of(summary, old.name)
        assert o is not None and o.status == "remediated" and o.actions == ["retire"], summary
        assert [d["field"] for d in o.drift] == ["image"]
        assert gone(docker_client, old.name) and gone(docker_client, old.id)
        m = manifest(rt, o.snapshots[0])
        assert m["inspect"]["Id"] == old.id and m["inspect"]["Image"] == image_ids[IMAGE_V2]
        assert state(docker_client, keep.name) == (keep.id, "running")  # the approved one is untouched
        assert outcome_of(summary, keep.name) is None
        assert summary.exit_code == ExitCode.CLEAN

    def _ungoverned_setup(self, make, docker_runtime, image_ids, scope, policy):
        stray = make("stray", **HARDENED)  # carries the scope label, but not role=governed
        rt = docker_runtime({"c.yaml": container_baseline(
            scope, [image_ids[IMAGE_V1]], ungoverned=policy, selector={"matchLabels": {SCOPE: scope, "role": "governed"}})})
        return stray, rt

    def test_ungoverned_retire_removes_it(self, docker_client, make, docker_runtime, image_ids, scope):
        """Under ``ungoverned: retire`` a container no baseline governs is removed."""
        stray, rt = self._ungoverned_setup(make, docker_runtime, image_ids, scope, "retire")
        rt.engine.scan(rt.queue)
        # only this test's key is reconciled: the policy would retire every other container on the engine too
        o = rt.engine.reconcile(f"docker:{stray.name}")
        assert o.status == "remediated" and o.actions == ["retire"], o
        assert gone(docker_client, stray.name)
        assert manifest(rt, o.snapshots[0])["inspect"]["Id"] == stray.id

    def test_ungoverned_ignore_leaves_it(self, docker_client, make, docker_runtime, image_ids, scope):
        """Under ``ungoverned: ignore`` a container no baseline governs is neither touched nor reported."""
        stray, rt = self._ungoverned_setup(make, docker_runtime, image_ids, scope, "ignore")
        summary = enforce(rt)
        assert outcome_of(summary, stray.name) is None
        assert state(docker_client, stray.name) == (stray.id, "running")

    def test_ungoverned_report_reports_it(self, docker_client, make, docker_runtime, image_ids, scope):
        """Under ``ungoverned: report`` a container no baseline governs is left alone but shows in the pass summary."""
        stray, rt = self._ungoverned_setup(make, docker_runtime, image_ids, scope, "report")
        summary = enforce(rt)
        o = outcome_of(summary, stray.name)
        assert o is not None and o.status == "reported" and o.actions == []
        assert o.baseline == "(ungoverned)"
        assert state(docker_client, stray.name) == (stray.id, "running")
        assert summary.exit_code == ExitCode.DRIFT_REMAINED


# --------------------------------------------------------------------------- pass semantics


def _drifted_set(make: Callable[..., Any]) -> list[Any]:
    """A root container, an unapproved-image one, a privileged (not started) one and one with a file in /etc."""
    etc = make("etc", **{**HARDENED, "read_only": False})
    exec_root(etc, "echo x > /etc/added")
    return [make("root", **{**HARDENED, "user": "0"}), make("img", IMAGE_V2, **HARDENED),
            make("priv", start=False, privileged=True, **HARDENED), etc]


class TestPassSemantics:
    def test_dry_run_changes_nothing(self, docker_client, make, docker_runtime, image_ids, scope):
        """With dry_run=True every drift is reported with its planned action and no container changes."""
        containers = _drifted_set(make)
        before = {c.name: state(docker_client, c.name) for c in containers}
        rt = docker_runtime({"c.yaml": container_baseline(scope, [image_ids[IMAGE_V1]],
                                                          runtime={**HARDENED_RUNTIME, "readOnlyRootFilesystem": None})},
                            dry_run=True)

        summary = enforce(rt)

        planned = {o.address: (o.status, o.actions) for o in summary.outcomes}
        assert planned == {
            f"root-{scope}": ("reported", ["recreate"]), f"img-{scope}": ("reported", ["retire"]),
            f"priv-{scope}": ("reported", ["recreate"]), f"etc-{scope}": ("reported", ["recreate"]),
        }
        assert {n: state(docker_client, n) for n in before} == before
        assert summary.exit_code == ExitCode.DRIFT_REMAINED and summary.dry_run

    def test_cli_dry_run_changes_nothing(self, docker_client, make, baselines_dir, host_root, tmp_path, image_ids, scope):
        """``driftd run --once --dry-run --docker`` exits 3, lists the drift and changes no container."""
        containers = _drifted_set(make)
        before = {c.name: state(docker_client, c.name) for c in containers}
        bdir = baselines_dir({"c.yaml": container_baseline(scope, [image_ids[IMAGE_V1]],
                                                           runtime={**HARDENED_RUNTIME, "readOnlyRootFilesystem": None})})
        proc = subprocess.run(
            [str(DRIFTD), "run", "--once", "--dry-run", "--docker", "--host-root", str(host_root), "--baselines", str(bdir),
             "--state-dir", str(tmp_path / "state"), "--output", "json", "--log-level", "error"],
            capture_output=True, text=True, timeout=120,
        )
        assert proc.returncode == ExitCode.DRIFT_REMAINED, proc.stderr
        out = json.loads(proc.stdout)
        assert out["dryRun"] is True
        assert sorted(o["resource"] for o in out["results"]) == sorted(before)
        assert {n: state(docker_client, n) for n in before} == before

    def test_second_pass_is_a_no_op(self, docker_client, make, docker_runtime, image_ids, scope):
        """After an enforcing pass a second pass finds no drift and replaces nothing."""
        fine = make("fine", **HARDENED)
        containers = _drifted_set(make)
        rt = docker_runtime({"c.yaml": container_baseline(scope, [image_ids[IMAGE_V1]],
                                                          runtime={**HARDENED_RUNTIME, "readOnlyRootFilesystem": None})})

        first = enforce(rt)
        assert {o.address: o.status for o in first.outcomes} == {c.name: "remediated" for c in containers}
        assert first.exit_code == ExitCode.CLEAN
        assert state(docker_client, fine.name) == (fine.id, "running")
        after_first = {c.name: state(docker_client, c.name) for c in [fine, *containers] if not gone(docker_client, c.name)}
        assert len(after_first) == 4  # the unapproved image's container was retired

        second = enforce(rt)
        assert second.outcomes == []
        assert second.counts.get("remediated", 0) == 0 and second.exit_code == ExitCode.CLEAN
        assert {n: state(docker_client, n) for n in after_first} == after_first

    def test_container_vanishing_mid_pass_is_not_an_error(self, docker_client, make, docker_runtime, image_ids, scope):
        """A drifted container removed between the scan and its reconcile ends as "gone", not as an error."""
        victim = make("victim", **{**HARDENED, "user": "0"})
        rt = docker_runtime({"c.yaml": container_baseline(scope, [image_ids[IMAGE_V1]])})
        scan = rt.engine.scan
        seen: list[int] = []

        def scan_then_remove(queue: Any, **kw: Any) -> Any:
            report = scan(queue, **kw)
            seen.append(report.drifted)
            docker_client.api.remove_container(victim.id, force=True)
            return report

        rt.engine.scan = scan_then_remove
        summary = enforce(rt)

        assert seen == [1]  # the scan did see the drift
        o = outcome_of(summary, victim.name)
        assert o is not None and o.status == "gone"
        assert summary.exit_code not in (ExitCode.ERROR, ExitCode.REMEDIATION_FAILED)
        assert rt.state.get_active(f"docker:{victim.name}") is None

    def test_engine_unreachable_host_target_still_enforced(self, docker_runtime, host_root, tmp_path, image_ids, scope):
        """With the engine unreachable the host target is still enforced in the same pass and docker is marked down."""
        (host_root / "etc/motd").write_text("drifted\n")
        rt = docker_runtime(
            {"c.yaml": container_baseline(scope, [image_ids[IMAGE_V1]]),
             "h.yaml": host_baseline("motd", 'files:\n  - path: /etc/motd\n    content: "welcome\\n"\n')},
            docker={"enabled": True, "url": f"unix://{tmp_path}/nope.sock"},
        )

        summary = enforce(rt)

        assert (host_root / "etc/motd").read_text() == "welcome\n"
        assert [(o.key, o.status) for o in summary.outcomes] == [("host:file:/etc/motd", "remediated")]
        assert "docker" in summary.targets_down
        assert summary.exit_code == ExitCode.ERROR  # a target could not be observed
        reg = rt.metrics.registry
        assert reg.get_sample_value("driftd_target_up", {"target": "docker"}) == 0
        assert reg.get_sample_value("driftd_target_up", {"target": "host"}) == 1


# --------------------------------------------------------------------------- the daemon


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


_NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def _http_status(url: str) -> int:
    try:
        with _NO_PROXY.open(url, timeout=2) as r:
            return int(r.status)
    except urllib.error.HTTPError as e:
        return int(e.code)
    except OSError:
        return 0


def engine_up(timeout: float = 5) -> bool:
    try:
        docker.DockerClient(base_url="unix:///var/run/docker.sock", timeout=timeout).ping()
    except Exception:
        return False
    return True


def ensure_engine() -> None:
    if not engine_up():
        subprocess.run(["bash", str(DOCKER_ENV)], check=True, capture_output=True, timeout=180)


def restart_engine(down_for: float = 0.0) -> float:
    """SIGTERM dockerd, wait until it is gone (and ``down_for`` more seconds), start it again; seconds it was away."""
    pid = int(DOCKER_PID.read_text().strip())
    started = time.monotonic()
    os.kill(pid, signal.SIGTERM)
    deadline = started + 60
    while alive(pid):
        assert time.monotonic() < deadline, "dockerd did not exit after SIGTERM"
        time.sleep(0.1)
    assert not engine_up(1)
    time.sleep(down_for)
    subprocess.run(["bash", str(DOCKER_ENV)], check=True, capture_output=True, timeout=180)
    return time.monotonic() - started


class Daemon:
    """``driftd run --docker`` as a subprocess; its only scheduled scan is the first one."""

    def __init__(self, tmp: Path, host_root: Path, baselines: Path) -> None:
        self.port = _free_port()
        self.log = tmp / "daemon.log"
        env = dict(os.environ, DRIFTD_SCAN__JITTER_SECONDS="0")
        env.pop("DRIFTD_CONFIG", None)
        self.proc = subprocess.Popen(
            [str(DRIFTD), "run", "--docker", "--host-root", str(host_root), "--baselines", str(baselines),
             "--state-dir", str(tmp / "dstate"), "--listen", f"127.0.0.1:{self.port}", "--interval", "3600",
             "--log-format", "json", "--log-level", "debug"],
            env=env, stdout=self.log.open("wb"), stderr=subprocess.STDOUT,
        )

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def wait_ready(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while _http_status(self.url("/readyz")) != 200:
            assert self.proc.poll() is None, f"driftd exited {self.proc.returncode}:\n{self.log.read_text()[-3000:]}"
            assert time.monotonic() < deadline, "driftd not ready in time"
            time.sleep(0.1)

    def scans(self) -> int:
        return sum(1 for line in self.log.read_text().splitlines() if '"scan.finished"' in line)

    def stop(self) -> int | None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                return self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
                return None
        return self.proc.returncode


@pytest.fixture
def daemon(tmp_path: Path, host_root: Path, baselines_dir: Callable[..., Path], image_ids: dict[str, str],
           scope: str) -> Iterator[Callable[[], Daemon]]:
    procs: list[Daemon] = []

    def start() -> Daemon:
        need(DRIFTD.exists(), f"{DRIFTD} missing (install the package into .venv)")
        bdir = baselines_dir({"c.yaml": container_baseline(scope, [image_ids[IMAGE_V1]],
                                                           runtime={"user": "1000", "capDrop": ["ALL"]})})
        d = Daemon(tmp_path, host_root, bdir)
        procs.append(d)
        d.wait_ready()
        return d

    yield start
    for d in procs:
        d.stop()


def wait_reverted(client: docker.DockerClient, name: str, old_id: str, timeout: float = 10) -> float | None:
    """Seconds until ``name`` is a different, hardened, running container; None on timeout."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        try:
            c = client.containers.get(name)
            if (c.id != old_id and c.attrs["Config"]["User"] == "1000" and c.attrs["HostConfig"]["CapDrop"] == ["ALL"]
                    and c.status == "running"):
                return time.monotonic() - started
        except docker.errors.NotFound:
            pass
        time.sleep(0.05)
    return None


class TestDaemon:
    def test_events_revert_drift_without_a_scan(self, docker_client, make, daemon, record_property):
        """The daemon reverts a drifted container and an exec'd write within seconds of the event, with no scan."""
        d = daemon()
        scans = d.scans()

        latencies = []
        for i in range(3):
            c = make(f"ev{i}", user="0")  # root, and no capDrop
            took = wait_reverted(docker_client, c.name, c.id)
            assert took is not None, f"not reverted in 10 s:\n{d.log.read_text()[-3000:]}"
            latencies.append(took)
        record_property("revert_latency_s", [round(x, 3) for x in latencies])
        print(f"event-driven revert latency (s): {[round(x, 3) for x in latencies]}")

        # a write through exec that lands after exec_start: picked up by exec_die
        ok = docker_client.containers.get(c.name)  # the hardened replacement
        exec_root(ok, "sleep 1; echo late > /etc/late.conf")
        started = time.monotonic()
        while time.monotonic() - started < 10:
            with contextlib.suppress(docker.errors.NotFound):  # between the rename and the create
                now = docker_client.containers.get(ok.name)
                if now.id != ok.id and now.status == "running":
                    break
            time.sleep(0.05)
        else:
            pytest.fail(f"exec write not reverted in 10 s:\n{d.log.read_text()[-3000:]}")
        assert not now.diff()

        assert d.scans() == scans  # all of it event-driven: no scan ran
        assert _http_status(d.url("/healthz")) == 200
        assert d.stop() == 0

    def test_engine_restart_watch_reconnects(self, docker_client, make, daemon, record_property):
        """After the engine restarts under a running daemon, driftd stays healthy and reverts new drift from events."""
        need(os.geteuid() == 0 and DOCKER_PID.exists(), "restarting the engine needs root and /var/run/docker.pid")
        d = daemon()
        try:
            c = make("before", user="0")
            assert wait_reverted(docker_client, c.name, c.id) is not None

            # down long enough for the watcher's reconnect backoff to reach 4 s: drift made right after the
            # engine is back happens before the stream reconnects, and must be replayed, not lost
            away = restart_engine(down_for=3.0)
            record_property("engine_away_s", round(away, 2))
            assert d.proc.poll() is None
            assert _http_status(d.url("/healthz")) == 200

            client = docker.DockerClient(base_url="unix:///var/run/docker.sock", timeout=30)
            scans = d.scans()
            c2 = make("after", user="0")
            took = wait_reverted(client, c2.name, c2.id)
            assert took is not None, f"not reverted in 10 s after the restart:\n{d.log.read_text()[-4000:]}"
            record_property("revert_after_restart_s", round(took, 3))
            print(f"engine away {away:.2f} s; revert after the restart took {took:.3f} s")
            assert client.containers.get(c2.name).status == "running"
            assert d.scans() == scans
            assert _http_status(d.url("/healthz")) == 200 and _http_status(d.url("/readyz")) == 200
        finally:
            ensure_engine()
        assert d.stop() == 0


class TestInterruptedRecreate:
    def test_parked_original_without_replacement_is_renamed_back(self, docker_client, make, docker_runtime, image_ids, scope):
        """A container parked by a recreate that died before the replacement existed gets its name back."""
        parked = make("parked", **HARDENED)
        original = f"web-{scope}"
        docker_client.api.rename(parked.id, f"{original}{OLD_SUFFIX}0123456789ab")
        rt = docker_runtime({"c.yaml": container_baseline(scope, [image_ids[IMAGE_V1]])})
        rt.engine.targets["docker"].discover()
        assert docker_client.containers.get(parked.id).name == original

    def test_parked_original_with_replacement_is_removed(self, docker_client, make, docker_runtime, image_ids, scope):
        """When the replacement exists the recreate got that far: the parked original is removed."""
        replacement = make("api", **HARDENED)
        parked = make("parked", **HARDENED)
        docker_client.api.rename(parked.id, f"{replacement.name}{OLD_SUFFIX}0123456789ab")
        rt = docker_runtime({"c.yaml": container_baseline(scope, [image_ids[IMAGE_V1]])})
        rt.engine.targets["docker"].discover()
        assert gone(docker_client, f"{replacement.name}{OLD_SUFFIX}0123456789ab")
        assert state(docker_client, replacement.name)[0] == replacement.id


class TestTagPinning:
    def test_tag_is_pinned_when_the_baseline_loads(self, docker_client, make, docker_runtime, image_ids, scope):
        """An approved tag resolves to the image it names at load; moving the tag later approves nothing new."""
        tag = f"driftd-test/pin-{scope}:approved"
        docker_client.images.get(IMAGE_V1).tag(tag)
        try:
            v1 = make("v1", **HARDENED)
            rt = docker_runtime({"c.yaml": container_baseline(scope, [tag])})
            (d,) = [r for r in rt.engine.targets["docker"].discover() if r.address == v1.name]
            assert d.expected["image"] == {"$in": [image_ids[IMAGE_V1]]}
            docker_client.images.get(IMAGE_V2).tag(tag)  # the tag moves to another image
            v2 = make("v2", IMAGE_V2, **HARDENED)
            by_name = {r.address: r for r in rt.engine.targets["docker"].discover()}
            assert by_name[v2.name].expected["image"] == {"$in": [image_ids[IMAGE_V1]]}
            summary = enforce(rt)
            assert outcome_of(summary, v2.name).status == "remediated" and gone(docker_client, v2.name)
            assert state(docker_client, v1.name)[0] == v1.id
        finally:
            docker_client.images.remove(tag, force=False, noprune=True)
