"""Acting on containers never harms, against the real engine (issue 7, Docker items).

* mount points of every kind are never filesystem drift (no endless recreate loop);
* anonymous volumes keep their data across a recreate;
* an interrupted recreate (driftd or dockerd SIGKILLed while one Engine API request is held
  by a socket relay) never leaves the service down, nor two copies of it running;
* ``driftd_target_up`` follows the event stream's reachability, not only the scans.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import docker
import pytest
from conftest import need
from docker.types import Mount
from docker_support import (
    IMAGE_V1,
    SCOPE,
    EngineRelay,
    engine_answers,
    ensure_engine,
    kill_engine,
    need_engine_control,
    start_engine,
)
from test_docker_target import DRIFTD, HARDENED, HARDENED_RUNTIME, container_baseline, enforce, outcome_of, state

from driftd.core.compile_container import OLD_SUFFIX
from driftd.engine.once import run_once
from driftd.exitcodes import ExitCode

pytestmark = pytest.mark.real

SERVICE_RUNTIME = {"user": "1000", "capDrop": ["ALL"]}


def _volumes_by_dest(c: Any) -> dict[str, str]:
    return {m["Destination"]: m["Name"] for m in c.attrs["Mounts"] if m["Type"] == "volume"}


def _dangling(client: docker.DockerClient) -> set[str]:
    return {v.name for v in client.volumes.list(filters={"dangling": True})}


# --------------------------------------------------------------------------- item 9: mount points


class TestMountPointsAreNotDrift:
    def test_tmpfs_container_is_not_recreated_in_a_loop(self, docker_client, make, docker_runtime, image_ids, scope):
        """A container with --tmpfs /scratch (and a --mount tmpfs, a bind, a volume) stays clean and untouched over two enforcing passes."""
        c = make("tmpfs", tmpfs={"/scratch": ""}, mounts=[Mount("/var/cache/t", None, type="tmpfs")],
                 volumes={f"vol-{scope}": {"bind": "/data", "mode": "rw"}}, **HARDENED)
        assert c.attrs["HostConfig"]["Tmpfs"] == {"/scratch": ""}
        assert {"Path": "/scratch", "Kind": 1} in c.diff()  # the engine made the mount point in the layer
        rt = docker_runtime({"c.yaml": container_baseline(scope, [image_ids[IMAGE_V1]])})
        d = next(r for r in rt.engine.targets["docker"].discover() if r.address == c.name)
        assert "fsChanges" in d.expected  # the baseline does check filesystem drift

        for _ in range(2):
            summary = enforce(rt)
            assert outcome_of(summary, c.name) is None, summary
            assert summary.exit_code == ExitCode.CLEAN
            assert state(docker_client, c.name) == (c.id, "running")

    def test_write_next_to_a_mount_point_is_still_drift(self, docker_client, make, docker_runtime, image_ids, scope):
        """Ignoring mount points does not hide a real change beside them: a file written to /etc is still recreated."""
        c = make("tmpfs-etc", tmpfs={"/scratch": ""}, user="1000", cap_drop=["ALL"])
        exec_root = c.client.api.exec_create(c.id, ["sh", "-c", "echo x > /etc/added; echo y > /scratch/ok"], user="0")
        c.client.api.exec_start(exec_root["Id"])
        rt = docker_runtime({"c.yaml": container_baseline(scope, [image_ids[IMAGE_V1]], runtime=SERVICE_RUNTIME)})
        summary = enforce(rt)
        o = outcome_of(summary, c.name)
        assert o is not None and o.status == "remediated", summary
        assert [d["field"] for d in o.drift] == ["fsChanges"]
        assert [x for x in o.drift[0]["actual"]] == ["/etc/added"]
        assert outcome_of(enforce(rt), c.name) is None


# --------------------------------------------------------------------------- item 10: anonymous volumes


@pytest.fixture
def volume_image(docker_client: docker.DockerClient, scope: str) -> Iterator[str]:
    """IMAGE_V1 with ``VOLUME /db`` (an image-declared volume, as in a database image)."""
    tmp = docker_client.containers.create(IMAGE_V1, network_mode="none", labels={"driftd-test": "1"})
    tag = f"driftd-test/volume-{scope}:1"
    try:
        docker_client.api.commit(tmp.id, repository=tag.split(":")[0], tag="1", changes=["VOLUME /db"])
    finally:
        tmp.remove(force=True)
    yield tag
    docker_client.images.remove(tag, force=True)


class TestAnonymousVolumes:
    def test_anonymous_volumes_keep_their_data_across_recreate(self, docker_client, make, docker_runtime, scope,
                                                               volume_image):
        """-v /cache, an anonymous --mount volume and an image VOLUME are re-attached by name: data kept, nothing dangling."""
        dangling_before = _dangling(docker_client)
        old = make("anon", volume_image, user="0", cap_drop=["ALL"], volumes=["/cache"],
                   mounts=[Mount("/m", None, type="volume")])
        before = _volumes_by_dest(old)
        assert set(before) == {"/cache", "/m", "/db"}
        try:
            res = old.client.api.exec_create(old.id, ["sh", "-c", "for d in /cache /m /db; do echo kept > $d/data; done"])
            old.client.api.exec_start(res["Id"])
            image_id = docker_client.images.get(volume_image).id
            rt = docker_runtime({"c.yaml": container_baseline(scope, [image_id], runtime=SERVICE_RUNTIME)})

            summary = enforce(rt)

            o = outcome_of(summary, old.name)
            assert o is not None and o.status == "remediated", summary
            assert [d["field"] for d in o.drift] == ["user"]
            new = docker_client.containers.get(old.name)
            assert new.id != old.id and new.status == "running"
            assert _volumes_by_dest(new) == before  # the very same volumes
            for d in before:
                assert new.exec_run(["cat", f"{d}/data"]) == (0, b"kept\n"), d
            assert _dangling(docker_client) - dangling_before == set()  # the old ones are not left dangling
            assert outcome_of(enforce(rt), old.name) is None
        finally:
            for c in docker_client.containers.list(all=True, filters={"label": f"{SCOPE}={scope}"}):
                c.remove(force=True, v=True)
            for name in before.values():
                with contextlib.suppress(docker.errors.NotFound):
                    docker_client.volumes.get(name).remove(force=True)


    def test_volumes_from_another_container_are_not_duplicated(self, docker_client, make, docker_runtime, image_ids,
                                                               scope):
        """A container that gets an anonymous volume through --volumes-from is recreated with it, still shared, not doubled."""
        src = make("src", volumes=["/shared"], **HARDENED)
        shared = _volumes_by_dest(src)["/shared"]
        try:
            old = make("user", user="0", cap_drop=["ALL"], volumes_from=[src.id])
            rt = docker_runtime({"c.yaml": container_baseline(scope, [image_ids[IMAGE_V1]], runtime=SERVICE_RUNTIME,
                                                              selector={"names": [old.name]})})
            summary = enforce(rt)
            o = outcome_of(summary, old.name)
            assert o is not None and o.status == "remediated", summary
            new = docker_client.containers.get(old.name)
            assert new.status == "running" and new.attrs["HostConfig"]["VolumesFrom"] == [src.id]
            assert _volumes_by_dest(new) == {"/shared": shared}
            assert state(docker_client, src.name) == (src.id, "running")
        finally:
            for c in docker_client.containers.list(all=True, filters={"label": f"{SCOPE}={scope}"}):
                c.remove(force=True, v=True)
            with contextlib.suppress(docker.errors.NotFound):
                docker_client.volumes.get(shared).remove(force=True)

# --------------------------------------------------------------------------- item 11: interrupted recreates


def _service_containers(client: docker.DockerClient, name: str) -> list[Any]:
    """The service's container and any parked copy of it (``<name>-driftd-old-...``)."""
    out = []
    for c in client.containers.list(all=True, filters={"name": name}):
        if c.name == name or c.name.startswith(name + OLD_SUFFIX):
            out.append(c)
    return out


def _running(client: docker.DockerClient, name: str) -> list[str]:
    return sorted(c.name for c in _service_containers(client, name) if c.status == "running")


class Driftd:
    """``driftd run --once --docker`` as a subprocess, against the engine or a relay."""

    def __init__(self, tmp: Path, host_root: Path, baselines: Path) -> None:
        need(DRIFTD.exists(), f"{DRIFTD} missing (install the package into .venv)")
        self.tmp, self.host_root, self.baselines = tmp, host_root, baselines
        self.runs = 0

    def cmd(self, url: str) -> list[str]:
        return [str(DRIFTD), "run", "--once", "--docker", "--docker-url", url, "--host-root", str(self.host_root),
                "--baselines", str(self.baselines), "--state-dir", str(self.tmp / "state"), "--output", "json",
                "--log-format", "json", "--log-level", "info"]

    def env(self) -> dict[str, str]:
        env = dict(os.environ, DRIFTD_RETRY__ATTEMPTS_PER_PASS="1", DRIFTD_DOCKER__STOP_TIMEOUT_SECONDS="5")
        env.pop("DRIFTD_CONFIG", None)
        return env

    def start(self, url: str) -> tuple[subprocess.Popen[bytes], Path]:
        """Start a pass; its log (stderr) goes to the returned path, its summary to ``<path>.out``."""
        self.runs += 1
        log = self.tmp / f"driftd-{self.runs}.log"
        with Path(f"{log}.out").open("wb") as out, log.open("wb") as err:
            proc = subprocess.Popen(self.cmd(url), env=self.env(), stdout=out, stderr=err)
        return proc, log

    def run(self, url: str = "unix:///var/run/docker.sock") -> tuple[int, str, dict[str, Any]]:
        """One whole pass: exit code, log, JSON summary."""
        proc, log = self.start(url)
        code = proc.wait(180)
        out = Path(f"{log}.out").read_text()
        text = log.read_text() + out
        return code, text, json.loads(out) if out.strip() else {}


@pytest.fixture
def driftd_once(tmp_path: Path, host_root: Path, baselines_dir: Callable[..., Path], image_ids: dict[str, str],
                scope: str) -> Driftd:
    """A ``driftd run --once`` runner whose baseline holds this test's scope to user 1000 and no capabilities."""
    bdir = baselines_dir({"c.yaml": container_baseline(scope, [image_ids[IMAGE_V1]], runtime=SERVICE_RUNTIME)})
    return Driftd(tmp_path, host_root, bdir)


@pytest.fixture
def service(make: Callable[..., Any], scope: str) -> Any:
    """A running root container with restart policy ``always`` and a named volume holding data."""
    c = make("svc", user="0", cap_drop=["ALL"], restart_policy={"Name": "always"},
             volumes={f"vol-{scope}": {"bind": "/data", "mode": "rw"}})
    res = c.client.api.exec_create(c.id, ["sh", "-c", "echo precious > /data/payload"])
    c.client.api.exec_start(res["Id"])
    return c


# (held request, who is killed, does the held request reach the engine after driftd died)
KILL_POINTS = [
    pytest.param("POST", r"^/containers/[0-9a-f]+/update$", "driftd", False, id="park-policy-driftd"),
    pytest.param("POST", r"^/containers/[0-9a-f]+/stop$", "driftd", False, id="stop-driftd"),
    pytest.param("POST", r"^/containers/create$", "dockerd", False, id="create-dockerd"),
    pytest.param("POST", r"^/containers/create$", "driftd", False, id="create-driftd"),
    pytest.param("POST", r"^/containers/create$", "driftd", True, id="create-sent-driftd"),
    pytest.param("POST", r"^/containers/[0-9a-f]+/start$", "driftd", False, id="start-driftd"),
    pytest.param("POST", r"^/containers/[0-9a-f]+/start$", "dockerd", False, id="start-dockerd"),
    pytest.param("DELETE", r"^/containers/[0-9a-f]+$", "dockerd", False, id="delete-dockerd"),
]


class TestInterruptedRecreate:
    @pytest.mark.parametrize(("method", "path", "killed", "forward"), KILL_POINTS)
    def test_killed_mid_recreate_service_is_never_down_nor_doubled(
            self, docker_client, service, driftd_once, tmp_path, method, path, killed, forward):
        """Killed while one Engine API step of a recreate is held, the next pass leaves exactly one running, compliant container."""
        if killed == "dockerd":
            need_engine_control()
        name = service.name
        relay = EngineRelay(tmp_path / "relay.sock").start()
        relay.hold(method, path)
        proc, out = driftd_once.start(relay.url)
        try:
            assert relay.held.wait(90), f"{method} {path} never sent; requests: {relay.log}\n{out.read_text()[-3000:]}"
            if killed == "driftd":
                proc.send_signal(signal.SIGKILL)
                proc.wait(30)
                relay.release(forward=forward)
                if forward:
                    assert relay.forwarded.wait(60), "the held request got no answer from the engine"
            else:
                kill_engine(signal.SIGKILL)
                relay.release(forward=False)
                proc.wait(180)  # the interrupted pass ends on its own: every later call fails
                start_engine()
            interrupted = out.read_text() + Path(f"{out}.out").read_text()
            if Path(f"{out}.out").read_text().strip():  # the pass that lost its engine still summarises sanely
                counts = json.loads(Path(f"{out}.out").read_text())["counts"]
                assert all(v >= 0 for v in counts.values()), counts
        finally:
            relay.close()
            if proc.poll() is None:
                proc.kill()
                proc.wait(30)
            ensure_engine()
        client = docker.DockerClient(base_url="unix:///var/run/docker.sock", timeout=30)
        assert len(_running(client, name)) <= 1, f"two copies running before any recovery: {_running(client, name)}"
        if killed == "dockerd":
            # whatever the interrupted pass says about its rollback must be true: the engine was gone
            assert "failed and was rolled back" not in interrupted, interrupted[-3000:]
            if "rollback" in interrupted:
                assert "rollback incomplete" in interrupted, interrupted[-3000:]

        code, text, summary = driftd_once.run()

        left = _service_containers(client, name)
        assert [(c.name, c.status) for c in left] == [(name, "running")], text[-4000:]
        new = left[0]
        assert new.attrs["Config"]["User"] == "1000", text[-4000:]  # compliant: recovered and recreated
        assert new.attrs["HostConfig"]["RestartPolicy"]["Name"] == "always"
        assert new.exec_run(["cat", "/data/payload"]) == (0, b"precious\n")
        assert code == ExitCode.CLEAN, text[-4000:]
        assert all(v >= 0 for v in summary["counts"].values()), summary["counts"]

        code, text, _ = driftd_once.run()  # and it stays that way
        assert code == ExitCode.CLEAN and _running(client, name) == [name], text[-3000:]
        assert client.containers.get(name).id == new.id

    def test_parked_look_alike_no_baseline_governs_is_left_alone(self, docker_client, make, docker_runtime,
                                                                 image_ids, scope):
        """Containers merely named like parked ones, that no baseline selects, are neither renamed nor removed."""
        lone = make("lone", **HARDENED)
        twin = make("twin", **HARDENED)
        pair = make("pair", **HARDENED)
        lone_parked = f"web-{scope}{OLD_SUFFIX}0123456789ab"
        pair_parked = f"{twin.name}{OLD_SUFFIX}0123456789ab.stop.no.0"
        docker_client.api.rename(lone.id, lone_parked)
        docker_client.api.rename(pair.id, pair_parked)
        rt = docker_runtime({"c.yaml": container_baseline(
            scope, [image_ids[IMAGE_V1]], selector={"matchLabels": {SCOPE: scope, "role": "governed"}})})

        enforce(rt)

        assert docker_client.containers.get(lone.id).name == lone_parked
        assert docker_client.containers.get(pair.id).name == pair_parked
        assert state(docker_client, twin.name) == (twin.id, "running")

    def test_parked_original_that_was_running_is_restarted(self, docker_client, make, docker_runtime, image_ids,
                                                           scope):
        """A stopped parked original whose name records it was running gets its name, restart policy and run state back."""
        c = make("was-running", **HARDENED)
        docker_client.api.stop(c.id, timeout=1)
        docker_client.api.update_container(c.id, restart_policy={"Name": "no", "MaximumRetryCount": 0})
        docker_client.api.rename(c.id, f"{c.name}{OLD_SUFFIX}{c.id[:12]}.run.on-failure.3")
        rt = docker_runtime({"c.yaml": container_baseline(scope, [image_ids[IMAGE_V1]])})

        summary = enforce(rt)

        back = docker_client.containers.get(c.id)
        assert back.name == c.name and back.status == "running"
        assert back.attrs["HostConfig"]["RestartPolicy"] == {"Name": "on-failure", "MaximumRetryCount": 3}
        assert outcome_of(summary, c.name) is None  # compliant, so nothing else to do
        assert summary.exit_code == ExitCode.CLEAN


    def test_dry_run_does_not_recover_a_parked_original(self, docker_client, make, docker_runtime, image_ids, scope):
        """Recovering an interrupted recreate is an action: a dry run leaves the parked container exactly as it is."""
        c = make("dry-parked", **HARDENED)
        docker_client.api.stop(c.id, timeout=1)
        parked = f"{c.name}{OLD_SUFFIX}{c.id[:12]}.run.no.0"
        docker_client.api.rename(c.id, parked)
        rt = docker_runtime({"c.yaml": container_baseline(scope, [image_ids[IMAGE_V1]])}, dry_run=True)

        run_once(rt.engine, rt.queue, attempts=1)

        same = docker_client.containers.get(c.id)
        assert (same.name, same.status) == (parked, "exited")


# --------------------------------------------------------------------------- item 12: target_up


def _wait(pred: Callable[[], bool], timeout: float) -> float | None:
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if pred():
            return time.monotonic() - started
        time.sleep(0.05)
    return None


class TestTargetUp:
    def test_target_up_follows_the_event_stream_without_a_scan(self, docker_runtime, image_ids, scope):
        """With the engine stopped, driftd_target_up{target="docker"} drops to 0 within seconds from the event stream, and returns to 1 after restart."""
        need_engine_control()
        rt = docker_runtime({"c.yaml": container_baseline(scope, [image_ids[IMAGE_V1]])})
        reg = rt.metrics.registry

        def up() -> float | None:
            return reg.get_sample_value("driftd_target_up", {"target": "docker"})

        rt.engine.scan(rt.queue)
        assert up() == 1
        target = rt.engine.targets["docker"]
        stop = threading.Event()
        watcher = threading.Thread(target=target.watch, args=(lambda key: None, stop), kwargs={"max_backoff": 1.0},
                                   daemon=True)
        watcher.start()
        try:
            assert _wait(lambda: target._streams.current is not None, 10) is not None
            time.sleep(0.5)
            kill_engine(signal.SIGTERM)
            took = _wait(lambda: up() == 0, 5)
            assert took is not None, "driftd_target_up stayed 1 with the engine gone"
            start_engine()
            assert engine_answers()
            back = _wait(lambda: up() == 1, 10)
            assert back is not None, "driftd_target_up stayed 0 with the engine back"
            print(f"target_up fell {took:.2f} s after the engine stopped, rose {back:.2f} s after it answered")
        finally:
            stop.set()
            target.close()
            ensure_engine()
            watcher.join(10)


HARDENED_RUNTIME_V2 = {**HARDENED_RUNTIME, "user": "2000"}  # a baseline change every running container breaks


class TestBreakerOnContainers:
    def test_every_container_drifting_after_a_baseline_change_trips_the_breaker_and_nothing_is_recreated(
            self, docker_client, make, docker_runtime, image_ids, scope, baselines_dir):
        """A baseline change that would recreate all of a baseline's containers is a mass drift: held, not acted on."""
        from driftd.baselines.loader import load_set

        made = [make(f"fleet{i}", start=False, **HARDENED) for i in range(3)]
        v1 = container_baseline(scope, [image_ids[IMAGE_V1]])
        rt = docker_runtime({"c.yaml": v1}, safety={"breaker": {"min_resources": 2}})
        assert enforce(rt).exit_code == 0  # compliant under v1
        bad = container_baseline(scope, [image_ids[IMAGE_V1]], runtime={**HARDENED_RUNTIME_V2})
        bset, problems = load_set(baselines_dir({"c.yaml": bad}))
        assert bset is not None, problems
        rt.engine.set_baselines(bset)  # the hot reload of a merged pull request
        s = enforce(rt)
        outs = [outcome_of(s, c.name) for c in made]
        assert [o.status for o in outs] == ["held"] * 3, [(o.status, o.error) for o in outs]
        assert all("held: breaker: 3 of 3 resources of baseline hardened" in (o.error or "") for o in outs)
        assert [state(docker_client, c.name)[0] for c in made] == [c.id for c in made]  # not one recreated


class TestWindowFromTheContainersChange:
    def test_a_drifted_container_counts_its_window_from_its_creation_not_from_when_driftd_saw_it(
            self, docker_client, make, docker_runtime, image_ids, scope):
        from prometheus_client import CollectorRegistry

        from driftd.core.times import rfc3339
        from driftd.engine.clock import FakeClock

        clock = FakeClock(start=time.time())
        reg = CollectorRegistry()
        rt = docker_runtime({"c.yaml": container_baseline(scope, [image_ids[IMAGE_V1]])}, clock=clock, registry=reg)
        c = make("late", privileged=True, start=False, **HARDENED)  # made after driftd began governing
        created = rfc3339(c.attrs["Created"])
        assert created is not None and abs(created - time.time()) < 30
        clock.advance(120)  # driftd's next look is two minutes later
        s = enforce(rt)
        assert outcome_of(s, c.name).status == "remediated"
        rec = rt.state.recent(1)[0]
        assert rec.changed_at == pytest.approx(created, abs=0.01)
        assert rec.deadline == pytest.approx(created + 1800, abs=0.01)
        detect = reg.get_sample_value("driftd_time_to_detect_seconds_sum", {"target": "docker"})
        assert detect == pytest.approx(clock.time() - created, abs=0.5)
        ttr = reg.get_sample_value("driftd_time_to_remediate_seconds_sum", {"target": "docker"})
        assert ttr >= detect  # from the change, not from first seen

    def test_a_container_already_drifted_before_driftd_governed_it_counts_from_first_seen(
            self, docker_client, make, docker_runtime, image_ids, scope):
        from driftd.engine.clock import FakeClock

        c = make("early", privileged=True, start=False, **HARDENED)
        time.sleep(1.5)
        clock = FakeClock(start=time.time())
        rt = docker_runtime({"c.yaml": container_baseline(scope, [image_ids[IMAGE_V1]], )}, clock=clock, dry_run=True)
        enforce(rt)
        rec = next(r for r in rt.state.active().values() if r.address == c.name)
        assert rec.changed_at is None and rec.deadline == pytest.approx(rec.first_seen + 1800)

    def test_the_event_stream_dates_an_in_place_change(self, docker_client, make, docker_runtime, image_ids, scope):
        """An ``exec`` into a running container is dated by its event (``timeNano``), later than created/started."""
        c = make("exec", **HARDENED)
        rt = docker_runtime({"c.yaml": container_baseline(scope, [image_ids[IMAGE_V1]])})
        target = rt.engine.targets["docker"]
        keys: list[str] = []
        stop = threading.Event()
        t = threading.Thread(target=target.watch, args=(keys.append, stop), daemon=True)
        t.start()
        try:
            time.sleep(1.0)  # the stream is open
            before = time.time()
            c.exec_run(["sh", "-c", "true"])
            deadline = time.time() + 10
            while not keys and time.time() < deadline:
                time.sleep(0.05)
            assert f"docker:{c.name}" in keys
            from driftd.core.kinds.container import ContainerHandler  # noqa: F401  (registered)
            from driftd.targets.docker import _Port

            seen = _Port(target, target.api()).event_time(c.name)
            assert seen is not None and before - 1 <= seen <= time.time()
            observed = target.observe(next(d for d in target.discover() if d.address == c.name))
            assert observed.changed_at == pytest.approx(seen)
        finally:
            stop.set()
            target.close()
            t.join(timeout=10)
