"""The driftd image (Dockerfile), run on the real engine the way the chart runs it on a node.

The image is built by ``scripts/image-build.sh`` (``scripts/test.sh`` does it before the tests, on a
Debian base made by ``scripts/image-base.sh``); a missing image fails in CI and skips locally.  The agent
container gets what the DaemonSet gives it: the host tree at ``/host``, the Docker socket, state on a
volume, a read-only root filesystem with a tmpfs ``/tmp``, root with every capability dropped but the
chart's four, no new privileges.  Test containers run with ``network_mode="none"``; the probes and
``/metrics`` are read from inside the agent's own network namespace (``docker exec``).
"""

from __future__ import annotations

import json
import time
import tomllib
from pathlib import Path
from typing import Any

import docker
import yaml
from conftest import host_baseline, need
from docker_support import IMAGE_V1, LABEL, SCOPE

REPO = Path(__file__).resolve().parent.parent
VERSION = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
IMAGE = f"driftd:{VERSION}"
VALUES = yaml.safe_load((REPO / "charts/driftd/values.yaml").read_text())
CHART_CAPS = VALUES["capabilities"]
GRACE = VALUES["terminationGracePeriodSeconds"]
HARDENED_RUNTIME = {"user": "1000", "privileged": False, "capAdd": [], "capDrop": ["ALL"],
                    "readOnlyRootFilesystem": True, "noNewPrivileges": True}
HARDENED = {"user": "1000", "cap_drop": ["ALL"], "read_only": True, "security_opt": ["no-new-privileges"]}
PROBE = ("import sys, urllib.request\n"
         "try:\n    r = urllib.request.urlopen('http://127.0.0.1:9808' + sys.argv[1], timeout=5)\n"
         "    sys.stdout.write(str(r.status) + '\\n' + r.read().decode())\n"
         "except Exception as e:\n    sys.stdout.write('000\\n' + str(e))\n")


def image_or_fail(client: docker.DockerClient) -> Any:
    try:
        return client.images.get(IMAGE)
    except docker.errors.ImageNotFound:
        need(False, f"image {IMAGE} not built: run `bash scripts/image-build.sh`")


def get(agent: Any, path: str) -> tuple[int, str]:
    """GET path on the agent's metrics listener, from inside its network namespace."""
    _, out = agent.exec_run(["python3", "-c", PROBE, path])
    text = out.decode(errors="replace")
    status, _, body = text.partition("\n")
    return (int(status) if status.isdigit() else 0), body


def wait(pred: Any, what: str, timeout: float = 120.0, agent: Any = None) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = pred()
        if got:
            return got
        time.sleep(0.25)
    logs = agent.logs().decode(errors="replace")[-4000:] if agent is not None else ""
    raise AssertionError(f"timed out waiting for {what}\n{logs}")


def run_agent(client: docker.DockerClient, scope: str, host: Path, bdir: Path, **env: str) -> Any:
    """The agent container as the DaemonSet runs it (securityContext and mounts of charts/driftd/templates/daemonset.yaml)."""
    return client.containers.run(
        IMAGE, name=f"driftd-agent-{scope}", detach=True, network_mode="none",
        user="0:0", read_only=True, tmpfs={"/tmp": "rw,nosuid,nodev,size=16m"},
        cap_drop=["ALL"], cap_add=CHART_CAPS, security_opt=["no-new-privileges"],
        volumes={str(host): {"bind": "/host", "mode": "rw"},
                 "/var/run/docker.sock": {"bind": "/var/run/docker.sock", "mode": "rw"},
                 f"driftd-state-{scope}": {"bind": "/var/lib/driftd", "mode": "rw"},
                 str(bdir): {"bind": "/etc/driftd/baselines", "mode": "ro"}},
        environment={"DRIFTD_DOCKER__ENABLED": "true", "DRIFTD_NODE_NAME": "node-image", "DRIFTD_LOG__FORMAT": "json",
                     "DRIFTD_HTTP__ADDRESS": "127.0.0.1:9808", "DRIFTD_SCAN__INTERVAL_SECONDS": "2", **env},
        labels={LABEL: "1", SCOPE: scope},
    )


def test_the_image_reverts_host_files_and_containers_as_deployed(
        tmp_path: Path, docker_client: docker.DockerClient, make: Any, scope: str, image_ids: dict[str, str]) -> None:
    image_or_fail(docker_client)
    host = tmp_path / "host"
    (host / "etc").mkdir(parents=True)
    motd = host / "etc/motd"
    motd.write_text("hacked\n")
    motd.chmod(0o666)
    bdir = tmp_path / "baselines"
    bdir.mkdir()
    (bdir / "motd.yaml").write_text(host_baseline(name="motd", spec="""
        files:
          - {path: /etc/motd, content: "Authorized use only.\\n", mode: "0644"}
    """))
    (bdir / "containers.yaml").write_text(yaml.safe_dump({
        "apiVersion": "driftd.io/v1alpha1", "kind": "ContainerBaseline", "metadata": {"name": "hardened"},
        "spec": {"selector": {"matchLabels": {SCOPE: scope, "role": "app"}}, "images": {"approved": [image_ids[IMAGE_V1]]},
                 "runtime": HARDENED_RUNTIME, "ungoverned": "ignore"}}, sort_keys=False))
    victim = make("victim", privileged=True, start=False, labels={"role": "app"}, **HARDENED)
    assert victim.attrs["HostConfig"]["Privileged"] is True

    started = time.monotonic()
    agent = run_agent(docker_client, scope, host, bdir)
    try:
        wait(lambda: get(agent, "/readyz")[0] == 200, "/readyz to answer 200", agent=agent)
        ready_after = time.monotonic() - started
        assert get(agent, "/healthz")[0] == 200

        # the host file: content and mode reverted through the /host mount
        wait(lambda: motd.read_text() == "Authorized use only.\n" and (motd.stat().st_mode & 0o777) == 0o644,
             "/etc/motd to be reverted", agent=agent)

        # the drifted container: recreated under its name, unprivileged, through the mounted socket
        def recreated() -> Any:
            try:
                c = docker_client.containers.get(victim.name)
            except docker.errors.NotFound:
                return None
            return c if c.id != victim.id else None

        new = wait(recreated, "the privileged container to be recreated", agent=agent)
        new.reload()
        assert new.attrs["HostConfig"]["Privileged"] is False and new.labels.get("role") == "app"

        code, metrics = get(agent, "/metrics")
        assert code == 200
        assert 'driftd_remediations_total{action="write_file",result="succeeded",target="host"} 1.0' in metrics
        assert 'driftd_remediations_total{action="recreate",result="succeeded",target="docker"} 1.0' in metrics
        assert 'driftd_target_up{target="docker"} 1.0' in metrics

        # a clean second look: nothing more to do (idempotent), the state on its volume
        time.sleep(4)  # two more scans
        code, metrics = get(agent, "/metrics")
        assert 'driftd_remediations_total{action="write_file",result="succeeded",target="host"} 1.0' in metrics
        assert 'driftd_remediations_total{action="recreate",result="succeeded",target="docker"} 1.0' in metrics
        code, out = agent.exec_run(["driftd", "status", "-o", "json"])
        status = json.loads(out)
        assert status["items"] == [] and status["node"] == "node-image", status

        # the root filesystem is read-only, as the chart makes it
        code, out = agent.exec_run(["python3", "-c", "open('/opt/driftd/x', 'w')"])
        assert code != 0 and b"Read-only file system" in out

        # SIGTERM: a clean stop well inside the chart's grace period
        t0 = time.monotonic()
        agent.stop(timeout=GRACE)
        stopped_in = time.monotonic() - t0
        agent.reload()
        assert agent.attrs["State"]["ExitCode"] == 0, agent.logs()[-2000:]
        assert stopped_in < GRACE / 2, stopped_in
        events = [json.loads(ln) for ln in agent.logs(stdout=False).decode().splitlines() if ln.startswith("{")]
        assert "daemon.stopped" in {e.get("event") for e in events}
        print(f"ready after {ready_after:.2f}s, stopped in {stopped_in:.2f}s")
    finally:
        agent.remove(force=True)


def test_the_image_holds_every_driftd_module_and_nothing_of_the_build(docker_client: docker.DockerClient) -> None:
    """Every driftd module (and the Kubernetes client it uses) imports inside the image, after the final stage
    dropped pip, the build trees, test suites and the Kubernetes client's unused asyncio half; labels are set."""
    image = image_or_fail(docker_client)
    script = (
        "import importlib, os, pkgutil, driftd\n"
        "mods = [m.name for m in pkgutil.walk_packages(driftd.__path__, 'driftd.') if not m.name.endswith('__main__')]\n"
        "for m in mods: importlib.import_module(m)\n"
        "from kubernetes import client, config, watch\n"
        "node = client.ApiClient().deserialize('{\"kind\": \"Node\", \"metadata\": {\"name\": \"n1\"}}', 'V1Node',\n"
        "                                     'application/json')\n"
        "assert node.metadata.name == 'n1'  # the byte-code-only generated models work\n"
        "from driftd.presentation.terminal import Painter\n"
        "import io, rich.console, rich.text\n"
        "out = io.StringIO(); rich.console.Console(file=out, force_terminal=True).print(rich.text.Text('x', style='red'))\n"
        "assert '\\x1b[' in out.getvalue()  # colour works without pygments\n"
        "from driftd.core import versions as v  # python-debian and univers (packages rules) are in the image\n"
        "assert v.compare('deb', '1:1.0', '2.0') == 1 and v.compare('rpm', '1.0-1.el9', '1.0-2.el9') == -1\n"
        "assert v.in_range('deb', '1.9.15p5-1', '>=1.9.13p3-1|<1.9.16') and v.in_range('rpm', '1.5-1', '>=1.0|<2.0')\n"
        "assert v.in_range('apk', '13.2.1_git20240309-r0', '>=13.2.1-r0')\n"
        "gone = ['/opt/driftd/lib/python3.11/site-packages/pip', '/opt/build', '/src', '/wheels', '/usr/bin/gcc',\n"
        "        '/opt/driftd/lib/python3.11/site-packages/kubernetes/aio', '/root/.cache/pip']\n"
        "print(len(mods), [p for p in gone if os.path.exists(p)],\n"
        "      sum(1 for d, _, _ in os.walk('/opt/driftd') if os.path.basename(d) in ('tests', 'test')))\n"
    )
    out = docker_client.containers.run(IMAGE, entrypoint=["python3", "-c", script], network_mode="none", remove=True,
                                       read_only=True, labels={LABEL: "1"}).decode().split()
    assert int(out[0]) > 80 and out[1:] == ["[]", "0"], out
    labels = image.labels
    assert labels["org.opencontainers.image.version"] == VERSION and labels["org.opencontainers.image.source"]
    assert len(labels["org.opencontainers.image.revision"]) >= 40, labels
    assert image.attrs["Config"]["Entrypoint"] == ["driftd"] and image.attrs["Config"]["User"] == "0:0"


def test_the_image_is_built_on_the_base_its_recipe_makes(docker_client: docker.DockerClient) -> None:
    """The base is tagged with the sha256 of scripts/image-base.sh (reused while the recipe holds, rebuilt when it
    changes), and the driftd image's first layer is that base's filesystem."""
    import hashlib

    image = image_or_fail(docker_client)
    recipe = hashlib.sha256((REPO / "scripts/image-base.sh").read_bytes()).hexdigest()[:12]
    try:
        base = docker_client.images.get(f"driftd-base/debian-python:12-{recipe}")
    except docker.errors.ImageNotFound:
        need(False, "the base of this recipe is not built: run `bash scripts/image-build.sh`")
    assert image.attrs["RootFS"]["Layers"][0] == base.attrs["RootFS"]["Layers"][0]
    assert base.labels["io.driftd.base.recipe"] == recipe
    out = docker_client.containers.run(base.id, entrypoint=["python3", "-c", "import sys, ssl, sqlite3; "
                                                            "print(sys.version_info[:2])"], network_mode="none",
                                       remove=True, labels={LABEL: "1"})
    assert out.decode().strip() == "(3, 11)"
