"""Peak memory of driftd at N files in one directory: ``run --once`` (check, enforce; cold and warm cache) and the daemon.

Usage::

    .venv/bin/python bench/bench_memory.py                     # N = 0, 1000, 10000 -> bench/results/memory.{json,md}
    .venv/bin/python bench/bench_memory.py --sizes 10000 --name memory-quick

The workload is ``bench_vs_cfengine.py``'s flat layout (files of 335 B, ``source:`` beside the YAML,
drift in 10 % content + 5 % mode), run by the same runtime-only venv (``requirements.lock``).
Peak RSS is the kernel's high-water mark of the process: ``ru_maxrss`` of the ``--once`` child
(``os.wait4``), ``VmHWM`` of the daemon read from ``/proc/<pid>/status`` just before it is stopped.

* ``once cold``: the first ``run --once`` on a fresh state directory (no baseline cache; the cache is
  kept inside an existing state directory only, so the second run stores it, not counted).
* ``once check`` / ``once enforce``: later runs (the cache of the validated set is warm), each
  enforce on freshly re-drifted files.
* ``daemon``: ``driftd run`` (metrics + API listener on 127.0.0.1, inotify, 2 workers) on the state
  directory the ``--once`` runs left (a restarted agent: warm baseline cache), after its start-up scan, a drift of 15 % of the files reverted (event-driven and scheduled), and two more
  full scans (``scan.interval_seconds`` 3 s); every drifted file is verified reverted.

The issue-11 target is a peak of at most 60 MiB at N = 10,000 for ``--once`` and for the daemon.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import _common  # noqa: E402
import bench_vs_cfengine as vs  # noqa: E402

TARGET_MIB = 60.0


def _once(py: Path, fx: Any, cell: Path, env: dict[str, str], mode: str) -> dict[str, Any]:
    d = vs.Driftd.__new__(vs.Driftd)
    d.fx, d.env = fx, env
    d.host, d.state, d.config = cell / "host", cell / "state", cell / "driftd.yaml"
    r = vs.run_child(d.cmd(mode), env=env)
    d.verify(mode, r, f"once {mode}")
    return r


def _status_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} for {pid}")


def _wait_log(log: Path, event: str, count: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        n = sum(1 for line in log.read_text().splitlines() if f'"event": "{event}"' in line)
        if n >= count:
            return
        time.sleep(0.2)
    raise vs.BenchError(f"daemon: fewer than {count} {event} in {timeout:.0f} s\n{log.read_text()[-3000:]}")


def _daemon(py: Path, fx: Any, cell: Path, env: dict[str, str]) -> dict[str, Any]:
    host, state, config = cell / "host", cell / "state", cell / "driftd-daemon.yaml"  # the --once runs' state: a restart
    config.write_text(vs.DRIFTD_CONFIG + "scan:\n  interval_seconds: 3\n  jitter_seconds: 0\n")
    port, api = _common.free_port(), _common.free_port()
    log = cell / "daemon.log"
    cmd = [str(py), "-m", "driftd", "run", "--config", str(config), "--host-root", str(host), "--baselines", str(fx.bdir),
           "--state-dir", str(state), "--node-name", "bench", "--listen", f"127.0.0.1:{port}",
           "--api-listen", f"127.0.0.1:{api}", "--log-format", "json"]
    with log.open("w") as fh:
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env)
    try:
        _wait_log(log, "scan.finished", 1, 120)
        after_start = _status_kib(proc.pid, "VmHWM")
        vs.inject_drift(fx, host, 7)
        drifted = sum(len(s) for s in fx.drifted())
        _wait_log(log, "remediation.succeeded", drifted, 300)
        scans = sum(1 for line in log.read_text().splitlines() if '"event": "scan.finished"' in line)
        _wait_log(log, "scan.finished", scans + 2, 120)
        vs.verify_compliant(fx, host, "daemon")
        code, _ = _common.http_get(f"http://127.0.0.1:{port}/metrics")
        if code != 200:
            raise vs.BenchError(f"daemon: /metrics answered {code}")
        hwm, rss = _status_kib(proc.pid, "VmHWM"), _status_kib(proc.pid, "VmRSS")
    finally:
        rc = _common.stop_daemon(proc)
    if rc != 0:
        raise vs.BenchError(f"daemon exited {rc}\n{log.read_text()[-3000:]}")
    return {"peak_mib": round(hwm / 1024, 1), "rss_mib": round(rss / 1024, 1),
            "after_start_mib": round(after_start / 1024, 1), "reverted": drifted}


def bench(n: int, base: Path, py: Path, env: dict[str, str], repeat: int) -> dict[str, Any]:
    cell = base / f"n{n}"
    fx = vs.build_fixture(cell / "fixture", "flat", n)
    vs.build_tree(fx, cell / "host")
    (cell / "driftd.yaml").write_text(vs.DRIFTD_CONFIG)
    out: dict[str, Any] = {}
    if n:
        vs.inject_drift(fx, cell / "host", 0)
    out["once cold"] = _once(py, fx, cell, env, "check")["maxrss_mib"]  # fresh state directory: nothing cached
    _once(py, fx, cell, env, "check")  # the state directory exists now: this run stores the validated set
    checks, enforces = [], []
    for i in range(repeat):
        checks.append(_once(py, fx, cell, env, "check")["maxrss_mib"])
        if n:
            vs.inject_drift(fx, cell / "host", i + 1)
        enforces.append(_once(py, fx, cell, env, "enforce")["maxrss_mib"])
        vs.verify_compliant(fx, cell / "host", "once enforce")
        if n:
            vs.inject_drift(fx, cell / "host", 100 + i)
    out["once check"], out["once enforce"] = max(checks), max(enforces)
    if n:
        shutil.rmtree(cell / "host")
        vs.build_tree(fx, cell / "host")  # compliant again before the daemon starts
    out["daemon"] = _daemon(py, fx, cell, env)
    print(f"N={n}: {json.dumps(out)}", file=sys.stderr)
    return out


def write_markdown(path: Path, res: dict[str, Any]) -> None:
    m = res["meta"]
    lines = [
        "# driftd peak memory (`run --once` and the daemon), flat directory",
        "",
        f"{m['date']} · {m['machine']} · Python {m['python']} · driftd {m['driftd']} · runtime-only venv "
        f"(`requirements.lock`) · max of {m['repeat']} runs per `--once` cell",
        "",
        f"Reproduce: `{m['command']}`. Method: see the script's docstring. Target (issue 11): peak RSS <= {TARGET_MIB:.0f} MiB "
        "at N = 10,000 for `--once` and for the daemon.",
        "",
        "| N | once cold (MiB) | once check (MiB) | once enforce (MiB) | daemon peak (MiB) | daemon after start-up scan | daemon RSS at the end |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for n, r in res["sizes"].items():
        d = r["daemon"]
        lines.append(f"| {int(n):,} | {r['once cold']:.1f} | {r['once check']:.1f} | {r['once enforce']:.1f} | "
                     f"{d['peak_mib']:.1f} | {d['after_start_mib']:.1f} | {d['rss_mib']:.1f} |")
    big = res["sizes"].get("10000")
    if big:
        worst_once = max(big["once check"], big["once enforce"])
        lines += ["", f"N = 10,000: warm `--once` peak {worst_once:.1f} MiB "
                  f"({'met' if worst_once <= TARGET_MIB else 'missed'}), daemon peak {big['daemon']['peak_mib']:.1f} MiB "
                  f"({'met' if big['daemon']['peak_mib'] <= TARGET_MIB else 'missed'}), first (cold) `--once` "
                  f"{big['once cold']:.1f} MiB."]
    lines += ["", *res.get("notes", [])]
    path.write_text("\n".join(lines).rstrip("\n") + "\n")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="0,1000,10000")
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--python", help="interpreter that runs driftd (default: the runtime-only venv)")
    ap.add_argument("--out", default=str(HERE / "results"))
    ap.add_argument("--name", default="memory")
    ap.add_argument("--notes", help="markdown lines appended under the table")
    args = ap.parse_args()
    py = Path(args.python) if args.python else vs.runtime_venv()
    vs.DRIFTD_PY = py
    vs.ensure_bytecode(vs.REPO)
    vs.Spawner.start()
    env = {k: v for k, v in os.environ.items() if not k.startswith("DRIFTD_")}
    env["PYTHONPATH"] = str(vs.REPO) + os.pathsep + env.get("PYTHONPATH", "")
    git = subprocess.run(["git", "-C", str(vs.REPO), "describe", "--always", "--dirty"], capture_output=True, text=True)
    base = Path(tempfile.mkdtemp(prefix="driftd-memory-"))
    res: dict[str, Any] = {
        "meta": {
            "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "machine": f"{os.cpu_count()} CPUs, {platform.machine()}",
            "python": platform.python_version(),
            "driftd": git.stdout.strip(),
            "repeat": args.repeat,
            "command": " ".join([".venv/bin/python", "bench/bench_memory.py", *sys.argv[1:]]),
        },
        "sizes": {},
    }
    if args.notes:
        res["notes"] = Path(args.notes).read_text().rstrip("\n").splitlines()
    try:
        for n in [int(s) for s in args.sizes.split(",") if s.strip()]:
            res["sizes"][str(n)] = bench(n, base, py, env, args.repeat)
    finally:
        shutil.rmtree(base, ignore_errors=True)
    out = Path(args.out)
    (out / f"{args.name}.json").write_text(json.dumps(res, indent=2) + "\n")
    write_markdown(out / f"{args.name}.md", res)
    print(f"wrote {out / args.name}.md", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
