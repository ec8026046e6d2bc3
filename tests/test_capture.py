"""``driftd baseline capture``: what runs today → a baseline that loads clean and finds it compliant.

Host capture reads a real tree (``host_root``) through SafeRoot and is checked end to end: the
written directory loads, ``run --once --dry-run`` finds the tree clean, and one changed mode is
exactly the drift reported.  Container and image capture run against the real engine
(``docker_support``: skip locally, fail in CI without it); pod capture against the real
kube-apiserver (``k8s_support``).
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import tarfile
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from driftd.baselines.capture import ObservedPath, container_capture, host_capture, pod_capture
from driftd.baselines.loader import load_set
from driftd.cli import main
from driftd.exitcodes import ExitCode
from driftd.models.baseline import HostBaseline

REPO = Path(__file__).resolve().parent.parent
DRIFTD = REPO / ".venv" / "bin" / "driftd"
SECRET = b"-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEIThisIsNotARealKeyButSecret42\n-----END PRIVATE KEY-----\n"
TOKEN = b"token=hunter2-very-secret-token\n"


def capture(*argv: str) -> int:
    return main(["baseline", "capture", *argv])


def run_once(host_root: Path, baselines: Path, state: Path) -> dict[str, Any]:
    proc = subprocess.run(
        [str(DRIFTD), "run", "--once", "--dry-run", "--host-root", str(host_root), "--baselines", str(baselines),
         "--state-dir", str(state), "--output", "json", "--log-level", "error"],
        capture_output=True, text=True, timeout=120)
    out: dict[str, Any] = json.loads(proc.stdout)
    assert out["exitCode"] == proc.returncode, proc.stderr
    return out


@pytest.fixture
def tree(host_root: Path) -> Path:
    """/etc/app: a text config, a binary, a private key, a token (sensitive by glob), a subdirectory."""
    app = host_root / "etc/app"
    (app / "conf.d").mkdir(parents=True)
    (app / "app.conf").write_text("listen = 127.0.0.1:8080\nworkers = 4\n")
    (app / "conf.d/extra.conf").write_text("debug = false\n")
    (app / "blob.bin").write_bytes(bytes(range(256)))
    (app / "tls.key").write_bytes(SECRET)
    (app / "token").write_bytes(TOKEN)
    for p, mode in ((app, 0o750), (app / "conf.d", 0o755), (app / "app.conf", 0o640), (app / "conf.d/extra.conf", 0o644),
                    (app / "blob.bin", 0o755), (app / "tls.key", 0o600), (app / "token", 0o600)):
        p.chmod(mode)
    return host_root


def _yaml(out: Path, name: str) -> tuple[str, dict[str, Any]]:
    text = (out / f"{name}.yaml").read_text()
    return text, yaml.safe_load(text)


# --------------------------------------------------------------------------- host


class TestHostCapture:
    def test_round_trip_clean_then_exactly_one_drift(self, tree: Path, tmp_path: Path) -> None:
        """Capture what is → the set loads and a dry run finds it clean; a changed mode is the one drift."""
        out = tmp_path / "out"
        rc = capture("host", "/etc/app", "/etc/passwd", "--recursive", "--name", "app", "--host-root", str(tree),
                     "--sensitive", "/etc/app/token", "-o", str(out))
        assert rc == ExitCode.CLEAN
        bset, problems = load_set(out)
        assert bset is not None and not [p for p in problems if p.severity == "error"], problems
        b = bset.baselines[0]
        assert isinstance(b, HostBaseline)
        files = {f.path: f for f in b.spec.files}
        assert set(files) == {"/etc/app/app.conf", "/etc/app/conf.d/extra.conf", "/etc/app/blob.bin", "/etc/app/tls.key",
                              "/etc/app/token", "/etc/passwd"}
        assert files["/etc/app/app.conf"].content == "listen = 127.0.0.1:8080\nworkers = 4\n"
        assert (files["/etc/app/app.conf"].mode, files["/etc/app/app.conf"].owner) == ("0640", "root")
        assert files["/etc/app/blob.bin"].source == "files/etc/app/blob.bin"
        assert (out / "files/etc/app/blob.bin").read_bytes() == bytes(range(256))
        assert files["/etc/passwd"].content is None and files["/etc/passwd"].source is None  # guardrail: metadata only
        assert {d.path: d.mode for d in b.spec.directories} == {"/etc/app": "0750", "/etc/app/conf.d": "0755"}

        clean = run_once(tree, out, tmp_path / "state")
        assert clean["exitCode"] == ExitCode.CLEAN and clean["results"] == [], clean
        assert {k: n for k, n in clean["counts"].items() if n} == {"clean": 8}

        (tree / "etc/app/conf.d/extra.conf").chmod(0o666)
        drift = run_once(tree, out, tmp_path / "state")
        assert drift["exitCode"] == ExitCode.DRIFT_REMAINED
        assert [(o["key"], [d["field"] for d in o["drift"]]) for o in drift["results"]] == [
            ("host:file:/etc/app/conf.d/extra.conf", ["mode"])]
        assert (tree / "etc/app/conf.d/extra.conf").stat().st_mode & 0o777 == 0o666  # dry run: untouched

    def test_sensitive_bytes_never_in_the_yaml(self, tree: Path, tmp_path: Path) -> None:
        """A private key (well-known) and a --sensitive glob are source + sensitive; their bytes only in OUT/files, 0600."""
        out = tmp_path / "out"
        assert capture("host", "/etc/app/tls.key", "/etc/app/token", "/etc/app/app.conf", "--name", "app",
                       "--host-root", str(tree), "--sensitive", "/etc/app/tok*", "--inline-max", "1000000",
                       "-o", str(out)) == ExitCode.CLEAN
        text, doc = _yaml(out, "app")
        for secret in (SECRET, TOKEN):
            for piece in secret.decode().split("\n"):
                if piece:
                    assert piece not in text
        rules = {f["path"]: f for f in doc["spec"]["files"]}
        for path in ("/etc/app/tls.key", "/etc/app/token"):
            assert rules[path]["sensitive"] is True and "content" not in rules[path]
            src = out / rules[path]["source"]
            assert src.read_bytes() == (tree / path.lstrip("/")).read_bytes()
            assert src.stat().st_mode & 0o777 == 0o600
        assert rules["/etc/app/app.conf"]["content"].startswith("listen")  # not sensitive: inline
        assert "sensitive" not in rules["/etc/app/app.conf"]

    def test_symlink_and_hard_link_refused_with_a_reason(self, tree: Path, tmp_path: Path,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
        outside = tmp_path / "outside"
        outside.mkdir()
        (outside / "secret.conf").write_text("outside-the-root-bytes\n")
        (tree / "etc/app/link.conf").symlink_to("/etc/passwd")
        os.link(tree / "etc/app/app.conf", tree / "etc/app/hard.conf")
        (tree / "etc/escape").symlink_to(outside)
        out = tmp_path / "out"
        rc = capture("host", "/etc/app/link.conf", "/etc/app/hard.conf", "/etc/escape/secret.conf",
                     "/etc/app/blob.bin", "--name", "app", "--host-root", str(tree), "-o", str(out))
        assert rc == ExitCode.CLEAN
        err = capsys.readouterr().err
        assert "left out /etc/app/link.conf: a symlink (-> /etc/passwd)" in err
        assert "left out /etc/app/hard.conf: 2 hard links" in err
        assert "left out /etc/escape/secret.conf:" in err and "symlink" in err
        text, doc = _yaml(out, "app")
        assert [f["path"] for f in doc["spec"]["files"]] == ["/etc/app/blob.bin"]
        assert "outside-the-root-bytes" not in text and not (out / "files/etc/escape").exists()
        assert "# left out: /etc/app/hard.conf: 2 hard links" in text

    def test_only_refused_paths_is_an_error(self, tree: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
        (tree / "etc/app/link.conf").symlink_to("app.conf")
        out = tmp_path / "out"
        rc = capture("host", "/etc/app/link.conf", "/etc/missing", "--name", "app", "--host-root", str(tree), "-o", str(out))
        assert rc == ExitCode.ERROR
        err = capsys.readouterr().err
        assert "nothing to capture" in err and "/etc/missing: does not exist" in err
        assert not (out / "app.yaml").exists()

    def test_existing_output_not_overwritten_without_force(self, tree: Path, tmp_path: Path,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
        out = tmp_path / "out"
        out.mkdir()
        (out / "app.yaml").write_text("# mine\n")
        args = ("host", "/etc/app/app.conf", "--name", "app", "--host-root", str(tree), "-o", str(out))
        assert capture(*args) == ExitCode.ERROR
        assert "exists; not overwriting it" in capsys.readouterr().err
        assert (out / "app.yaml").read_text() == "# mine\n"
        assert capture(*args, "--force") == ExitCode.CLEAN
        assert "kind: HostBaseline" in (out / "app.yaml").read_text()

    def test_a_source_file_is_not_overwritten_either(self, tree: Path, tmp_path: Path) -> None:
        out = tmp_path / "out"
        (out / "files/etc/app").mkdir(parents=True)
        (out / "files/etc/app/blob.bin").write_bytes(b"keep")
        rc = capture("host", "/etc/app/blob.bin", "--name", "app", "--host-root", str(tree), "-o", str(out))
        assert rc == ExitCode.ERROR
        assert (out / "files/etc/app/blob.bin").read_bytes() == b"keep" and not (out / "app.yaml").exists()

    def test_set_id_left_out_unless_allowed_dangerous(self, tree: Path, tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
        tool = tree / "etc/app/tool"
        tool.write_bytes(b"\x7fELF")
        tool.chmod(0o4755)
        out = tmp_path / "out"
        assert capture("host", "/etc/app/tool", "/etc/app/app.conf", "--name", "app", "--host-root", str(tree),
                       "-o", str(out)) == ExitCode.CLEAN
        assert "left out /etc/app/tool: mode 4755 sets set-uid" in capsys.readouterr().err
        assert [f["path"] for f in _yaml(out, "app")[1]["spec"]["files"]] == ["/etc/app/app.conf"]

        out2 = tmp_path / "out2"
        assert capture("host", "/etc/app/tool", "--name", "app", "--host-root", str(tree), "-o", str(out2),
                       "--allow-dangerous", "INC-7: the vendor's setuid helper") == ExitCode.CLEAN
        rule = _yaml(out2, "app")[1]["spec"]["files"][0]
        assert (rule["mode"], rule["allowDangerous"]) == ("4755", "INC-7: the vendor's setuid helper")
        bset, problems = load_set(out2)
        assert bset is not None and [p.severity for p in problems] == ["allowed-dangerous"]

    def test_a_set_that_would_not_load_is_not_kept(self, tree: Path, tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
        """Capturing into a directory whose other baseline already claims the path: exit 1 naming it, nothing kept."""
        out = tmp_path / "out"
        out.mkdir()
        other = ("apiVersion: driftd.io/v1alpha1\nkind: HostBaseline\nmetadata: {name: other}\n"
                 "spec:\n  files:\n  - {path: /etc/app/app.conf, mode: '0600'}\n")
        (out / "other.yaml").write_text(other)
        rc = capture("host", "/etc/app/app.conf", "--name", "app", "--host-root", str(tree), "-o", str(out))
        assert rc == ExitCode.ERROR
        err = capsys.readouterr().err
        assert "would not load; nothing was kept" in err and "/etc/app/app.conf" in err
        assert sorted(p.name for p in out.iterdir()) == ["other.yaml"]

    def test_yaml_named_source_and_newline_in_a_name_stay_inert(self, tree: Path, tmp_path: Path) -> None:
        """A captured ``*.yaml`` binary is not read as a baseline; a newline in a file name cannot open a YAML line."""
        (tree / "etc/app/data.yaml").write_bytes(b"\x00kind: HostBaseline\n")
        (tree / "etc/app/odd\nkind: x").write_bytes(b"\x00")
        (tree / "etc/app/odd\nkind: x").chmod(0o4755)  # left out (set-uid): its name goes into a comment
        out = tmp_path / "out"
        assert capture("host", "/etc/app/data.yaml", "/etc/app/odd\nkind: x", "--name", "app", "--host-root", str(tree),
                       "-o", str(out)) == ExitCode.CLEAN
        text, doc = _yaml(out, "app")
        assert doc["spec"]["files"][0]["source"] == "files/etc/app/data.yaml.source"
        assert "\\x0akind: x" in text and "\nkind: x" not in text
        bset, _ = load_set(out)
        assert bset is not None and [b.metadata.name for b in bset.baselines] == ["app"]


# --------------------------------------------------------------------------- pure


def test_host_capture_pure_refusals_and_names() -> None:
    obs = [
        ObservedPath("/etc/a", "file", mode=0o644, uid=0, gid=4242, data=b"x\n"),
        ObservedPath("/etc/b", "file", mode=0o644, nlink=3, data=None),
        ObservedPath("/etc/c", "symlink", link_target="/x"),
        ObservedPath("/dev/null", "other"),
        ObservedPath("/etc/big", "file", mode=0o600, uid=7, gid=0, unread="too big"),
    ]
    cap = host_capture("t", obs, users={0: "root"}, groups={0: "root"})
    files = {f["path"]: f for f in cap.doc["spec"]["files"]}
    assert files["/etc/a"] == {"path": "/etc/a", "mode": "0644", "owner": "root", "group": 4242, "content": "x\n"}
    assert files["/etc/big"] == {"path": "/etc/big", "mode": "0600", "owner": 7, "group": "root"}
    assert [p for p, _ in cap.skipped] == ["/etc/b", "/etc/c", "/dev/null"]


def test_container_capture_pure_env_values_never_written() -> None:
    ins = {
        "Id": "c" * 64, "Name": "/web", "Image": "sha256:" + "a" * 64,
        "Config": {"User": "1000", "Env": ["API_TOKEN=s3cr3t-v4lue", "PATH=/bin"], "Labels": {"app": "web"}},
        "HostConfig": {"CapDrop": ["ALL"], "ReadonlyRootfs": True, "SecurityOpt": ["no-new-privileges"],
                       "PidsLimit": -1, "Memory": 268435456, "IpcMode": "private", "NetworkMode": "none",
                       "RestartPolicy": {"Name": "on-failure", "MaximumRetryCount": 3}},
        "Mounts": [{"Type": "bind", "Source": "/run/docker.sock", "Destination": "/run/docker.sock"}],
    }
    cap = container_capture("web", ins, repo_digests=["reg.example/web@sha256:" + "b" * 64, "reg.example/web:1"])
    text = yaml.safe_dump(cap.doc) + "\n".join(cap.notes)
    assert "s3cr3t-v4lue" not in text and "API_TOKEN" in text
    spec = cap.doc["spec"]
    assert spec["selector"] == {"names": ["web"]}
    assert spec["images"]["approved"] == ["sha256:" + "a" * 64, "reg.example/web@sha256:" + "b" * 64]
    rt = spec["runtime"]
    assert "env" not in rt and rt["user"] == "1000" and rt["nonRoot"] is True and rt["capDrop"] == ["ALL"]
    assert rt["resources"] == {"memory": 268435456}  # PidsLimit -1 (unlimited) is no rule
    assert "/run/docker.sock" not in rt["forbiddenHostMounts"] and "/var/run/docker.sock" in rt["forbiddenHostMounts"]
    assert rt["restartPolicy"] == {"name": "on-failure", "maximumRetryCount": 3}
    assert any("bind-mounts /run/docker.sock" in n for n in cap.notes)


def test_pod_capture_pure_rules_hold_for_the_pod() -> None:
    from driftd.core.pod_policy import evaluate
    from driftd.models.pod import PodBaseline

    pod = {
        "metadata": {"name": "api-7d9f-x", "namespace": "shop", "labels": {"app": "api", "pod-template-hash": "7d9f"}},
        "spec": {"securityContext": {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}},
                 "containers": [{"name": "api", "image": "api:1",
                                 "securityContext": {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}},
                                 "resources": {"limits": {"memory": "128Mi"}}}]},
        "status": {"containerStatuses": [{"name": "api", "imageID": "docker-pullable://reg/api@sha256:" + "d" * 64}]},
    }
    cap = pod_capture("api", pod)
    b = PodBaseline.model_validate(cap.doc)
    assert b.spec.selector.namespaces == ["shop"] and b.spec.selector.match_labels == {"app": "api"}
    assert b.spec.security.run_as_non_root is True and b.spec.security.required_drop_capabilities == ["ALL"]
    assert b.spec.images is not None and b.spec.images.approved == ["reg/api@sha256:" + "d" * 64]
    assert evaluate(b, pod) and not any(evaluate(b, pod).values())  # rules evaluated, none broken
    worse = json.loads(json.dumps(pod))
    worse["spec"]["containers"][0]["securityContext"]["allowPrivilegeEscalation"] = True
    assert any(evaluate(b, worse).values())


# --------------------------------------------------------------------------- Docker (real engine)


def _enforce(rt: Any) -> Any:
    from driftd.engine.once import run_once as one_pass

    return one_pass(rt.engine, rt.queue, attempts=rt.settings.retry.attempts_per_pass)


def _image_file_oracle(docker_client: Any, image: str, path: str) -> bytes:
    """The bytes of ``path`` in ``image`` from ``docker image save`` (its layer tars), independent of capture."""
    raw = b"".join(docker_client.images.get(image).save())
    want = {path.lstrip("/"), "." + path}
    with tarfile.open(fileobj=io.BytesIO(raw)) as outer:
        for m in outer.getmembers():
            fh = outer.extractfile(m) if m.isfile() else None
            if fh is None:
                continue
            try:
                with tarfile.open(fileobj=io.BytesIO(fh.read()), mode="r:*") as layer:
                    for lm in layer.getmembers():
                        if lm.name in want and lm.isfile():
                            inner = layer.extractfile(lm)
                            assert inner is not None
                            return inner.read()
            except tarfile.TarError:
                continue  # a JSON blob
    raise AssertionError(f"{path} not in {image}")


@pytest.mark.real
class TestDockerCapture:
    def test_container_round_trip_then_one_drift(self, docker_client: Any, make: Any, make_runtime: Any, scope: str,
                                                 tmp_path: Path) -> None:
        """Capture a running container → the Docker target finds it compliant; a changed restart policy is the drift."""
        from docker_support import SCOPE

        c = make("cap", environment={"API_TOKEN": "s3cr3t-v4lue"}, user="1000", cap_drop=["ALL"], read_only=True,
                 security_opt=["no-new-privileges"], mem_limit="64m", pids_limit=64,
                 restart_policy={"Name": "on-failure", "MaximumRetryCount": 2})
        out = tmp_path / "out"
        assert capture("container", c.name, "--name", "cap", "--match-label", SCOPE, "-o", str(out)) == ExitCode.CLEAN
        text, doc = _yaml(out, "cap")
        assert "s3cr3t-v4lue" not in text and "API_TOKEN" in text and "env:" not in text
        spec = doc["spec"]
        assert spec["selector"] == {"matchLabels": {SCOPE: scope}}
        assert spec["images"]["approved"] == [c.attrs["Image"]]
        rt_rules = spec["runtime"]
        assert {k: rt_rules[k] for k in ("user", "nonRoot", "privileged", "capDrop", "readOnlyRootFilesystem",
                                         "noNewPrivileges", "networkMode", "restartPolicy")} == {
            "user": "1000", "nonRoot": True, "privileged": False, "capDrop": ["ALL"], "readOnlyRootFilesystem": True,
            "noNewPrivileges": True, "networkMode": "none", "restartPolicy": {"name": "on-failure", "maximumRetryCount": 2}}
        assert rt_rules["resources"] == {"memory": 64 * 1024 * 1024, "pidsLimit": 64}

        rt = make_runtime(out, docker={"enabled": True}, dry_run=True)
        first = _enforce(rt)
        assert [o for o in first.outcomes if o.key == f"docker:{c.name}"] == []
        assert first.exit_code == ExitCode.CLEAN, first.outcomes

        docker_client.api.update_container(c.id, restart_policy={"Name": "always", "MaximumRetryCount": 0})
        second = _enforce(rt)
        mine = [o for o in second.outcomes if o.key == f"docker:{c.name}"]
        assert len(mine) == 1 and [d["field"] for d in mine[0].drift] == ["restartPolicy"]
        assert second.exit_code == ExitCode.DRIFT_REMAINED
        assert docker_client.containers.get(c.name).id == c.id  # dry run: not recreated

    def test_container_selected_by_name_by_default(self, make: Any, tmp_path: Path) -> None:
        c = make("byname")
        out = tmp_path / "out"
        assert capture("container", c.id[:12], "--name", "byname", "-o", str(out)) == ExitCode.CLEAN
        spec = _yaml(out, "byname")[1]["spec"]
        assert spec["selector"] == {"names": [c.name]}
        assert "nonRoot" not in spec["runtime"]  # busybox runs as root: never written as a requirement
        bset, problems = load_set(out)
        assert bset is not None, problems

    def test_missing_container_is_an_error(self, docker_client: Any, tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
        out = tmp_path / "out"
        assert capture("container", "driftd-no-such-container-x", "--name", "x", "-o", str(out)) == ExitCode.ERROR
        assert "no container 'driftd-no-such-container-x'" in capsys.readouterr().err
        assert not out.exists()

    def test_image_capture_reads_files_without_running_it(self, docker_client: Any, image_ids: dict[str, str],
                                                          make: Any, make_runtime: Any, tmp_path: Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
        from docker_support import IMAGE_V1

        capture_filter = {"label": "driftd.io/capture"}
        assert docker_client.containers.list(all=True, filters=capture_filter) == []
        since = int(time.time()) - 1
        out = tmp_path / "out"
        rc = capture("image", IMAGE_V1, "--name", "img", "--file", "/etc/driftd-image-version", "--file", "/bin/busybox",
                     "--file", "/bin/sh", "--file", "/no/such", "-o", str(out))
        until = int(time.time()) + 1
        assert rc == ExitCode.CLEAN
        err = capsys.readouterr().err
        assert "left out /bin/sh: a symlink in the image (-> /bin/busybox)" in err
        assert "left out /no/such: not found in the image" in err
        assert (out / "files/img/etc/driftd-image-version").read_bytes() == b"1.0\n"
        assert (out / "files/img/bin/busybox").read_bytes() == _image_file_oracle(docker_client, IMAGE_V1, "/bin/busybox")

        # one container was created and removed, never started
        assert docker_client.containers.list(all=True, filters=capture_filter) == []
        actions = [e["Action"] for e in docker_client.events(since=since, until=until, decode=True,
                                                             filters={"type": "container", **capture_filter})]
        assert "create" in actions and "destroy" in actions and "start" not in actions, actions

        text, doc = _yaml(out, "img")
        assert doc["spec"]["images"]["approved"] == [image_ids[IMAGE_V1]]
        assert doc["spec"]["selector"] == {"matchLabels": {"driftd.io/baseline": "img"}}
        assert doc["spec"]["runtime"]["labels"] == {"driftd-test.image-version": "1.0", "driftd-test.recipe": "1"}
        assert "# note: image file /bin/busybox:" in text and "PATH=" not in text

        # a container run from it with the documented label is compliant
        c = make("fromimg", labels={"driftd.io/baseline": "img"})
        rt = make_runtime(out, docker={"enabled": True}, dry_run=True)
        s = _enforce(rt)
        assert [o for o in s.outcomes if o.key == f"docker:{c.name}"] == [] and s.exit_code == ExitCode.CLEAN


# --------------------------------------------------------------------------- Kubernetes (real kube-apiserver)


@pytest.mark.real
def test_pod_capture_round_trip(k8s_cluster: Any, k8s_kubeconfig: str, tmp_path: Path) -> None:
    """Capture a running compliant pod → its namespace and labels selected, every captured rule holds for it,
    and a privileged pod breaks the captured rules."""
    from driftd.core.pod_policy import evaluate
    from driftd.core.selectors import labels as labels_match
    from driftd.models.pod import PodBaseline

    node = k8s_cluster.make_node()
    k8s_cluster.make_pod("api", node, labels={"app": "api", "tier": "back"})
    out = tmp_path / "out"
    rc = capture("pod", f"{k8s_cluster.ns}/api", "--name", "api", "--kubeconfig", k8s_kubeconfig, "-o", str(out))
    assert rc == ExitCode.CLEAN
    bset, problems = load_set(out)
    assert bset is not None, problems
    b = bset.baselines[0]
    assert isinstance(b, PodBaseline)
    live = k8s_cluster.rest.get(k8s_cluster.pod_path("api"))
    assert b.spec.selector.namespaces == [k8s_cluster.ns]
    assert labels_match(b.spec.selector.match_labels, live["metadata"]["labels"])
    assert b.spec.images is not None and len(b.spec.images.approved) == 1
    result = evaluate(b, live)
    assert result and not any(result.values()), result

    k8s_cluster.make_pod("api-priv", node, labels={"app": "api", "tier": "back"}, privileged=True)
    broken = evaluate(b, k8s_cluster.rest.get(k8s_cluster.pod_path("api-priv")))
    assert any(broken.values()), broken


@pytest.mark.real
def test_pod_capture_missing_pod(k8s_cluster: Any, k8s_kubeconfig: str, tmp_path: Path,
                                 capsys: pytest.CaptureFixture[str]) -> None:
    rc = capture("pod", f"{k8s_cluster.ns}/nope", "--name", "nope", "--kubeconfig", k8s_kubeconfig, "-o", str(tmp_path / "o"))
    assert rc == ExitCode.ERROR and f"no pod {k8s_cluster.ns}/nope" in capsys.readouterr().err
