"""``driftd demo``: the embedded default run of driftd's main job, no cluster and no root.

Builds a host tree from the example baselines (files, directories, a fake
``/proc/sys``, and ``etc/passwd``/``etc/group`` that the baselines' owner names resolve
against), injects drift of every kind, runs one enforcing pass, shows the result and
one snapshot, then runs a second pass to show that nothing is left to do.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import driftd
from driftd.models.baseline import HostBaseline
from driftd.models.keys import sysctl_path

MARKER = ".driftd-demo"


def examples_dir() -> Path:
    """The shipped example baselines: inside the wheel, or the repository's ``baselines/``."""
    here = Path(driftd.__file__).resolve().parent
    for candidate in (here / "_examples", here.parent / "baselines"):
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError("example baselines not found")


def _ids_text(names: set[str], ident: int, fmt: str) -> str:
    lines = [fmt.format(name=n, id=ident) for n in sorted(names)]
    return "\n".join(lines) + "\n"


def build_tree(root: Path, desired: list, uid: int, gid: int) -> None:  # type: ignore[type-arg]
    """A compliant host tree for ``desired`` resources (owner names mapped to uid/gid)."""
    for r in desired:
        if r.kind == "directory":
            (root / r.address.lstrip("/")).mkdir(parents=True, exist_ok=True)
            os.chmod(root / r.address.lstrip("/"), int(r.expected.get("mode", "0755"), 8))
    for r in desired:
        p = root / r.address.lstrip("/")
        if r.kind == "file" and r.expected.get("present"):
            p.parent.mkdir(parents=True, exist_ok=True)
            if r.content is not None:
                p.write_bytes(r.content)
            elif not p.exists():
                p.write_text(f"# placeholder for {r.address}\n")
            os.chmod(p, int(r.expected.get("mode", "0644"), 8))
        elif r.kind == "sysctl":
            sp = root / sysctl_path(r.address).lstrip("/")
            sp.parent.mkdir(parents=True, exist_ok=True)
            sp.write_text(r.expected["value"] + "\n")


def run_demo(workdir: Path, baselines: Path | None = None) -> int:
    from driftd.baselines.loader import load_set
    from driftd.engine.once import render_text, run_once
    from driftd.observability.logging import configure_logging
    from driftd.runtime import build_runtime
    from driftd.settings import load_settings

    baselines = baselines or examples_dir()
    bset, problems = load_set(baselines)
    if bset is None:
        print("\n".join(str(p) for p in problems), file=sys.stderr)
        return 1
    if workdir.exists():
        if not (workdir / MARKER).exists():
            print(f"driftd demo: {workdir} exists and is not a demo folder; choose another --dir", file=sys.stderr)
            return 2
        shutil.rmtree(workdir)
    host, state = workdir / "host", workdir / "state"
    (host / "etc").mkdir(parents=True)
    (workdir / MARKER).write_text("driftd demo folder; safe to delete\n")
    uid, gid = os.getuid(), os.getgid()
    names: set[str] = {"root"}
    groups: set[str] = {"root"}
    for b in bset.baselines:
        if not isinstance(b, HostBaseline):
            continue
        for e in [*b.spec.files, *b.spec.directories]:
            if isinstance(e.owner, str):
                names.add(e.owner)
            if isinstance(e.group, str):
                groups.add(e.group)
    # The baselines' user and group names resolve against the host tree's own databases.
    # Without root, map them to the demo user so driftd can apply ownership for real.
    (host / "etc/passwd").write_text(_ids_text(names, uid, "{name}:x:{id}:{id}::/nonexistent:/usr/sbin/nologin"))
    (host / "etc/group").write_text(_ids_text(groups, gid, "{name}:x:{id}:"))
    (host / "etc/hostname").write_text("demo-node\n")

    configure_logging("console", "error")
    settings = load_settings(host_root=host, baselines=baselines, state_dir=state, node_name="demo-node")
    rt = build_runtime(settings)
    rt.engine.set_baselines(bset)
    desired = list(rt.engine.desired.values())
    build_tree(host, desired, uid, gid)

    print(
        f"driftd demo: host tree {host} built from {len(bset.baselines)} example baselines "
        f"in {baselines} ({len(desired)} resources)"
    )
    if uid != 0:
        print(f"  (not root: the tree's etc/passwd maps {', '.join(sorted(names))} to uid {uid})")
    print("injecting drift:")
    for line in inject_drift(host, desired):
        print("  - " + line)
    print()
    first = run_once(rt.engine, rt.queue, attempts=settings.retry.attempts_per_pass)
    print(render_text(first))
    rewritten = [o for o in first.outcomes if "write_file" in o.actions and o.snapshots]
    snap = next((s for o in rewritten + first.outcomes for s in o.snapshots), None)
    if snap:
        print(f"\nthe drifted bytes were kept before the revert: driftd snapshot {snap} --state-dir {state}")
    print("\nsecond pass (idempotence: nothing left to do):")
    second = run_once(rt.engine, rt.queue, attempts=settings.retry.attempts_per_pass)
    print(render_text(second))
    rt.state.close()
    return second.exit_code


def inject_drift(host: Path, desired: list) -> list[str]:  # type: ignore[type-arg]
    """One drift of each kind the baselines allow; returns what was done."""
    done: list[str] = []
    kinds_done: set[str] = set()

    def p(addr: str) -> Path:
        return host / addr.lstrip("/")

    for r in desired:
        e = r.expected
        if r.kind == "file" and "content" in e and "content" not in kinds_done:
            with p(r.address).open("a") as fh:
                fh.write("PermitRootLogin yes\n")
            kinds_done.add("content")
            done.append(f"{r.address}: appended 'PermitRootLogin yes' (content drift)")
        elif r.kind == "file" and "content" in e and "missing" not in kinds_done:
            p(r.address).unlink()
            kinds_done.add("missing")
            done.append(f"{r.address}: deleted (missing file)")
        elif r.kind == "file" and e.get("present") and "mode" in e and "mode" not in kinds_done:
            os.chmod(p(r.address), 0o666)  # noqa: S103 - injected drift
            kinds_done.add("mode")
            done.append(f"{r.address}: chmod 0666 (mode drift{', sensitive file' if r.sensitive else ''})")
        elif r.kind == "file" and e.get("present") is False and "absent" not in kinds_done:
            p(r.address).parent.mkdir(parents=True, exist_ok=True)
            p(r.address).write_text("+ +\n")
            kinds_done.add("absent")
            done.append(f"{r.address}: created (must be absent)")
        elif r.kind == "directory" and "dir" not in kinds_done:
            os.chmod(p(r.address), 0o777)  # noqa: S103 - injected drift
            kinds_done.add("dir")
            done.append(f"{r.address}/: chmod 0777 (directory mode drift)")
        elif r.kind == "sysctl" and "sysctl" not in kinds_done:
            sp = host / sysctl_path(r.address).lstrip("/")
            wrong = "1" if r.expected["value"] == "0" else "0"
            sp.write_text(wrong + "\n")
            kinds_done.add("sysctl")
            done.append(f"sysctl {r.address} = {wrong} (expected {r.expected['value']})")
    return done
