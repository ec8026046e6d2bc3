"""Where a ``run --once`` start goes: interpreter, the required libraries' imports, driftd's own, the pass.

Usage::

    .venv/bin/python bench/bench_startup.py            # -> bench/results/startup.{json,md}

Run by the runtime-only venv (``requirements.lock``, as ``bench_vs_cfengine.py``), with driftd's
bytecode compiled.  Measured, median of ``--repeat`` runs each (wall, peak RSS):

* ``python -c pass``;
* the floor the required stack sets: ``from pydantic import BaseModel`` + ``import structlog`` +
  ``sqlite3`` (one model validated), which any driftd start pays;
* ``driftd run --once`` on an empty baselines directory and on one in-sync file (``source:``), the
  second with a warm baseline cache (the first run of each cell is not counted);
* CFEngine's ``cf-agent`` on the same two cells (the policies of ``bench_vs_cfengine.py``);
* ``python -X importtime`` of the empty run: self time by top-level package (inflated by the
  measurement itself; the shares are what matters), and the modules a host-only pass loads.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import bench_vs_cfengine as vs  # noqa: E402

FLOOR = ("from pydantic import BaseModel; import structlog, sqlite3\n"
         "class M(BaseModel):\n    x: int\nM(x=1)")


def median_run(cmd: list[str], env: dict[str, str], repeat: int) -> dict[str, float]:
    runs = [vs.run_child(cmd, env=env) for _ in range(repeat)]
    bad = [r for r in runs if r["rc"] not in (0,)]
    if bad:
        raise vs.BenchError(f"{cmd}: rc {bad[0]['rc']}\n{vs._tail(bad[0])}")
    return {"wall_s": round(statistics.median(r["wall_s"] for r in runs), 4),
            "rss_mib": round(statistics.median(r["maxrss_mib"] for r in runs), 1)}


def importtime(py: Path, cmd: list[str], env: dict[str, str]) -> tuple[dict[str, float], list[str]]:
    r = subprocess.run([str(py), "-X", "importtime", *cmd[1:]], capture_output=True, text=True, env=env, check=False)
    by_pkg: dict[str, float] = {}
    modules: list[str] = []
    for line in r.stderr.splitlines():
        if not line.startswith("import time:") or "|" not in line or "self [us]" in line:
            continue
        self_part, _cumulative, name = line.split("|")
        name = name.strip()
        modules.append(name)
        top = name.split(".")[0]
        key = ".".join(name.split(".")[:2]) if top == "driftd" else top
        by_pkg[key] = by_pkg.get(key, 0.0) + int(self_part.split(":")[-1]) / 1000
    return dict(sorted(by_pkg.items(), key=lambda kv: -kv[1])), modules


def loaded_modules(py: Path, cmd: list[str], env: dict[str, str]) -> list[str]:
    """``sys.modules`` after the pass (importtime also lists imports that failed, e.g. structlog's try of rich)."""
    probe = ("import json, sys\nfrom driftd.cli import main\nmain(sys.argv[1:])\n"
             "print(json.dumps(sorted(sys.modules)), file=sys.stderr)")
    r = subprocess.run([str(py), "-c", probe, *cmd[3:]], capture_output=True, text=True, env=env, check=False)
    return list(json.loads(r.stderr.strip().splitlines()[-1]))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeat", type=int, default=9)
    ap.add_argument("--out", default=str(HERE / "results"))
    ap.add_argument("--name", default="startup")
    args = ap.parse_args()
    py = vs.runtime_venv()
    vs.DRIFTD_PY = py
    vs.ensure_bytecode(vs.REPO)
    vs.Spawner.start()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DRIFTD_", "CFENGINE"))}
    env["PYTHONPATH"] = str(vs.REPO) + os.pathsep + env.get("PYTHONPATH", "")
    base = Path(tempfile.mkdtemp(prefix="driftd-startup-"))  # (left for inspection; small)
    rows: dict[str, dict[str, float]] = {}
    rows["python -c pass"] = median_run([str(py), "-c", "pass"], env, args.repeat)
    rows["floor: pydantic + structlog + sqlite3"] = median_run([str(py), "-c", FLOOR], env, args.repeat)
    empty_cmd: list[str] = []
    for n in (0, 1):
        cell = base / f"n{n}"
        fx = vs.build_fixture(cell / "fixture", "flat", n)
        (cell / "driftd").mkdir()
        (cell / "cfengine").mkdir()
        d = vs.Driftd(fx, cell / "driftd", env)
        cf = vs.CFEngine(fx, cell / "cfengine", env)
        d.run("check")  # warm: state directory, baseline cache, page cache
        cf.run("check")
        rows[f"driftd run --once, N={n}"] = median_run(d.cmd("check"), env, args.repeat)
        rows[f"cf-agent, N={n}"] = median_run(cf.cmd("check"), env, args.repeat)
        if n == 0:
            empty_cmd = d.cmd("check")
    by_pkg, modules = importtime(py, empty_cmd, env)
    cf0 = rows["cf-agent, N=0"]["wall_s"]
    res: dict[str, Any] = {
        "meta": {"date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "repeat": args.repeat,
                 "driftd": subprocess.run(["git", "-C", str(vs.REPO), "describe", "--always", "--dirty"],
                                          capture_output=True, text=True).stdout.strip(),
                 "cfengine": vs.cf_version(), "command": " ".join([".venv/bin/python", "bench/bench_startup.py", *sys.argv[1:]])},
        "rows": rows, "importtime_ms_by_package": by_pkg, "modules": len(modules),
        "loaded": {m: any(x == m or x.startswith(m + ".") for x in loaded_modules(py, empty_cmd, env))
                   for m in ("docker", "kubernetes", "apscheduler", "prometheus_client", "deepdiff", "cryptography", "yaml",
                             "pydantic_settings", "rich", "http.server")},
    }
    lines = [
        "# `run --once` start-up: where the time goes",
        "",
        f"{res['meta']['date']} · driftd {res['meta']['driftd']} · {res['meta']['cfengine']} · runtime-only venv · "
        f"median of {args.repeat} · `{res['meta']['command']}`",
        "",
        "| what | wall (s) | peak RSS (MiB) | wall / cf-agent N=0 |",
        "|---|---:|---:|---:|",
    ]
    for k, v in rows.items():
        lines.append(f"| {k} | {v['wall_s']:.3f} | {v['rss_mib']:.1f} | {v['wall_s'] / cf0:.2f} |")
    lines += ["", "`-X importtime` of the empty run, self time by package (ms; the measurement inflates it):", ""]
    lines.append(", ".join(f"{k} {v:.1f}" for k, v in list(by_pkg.items())[:16]) + f" ({res['modules']} modules).")
    lines += ["", "Loaded by a host-only `run --once`: " + ", ".join(f"{k}={'yes' if v else 'no'}" for k, v in res["loaded"].items()) + "."]
    out = Path(args.out)
    (out / f"{args.name}.json").write_text(json.dumps(res, indent=2) + "\n")
    (out / f"{args.name}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines), file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
