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
from driftd.core import kinds
from driftd.models.baseline import HostBaseline
from driftd.models.resources import DesiredResource

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


class DemoTree:
    """The kind handlers' ``DemoFS`` over the demo host tree (parents created as needed)."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def _p(self, path: str) -> Path:
        return self.root / path.lstrip("/")

    def write(self, path: str, data: bytes, mode: int) -> None:
        p = self._p(path)
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
        os.chmod(p, mode)

    def append(self, path: str, data: bytes) -> None:
        self._p(path).parent.mkdir(parents=True, exist_ok=True)
        with self._p(path).open("ab") as fh:
            fh.write(data)

    def chmod(self, path: str, mode: int) -> None:
        os.chmod(self._p(path), mode)

    def unlink(self, path: str) -> None:
        self._p(path).unlink()

    def mkdir(self, path: str, mode: int) -> None:
        self._p(path).mkdir(parents=True, exist_ok=True)
        os.chmod(self._p(path), mode)


def build_tree(root: Path, desired: list[DesiredResource]) -> None:
    """A compliant host tree for ``desired`` resources (each kind's handler seeds its own)."""
    tree = DemoTree(root)
    for r in desired:  # compiled order: directories (parents first) before files
        kinds.handler_for(r.target, r.kind).seed(tree, r)


def run_demo(workdir: Path, baselines: Path | None = None) -> int:
    from driftd.baselines.loader import load_set
    from driftd.engine.once import run_once
    from driftd.observability.logging import configure_logging
    from driftd.presentation.render import show_pass
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
        for _field, _index, rule in b.spec.rules():
            if isinstance(owner := getattr(rule, "owner", None), str):
                names.add(owner)
            if isinstance(group := getattr(rule, "group", None), str):
                groups.add(group)
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
    build_tree(host, desired)

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
    show_pass(first, rt.engine)
    rewritten = [o for o in first.outcomes if "write_file" in o.actions and o.snapshots]
    snap = next((s for o in rewritten + first.outcomes for s in o.snapshots), None)
    if snap:
        print(f"\nthe drifted bytes were kept before the revert: driftd snapshot {snap} --state-dir {state}")
    print("\nsecond pass (idempotence: nothing left to do):")
    second = run_once(rt.engine, rt.queue, attempts=settings.retry.attempts_per_pass)
    show_pass(second, rt.engine)
    rt.state.close()
    return second.exit_code


def inject_drift(host: Path, desired: list[DesiredResource]) -> list[str]:
    """One drift of each variety the baselines allow (each kind's handler says how); returns what was done."""
    tree = DemoTree(host)
    done: list[str] = []
    varieties: set[str] = set()
    for r in desired:
        line = kinds.handler_for(r.target, r.kind).inject(tree, r, varieties)
        if line is not None:
            done.append(line)
    return done
