"""Packages rules: what checking a host's patch level costs, and what the usual shell check costs.

Usage::

    .venv/bin/python bench/bench_packages.py                 # host sizes 750 (a real Debian 12) and 5,000 packages
    .venv/bin/python bench/bench_packages.py --repeat 3 --rules 10,100

Workload: a dpkg ``status`` file under a scratch host root: the real Debian 12 status in
``tests/fixtures/packages/dpkg-status.gz`` (~750 packages) and a synthetic one of 5,000 stanzas
shaped like it (a workstation-sized host).  A HostBaseline holds R of the installed packages to a
minimum (10 % of them below it, so there is drift to report).

Measured, each the median of ``--repeat`` runs:

* ``parse``: reading and parsing the whole database (``PackageDatabases.installed()``, a cache miss);
* ``scan (cached)``: one engine scan of the R rules when the database did not change (the daemon's
  steady state between full re-hash passes, ``scan.full_rehash_interval_seconds``: one ``lstat`` per rule,
  no parse);
* ``scan (changed)``: the same after the package manager rewrote the file (one parse, then R rules);
* ``run --once``: the whole ``driftd run --once --dry-run`` process (start-up included), minus the same
  command with no rules;
* peer ``dpkg-query + dpkg --compare-versions``: the check shell scripts and CFEngine policies run for
  a minimum version (one ``dpkg-query -W`` and one ``dpkg --compare-versions`` process per package,
  ``--admindir`` pointed at the same scratch database).  CFEngine's own ``packages:`` promise needs its
  package modules, which call ``apt-get``; that is not run here (no repository is reachable, and a
  bench must not touch the machine's package state), so the shell idiom is the peer.

Results: ``bench/results/packages.{json,md}``.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from driftd.targets.host import HostIO  # noqa: E402
from driftd.targets.packages import PackageDatabases, parse_dpkg_status  # noqa: E402


def synthetic_status(real: bytes, n: int) -> bytes:
    """``n`` stanzas: the real ones, then copies renamed ``<name>-bench<i>`` (same fields, same sizes)."""
    stanzas = [s for s in real.decode().split("\n\n") if s.strip()]
    out = list(stanzas)
    i = 0
    while len(out) < n:
        s = stanzas[i % len(stanzas)]
        name = s.split("Package: ", 1)[1].split("\n", 1)[0]
        out.append(s.replace(f"Package: {name}\n", f"Package: {name}-bench{i}\n", 1))
        i += 1
    return ("\n\n".join(out[:n]) + "\n\n").encode()


def baseline(rules: list[tuple[str, str]]) -> str:
    body = "".join(f'    - {{name: "{n}", minimum: "{v}"}}\n' for n, v in rules)
    return ("apiVersion: driftd.io/v1alpha1\nkind: HostBaseline\nmetadata: {name: bench-packages}\nspec:\n"
            "  enforcement: warn\n" + (f"  packages:\n{body}" if rules else "  files: []\n"))


def pick_rules(installed: dict[str, str], r: int) -> list[tuple[str, str]]:
    """R installed packages; 10 % get a minimum above what is installed (epoch 99: always newer)."""
    rnd = random.Random(1509)
    names = rnd.sample(sorted(installed), min(r, len(installed)))
    out = []
    for i, n in enumerate(names):
        v = installed[n].split(", ")[0]
        out.append((n, f"99:{v}" if i % 10 == 0 else v))
    return out


def median_time(fn: Any, repeat: int) -> float:
    xs = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        xs.append(time.perf_counter() - t0)
    return statistics.median(xs)


def engine_scan_times(root: Path, bdir: Path, state: Path, repeat: int) -> tuple[float, float, int]:
    """(cached scan, scan after a database rewrite, drifted) of an engine over the scratch host."""
    from prometheus_client import CollectorRegistry

    from driftd.baselines.loader import load_set
    from driftd.runtime import build_runtime
    from driftd.settings import load_settings

    s = load_settings(host_root=root, baselines=bdir, state_dir=state, node_name="bench", dry_run=True)
    rt = build_runtime(s, registry=CollectorRegistry())
    bset, problems = load_set(bdir)
    assert bset is not None, problems
    rt.engine.set_baselines(bset)
    every = rt.settings.scan.full_rehash_interval_seconds  # as the daemon scans: a full re-hash only this often
    first = rt.engine.scan(rt.queue, full_rehash_interval=every)
    cached = median_time(lambda: rt.engine.scan(rt.queue, full_rehash_interval=every), repeat)
    status = root / "var/lib/dpkg/status"

    def rewrite_and_scan() -> None:
        data = status.read_bytes()
        tmp = status.with_name("status-new")
        tmp.write_bytes(data)
        tmp.rename(status)  # as dpkg does: a new inode, so the stat key changes
        rt.engine.scan(rt.queue, full_rehash_interval=every)

    changed = median_time(rewrite_and_scan, repeat)
    rt.engine.state.close()
    return cached, changed, first.drifted


def run_once(python: str, root: Path, bdir: Path, state: Path) -> float:
    t0 = time.perf_counter()
    p = subprocess.run([python, "-m", "driftd", "run", "--once", "--host-root", str(root), "--baselines", str(bdir),
                        "--state-dir", str(state), "--node-name", "bench", "--dry-run", "--log-level", "error"],
                       capture_output=True, text=True, cwd=REPO, check=False)
    dt = time.perf_counter() - t0
    if p.returncode not in (0, 3):
        raise SystemExit(f"driftd run --once failed ({p.returncode}): {p.stderr[-2000:]}")
    return dt


def shell_peer(root: Path, rules: list[tuple[str, str]]) -> tuple[float, int]:
    """The dpkg-query + dpkg --compare-versions check per rule; (seconds, rules found below their minimum)."""
    admindir = str(root / "var/lib/dpkg")
    below = 0
    t0 = time.perf_counter()
    for name, minimum in rules:
        v = subprocess.run(["dpkg-query", f"--admindir={admindir}", "-W", "-f=${Version}", name],
                           capture_output=True, text=True, check=False).stdout.strip()
        rc = subprocess.run(["dpkg", "--compare-versions", v, "lt", minimum], capture_output=True, check=False).returncode
        below += rc == 0
    return time.perf_counter() - t0, below


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="750,5000", help="installed packages on the host (750: the real status file)")
    ap.add_argument("--rules", default="10,100,500", help="package rules in the baseline")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--python", default=sys.executable)
    ap.add_argument("--out", default=str(REPO / "bench/results/packages"))
    args = ap.parse_args()
    if shutil.which("dpkg-query") is None:
        raise SystemExit("needs dpkg-query (a Debian system) for the peer")
    real = gzip.decompress((REPO / "tests/fixtures/packages/dpkg-status.gz").read_bytes())
    cells: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="driftd-bench-packages-") as tmp_s:
        tmp = Path(tmp_s)
        for size in (int(x) for x in args.sizes.split(",")):
            root = tmp / f"host-{size}"
            (root / "var/lib/dpkg").mkdir(parents=True)
            data = real if size <= len(parse_dpkg_status(real)) else synthetic_status(real, size)
            (root / "var/lib/dpkg/status").write_bytes(data)
            installed = parse_dpkg_status(data)

            def parse(root: Path = root) -> None:
                PackageDatabases(HostIO(root)).installed()

            parse_s = median_time(parse, args.repeat)
            empty = tmp / f"b-{size}-0"
            empty.mkdir()
            (empty / "b.yaml").write_text(baseline([]))
            base_once = statistics.median(run_once(args.python, root, empty, tmp / f"s-{size}-0-{i}")
                                          for i in range(args.repeat))
            for r in (int(x) for x in args.rules.split(",")):
                rules = pick_rules(installed, r)
                bdir = tmp / f"b-{size}-{r}"
                bdir.mkdir()
                (bdir / "b.yaml").write_text(baseline(rules))
                cached, changed, drifted = engine_scan_times(root, bdir, tmp / f"s-{size}-{r}", args.repeat)
                once = statistics.median(run_once(args.python, root, bdir, tmp / f"s-{size}-{r}-{i}")
                                         for i in range(args.repeat))
                peer, below = shell_peer(root, rules)
                assert below == drifted, (below, drifted)  # both find the same packages out of patch
                cells.append({"installed": len(installed), "status_bytes": len(data), "rules": len(rules),
                              "out_of_patch": drifted, "parse_s": round(parse_s, 4), "scan_cached_s": round(cached, 4),
                              "scan_changed_s": round(changed, 4), "run_once_s": round(once, 3),
                              "run_once_rules_s": round(once - base_once, 3), "peer_shell_s": round(peer, 3),
                              "peer_over_driftd_run_once": round(peer / once, 1),
                              "peer_over_driftd_scan_changed": round(peer / changed, 1)})
                print(json.dumps(cells[-1]), flush=True)
    meta = {"python": sys.version.split()[0], "cpus": os.cpu_count(), "repeat": args.repeat,
            "revision": subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True,
                                       text=True, check=False).stdout.strip()}
    Path(args.out + ".json").write_text(json.dumps({"meta": meta, "cells": cells}, indent=2) + "\n")
    lines = ["# Packages rules: patch-level check cost", "",
             f"driftd {meta['revision']}, Python {meta['python']}, {meta['cpus']} CPUs, median of {args.repeat} runs. "
             "Generated by `bench/bench_packages.py`.", "",
             "| installed | rules | out of patch | parse | scan, cached | scan, db changed | `run --once` | of it, the rules "
             "| shell peer (dpkg-query + dpkg --compare-versions) | peer / run --once | peer / scan |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for c in cells:
        lines.append(f"| {c['installed']} | {c['rules']} | {c['out_of_patch']} | {c['parse_s'] * 1000:.1f} ms "
                     f"| {c['scan_cached_s'] * 1000:.1f} ms | {c['scan_changed_s'] * 1000:.1f} ms | {c['run_once_s']:.2f} s "
                     f"| {c['run_once_rules_s']:.2f} s | {c['peer_shell_s']:.2f} s | {c['peer_over_driftd_run_once']}x "
                     f"| {c['peer_over_driftd_scan_changed']}x |")
    lines += ["", "Both sides find the same packages out of patch in every cell (asserted). The peer's cost is two "
              "processes per rule; driftd's is one parse per change of the database and one `lstat` per rule "
              "otherwise. CFEngine's `packages:` promise was not run: its package modules call `apt-get` (see the "
              "module docstring)."]
    Path(args.out + ".md").write_text("\n".join(lines) + "\n")
    print(f"wrote {args.out}.json and .md")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
