"""Side-by-side benchmark of driftd and CFEngine (``cf-agent``) on the same file workload.

Usage::

    apt-get install -y cfengine3                       # Debian's CFEngine Core (cf-agent, cf-promises, cf-key)
    .venv/bin/python bench/bench_vs_cfengine.py        # full run: N = 0,1,100,1000,5000,10000 + nested 1000,10000
    .venv/bin/python bench/bench_vs_cfengine.py --sizes 0,1000 --nested-sizes "" --repeat 1   # a quick look
    .venv/bin/python bench/bench_vs_cfengine.py --rev HEAD   # benchmark a committed revision, not the work tree
    .venv/bin/python bench/bench_vs_cfengine.py --render bench/results/vs-cfengine.json --notes notes.md
                                                       # rewrite the .md (and its notes) from the raw JSON

A full run takes ~13 minutes on 2 CPUs (most of it N = 10,000 in both layouts); the notes of
the committed report (where the time goes, oddities) are kept in the JSON and re-applied with
``--render ... --notes``.

Workload (the same bytes for both tools, each tool on its own copy of the tree):

* ``flat``: N files of 335 bytes in one directory, ``<host-root>/etc/app/NNNN.conf``;
  ``nested``: the ``bench_host.py`` layout, 100 files per directory,
  ``<host-root>/srv/bench/dNNNN/fNNNNNN.conf``.
* Desired state: mode 0644 and the content of one source file per managed file
  (``<baselines>/files/...``, beside the baseline YAML).  Owner and group are not governed.
* Drift: the content of 10 % of the files (ceil) is changed and another 5 % get mode
  0600; the files are drawn with a fixed seed (``random.Random(1109)``), the same set for
  both tools; the drifted bytes differ per round.

driftd: one ``HostBaseline`` (``<baselines>/app.yaml``, ``enforcement: enforce``) with one
``files:`` entry per file (``path``, ``source: files/...``, ``mode: "0644"``); N=0 is an
empty baselines directory.  Commands (``driftd`` is ``python -m driftd`` of a venv holding only the
runtime lock, ``requirements.lock``, as the image does; ``--python`` picks another interpreter)::

    check:   driftd run --once --config C --host-root H --baselines B --state-dir S --node-name bench --dry-run
    enforce: driftd run --once --config C --host-root H --baselines B --state-dir S --node-name bench

``--dry-run`` is the check a user runs ad hoc without editing the baseline to ``warn``.  The
state directory ``S`` is kept across all runs of one cell (check and enforce, warm-up and
repeats), as a node agent keeps ``/var/lib/driftd`` between periodic ``run --once`` calls.
``C`` (``DRIFTD_CONFIG`` below) only lifts the revert budgets and the flap gate: 1,500 reverts
of the same files per run, four runs in a few minutes, would otherwise be held by them (by
design); the gates are still evaluated for every action.

CFEngine: a standalone policy ``promises.cf``, what a user writes for "these files, from
these sources, mode 644" (N=0: the control body and an empty bundle)::

    body common control { bundlesequence => { "bench" }; }
    bundle agent bench
    {
      vars:
          "src"   string => "<baselines>/files";
          "dst"   string => "<host-root>/etc/app";
          "names" slist  => { "0000.conf", "0001.conf", ... };    # one literal per file
      files:
          "$(dst)/$(names)"
            copy_from => digest_cp("$(src)/$(names)"),
            perms     => m("644");
    }
    # digest_cp and m as in the masterfiles standard library (lib/files.cf), inlined so the
    # agent does not parse the whole stdlib (which only makes CFEngine slower):
    body copy_from digest_cp(from) { source => "$(from)"; compare => "digest"; }
    body perms m(mode)             { mode => "$(mode)"; rxdirs => "false"; }

Commands, each with a private work directory ``W`` (``--workdir``; ``W/bin`` links to
``/usr/bin`` so the agent finds ``cf-promises`` for its pre-validation, and ``cf-key``
made ``W/ppkeys``; ``/var/lib/cfengine3`` is never used)::

    check:   cf-agent --workdir=W -KIf promises.cf --dry-run     # -n: "all talk and no action"
    enforce: cf-agent --workdir=W -KIf promises.cf

``W`` is kept across the runs of a cell, like the agent's ``/var/lib/cfengine3``.
At ``--recursive-sizes`` (flat layout) a second CFEngine form is measured as a supplement:
one promise ``"$(dst)/."`` with ``copy_from => digest_cp("$(src)/.")``, ``depth_search =>
recurse("inf")`` and the same ``perms``, which copies a whole source directory (it only fits a
directory that holds managed files only, and it is several times faster than a promise per
listed file, which stays the comparison the ratios and targets use).
CFEngine's default ``copy_backup`` leaves ``NNNN.conf.cfsaved`` beside each reverted file
(driftd keeps its snapshot in the state directory); that is left as a user gets it.

What is measured, per (layout, N, mode, tool): the whole process as a subprocess: wall time
(``time.perf_counter`` around spawn .. ``os.wait4``) and peak RSS (``ru_maxrss`` from
``os.wait4``, which covers the child and the children it waited for, e.g. ``cf-promises``),
plus user/sys CPU.  The commands are spawned by a small helper process (``SPAWNER``), since a
child's ``ru_maxrss`` starts from the RSS of the process it was forked from.  One unmeasured warm-up run per mode, then ``--repeat`` (default 3)
measured runs, median reported; the two tools' runs are interleaved (alternating order) so
a change of machine load hits both.  check: runs on a drifted tree, which must be unchanged
afterwards (content, mode, mtime, directory listings) and each tool must report exactly the
drifted files.  enforce: before every run (untimed) the drift is re-created; afterwards
every managed file must be a regular file with mode 0644 and the source's bytes, and each
tool must report exactly the drifted files as repaired.  Anything else stops the benchmark
with an error.  driftd's modules are byte-compiled first, as a pip install leaves them.

Results: ``bench/results/vs-cfengine.json`` (raw samples) and ``vs-cfengine.md`` (tables,
ratios driftd / CFEngine, targets); ``--out``/``--name`` change where.  Targets (issue 11):
wall ratio <= 1.0 at N = 1,000, 5,000, 10,000 and <= 2.0 at N = 0 and 1, both modes; driftd
peak RSS <= 60 MiB at N = 10,000.  The exit code is 0 when every target is met, 1 when one
is not, and the benchmark fails loudly (exit 2) when a run did not do its job.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import platform
import random
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))
from _common import run_stats  # noqa: E402  (beside this file)

VENV_BIN = Path(sys.executable).parent
DRIFTD_PY: Path = VENV_BIN / "python"  # replaced in main() by the runtime venv's python (see runtime_venv)
CF_AGENT = shutil.which("cf-agent") or "/usr/bin/cf-agent"
CF_KEY = shutil.which("cf-key") or "/usr/sbin/cf-key"
CF_PROMISES = shutil.which("cf-promises") or "/usr/bin/cf-promises"

SEED = 1109
FILE_BYTES = 335
FILES_PER_DIR = 100
CONTENT_DRIFT = 0.10
MODE_DRIFT = 0.05
DEFAULT_SIZES = "0,1,100,1000,5000,10000"
DEFAULT_NESTED = "1000,10000"
DEFAULT_RECURSIVE = "1000,10000"
RATIO_TARGETS = {0: 2.0, 1: 2.0, 1000: 1.0, 5000: 1.0, 10000: 1.0}
RSS_TARGET_MIB = 60.0
RSS_TARGET_N = 10000
MODES = ("check", "enforce")
# The benchmark reverts 15 % of N files per run, 4 runs (warm-up + 3) in a few minutes, the same
# files each time: far over driftd's default revert budgets (1,000 per baseline, 2,000 per node
# per hour) and, from the 5th revert of a file, its flap gate.  Those gates exist to stop a
# runaway; here they would stop the work being measured, so this config lifts them (they are
# still evaluated on every action).  Nothing else differs from the defaults.
DRIFTD_CONFIG = """\
safety:
  budget:
    reverts_per_node: 1000000
    reverts_per_baseline: 1000000
  flap:
    reverts: 1000
"""
TOOLS = ("driftd", "cfengine")


class BenchError(SystemExit):
    """A run did not do its job: the numbers would mean nothing."""

    def __init__(self, msg: str) -> None:
        print(f"\nBENCHMARK FAILED: {msg}", file=sys.stderr)
        super().__init__(2)


# --------------------------------------------------------------------------- fixture


def rel_path(layout: str, i: int) -> str:
    """Managed path relative to the host root (and to the sources directory)."""
    if layout == "flat":
        return f"etc/app/{i:04d}.conf"
    return f"srv/bench/d{i // FILES_PER_DIR:04d}/f{i:06d}.conf"


def src_rel(layout: str, i: int) -> str:
    """Source file relative to ``<baselines>/files``."""
    if layout == "flat":
        return f"{i:04d}.conf"
    return f"d{i // FILES_PER_DIR:04d}/f{i:06d}.conf"


def content(i: int, drift_round: int | None = None) -> bytes:
    """335 bytes of an ini-style config; a drifted copy changes one setting."""
    level = "info" if drift_round is None else f"debug-drift-r{drift_round:03d}"
    lines = [
        f"# /etc/app/{i:04d}.conf - managed configuration, do not edit by hand",
        f"[service_{i}]",
        f"name = app-{i:05d}",
        f"listen = 127.0.0.1:{8000 + i % 1000}",
        f"workers = {1 + i % 16}",
        f"timeout_ms = {100 * (1 + i % 50)}",
        f"log_level = {level}",
        f"cache_dir = /var/cache/app/{i:05d}",
        "tls = true",
        f"peers = node-{i % 7}.example.internal, node-{(i + 1) % 7}.example.internal",
    ]
    body = "\n".join(lines) + "\n"
    if drift_round is None:
        pad = FILE_BYTES - len(body.encode()) - 3  # "# " + pad + "\n"
        assert pad >= 0, pad
        body += "# " + "-" * pad + "\n"
        assert len(body.encode()) == FILE_BYTES
    return body.encode()


@dataclass
class Fixture:
    layout: str
    n: int
    root: Path
    bdir: Path  # driftd baselines (+ files/, the sources both tools use)
    sources: dict[str, bytes] = field(default_factory=dict)  # rel_path -> desired bytes
    content_drift: list[int] = field(default_factory=list)
    mode_drift: list[int] = field(default_factory=list)

    @property
    def paths(self) -> list[str]:
        return [rel_path(self.layout, i) for i in range(self.n)]

    @property
    def dirs(self) -> list[str]:
        return sorted({os.path.dirname(p) for p in self.paths})

    def drifted(self, prefix: str = "/") -> tuple[set[str], set[str]]:
        return (
            {prefix + rel_path(self.layout, i) for i in self.content_drift},
            {prefix + rel_path(self.layout, i) for i in self.mode_drift},
        )


def drift_sets(n: int) -> tuple[list[int], list[int]]:
    n_content = math.ceil(CONTENT_DRIFT * n)
    n_mode = min(math.ceil(MODE_DRIFT * n), n - n_content)
    picks = random.Random(SEED).sample(range(n), n_content + n_mode)
    return sorted(picks[:n_content]), sorted(picks[n_content:])


def build_fixture(root: Path, layout: str, n: int) -> Fixture:
    bdir = root / "baselines"
    files = bdir / "files"
    files.mkdir(parents=True)
    fx = Fixture(layout, n, root, bdir)
    fx.content_drift, fx.mode_drift = drift_sets(n)
    for i in range(n):
        data = content(i)
        p = files / src_rel(layout, i)
        if layout != "flat" and i % FILES_PER_DIR == 0:
            p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
        fx.sources[rel_path(layout, i)] = data
    if n:
        lines = [
            "apiVersion: driftd.io/v1alpha1",
            "kind: HostBaseline",
            "metadata:",
            "  name: app",
            "spec:",
            "  enforcement: enforce",
            "  window: 30m",
            "  files:",
        ]
        for i in range(n):
            lines += [
                f"    - path: /{rel_path(layout, i)}",
                f"      source: files/{src_rel(layout, i)}",
                '      mode: "0644"',
            ]
        (bdir / "app.yaml").write_text("\n".join(lines) + "\n")
    return fx


def cf_policy(fx: Fixture, host: Path, form: str = "slist") -> str:
    """The CFEngine policy for the tree at ``host``.

    ``slist``: one ``files`` promise iterated over a literal list of every file name (as the
    baseline lists every file).  ``recursive``: one promise copying the whole source
    directory (``depth_search``), which only fits when a directory holds managed files only.
    """
    head = 'body common control\n{\n  bundlesequence => { "bench" };\n}\n\n'
    if fx.n == 0:
        return head + "bundle agent bench\n{\n}\n"
    dst = f"{host}/etc/app" if fx.layout == "flat" else f"{host}/srv/bench"
    bodies = (
        "# as in the masterfiles standard library (lib/files.cf)\n"
        "body copy_from digest_cp(from)\n{\n"
        '      source => "$(from)";\n'
        '      compare => "digest";\n'
        "}\n\n"
        "body perms m(mode)\n{\n"
        '      mode => "$(mode)";\n'
        '      rxdirs => "false";\n'
        "}\n"
    )
    if form == "recursive":
        return (
            head
            + "bundle agent bench\n{\n  files:\n"
            + f'      "{dst}/."\n'
            + f'        copy_from => digest_cp("{fx.bdir / "files"}/."),\n'
            + '        depth_search => recurse("inf"),\n'
            + '        perms => m("644");\n'
            + "}\n\n"
            + bodies
            + "\nbody depth_search recurse(d)\n{\n"
            + '      depth => "$(d)";\n'
            + '      xdev => "true";\n'
            + "}\n"
        )
    names = ",\n".join(f'        "{src_rel(fx.layout, i)}"' for i in range(fx.n))
    return (
        head
        + "bundle agent bench\n{\n  vars:\n"
        + f'      "src" string => "{fx.bdir / "files"}";\n'
        + f'      "dst" string => "{dst}";\n'
        + f'      "names" slist => {{\n{names}\n      }};\n\n'
        + "  files:\n"
        + '      "$(dst)/$(names)"\n'
        + '        copy_from => digest_cp("$(src)/$(names)"),\n'
        + '        perms => m("644");\n'
        + "}\n\n"
        + bodies
    )


def build_tree(fx: Fixture, host: Path) -> None:
    """A compliant host tree for ``fx`` at ``host``."""
    (host / "etc").mkdir(parents=True)
    (host / "etc/app").mkdir()
    for d in fx.dirs:
        (host / d).mkdir(parents=True, exist_ok=True)
    for p, data in fx.sources.items():
        (host / p).write_bytes(data)
        os.chmod(host / p, 0o644)


def inject_drift(fx: Fixture, host: Path, drift_round: int) -> None:
    for i in fx.content_drift:
        p = host / rel_path(fx.layout, i)
        p.write_bytes(content(i, drift_round))
        os.chmod(p, 0o644)
    for i in fx.mode_drift:
        os.chmod(host / rel_path(fx.layout, i), 0o600)


def tree_state(fx: Fixture, host: Path) -> dict[str, Any]:
    """What check mode must leave alone: each managed file's bytes, mode, mtime; directory listings."""
    files = {}
    for p in fx.paths:
        st = os.lstat(host / p)
        files[p] = (st.st_mode, st.st_mtime_ns, st.st_size, hashlib.sha256((host / p).read_bytes()).hexdigest())
    listings = {d: sorted(os.listdir(host / d)) for d in fx.dirs}
    return {"files": files, "listings": listings}


def verify_compliant(fx: Fixture, host: Path, what: str) -> None:
    bad = []
    for p, data in fx.sources.items():
        st = os.lstat(host / p)
        if not (st.st_mode & 0o170000 == 0o100000 and st.st_mode & 0o7777 == 0o644 and (host / p).read_bytes() == data):
            bad.append(f"{p} (mode {oct(st.st_mode)}, {st.st_size} bytes)")
    if bad:
        raise BenchError(f"{what}: {len(bad)} of {fx.n} files do not match the baseline after enforce, e.g. {bad[:5]}")


# --------------------------------------------------------------------------- the tools


# Every measured command is started by this small helper process, not by the benchmark itself:
# on Linux a child's ru_maxrss starts from the address space it was forked from (the high-water
# mark survives exec), so a child of this benchmark, which holds the trees' state, would report
# at least the benchmark's own RSS.  The helper stays at ~10 MiB (meta.rss_floor_mib: what
# /bin/true reports through it), far below anything measured.
SPAWNER = r"""
import json, os, subprocess, sys, time
for line in sys.stdin:
    req = json.loads(line)
    with open(req["out"], "wb") as fout, open(req["err"], "wb") as ferr:
        started = time.perf_counter()
        proc = subprocess.Popen(req["cmd"], stdout=fout, stderr=ferr, env=req["env"], cwd=req["cwd"])
        _, status, ru = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - started
    res = {"wall_s": wall, "user_s": ru.ru_utime, "sys_s": ru.ru_stime, "maxrss_kib": ru.ru_maxrss,
           "rc": os.waitstatus_to_exitcode(status)}
    sys.stdout.write(json.dumps(res) + "\n")
    sys.stdout.flush()
"""


class Spawner:
    """Runs commands in the helper process above and returns what ``os.wait4`` said of each."""

    _proc: subprocess.Popen[str] | None = None

    @classmethod
    def start(cls) -> None:
        if cls._proc is None:
            cls._proc = subprocess.Popen(
                [sys.executable, "-I", "-S", "-c", SPAWNER], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
            )

    @classmethod
    def stop(cls) -> None:
        if cls._proc is not None:
            assert cls._proc.stdin is not None
            cls._proc.stdin.close()
            cls._proc.wait(timeout=30)
            cls._proc = None

    @classmethod
    def run(cls, cmd: list[str], env: dict[str, str], cwd: Path | None, out: Path, err: Path) -> dict[str, Any]:
        cls.start()
        assert cls._proc is not None and cls._proc.stdin is not None and cls._proc.stdout is not None
        req = {"cmd": cmd, "env": env, "cwd": str(cwd) if cwd else None, "out": str(out), "err": str(err)}
        cls._proc.stdin.write(json.dumps(req) + "\n")
        cls._proc.stdin.flush()
        line = cls._proc.stdout.readline()
        if not line:
            raise BenchError(f"the spawner process died running {cmd}")
        return json.loads(line)


def run_child(cmd: list[str], *, env: dict[str, str] | None = None, cwd: Path | None = None) -> dict[str, Any]:
    """Run ``cmd``; wall time, user/sys CPU and peak RSS of that child (``os.wait4`` in the spawner)."""
    # output to files, not pipes: a chatty child never blocks and nothing else runs meanwhile
    with tempfile.TemporaryDirectory(prefix="bench-run-") as tmp:
        out, err = Path(tmp) / "stdout", Path(tmp) / "stderr"
        r = Spawner.run(cmd, dict(os.environ) if env is None else env, cwd, out, err)
        stdout, stderr = out.read_bytes().decode(errors="replace"), err.read_bytes().decode(errors="replace")
    return {
        "wall_s": r["wall_s"],
        "user_s": r["user_s"],
        "sys_s": r["sys_s"],
        "maxrss_mib": r["maxrss_kib"] / 1024,  # KiB on Linux
        "rc": r["rc"],
        "stdout": stdout,
        "stderr": stderr,
    }


def _tail(r: dict[str, Any], n: int = 1500) -> str:
    return f"rc={r['rc']}\n--- stdout\n{r['stdout'][-n:]}\n--- stderr\n{r['stderr'][-n:]}"


class Driftd:
    name = "driftd"

    def __init__(self, fx: Fixture, cell: Path, env: dict[str, str]) -> None:
        self.fx, self.env = fx, env
        self.host, self.state, self.config = cell / "host", cell / "state", cell / "driftd.yaml"
        build_tree(fx, self.host)
        self.config.write_text(DRIFTD_CONFIG)

    def cmd(self, mode: str) -> list[str]:
        c = [
            str(DRIFTD_PY),
            "-m",
            "driftd",
            "run",
            "--once",
            "--config",
            str(self.config),
            "--host-root",
            str(self.host),
            "--baselines",
            str(self.fx.bdir),
            "--state-dir",
            str(self.state),
            "--node-name",
            "bench",
        ]
        return c + (["--dry-run"] if mode == "check" else [])

    def run(self, mode: str) -> dict[str, Any]:
        return run_child(self.cmd(mode), env=self.env)

    def _reported(self, r: dict[str, Any], status: str) -> set[str]:
        found = set()
        for line in r["stdout"].splitlines():
            m = re.match(rf"\s+{status}\s+(/\S+)\s+\[", line)
            if m:
                found.add(m.group(1))
        return found

    def verify(self, mode: str, r: dict[str, Any], what: str) -> None:
        fx = self.fx
        content_set, mode_set = fx.drifted()
        drifted = content_set | mode_set
        m = re.search(r"result: (\d+) clean, (\d+) remediated, (\d+) reported", r["stdout"])
        if m is None:
            raise BenchError(f"{what}: no driftd summary\n{_tail(r)}")
        clean, remediated, reported = map(int, m.groups())
        if mode == "check":
            want_rc = 3 if drifted else 0
            got = self._reported(r, "drift")
            ok = r["rc"] == want_rc and reported == len(drifted) and remediated == 0 and got == drifted
        else:
            got = self._reported(r, "fixed")
            ok = r["rc"] == 0 and remediated == len(drifted) and reported == 0 and got == drifted
        if not ok or clean != fx.n - len(drifted):
            raise BenchError(
                f"{what}: driftd did not report exactly the {len(drifted)} drifted files "
                f"(clean {clean}, remediated {remediated}, reported {reported}, listed {len(got)})\n{_tail(r)}"
            )


class CFEngine:
    def __init__(self, fx: Fixture, cell: Path, env: dict[str, str], form: str = "slist") -> None:
        self.fx, self.env, self.form = fx, env, form
        self.name = "cfengine" if form == "slist" else f"cfengine-{form}"
        self.host, self.workdir = cell / "host", cell / "workdir"
        build_tree(fx, self.host)
        self.policy = cell / "promises.cf"
        self.policy.write_text(cf_policy(fx, self.host, form))
        self.policy.chmod(0o600)
        self.workdir.mkdir(mode=0o700)
        # cf-agent pre-validates the policy with <workdir>/bin/cf-promises; only that one is linked, so a
        # policy that fails validation cannot make the built-in failsafe policy start <workdir>/bin/cf-serverd
        (self.workdir / "bin").mkdir()
        (self.workdir / "bin" / "cf-promises").symlink_to(CF_PROMISES)
        r = run_child([CF_KEY], env={**env, "CFENGINE_TEST_OVERRIDE_WORKDIR": str(self.workdir)})
        if r["rc"] != 0 or not (self.workdir / "ppkeys" / "localhost.priv").exists():
            raise BenchError(f"cf-key in {self.workdir} failed\n{_tail(r)}")
        r = run_child([CF_PROMISES, f"--workdir={self.workdir}", "-f", str(self.policy)], env=env)
        if r["rc"] != 0:
            raise BenchError(f"cf-promises rejects {self.policy}\n{_tail(r)}")

    def cmd(self, mode: str) -> list[str]:
        c = [CF_AGENT, f"--workdir={self.workdir}", "-KIf", str(self.policy)]
        return c + (["--dry-run"] if mode == "check" else [])

    def run(self, mode: str) -> dict[str, Any]:
        return run_child(self.cmd(mode), env=self.env)

    def verify(self, mode: str, r: dict[str, Any], what: str) -> None:
        out = r["stdout"] + r["stderr"]
        errors = [ln for ln in out.splitlines() if re.match(r"\s*error:", ln)]
        content_set, mode_set = self.fx.drifted(prefix=str(self.host) + "/")
        if mode == "check":
            got_content = set(re.findall(r"Should update file '([^']+)'", out))
            got_mode = set(re.findall(r"Should change permissions of '([^']+)' from 0600 to 0644", out))
        else:
            got_content = set(re.findall(r"Updated '([^']+)' from source", out))
            got_mode = set(re.findall(r"Object '([^']+)' had permissions 0600, changed it to 0644", out))
        got_content = {os.path.normpath(x) for x in got_content}  # the recursive form reports ".../app/./0001.conf"
        got_mode = {os.path.normpath(x) for x in got_mode}
        if r["rc"] != 0 or errors or got_content != content_set or got_mode != mode_set:
            raise BenchError(
                f"{what}: cf-agent did not report exactly the drifted files (content {len(got_content)}/"
                f"{len(content_set)}, mode {len(got_mode)}/{len(mode_set)}, {len(errors)} errors)\n{_tail(r)}"
            )


# --------------------------------------------------------------------------- one cell


def summarise(runs: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "wall_s": run_stats([r["wall_s"] for r in runs]),
        "maxrss_mib": run_stats([r["maxrss_mib"] for r in runs]),
        "user_s": run_stats([r["user_s"] for r in runs]),
        "sys_s": run_stats([r["sys_s"] for r in runs]),
        "exit_codes": sorted({r["rc"] for r in runs}),
    }


def progress(what: str, r: dict[str, Any]) -> None:
    print(f"  {what}: {r['wall_s']:.3f}s {r['maxrss_mib']:.0f}MiB rc={r['rc']}", file=sys.stderr)


def bench_cell(base: Path, layout: str, n: int, repeat: int, env: dict[str, str], recursive: bool = False) -> dict[str, Any]:
    cell_dir = base / f"{layout}-n{n}"
    fx = build_fixture(cell_dir, layout, n)
    tools: list[Driftd | CFEngine] = [Driftd(fx, cell_dir / "driftd", env), CFEngine(fx, cell_dir / "cfengine", env)]
    if recursive:
        tools.append(CFEngine(fx, cell_dir / "cfengine-recursive", env, form="recursive"))
    samples: dict[str, dict[str, list[dict[str, Any]]]] = {m: {t.name: [] for t in tools} for m in MODES}
    drift_round = 0

    # check: on a drifted tree that no run may change
    before = {}
    for t in tools:
        inject_drift(fx, t.host, drift_round)
        before[t.name] = tree_state(fx, t.host)
    for k in range(repeat + 1):  # k == 0: warm-up, not measured
        for t in tools if k % 2 else reversed(tools):
            what = f"{layout} N={n} check {t.name} run {k}"
            r = t.run("check")
            progress(what, r)
            t.verify("check", r, what)
            if tree_state(fx, t.host) != before[t.name]:
                raise BenchError(f"{what}: check mode changed the tree\n{_tail(r)}")
            if k:
                samples["check"][t.name].append(r)

    # enforce: every run from a freshly drifted tree (the warm-up reverts the check's drift)
    for k in range(repeat + 1):
        if k:
            drift_round += 1
            for t in tools:
                inject_drift(fx, t.host, drift_round)
        for t in tools if k % 2 else reversed(tools):
            what = f"{layout} N={n} enforce {t.name} run {k}"
            r = t.run("enforce")
            progress(what, r)
            t.verify("enforce", r, what)
            verify_compliant(fx, t.host, what)
            if k:
                samples["enforce"][t.name].append(r)

    out: dict[str, Any] = {
        "n": n,
        "layout": layout,
        "drifted_content": len(fx.content_drift),
        "drifted_mode": len(fx.mode_drift),
        "loadavg_1m": round(os.getloadavg()[0], 2),
    }
    for mode in MODES:
        cell = {t.name: summarise(samples[mode][t.name]) for t in tools}
        d, c = cell["driftd"], cell["cfengine"]
        cell["ratio_wall"] = round(d["wall_s"]["median"] / c["wall_s"]["median"], 2)
        cell["ratio_rss"] = round(d["maxrss_mib"]["median"] / c["maxrss_mib"]["median"], 2)
        if "cfengine-recursive" in cell:
            cr = cell["cfengine-recursive"]
            cell["ratio_wall_recursive"] = round(d["wall_s"]["median"] / cr["wall_s"]["median"], 2)
        cell["commands"] = {t.name: t.cmd(mode) for t in tools}
        out[mode] = cell
    shutil.rmtree(cell_dir, ignore_errors=True)
    return out


# --------------------------------------------------------------------------- environment


def export_rev(rev: str, dest: Path) -> str:
    """``git archive`` of ``rev``'s ``driftd/`` into ``dest`` (put first on PYTHONPATH); its full hash."""
    full = subprocess.run(
        ["git", "-C", str(REPO), "rev-parse", "--verify", f"{rev}^{{commit}}"], capture_output=True, text=True, check=True
    ).stdout.strip()
    dest.mkdir(parents=True)
    archive = subprocess.run(["git", "-C", str(REPO), "archive", full, "driftd"], capture_output=True, check=True)
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive.stdout, check=True)
    return full


def runtime_venv() -> Path:
    """A venv with driftd's runtime dependencies only, from ``requirements.lock`` (``--require-hashes``): what ships.

    The development venv carries test tools, and some change what the runtime imports (``rich``, pulled in by
    import-linter, is imported by structlog when installed: ~30 ms and ~5 MiB a start).  Built once per lock
    under ``~/.cache/driftd-bench-venv-<sha256 of the lock>``; driftd itself comes from PYTHONPATH.
    """
    lock = REPO / "requirements.lock"
    tag = hashlib.sha256(lock.read_bytes()).hexdigest()[:12]
    venv = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / f"driftd-bench-venv-{tag}"
    py = venv / "bin" / "python"
    if not (venv / ".complete").exists():
        shutil.rmtree(venv, ignore_errors=True)
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run([str(py), "-m", "pip", "install", "-q", "--require-hashes", "-r", str(lock)], check=True)
        (venv / ".complete").write_text(tag + "\n")
    return py


def ensure_bytecode(pkg_parent: Path) -> None:
    """Compile driftd's modules as a pip install does (a shell with PYTHONDONTWRITEBYTECODE=1 would not)."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(pkg_parent / "driftd")], check=True, env=env)


def machine_info() -> dict[str, Any]:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = "unknown"
    try:
        kib = int(Path("/proc/meminfo").read_text().split()[1])
        mem = f"{kib / 1024 / 1024:.1f} GiB"
    except (OSError, ValueError, IndexError):
        pass
    return {
        "cpus": os.cpu_count(),
        "cpu_model": cpu,
        "memory": mem,
        "kernel": platform.release(),
        "machine": f"{platform.system()} {platform.machine()}",
    }


def cf_version() -> str:
    r = subprocess.run([CF_AGENT, "--version"], capture_output=True, text=True)
    return r.stdout.strip().splitlines()[0] if r.returncode == 0 and r.stdout.strip() else "unknown"


# --------------------------------------------------------------------------- report


def targets(res: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    for n_str, cell in res["flat"].items():
        n = int(n_str)
        for mode in MODES:
            if n in RATIO_TARGETS:
                limit = RATIO_TARGETS[n]
                got = cell[mode]["ratio_wall"]
                out.append(
                    {
                        "name": f"flat N={n:,} {mode}: wall driftd/CFEngine",
                        "limit": f"<= {limit}",
                        "measured": got,
                        "met": got <= limit,
                    }
                )
            if n == RSS_TARGET_N:
                got = round(cell[mode]["driftd"]["maxrss_mib"]["median"], 1)
                out.append(
                    {
                        "name": f"flat N={n:,} {mode}: driftd peak RSS (MiB)",
                        "limit": f"<= {RSS_TARGET_MIB:g}",
                        "measured": got,
                        "met": got <= RSS_TARGET_MIB,
                    }
                )
    return out


def _mark(ok: bool | None) -> str:
    return "" if ok is None else (" ✓" if ok else " ✗")


def table(res: dict[str, Any], layout: str, mode: str) -> list[str]:
    lines = [
        "| N | driftd wall (s) | driftd peak RSS (MiB) | CFEngine wall (s) | CFEngine peak RSS (MiB) "
        "| ratio wall driftd/CFEngine | target | ratio RSS |",
        "|---:|---:|---:|---:|---:|---:|---|---:|",
    ]
    for n_str, cell in res[layout].items():
        n = int(n_str)
        c = cell[mode]
        d, f = c["driftd"], c["cfengine"]
        limit = RATIO_TARGETS.get(n) if layout == "flat" else None
        ratio_ok = None if limit is None else c["ratio_wall"] <= limit
        rss_ok = d["maxrss_mib"]["median"] <= RSS_TARGET_MIB if (layout == "flat" and n == RSS_TARGET_N) else None
        target = "—" if limit is None else f"<= {limit:g}" + ("" if ratio_ok else " **missed**")
        if rss_ok is not None:
            target += f"; RSS <= {RSS_TARGET_MIB:g} MiB" + ("" if rss_ok else " **missed**")
        lines.append(
            f"| {n:,} | {d['wall_s']['median']:.3f} | {d['maxrss_mib']['median']:.1f}{_mark(rss_ok)} | "
            f"{f['wall_s']['median']:.3f} | {f['maxrss_mib']['median']:.1f} | "
            f"**{c['ratio_wall']:.2f}**{_mark(ratio_ok)} | {target} | {c['ratio_rss']:.2f} |"
        )
    return lines


def cpu_table(res: dict[str, Any], layout: str) -> list[str]:
    lines = [
        "| N | mode | driftd user+sys (s) | CFEngine user+sys (s) | driftd wall min..max (s) | CFEngine wall min..max (s) |",
        "|---:|---|---:|---:|---:|---:|",
    ]
    for n_str, cell in res[layout].items():
        for mode in MODES:
            d, f = cell[mode]["driftd"], cell[mode]["cfengine"]
            lines.append(
                f"| {int(n_str):,} | {mode} | {d['user_s']['median'] + d['sys_s']['median']:.3f} | "
                f"{f['user_s']['median'] + f['sys_s']['median']:.3f} | "
                f"{d['wall_s']['min']:.3f}..{d['wall_s']['max']:.3f} | {f['wall_s']['min']:.3f}..{f['wall_s']['max']:.3f} |"
            )
    return lines


def write_markdown(path: Path, res: dict[str, Any]) -> None:
    m = res["meta"]
    lines = [
        "# driftd vs CFEngine: the same file workload, side by side",
        "",
        f"{m['date']} · {m['machine']['cpus']} CPUs ({m['machine']['cpu_model']}), {m['machine']['memory']}, "
        f"{m['machine']['machine']} {m['machine']['kernel']} · load (1 min) {m['loadavg_1m_at_start']} at start, "
        f"{m['loadavg_1m_at_end']} at end · {m['repeat']} measured runs per cell (median), 1 warm-up · "
        f"whole run {m.get('total_s', '?')} s",
        "",
        f"Versions: {m['cfengine']} (Debian `cfengine3`) · Python {m['python']} · driftd {m['driftd']}"
        + (" · run by a venv of the runtime lock only (`requirements.lock`)" if "driftd-bench-venv-" in m.get("driftd_python", "")
           else f" · run by `{m['driftd_python']}`" if m.get("driftd_python") else ""),
        "",
        f"Reproduce: `{m['command']}`",
        "",
        "Workload: N files of 335 B; desired: mode 0644 + the bytes of one source file each (`source: files/...` "
        "beside the baseline YAML; the same files are CFEngine's `copy_from` sources). Drift (seed "
        f"{SEED}): content changed in ceil(10 %) of the files, mode 0600 on another ceil(5 %). Whole process "
        "measured: wall of the subprocess, peak RSS from `os.wait4` (child + its waited children, e.g. "
        "`cf-promises`; spawned by a helper process of "
        f"{m.get('rss_floor_mib', '?')} MiB, the floor of any RSS reported, so that the benchmark's own RSS does not "
        "leak into the children's). check = report only, on a drifted tree that is verified unchanged afterwards; enforce = "
        "revert, each run from a freshly re-created drift (not timed), every file verified (content + mode) after "
        "each run. Both tools keep their state between runs (driftd `--state-dir`, CFEngine `--workdir`), as an "
        "agent on a node does. See the script's docstring for the exact CFEngine policy.",
        "",
        "Commands:",
        "",
        "- driftd check: `driftd run --once --config C --host-root H --baselines B --state-dir S --node-name bench --dry-run`",
        "- driftd enforce: `driftd run --once --config C --host-root H --baselines B --state-dir S --node-name bench`",
        "  (`C` lifts the revert budgets and the flap gate, which this many reverts of the same files in a few "
        "minutes would otherwise trip: "
        + "; ".join(ln.strip() for ln in DRIFTD_CONFIG.splitlines() if ":" in ln and ln.strip()[-1] != ":")
        + ")",
        "- CFEngine check: `cf-agent --workdir=W -KIf promises.cf --dry-run`",
        "- CFEngine enforce: `cf-agent --workdir=W -KIf promises.cf`",
        "",
    ]
    for layout, title in (
        ("flat", "Flat: one directory, `etc/app/NNNN.conf`"),
        ("nested", "Nested: 100 files per directory, `srv/bench/dNNNN/fNNNNNN.conf` (bench_host.py layout)"),
    ):
        if not res[layout]:
            continue
        lines += [f"## {title}", ""]
        for mode in MODES:
            label = "check (report only)" if mode == "check" else "enforce (revert)"
            lines += [f"### {label}", "", *table(res, layout, mode), ""]
        lines += ["CPU (user+sys, median) and wall spread:", "", *cpu_table(res, layout), ""]
        rec = [(n_str, cell) for n_str, cell in res[layout].items() if "ratio_wall_recursive" in cell["check"]]
        if rec:
            lines += [
                'Supplementary: CFEngine with one recursive promise for the whole directory (`"$(dst)/."` + '
                '`depth_search => recurse("inf")`, same bodies) instead of a promise per listed file; it only '
                "fits a directory that holds managed files only, and the per-file table above stays the comparison:",
                "",
                "| N | mode | driftd wall (s) | CFEngine recursive wall (s) | CFEngine recursive peak RSS (MiB) | ratio wall driftd/recursive |",
                "|---:|---|---:|---:|---:|---:|",
            ]
            for n_str, cell in rec:
                for mode in MODES:
                    c = cell[mode]
                    lines.append(
                        f"| {int(n_str):,} | {mode} | {c['driftd']['wall_s']['median']:.3f} | "
                        f"{c['cfengine-recursive']['wall_s']['median']:.3f} | {c['cfengine-recursive']['maxrss_mib']['median']:.1f} | "
                        f"{c['ratio_wall_recursive']:.2f} |"
                    )
            lines.append("")
    if res["targets"]:
        lines += ["## Targets (issue 11)", "", "| target | limit | measured | met |", "|---|---:|---:|---|"]
        for t in res["targets"]:
            lines.append(f"| {t['name']} | {t['limit']} | {t['measured']} | {'yes' if t['met'] else '**no**'} |")
        lines.append("")
    if res.get("notes"):
        lines += ["## Notes", "", *res["notes"], ""]
    path.write_text("\n".join(lines))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default=DEFAULT_SIZES, help=f"flat-layout sizes, comma-separated (default {DEFAULT_SIZES})")
    ap.add_argument(
        "--nested-sizes",
        default=DEFAULT_NESTED,
        help=f"nested-layout sizes, comma-separated, '' for none (default {DEFAULT_NESTED})",
    )
    ap.add_argument(
        "--recursive-sizes",
        default=DEFAULT_RECURSIVE,
        help="flat sizes at which CFEngine's one-recursive-promise form is measured too, '' for none "
        f"(default {DEFAULT_RECURSIVE})",
    )
    ap.add_argument("--repeat", type=int, default=3, help="measured runs per cell, after one warm-up (default 3)")
    ap.add_argument(
        "--rev", help="benchmark this git revision's driftd/ (git archive, first on PYTHONPATH) instead of the work tree"
    )
    ap.add_argument("--python", help="interpreter that runs driftd (default: a runtime-only venv from requirements.lock, "
                    "cached under ~/.cache)")
    ap.add_argument("--out", default=str(HERE / "results"), help="results directory")
    ap.add_argument("--name", default="vs-cfengine", help="results stem: <out>/<name>.json and .md")
    ap.add_argument("--workdir", help="where to build the trees (default: a fresh temp dir); e.g. a tmpfs")
    ap.add_argument("--keep", action="store_true", help="keep the temp trees")
    ap.add_argument("--notes", help="a file of markdown lines appended to the report under 'Notes'")
    ap.add_argument(
        "--render",
        metavar="JSON",
        help="only rewrite <out>/<name>.md from this results JSON (with --notes: replacing its notes); runs nothing",
    )
    args = ap.parse_args()

    if args.render:
        res = json.loads(Path(args.render).read_text())
        res["targets"] = targets(res)
        if args.notes:
            res["notes"] = Path(args.notes).read_text().rstrip("\n").splitlines()
            Path(args.render).write_text(json.dumps(res, indent=2) + "\n")
        write_markdown(Path(args.out) / f"{args.name}.md", res)
        return 0

    global DRIFTD_PY
    DRIFTD_PY = Path(args.python) if args.python else runtime_venv()
    if not all(Path(p).exists() for p in (CF_AGENT, CF_KEY, CF_PROMISES)):
        raise SystemExit("cf-agent/cf-key not found: apt-get install -y cfengine3")
    sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    nested = [int(s) for s in args.nested_sizes.split(",") if s.strip()]
    recursive = {int(s) for s in args.recursive_sizes.split(",") if s.strip()}
    if args.repeat < 1:
        raise SystemExit("--repeat must be >= 1")

    Spawner.start()  # while this process is still small (see SPAWNER)
    rss_floor = run_child(["/bin/true"])["maxrss_mib"]
    base = Path(tempfile.mkdtemp(prefix="driftd-vs-cfengine-", dir=args.workdir))
    env = {k: v for k, v in os.environ.items() if not k.startswith("CFENGINE")}
    started = time.perf_counter()
    try:
        git = subprocess.run(["git", "-C", str(REPO), "describe", "--always", "--dirty"], capture_output=True, text=True)
        if args.rev:
            full = export_rev(args.rev, base / "src")
            ensure_bytecode(base / "src")
            driftd_rev = f"{full[:12]} (`--rev {args.rev}`, committed tree)"
        else:
            ensure_bytecode(REPO)
            dirty = subprocess.run(
                ["git", "-C", str(REPO), "status", "--porcelain", "--", "driftd"], capture_output=True, text=True
            ).stdout.strip()
            driftd_rev = f"{git.stdout.strip() or 'unknown'} (work tree{', driftd/ has uncommitted changes' if dirty else ''})"
        env["PYTHONPATH"] = str(base / "src" if args.rev else REPO) + os.pathsep + env.get("PYTHONPATH", "")
        probe = subprocess.run(
            [str(DRIFTD_PY), "-c", "import driftd; print(driftd.__file__)"], capture_output=True, text=True, env=env, cwd=base
        )  # not the repo: '' is on sys.path
        cmd = " ".join(["python", "bench/bench_vs_cfengine.py", *sys.argv[1:]])
        res: dict[str, Any] = {
            "meta": {
                "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "machine": machine_info(),
                "python": platform.python_version(),
                "driftd_python": str(DRIFTD_PY),
                "cfengine": cf_version(),
                "driftd": driftd_rev,
                "driftd_imported_from": probe.stdout.strip(),
                "repeat": args.repeat,
                "seed": SEED,
                "file_bytes": FILE_BYTES,
                "command": f".venv/bin/{cmd}",
                "loadavg_1m_at_start": round(os.getloadavg()[0], 2),
                "rss_floor_mib": round(rss_floor, 1),
                "workdir": str(base),
            },
            "flat": {},
            "nested": {},
        }
        print(f"driftd {driftd_rev} from {probe.stdout.strip()}; {res['meta']['cfengine']}", file=sys.stderr)
        for layout, ns in (("flat", sizes), ("nested", nested)):
            for n in ns:
                t0 = time.perf_counter()
                cell = bench_cell(base, layout, n, args.repeat, env, recursive=layout == "flat" and n in recursive)
                res[layout][str(n)] = cell
                ch, en = cell["check"], cell["enforce"]
                print(
                    f"{layout} N={n}: check driftd {ch['driftd']['wall_s']['median']:.3f}s/"
                    f"{ch['driftd']['maxrss_mib']['median']:.0f}MiB cfengine {ch['cfengine']['wall_s']['median']:.3f}s/"
                    f"{ch['cfengine']['maxrss_mib']['median']:.0f}MiB ratio {ch['ratio_wall']:.2f}; "
                    f"enforce driftd {en['driftd']['wall_s']['median']:.3f}s/{en['driftd']['maxrss_mib']['median']:.0f}MiB "
                    f"cfengine {en['cfengine']['wall_s']['median']:.3f}s/{en['cfengine']['maxrss_mib']['median']:.0f}MiB "
                    f"ratio {en['ratio_wall']:.2f}  ({time.perf_counter() - t0:.0f}s)",
                    file=sys.stderr,
                )
        res["meta"]["loadavg_1m_at_end"] = round(os.getloadavg()[0], 2)
        res["meta"]["total_s"] = round(time.perf_counter() - started, 1)
        res["targets"] = targets(res)
        if args.notes:
            res["notes"] = Path(args.notes).read_text().rstrip("\n").splitlines()
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / f"{args.name}.json").write_text(json.dumps(res, indent=2) + "\n")
        write_markdown(out / f"{args.name}.md", res)
        print(
            f"wrote {out / (args.name + '.json')} and {out / (args.name + '.md')} in {res['meta']['total_s']}s", file=sys.stderr
        )
        return 0 if all(t["met"] for t in res["targets"]) else 1
    finally:
        Spawner.stop()
        if not args.keep:
            shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
