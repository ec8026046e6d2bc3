"""``driftd plan``: what a baseline set would do on this host, through run's pipeline and gates, acting on nothing."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from conftest import host_baseline

from driftd.cli import main


def tree_state(root: Path) -> dict[str, tuple[int, int, float, bytes]]:
    """Every file below ``root``: mode, size, mtime and bytes (a plan must leave all of them as they were)."""
    out = {}
    for dirpath, _, names in os.walk(root):
        for n in names:
            p = Path(dirpath) / n
            st = p.lstat()
            out[str(p.relative_to(root))] = (st.st_mode, st.st_size, st.st_mtime, p.read_bytes())
    return out


def state_bytes(state: Path) -> dict[str, bytes]:
    """The state directory's files by content (SQLite's shared-memory index is a reader's bookkeeping, not state)."""
    return {str(p.relative_to(state)): p.read_bytes() for p in state.rglob("*") if p.is_file() and not p.name.endswith("-shm")}


def files_spec(n: int) -> str:
    return "files:\n" + "".join(f'  - {{path: /etc/app/{i:02d}.conf, content: "v{i}\\n", mode: "0644"}}\n' for i in range(n))


@pytest.fixture
def app(host_root: Path) -> Path:
    """/etc/app with 6 files: 0-2 drifted in content, 3 in mode, 4-5 in sync."""
    d = host_root / "etc/app"
    d.mkdir()
    for i in range(6):
        p = d / f"{i:02d}.conf"
        p.write_text(f"v{i}\n" if i >= 3 else "tampered\n")
        p.chmod(0o600 if i == 3 else 0o644)
    return d


def plan(capsys, host_root: Path, baselines: Path, state: Path, *extra: str) -> tuple[int, str]:
    code = main(["plan", "--host-root", str(host_root), "--baselines", str(baselines), "--state-dir", str(state),
                 "--node-name", "node-a", *extra])
    return code, capsys.readouterr().out


def test_a_plan_lists_what_run_would_do_and_changes_nothing(capsys, host_root, baselines_dir, app, tmp_path):
    bdir = baselines_dir({"app.yaml": host_baseline("app", files_spec(6))})
    state = tmp_path / "state"
    # the agent has run before: its state has an open drift record (first seen earlier) and its own files
    assert main(["run", "--once", "--dry-run", "--host-root", str(host_root), "--baselines", str(bdir),
                 "--state-dir", str(state), "--node-name", "node-a"]) == 3
    capsys.readouterr()
    before_host, before_state = tree_state(host_root), state_bytes(state)
    code, out = plan(capsys, host_root, bdir, state)
    assert code == 3
    assert "~ /etc/app/03.conf" in out and "mode: 0600 → 0644" in out  # live value first, then the baseline's
    assert out.count("would write_file") == 3 and out.count("would chmod") == 1
    assert out.splitlines()[-1] == "plan: 4 would change, 0 held, 0 report only, 2 unchanged (actions: chmod 1, write_file 3)"
    assert tree_state(host_root) == before_host  # dry-run never mutates: not one byte, mode or mtime
    assert state_bytes(state) == before_state  # the agent's state, snapshots and audit log untouched
    # once reverted for real, the plan finds nothing to do (exit 0)
    assert main(["run", "--once", "--host-root", str(host_root), "--baselines", str(bdir), "--state-dir", str(state),
                 "--node-name", "node-a"]) == 0
    capsys.readouterr()
    code, out = plan(capsys, host_root, bdir, state)
    assert code == 0 and out.splitlines()[-1].startswith("plan: 0 would change, 0 held, 0 report only, 6 unchanged")


def test_gates_show_as_held_budgets_counting_the_plans_before(capsys, host_root, baselines_dir, app, tmp_path):
    """A revert budget of 2 per node: the first two plans would act, the others are held by the budget."""
    cfg = tmp_path / "driftd.yaml"
    cfg.write_text("safety:\n  budget:\n    reverts_per_node: 2\n  breaker:\n    share: 1.0\n")
    bdir = baselines_dir({"app.yaml": host_baseline("app", files_spec(6))})
    code, out = plan(capsys, host_root, bdir, tmp_path / "state", "--config", str(cfg), "-o", "json")
    doc = json.loads(out)
    assert code == 3
    assert doc["summary"]["by_outcome"] == {"change": 2, "held": 2, "report": 0, "blocked": 0, "failed": 0, "error": 0,
                                            "retired": 0}
    assert doc["summary"]["held_by_gate"] == {"budget": 2}
    held = [r for r in doc["changes"] if r["outcome"] == "held"]
    assert all(r["would"].startswith("held: budget:") and r["actions"] == [] for r in held)


def test_break_glass_and_warn_baselines_show_as_they_would_in_run(capsys, host_root, baselines_dir, app, tmp_path):
    state = tmp_path / "state"
    bdir = baselines_dir({
        "app.yaml": host_baseline("app", files_spec(3)),
        "motd.yaml": host_baseline("motd", 'files:\n  - {path: /etc/motd, content: "hi\\n"}\n', enforcement="warn"),
    })
    (host_root / "etc/motd").write_text("changed\n")
    assert main(["pause", "--state-dir", str(state), "--key", "host:file:/etc/app/01.conf", "--reason", "INC-7",
                 "--ttl", "1h", "--by", "sre"]) == 0
    capsys.readouterr()
    code, out = plan(capsys, host_root, bdir, state, "-o", "json")
    rows = {r["resource"]: r for r in json.loads(out)["changes"]}
    assert rows["/etc/app/01.conf"]["outcome"] == "held" and rows["/etc/app/01.conf"]["would"].startswith("held: break-glass")
    assert rows["/etc/motd"]["would"] == "report only (warn)"
    assert rows["/etc/app/00.conf"]["would"] == "would write_file"
    assert code == 3


def test_markdown_is_bounded_for_a_pull_request_comment(capsys, host_root, baselines_dir, tmp_path):
    d = host_root / "etc/app"
    d.mkdir()
    for i in range(12):
        (d / f"{i:02d}.conf").write_text("tampered\n")
    bdir = baselines_dir({"app.yaml": host_baseline("app", files_spec(12))})
    code, out = plan(capsys, host_root, bdir, tmp_path / "state", "-o", "markdown", "--max-rows", "5")
    table = [ln for ln in out.splitlines() if ln.startswith("| node-a |")]
    assert code == 3 and len(table) == 5
    assert "… and 7 more (`driftd plan -o json` lists every one)." in out
    assert out.startswith("### driftd plan — baseline set `")


def test_an_invalid_set_is_no_plan(capsys, host_root, baselines_dir, tmp_path):
    bdir = baselines_dir({"bad.yaml": host_baseline("bad", "files:\n  - {path: /etc/x, mdoe: '0644'}\n")})
    code = main(["plan", "--host-root", str(host_root), "--baselines", str(bdir), "--state-dir", str(tmp_path / "s")])
    err = capsys.readouterr().err
    assert code == 1 and "bad.yaml:" in err and "mdoe" in err
