"""Benchmark of the host target: ``driftd run --once`` and the daemon's warm scan.

Usage::

    .venv/bin/python bench/bench_host.py                 # N = 1,000 and 10,000, 5 repeats each
    .venv/bin/python bench/bench_host.py --sizes 1000 --repeat 3

For every N it builds, in a temporary directory, a host tree with N managed files
(inline content, mode, owner and group governed; 10 % content drift, 5 % mode drift)
and a baselines directory of ``HostBaseline`` YAML, then measures:

* ``once_drift``: ``driftd run --once`` as a subprocess on the drifted tree (drift is
  re-injected before every repeat; the state directory persists across runs, as it does
  for a periodic ``run --once``, and an unmeasured warm-up run created it).  Wall time
  includes interpreter start-up; CPU time (user + sys) and peak RSS come from
  ``os.wait4`` of that child.
* ``once_clean``: the same command on the tree once it is compliant (no drift).
* ``daemon_scan``: in a separate process, the daemon's periodic pass: ``Engine.scan``
  with ``full_rehash_interval=3600`` after a first pass warmed the stat cache, timed
  with ``time.process_time()``; it also counts the files hashed, to show that unchanged
  files are not re-hashed while a due full re-hash still hashes every file.

Imports of the ``--once`` path are recorded too (``-X importtime`` and ``sys.modules``).
Every measurement is repeated (``--repeat``, default 5) and reported as median and min.
Before measuring, driftd's modules are byte-compiled as a pip install does (a shell with
PYTHONDONTWRITEBYTECODE=1 would otherwise recompile them on every run); the fsync latency
of the work directory is recorded, as each content revert costs three fsyncs.  Results go
to ``bench/results/host.json`` and ``bench/results/host.md`` (``--name`` changes the stem;
``--workdir`` puts the trees elsewhere, e.g. on tmpfs to take the disk out of the numbers).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))
from _common import run_stats  # noqa: E402  (beside this file)

VENV_BIN = Path(sys.executable).parent
DRIFTD = VENV_BIN / "driftd"

FILES_PER_DIR = 100
ENTRIES_PER_BASELINE = 500
CONTENT_DRIFT_EVERY = 10  # i % 10 == 0 -> 10 %
MODE_DRIFT_EVERY = 20  # i % 20 == 5 -> 5 % (disjoint from content drift)

TARGETS = {
    "once_wall_s_at_1000": 0.5,
    "once_peak_rss_mib_at_1000": 60.0,
    "daemon_scan_cpu_s_at_10000": 0.3,
}

PASSWD = "root:x:0:0:root:/root:/bin/sh\ndaemon:x:1:1::/usr/sbin:/usr/sbin/nologin\n"
GROUP = "root:x:0:\ndaemon:x:1:\n"


# --------------------------------------------------------------------------- fixture


def _rel(i: int) -> str:
    return f"/srv/bench/d{i // FILES_PER_DIR:04d}/f{i:06d}.conf"


def _content(i: int) -> str:
    return f"# managed by driftd bench\nsetting_{i} = value-{i}\nlimit = {i % 97}\n"


def _mode(i: int) -> str:
    return "0600" if i % 3 == 0 else "0644"


def build(workdir: Path, n: int) -> tuple[Path, Path]:
    """A compliant host tree and its baselines directory for ``n`` managed files."""
    host, bdir = workdir / "host", workdir / "baselines"
    (host / "etc").mkdir(parents=True)
    (host / "etc/passwd").write_text(PASSWD)
    (host / "etc/group").write_text(GROUP)
    (host / "etc/hostname").write_text("bench-node\n")
    (host / "proc/sys").mkdir(parents=True)
    bdir.mkdir()
    uid, gid = os.getuid(), os.getgid()
    for start in range(0, n, ENTRIES_PER_BASELINE):
        lines = [
            "apiVersion: driftd.io/v1alpha1",
            "kind: HostBaseline",
            "metadata:",
            f"  name: bench-{start // ENTRIES_PER_BASELINE:03d}",
            "spec:",
            "  enforcement: enforce",
            "  window: 30m",
            "  files:",
        ]
        for i in range(start, min(n, start + ENTRIES_PER_BASELINE)):
            body = _content(i).replace("\n", "\\n")
            lines += [
                f"    - path: {_rel(i)}",
                f'      content: "{body}"',
                f'      mode: "{_mode(i)}"',
                "      owner: root" if uid == 0 else f"      owner: {uid}",
                "      group: root" if gid == 0 else f"      group: {gid}",
            ]
        (bdir / f"bench-{start // ENTRIES_PER_BASELINE:03d}.yaml").write_text("\n".join(lines) + "\n")
    for i in range(n):
        p = host / _rel(i).lstrip("/")
        if i % FILES_PER_DIR == 0:
            p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(_content(i))
        os.chmod(p, int(_mode(i), 8))
    return host, bdir


def inject_drift(host: Path, n: int, round_no: int = 0) -> int:
    """10 % content drift, 5 % mode drift; returns the number of drifted files.

    The drifted bytes differ per ``round_no``: snapshots are content-addressed, so content
    already snapshotted by an earlier round would be deduplicated (one fsync fewer per file).
    """
    drifted = 0
    for i in range(n):
        p = host / _rel(i).lstrip("/")
        if i % CONTENT_DRIFT_EVERY == 0:
            p.write_text(f"# drifted {i} (round {round_no})\nsetting_{i} = tampered\n")
            drifted += 1
        elif i % MODE_DRIFT_EVERY == 5:
            os.chmod(p, 0o666)
            drifted += 1
    return drifted


# --------------------------------------------------------------------------- measuring


def run_child(cmd: list[str], *, env: dict[str, str] | None = None) -> dict[str, Any]:
    """Run ``cmd``; wall time, user+sys CPU and peak RSS of that one child (os.wait4)."""
    # output goes to files, not pipes: a chatty child can never block, and the parent
    # does no work while the child runs
    with tempfile.TemporaryFile() as fout, tempfile.TemporaryFile() as ferr:
        started = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=fout, stderr=ferr, env=env)
        _, status, ru = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - started
        proc.returncode = os.waitstatus_to_exitcode(status)
        fout.seek(0)
        ferr.seek(0)
        out, err = fout.read(), ferr.read()
    return {
        "wall_s": wall,
        "cpu_s": ru.ru_utime + ru.ru_stime,
        "user_s": ru.ru_utime,
        "sys_s": ru.ru_stime,
        "maxrss_mib": ru.ru_maxrss / 1024,  # KiB on Linux
        "rc": proc.returncode,
        "stdout": out.decode(errors="replace"),
        "stderr": err.decode(errors="replace"),
    }


def summarise(runs: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "wall_s": run_stats([r["wall_s"] for r in runs]),
        "cpu_s": run_stats([r["cpu_s"] for r in runs]),
        "user_s": run_stats([r["user_s"] for r in runs]),
        "sys_s": run_stats([r["sys_s"] for r in runs]),
        "maxrss_mib": run_stats([r["maxrss_mib"] for r in runs]),
        "exit_codes": sorted({r["rc"] for r in runs}),
    }


def once_cmd(host: Path, bdir: Path, state: Path) -> list[str]:
    return [str(DRIFTD), "run", "--once", "--host-root", str(host), "--baselines", str(bdir), "--state-dir", str(state)]


def bench_once(workdir: Path, host: Path, bdir: Path, n: int, repeat: int) -> dict[str, Any]:
    env = dict(os.environ)
    drift_runs, clean_runs = [], []
    expected_drift = 0
    # One state directory for every run, as a periodic `run --once` keeps it; the warm-up run
    # (not measured) creates the database and fills the page cache.
    state = workdir / "state-once"
    run_child(once_cmd(host, bdir, state), env=env)
    for k in range(repeat):
        expected_drift = inject_drift(host, n, round_no=k)
        r = run_child(once_cmd(host, bdir, state), env=env)
        if r["rc"] != 0:
            raise SystemExit(f"driftd run --once (drift) exited {r['rc']}:\n{r['stdout'][-2000:]}\n{r['stderr'][-2000:]}")
        m = re.search(r"result: (\d+) clean, (\d+) remediated", r["stdout"])
        if not m or int(m.group(2)) != expected_drift:
            raise SystemExit(f"unexpected summary (wanted {expected_drift} remediated):\n{r['stdout'][-500:]}")
        drift_runs.append(r)
    for _ in range(repeat):
        r = run_child(once_cmd(host, bdir, state), env=env)
        if r["rc"] != 0 or f"result: {n} clean, 0 remediated" not in r["stdout"]:
            raise SystemExit(f"driftd run --once (clean) exited {r['rc']}:\n{r['stdout'][-500:]}\n{r['stderr'][-2000:]}")
        clean_runs.append(r)
    return {
        "once_drift": {**summarise(drift_runs), "drifted_files": expected_drift},
        "once_clean": summarise(clean_runs),
    }


DAEMON_SCAN = r"""
import gc, json, sys, time
gc.disable()  # as `driftd run` starts up: no full collections over start-up objects
from driftd.baselines.loader import load_set
from driftd.engine.once import run_once
from driftd.observability.logging import configure_logging
from driftd.runtime import build_runtime
from driftd.settings import load_settings

host, bdir, state, repeat = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
configure_logging("json", "warning")
settings = load_settings(host_root=host, baselines=bdir, state_dir=state)
rt = build_runtime(settings)
bset, problems = load_set(settings.baselines, max_file_bytes=settings.baseline_file_max_bytes)  # as `driftd run` loads
assert bset is not None, problems
rt.engine.set_baselines(bset)
host_target = rt.engine.targets["host"]
hashed = [0]
sha256 = host_target.fs.sha256
def counting_sha256(path):
    hashed[0] += 1
    return sha256(path)
host_target.fs.sha256 = counting_sha256

# first pass: full re-hash, remediates whatever drift there is; warms the stat cache
t0 = time.process_time()
first = run_once(rt.engine, rt.queue, attempts=settings.retry.attempts_per_pass,
                 full_rehash_interval=settings.scan.full_rehash_interval_seconds)
first_cpu = time.process_time() - t0
first_hashed = hashed[0]
gc.collect()
gc.freeze()  # as the daemon does once started
gc.enable()

warm, warm_hashed, drifted = [], [], []
for _ in range(repeat):
    hashed[0] = 0
    t0 = time.process_time()
    report = rt.engine.scan(rt.queue, full_rehash_interval=3600)
    warm.append(time.process_time() - t0)
    warm_hashed.append(hashed[0])
    drifted.append(report.drifted + report.errors + len(rt.queue))

full, full_hashed = [], []
for _ in range(max(1, repeat // 2)):
    hashed[0] = 0
    t0 = time.process_time()
    rt.engine.scan(rt.queue, full_rehash_interval=0)  # a due full re-hash
    full.append(time.process_time() - t0)
    full_hashed.append(hashed[0])

print(json.dumps({
    "resources": first.resources,
    "first_pass_cpu_s": first_cpu,
    "first_pass_hashed": first_hashed,
    "first_pass_exit_code": first.exit_code,
    "warm_scan_cpu_s": warm,
    "warm_scan_hashed": warm_hashed,
    "warm_scan_drift_or_queued": drifted,
    "full_rehash_scan_cpu_s": full,
    "full_rehash_scan_hashed": full_hashed,
}))
"""


def bench_daemon_scan(workdir: Path, host: Path, bdir: Path, repeat: int) -> dict[str, Any]:
    state = workdir / "state-daemon"
    r = run_child([sys.executable, "-c", DAEMON_SCAN, str(host), str(bdir), str(state), str(repeat)])
    if r["rc"] != 0:
        raise SystemExit(f"daemon scan benchmark failed:\n{r['stderr'][-3000:]}")
    d = json.loads(r["stdout"])
    return {
        "resources": d["resources"],
        "warm_scan_cpu_s": run_stats(d["warm_scan_cpu_s"]),
        "warm_scan_files_hashed": d["warm_scan_hashed"],
        "warm_scan_drift_or_queued": d["warm_scan_drift_or_queued"],
        "full_rehash_scan_cpu_s": run_stats(d["full_rehash_scan_cpu_s"]),
        "full_rehash_scan_files_hashed": d["full_rehash_scan_hashed"],
        "first_pass_cpu_s": round(d["first_pass_cpu_s"], 4),
        "first_pass_files_hashed": d["first_pass_hashed"],
        "process_peak_rss_mib": round(r["maxrss_mib"], 1),
    }


# --------------------------------------------------------------------------- environment


def ensure_bytecode() -> str:
    """Compile driftd's modules to ``__pycache__`` as a pip install does.

    Without it, a shell with PYTHONDONTWRITEBYTECODE=1 (set in some dev containers) makes
    every run recompile the driftd sources it imports, which is not what an installed
    driftd does; site-packages are already compiled by pip.
    """
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(REPO / "driftd")], check=True, env=env)
    return "driftd and site-packages precompiled (as installed by pip)"


def fsync_latency_ms(directory: Path, samples: int = 50) -> dict[str, float]:
    """Latency of write + fsync of a small new file, then of its directory (what one revert costs)."""
    file_ms, dir_ms = [], []
    dfd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for i in range(samples):
            p = directory / f".fsync-probe-{i}"
            fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            os.write(fd, b"x" * 100)
            t = time.perf_counter()
            os.fsync(fd)
            file_ms.append((time.perf_counter() - t) * 1000)
            os.close(fd)
            t = time.perf_counter()
            os.fsync(dfd)
            dir_ms.append((time.perf_counter() - t) * 1000)
            p.unlink()
    finally:
        os.close(dfd)
    return {"file_median": round(statistics.median(file_ms), 3), "dir_median": round(statistics.median(dir_ms), 3)}


# --------------------------------------------------------------------------- imports

# Runs `driftd run --once` in-process exactly as the console script does (importing nothing
# of its own first, so -X importtime attributes every import to the --once path), then
# writes which heavy modules got loaded to the file named by argv[1].
MODULES_PROBE = r"""
import sys
from driftd.cli import main
rc = main(sys.argv[2:])
import json
heavy = ["docker", "kubernetes", "apscheduler", "deepdiff", "prometheus_client", "structlog",
         "pydantic", "pydantic_settings", "yaml", "sqlite3", "http.server", "rich"]
with open(sys.argv[1], "w") as fh:
    json.dump({"rc": rc, "loaded": {m: m in sys.modules for m in heavy}, "modules": len(sys.modules)}, fh)
"""


def parse_importtime(stderr: str) -> list[tuple[str, int, int, int]]:
    """(module, self_us, cumulative_us, depth) per ``-X importtime`` line."""
    rows = []
    for line in stderr.splitlines():
        m = re.match(r"import time:\s+(\d+) \|\s+(\d+) \|( *)(\S+)", line)
        if m:
            rows.append((m.group(4), int(m.group(1)), int(m.group(2)), (len(m.group(3)) - 1) // 2))
    return rows


def bench_imports(host: Path, bdir: Path, workdir: Path, repeat: int) -> dict[str, Any]:
    args = ["run", "--once", "--host-root", str(host), "--baselines", str(bdir), "--state-dir", str(workdir / "state-imports")]
    env = dict(os.environ)
    out = workdir / "imports.json"
    probe = run_child([sys.executable, "-c", MODULES_PROBE, str(out), *args], env=env)
    if probe["rc"] not in (0, 3):
        raise SystemExit(f"import probe failed:\n{probe['stderr'][-2000:]}")
    loaded = json.loads(out.read_text())

    def once_path(rows: list[tuple[str, int, int, int]]) -> list[tuple[str, int, int, int]]:
        """Top-level imports from driftd.cli on (interpreter start-up before it is not the --once path's)."""
        first = next(i for i, row in enumerate(rows) if row[0] == "driftd" or row[0].startswith("driftd."))
        first = max(i for i in range(first + 1) if i == 0 or rows[i - 1][3] == 0)  # whole import tree of that row
        return rows[first:]

    best: list[tuple[str, int, int, int]] | None = None
    for _ in range(repeat):
        r = run_child([sys.executable, "-X", "importtime", "-c", MODULES_PROBE, str(out), *args], env=env)
        rows = once_path(parse_importtime(r["stderr"]))
        if best is None or sum(row[2] for row in rows if row[3] == 0) < sum(row[2] for row in best if row[3] == 0):
            best = rows
    assert best is not None
    top = sorted((row for row in best if row[3] == 0), key=lambda x: -x[2])
    driftd_total = sum(row[2] for row in best if row[3] == 0)
    by_package: dict[str, int] = {}
    for name, self_us, _, _ in best:
        by_package[name.split(".")[0]] = by_package.get(name.split(".")[0], 0) + self_us
    packages = sorted(by_package.items(), key=lambda kv: -kv[1])
    startup = [run_child([sys.executable, "-c", "pass"])["wall_s"] for _ in range(repeat)]
    cli_import = [run_child([sys.executable, "-c", "import driftd.cli"])["wall_s"] for _ in range(repeat)]
    return {
        "once_path_modules_loaded": loaded["loaded"],
        "once_path_module_count": loaded["modules"],
        "importtime_total_ms": round(driftd_total / 1000, 1),
        "importtime_top_level_ms": {name: round(c / 1000, 1) for name, _, c, _ in top[:15]},
        "importtime_self_by_package_ms": {name: round(us / 1000, 1) for name, us in packages[:20]},
        "python_startup_wall_s": run_stats(startup),
        "python_import_driftd_cli_wall_s": run_stats(cli_import),
    }


# --------------------------------------------------------------------------- report


def write_markdown(path: Path, res: dict[str, Any]) -> None:
    lines = [
        "# driftd host benchmark",
        "",
        f"{res['meta']['date']} · Python {res['meta']['python']} · {res['meta']['machine']} · "
        f"{res['meta']['cpus']} CPUs · driftd {res['meta']['git']} · {res['meta']['repeat']} repeats · "
        f"load {res['meta']['loadavg_1m_at_start']} at start",
        "",
        f"Work dir fsync latency (median): file {res['meta']['fsync_latency_ms']['file_median']} ms, directory "
        f"{res['meta']['fsync_latency_ms']['dir_median']} ms; each content revert costs 3 fsyncs (snapshot, file, directory). "
        f"Bytecode: {res['meta']['bytecode']}.",
        "",
        "`driftd run --once` as a subprocess (wall includes interpreter start-up; CPU = user+sys of the child; "
        "drift = 10 % content + 5 % mode drift, all reverted; the state directory persists across runs):",
        "",
        "| N | scenario | wall median (s) | wall min (s) | CPU median (s) | CPU min (s) | peak RSS median (MiB) |",
        "|---:|---|---:|---:|---:|---:|---:|",
    ]
    for n, r in res["sizes"].items():
        for scen in ("once_drift", "once_clean"):
            s = r[scen]
            lines.append(
                f"| {int(n):,} | {scen} | {s['wall_s']['median']:.3f} | {s['wall_s']['min']:.3f} | "
                f"{s['cpu_s']['median']:.3f} | {s['cpu_s']['min']:.3f} | {s['maxrss_mib']['median']:.1f} |"
            )
    lines += [
        "",
        "Daemon pass (`Engine.scan`, in-process `time.process_time()`, after a first pass warmed the stat cache):",
        "",
        "| N | warm scan CPU median (s) | warm scan CPU min (s) | files hashed (warm) | full re-hash CPU median (s) | files hashed (full) |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    for n, r in res["sizes"].items():
        d = r["daemon_scan"]
        lines.append(
            f"| {int(n):,} | {d['warm_scan_cpu_s']['median']:.3f} | {d['warm_scan_cpu_s']['min']:.3f} | "
            f"{max(d['warm_scan_files_hashed'])} | {d['full_rehash_scan_cpu_s']['median']:.3f} | "
            f"{min(d['full_rehash_scan_files_hashed'])} |"
        )
    imp = res["imports"]
    loaded = ", ".join(f"{m}={'yes' if v else 'no'}" for m, v in imp["once_path_modules_loaded"].items())
    lines += [
        "",
        f"Imports on the `--once` path: {imp['importtime_total_ms']} ms (`-X importtime`, top level, best of "
        f"{res['meta']['repeat']}); `python -c pass` {imp['python_startup_wall_s']['median']:.3f} s, "
        f"`python -c 'import driftd.cli'` {imp['python_import_driftd_cli_wall_s']['median']:.3f} s.",
        "",
        f"Loaded by `--once`: {loaded}.",
        "",
        "Import self-time by package on the `--once` path (ms, `-X importtime`): "
        + ", ".join(f"{k} {v}" for k, v in list(imp["importtime_self_by_package_ms"].items())[:12])
        + ". (`rich` is not a driftd dependency: structlog imports it when it is installed, as in a dev venv "
        "where import-linter pulls it in.)",
        "",
        "Targets:",
        "",
        "| target | limit | measured | met |",
        "|---|---:|---:|---|",
    ]
    for t in res["targets"]:
        lines.append(f"| {t['name']} | {t['limit']} | {t['measured']} | {'yes' if t['met'] else '**no**'} |")
    path.write_text("\n".join(lines) + "\n")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="1000,10000", help="comma-separated numbers of managed files")
    ap.add_argument("--repeat", type=int, default=5, help="repeats per measurement (median and min reported)")
    ap.add_argument("--out", default=str(HERE / "results"), help="results directory")
    ap.add_argument("--workdir", help="where to build the trees (default: a fresh temp dir)")
    ap.add_argument("--keep", action="store_true", help="keep the temp trees")
    ap.add_argument("--name", default="host", help="results file stem: <out>/<name>.json and <name>.md (default host)")
    args = ap.parse_args()

    if not DRIFTD.exists():
        raise SystemExit(f"{DRIFTD} not found: run with the venv's python (.venv/bin/python bench/bench_host.py)")
    sizes = [int(s) for s in args.sizes.split(",") if s]
    base = Path(tempfile.mkdtemp(prefix="driftd-bench-", dir=args.workdir))
    try:
        bytecode = ensure_bytecode()
        git = subprocess.run(["git", "-C", str(REPO), "describe", "--always", "--dirty"], capture_output=True, text=True)
        res: dict[str, Any] = {
            "meta": {
                "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "python": platform.python_version(),
                "machine": f"{platform.system()} {platform.machine()}",
                "cpus": os.cpu_count(),
                "git": git.stdout.strip() or "unknown",
                "repeat": args.repeat,
                "workdir": str(base),
                "content_drift": f"1 in {CONTENT_DRIFT_EVERY}",
                "mode_drift": f"1 in {MODE_DRIFT_EVERY}",
                "bytecode": bytecode,
                "fsync_latency_ms": fsync_latency_ms(base),
                "loadavg_1m_at_start": round(os.getloadavg()[0], 2),
            },
            "sizes": {},
        }
        for n in sizes:
            work = base / f"n{n}"
            work.mkdir()
            print(f"N={n}: building tree ...", file=sys.stderr)
            host, bdir = build(work, n)
            print(f"N={n}: driftd run --once x{args.repeat} (drift, clean) ...", file=sys.stderr)
            r = bench_once(work, host, bdir, n, args.repeat)
            print(f"N={n}: daemon scan ...", file=sys.stderr)
            r["daemon_scan"] = bench_daemon_scan(work, host, bdir, args.repeat)
            res["sizes"][str(n)] = r
            if n == sizes[0]:
                print("imports ...", file=sys.stderr)
                res["imports"] = bench_imports(host, bdir, work, args.repeat)
            od, dsc = r["once_drift"], r["daemon_scan"]
            print(
                f"N={n}: once(drift) wall {od['wall_s']['median']:.3f}/{od['wall_s']['min']:.3f}s "
                f"cpu {od['cpu_s']['median']:.3f}s rss {od['maxrss_mib']['median']:.1f}MiB; "
                f"once(clean) wall {r['once_clean']['wall_s']['median']:.3f}s; "
                f"warm scan cpu {dsc['warm_scan_cpu_s']['median']:.4f}s (hashed {max(dsc['warm_scan_files_hashed'])})",
                file=sys.stderr,
            )
        targets = []
        if "1000" in res["sizes"]:
            once = res["sizes"]["1000"]["once_drift"]
            targets.append(
                {"name": "N=1,000 run --once wall (median)", "limit": "< 0.5 s", "measured": once["wall_s"]["median"],
                 "met": once["wall_s"]["median"] < TARGETS["once_wall_s_at_1000"]}
            )
            targets.append(
                {"name": "N=1,000 run --once peak RSS (max)", "limit": "< 60 MiB", "measured": once["maxrss_mib"]["max"],
                 "met": once["maxrss_mib"]["max"] < TARGETS["once_peak_rss_mib_at_1000"]}
            )
        if "10000" in res["sizes"]:
            d = res["sizes"]["10000"]["daemon_scan"]
            targets.append(
                {"name": "N=10,000 daemon scan CPU, no drift (median)", "limit": "< 0.3 s",
                 "measured": d["warm_scan_cpu_s"]["median"], "met": d["warm_scan_cpu_s"]["median"] < TARGETS["daemon_scan_cpu_s_at_10000"]}
            )
            targets.append(
                {"name": "N=10,000 warm scan re-hashes nothing", "limit": "0 files", "measured": max(d["warm_scan_files_hashed"]),
                 "met": max(d["warm_scan_files_hashed"]) == 0 and min(d["full_rehash_scan_files_hashed"]) == 10000}
            )
        if "imports" in res:
            loaded = res["imports"]["once_path_modules_loaded"]
            bad = [m for m in ("docker", "kubernetes", "apscheduler") if loaded[m]]
            targets.append({"name": "--once imports no docker/kubernetes/apscheduler", "limit": "none",
                            "measured": ", ".join(bad) or "none", "met": not bad})
        res["targets"] = targets
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / f"{args.name}.json").write_text(json.dumps(res, indent=2) + "\n")
        write_markdown(out / f"{args.name}.md", res)
        print(f"wrote {out / (args.name + '.json')} and {out / (args.name + '.md')}", file=sys.stderr)
        return 0 if all(t["met"] for t in targets) else 1
    finally:
        if not args.keep:
            shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
