"""``driftd state export`` and ``driftd plan --state FILE...``: a fleet previewed from what each node captured."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
from conftest import host_baseline

from driftd.baselines.loader import load_set
from driftd.cli import main
from driftd.engine import preview
from driftd.models.resources import DesiredResource, ObservedResource
from driftd.targets.base import NodeInfo
from driftd.targets.captured import SCHEMA, capture, captured_targets

SECRET_FILE = b"db_password=hunter2-file-secret\n"
SECRET_ENV = "hunter2-env-secret"
SECRET_POD = "hunter2-pod-secret"


def make_node(root: Path, *, app_mode: int = 0o644, tampered: bool = True) -> Path:
    """A host tree like conftest's host_root, with /etc/app/a.conf (drifted content), b.conf and a secret."""
    (root / "etc/app").mkdir(parents=True)
    (root / "proc/sys").mkdir(parents=True)
    (root / "etc/passwd").write_text("root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000::/home/app:/bin/sh\n")
    (root / "etc/group").write_text("root:x:0:\napp:x:1000:\n")
    (root / "etc/app/a.conf").write_text("tampered\n" if tampered else "a\n")
    (root / "etc/app/b.conf").write_text("b\n")
    (root / "etc/app/b.conf").chmod(app_mode)
    (root / "etc/app/secret.conf").write_bytes(SECRET_FILE)
    (root / "etc/app/secret.conf").chmod(0o600)
    return root


OLD_SPEC = """
files:
  - {path: /etc/app/a.conf, content: "a\\n", mode: "0644"}
  - {path: /etc/app/b.conf, mode: "0644"}
  - {path: /etc/app/secret.conf, content: "db_password=rotated\\n", mode: "0600", sensitive: true}
"""


def export(capsys: pytest.CaptureFixture[str], root: Path, baselines: Path, state: Path, node: str, out: Path,
           config: Path | None = None) -> dict[str, Any]:
    args = ["state", "export", "--host-root", str(root), "--baselines", str(baselines), "--state-dir", str(state),
            "--node-name", node, "-o", str(out)]
    if config is not None:
        args += ["--config", str(config)]
    code = main(args)
    capsys.readouterr()
    assert code == 0
    assert out.stat().st_mode & 0o777 == 0o600  # the export is the node's state: not world-readable
    doc: dict[str, Any] = json.loads(out.read_text())
    return doc


def plan_direct(bset: Any, doc: dict[str, Any], state: Path) -> Any:
    """``preview.plan_captured`` with default settings (its log lines kept off a closed capsys stream)."""
    from driftd.settings import load_settings
    from driftd.testing import capture_logs

    with capture_logs():
        return preview.plan_captured(load_settings(), bset, doc, state)


def labels_config(path: Path, **labels: str) -> Path:
    path.write_text("node_labels:\n" + "".join(f"  {k}: {v}\n" for k, v in labels.items()))
    return path


def test_export_has_the_node_its_observations_and_drift_records_and_no_secret(capsys, baselines_dir, tmp_path):
    root = make_node(tmp_path / "node-a")
    bdir = baselines_dir({"app.yaml": host_baseline("app", OLD_SPEC)})
    state = tmp_path / "state"
    cfg = labels_config(tmp_path / "a.yaml", role="web")
    # the agent ran before: open drift records with their first-seen times
    assert main(["run", "--once", "--dry-run", "--host-root", str(root), "--baselines", str(bdir), "--state-dir",
                 str(state), "--node-name", "node-a", "--config", str(cfg)]) == 3
    capsys.readouterr()
    state_before = {p.name: p.read_bytes() for p in state.iterdir() if p.is_file() and not p.name.endswith("-shm")}
    doc = export(capsys, root, bdir, state, "node-a", tmp_path / "a.json", cfg)

    assert doc["schema"] == SCHEMA and doc["driftd"] and doc["taken_at"].endswith("Z")
    assert doc["node"] == {"name": "node-a", "labels": {"role": "web"}}
    bset, _ = load_set(bdir)
    assert bset is not None and doc["baselines"] == bset.version
    rows = {r["key"]: r for r in doc["resources"]}
    a = rows["host:file:/etc/app/a.conf"]
    assert (a["target"], a["kind"], a["address"], a["baseline"]) == ("host", "file", "/etc/app/a.conf", "app")
    assert a["actual"]["content"] == "sha256:" + hashlib.sha256(b"tampered\n").hexdigest()  # content as its sha256
    assert a["actual"]["mode"] == "0644" and isinstance(a["changed_at"], float)
    # b.conf's content is not governed by the set in force, but another set may govern it: its digest is captured
    assert rows["host:file:/etc/app/b.conf"]["actual"]["content"] == "sha256:" + hashlib.sha256(b"b\n").hexdigest()
    drifts = {d["key"]: d for d in doc["state"]["drifts"]}
    assert set(drifts) == {"host:file:/etc/app/a.conf", "host:file:/etc/app/secret.conf"}
    rec = drifts["host:file:/etc/app/a.conf"]
    assert rec["first_seen"] > 0 and rec["deadline"] == pytest.approx((rec["changed_at"] or rec["first_seen"]) + 1800)
    assert rec["last_result"] and rec["fields"] == [{"field": "content"}]  # field names, never values
    assert doc["host"]["users"]["app"] == 1000
    # no secret: not the sensitive file's bytes, not its sha256 (hex or as a digest)
    text = (tmp_path / "a.json").read_text()
    secret = rows["host:file:/etc/app/secret.conf"]["actual"]["content"]
    assert secret.startswith("hmac-sha256:")
    for needle in (SECRET_FILE.decode().strip(), "hunter2", hashlib.sha256(SECRET_FILE).hexdigest()):
        assert needle not in text
    # read-only: the agent's state is as it was
    assert {p.name: p.read_bytes() for p in state.iterdir() if p.is_file() and not p.name.endswith("-shm")} == state_before


NEW_SPEC = """
selector:
  matchLabels: {role: web}
files:
  - {path: /etc/app/a.conf, content: "a\\n", mode: "0644"}
  - {path: /etc/app/secret.conf, content: "db_password=hunter2-file-secret\\n", mode: "0600", sensitive: true}
  - {path: /etc/app/new.conf, content: "new\\n", mode: "0644"}
"""
EVERY_NODE = """
files:
  - {path: /etc/app/b.conf, mode: "0644", owner: app}
"""


@pytest.fixture
def fleet(capsys, baselines_dir, tmp_path) -> tuple[Path, Path, Path]:
    """Two nodes exported under the OLD set: node-a (role web, a.conf tampered), node-b (role db, b.conf 0600)."""
    old = baselines_dir({"app.yaml": host_baseline("app", OLD_SPEC)})
    a = make_node(tmp_path / "node-a")
    b = make_node(tmp_path / "node-b", app_mode=0o600, tampered=False)
    assert main(["run", "--once", "--dry-run", "--host-root", str(a), "--baselines", str(old), "--state-dir",
                 str(tmp_path / "state-a"), "--node-name", "node-a"]) == 3
    capsys.readouterr()
    export(capsys, a, old, tmp_path / "state-a", "node-a", tmp_path / "a.json", labels_config(tmp_path / "a.yaml", role="web"))
    export(capsys, b, old, tmp_path / "state-b", "node-b", tmp_path / "b.json", labels_config(tmp_path / "b.yaml", role="db"))
    new = tmp_path / "new"
    new.mkdir()
    (new / "web.yaml").write_text(host_baseline("web", NEW_SPEC))
    (new / "all.yaml").write_text(host_baseline("all", EVERY_NODE))
    return new, tmp_path / "a.json", tmp_path / "b.json"


def plan_state(capsys, baselines: Path, *files: Path, fmt: str = "json", extra: tuple[str, ...] = ()) -> tuple[int, str]:
    args = ["plan", "--baselines", str(baselines), "-o", fmt, *extra]
    for f in files:
        args += ["--state", str(f)]
    code = main(args)
    got = capsys.readouterr()
    assert got.out, got.err
    return code, got.out


def test_a_fleet_plan_over_two_exports_has_each_nodes_rows_and_the_summed_summary(capsys, fleet):
    new, a, b = fleet
    code, out = plan_state(capsys, new, a, b)
    plan = json.loads(out)
    assert code == 1  # new.conf was never captured on node-a: an error, not a guess
    rows = {(r["node"], r["resource"]): r for r in plan["changes"]}
    # node-a (role web): the web baseline applies; a.conf's drift was captured, new.conf was not
    assert rows[("node-a", "/etc/app/a.conf")]["would"] == "would write_file"
    assert rows[("node-a", "/etc/app/a.conf")]["drift"][0]["live"] == "sha256:" + hashlib.sha256(b"tampered\n").hexdigest()
    missing = rows[("node-a", "/etc/app/new.conf")]
    assert missing["outcome"] == "error" and "not in the captured state of node-a: observe it there" in missing["would"]
    # the sensitive file holds what the NEW set wants (its hash matched): no change, without the export knowing bytes
    assert ("node-a", "/etc/app/secret.conf") not in rows
    # b.conf (the every-node baseline): owner app resolves from the node's own passwd (1000), not the planner's
    assert rows[("node-a", "/etc/app/b.conf")]["actions"] == ["chown"]
    # node-b (role db): only the every-node baseline applies (mode 0600 → 0644 and the owner)
    assert {r for (n, r) in rows if n == "node-b"} == {"/etc/app/b.conf"}
    assert rows[("node-b", "/etc/app/b.conf")]["actions"] == ["chmod", "chown"]
    assert set(plan["nodes"]) == {"node-a", "node-b"}
    na, nb = plan["nodes"]["node-a"], plan["nodes"]["node-b"]
    assert na["labels"] == {"role": "web"} and nb["labels"] == {"role": "db"}
    assert (na["resources"], na["change"], na["error"], na["unchanged"]) == (4, 2, 1, 1)
    assert (nb["resources"], nb["change"], nb["unchanged"]) == (1, 1, 0)
    s = plan["summary"]
    assert s["resources"] == 5 and s["unchanged"] == 1
    assert s["by_outcome"]["change"] == 3 and s["by_outcome"]["error"] == 1
    assert s["by_action"] == {"chmod": 1, "chown": 2, "write_file": 1}


def test_drift_ages_come_from_the_exported_records(capsys, fleet, tmp_path):
    """a.conf was first seen by node-a's agent: the plan's pass keeps that record (and its deadline)."""
    new, a, _ = fleet
    doc = json.loads(a.read_text())
    first = {d["key"]: d["first_seen"] for d in doc["state"]["drifts"]}["host:file:/etc/app/a.conf"]
    for d in doc["state"]["drifts"]:
        if d["key"] == "host:file:/etc/app/a.conf":
            d["first_seen"], d["deadline"] = first - 3600, first - 1800
    bset, _ = load_set(new)
    assert bset is not None
    st = tmp_path / "seeded"
    summary = plan_direct(bset, doc, st)
    out = {o.key: o for o in summary.outcomes}["host:file:/etc/app/a.conf"]
    assert out.first_seen == pytest.approx(first - 3600) and out.deadline == pytest.approx(first - 1800)


def test_markdown_has_the_node_table_and_a_bounded_rows_table(capsys, fleet):
    new, a, b = fleet
    code, out = plan_state(capsys, new, a, b, fmt="markdown", extra=("--max-rows", "2"))
    assert code == 1  # the uncaptured new.conf
    lines = out.splitlines()
    head = lines.index("| node | resources | would change | held | report only | unchanged |")
    assert lines[head + 2].startswith("| node-a | 4 | 2 | 0 | 0 | 1 (1 error)")
    assert lines[head + 3] == "| node-b | 1 | 1 | 0 | 0 | 0 |"
    rows_at = lines.index("| node | resource | baseline | live → desired | would |")
    assert rows_at > head + 3  # the node table comes first
    table = [ln for ln in lines[rows_at + 2:] if ln.startswith("| ")]
    assert len(table) == 2
    assert "… and 2 more (`driftd plan -o json` lists every one)." in out


def test_text_names_each_rows_node(capsys, fleet):
    new, a, b = fleet
    code, out = plan_state(capsys, new, a, b, fmt="text")
    assert code == 1
    assert any(ln.strip().startswith("~ node-b") and "/etc/app/b.conf" in ln for ln in out.splitlines())
    assert "  node node-b: 1 resources, 1 would change, 0 held, 0 report only, 0 unchanged" in out
    assert out.splitlines()[-1].startswith("plan: 3 would change, 0 held, 0 report only, 1 error, 1 unchanged")


def test_not_an_export_or_the_same_node_twice_is_refused(capsys, fleet, tmp_path):
    new, a, _ = fleet
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"schema": "driftd.io/plan/v1"}))
    assert main(["plan", "--baselines", str(new), "--state", str(bad)]) == 1
    assert f"{bad}: not a driftd state export" in capsys.readouterr().err
    assert main(["plan", "--baselines", str(new), "--state", str(a), "--state", str(a)]) == 1
    assert "node node-a is in two exports" in capsys.readouterr().err


def test_captured_targets_never_act(fleet):
    _, a, _ = fleet
    host = captured_targets(json.loads(a.read_text()))["host"]
    d = DesiredResource(key="host:file:/etc/app/a.conf", target="host", kind="file", address="/etc/app/a.conf",
                        baseline="web", expected={"present": True})
    from driftd.models.baseline import Enforcement
    from driftd.models.resources import Plan
    from driftd.targets.base import TargetError

    with pytest.raises(TargetError, match="never acted on"):
        host.apply(d, ObservedResource(key=d.key, actual={}), Plan(key=d.key, mode=Enforcement.ENFORCE, drift=(), actions=()))


# --------------------------------------------------------------------------- containers and pods


POD_BASELINE = """\
apiVersion: driftd.io/v1alpha1
kind: PodBaseline
metadata: {name: restricted}
spec:
  selector: {namespaces: ["app"]}
  security: {privileged: false}
"""


class FakeKube:
    """The read side of the Kubernetes target that capture() uses: the node's pod listing."""

    name = "kubernetes"
    node_name = "node-a"
    exclude_namespaces = ("kube-system",)

    def __init__(self, pods: list[dict[str, Any]]) -> None:
        self.pods = pods

    def api(self, method: str, path: str, query: Any = None) -> dict[str, Any]:
        assert method == "GET" and "pods" in path
        return {"items": self.pods}

    def desired(self, bset: Any, node: NodeInfo) -> list[DesiredResource]:
        return []

    def discover(self) -> list[DesiredResource]:
        return []


def pod(name: str, *, privileged: bool) -> dict[str, Any]:
    return {"metadata": {"name": name, "namespace": "app", "uid": f"uid-{name}",
                         "annotations": {"kubectl.kubernetes.io/last-applied-configuration": f'{{"env": "{SECRET_POD}"}}'},
                         "ownerReferences": [{"kind": "ReplicaSet", "name": "web-1", "controller": True}]},
            "spec": {"nodeName": "node-a", "containers": [
                {"name": "c", "image": "busybox@sha256:" + "1" * 64, "env": [{"name": "PASSWORD", "value": SECRET_POD}],
                 "securityContext": {"privileged": privileged}}]},
            "status": {"phase": "Running"}}


def test_pods_are_captured_without_env_values_and_replayed_against_a_new_set(baselines_dir, tmp_path):
    empty = baselines_dir({"app.yaml": host_baseline("app", "files: []")})
    bset, problems = load_set(empty)
    assert bset is not None, problems
    from driftd.targets.host import HostTarget

    host = HostTarget(make_node(tmp_path / "n"), snapshots=None)  # type: ignore[arg-type]
    doc = capture({"host": host, "kubernetes": FakeKube([pod("ok", privileged=False), pod("bad", privileged=True)])},
                  bset, NodeInfo("node-a"), state={}, now=1_700_000_000.0, version="test")
    text = json.dumps(doc)
    assert SECRET_POD not in text and hashlib.sha256(SECRET_POD.encode()).hexdigest() not in text
    assert "last-applied-configuration" not in text
    env = doc["kubernetes"]["pods"][0]["spec"]["containers"][0]["env"][0]
    assert env["name"] == "PASSWORD" and env["value"].startswith("hmac-sha256:")
    # the NEW set has a pod baseline: the captured pods are compiled and evaluated against it
    (tmp_path / "new").mkdir()
    (tmp_path / "new/pods.yaml").write_text(POD_BASELINE)
    new, problems = load_set(tmp_path / "new")
    assert new is not None, problems
    summary = plan_direct(new, doc, tmp_path / "st")
    got = {o.key: o for o in summary.outcomes}
    assert set(got) == {"pod:app/bad"} and got["pod:app/bad"].actions == ["evict"]
    assert summary.resources == 2


def test_a_new_set_with_containers_over_an_export_without_them_says_so(fleet, tmp_path):
    _, a, _ = fleet
    (tmp_path / "c").mkdir()
    (tmp_path / "c/c.yaml").write_text(
        "apiVersion: driftd.io/v1alpha1\nkind: ContainerBaseline\nmetadata: {name: c}\n"
        "spec:\n  selector: {names: ['*']}\n  images: {approved: ['busybox:1.36']}\n")
    bset, problems = load_set(tmp_path / "c")
    assert bset is not None, problems
    summary = plan_direct(bset, json.loads(a.read_text()), tmp_path / "st")
    assert "not in the captured state of node-a" in summary.targets_down["docker"]
    assert "export with --docker" in summary.targets_down["docker"]


@pytest.mark.real
def test_containers_exported_and_planned_against_the_real_engine(capsys, docker_client, make, image_ids, scope,
                                                                 baselines_dir, tmp_path):
    """A container with a secret env value: the export holds its hash only; a NEW set is planned against it."""
    from test_docker_target import HARDENED, IMAGE_V1, container_baseline

    make("web", environment={"PASSWORD": SECRET_ENV, "MODE": "prod"}, **HARDENED)
    make("root", environment={"PASSWORD": SECRET_ENV})
    root = make_node(tmp_path / "node-a")
    old = baselines_dir({"c.yaml": container_baseline(scope, [image_ids[IMAGE_V1]], runtime={"privileged": False})})
    out = tmp_path / "a.json"
    code = main(["state", "export", "--docker", "--host-root", str(root), "--baselines", str(old), "--state-dir",
                 str(tmp_path / "state"), "--node-name", "node-a", "-o", str(out)])
    capsys.readouterr()
    assert code == 0
    text = out.read_text()
    assert SECRET_ENV not in text and hashlib.sha256(SECRET_ENV.encode()).hexdigest() not in text
    doc = json.loads(text)
    web = {c["summary"]["name"]: c for c in doc["docker"]["containers"]}[f"web-{scope}"]
    env = dict(e.split("=", 1) for e in web["inspect"]["Config"]["Env"])
    assert env["PASSWORD"].startswith("hmac-sha256:") and "Cmd" not in web["inspect"]["Config"]
    assert {r["key"] for r in doc["resources"] if r["target"] == "docker"} >= {f"docker:web-{scope}", f"docker:root-{scope}"}
    # the NEW set: hardened runtime, and PASSWORD must be the secret (the hash tells, the value never travels)
    new = tmp_path / "new"
    new.mkdir()
    runtime = {"user": "1000", "capDrop": ["ALL"], "readOnlyRootFilesystem": True, "noNewPrivileges": True,
               "env": {"PASSWORD": SECRET_ENV}}
    (new / "c.yaml").write_text(container_baseline(scope, [IMAGE_V1], runtime=runtime))
    code, printed = plan_state(capsys, new, out)
    plan = json.loads(printed)
    rows = {r["resource"]: r for r in plan["changes"] if r["target"] == "docker"}
    assert f"web-{scope}" not in rows  # hardened and PASSWORD matches: unchanged
    assert rows[f"root-{scope}"]["actions"] == ["recreate"]
    assert {d["field"] for d in rows[f"root-{scope}"]["drift"]} >= {"user", "readOnlyRootFilesystem"}
    assert SECRET_ENV not in printed
