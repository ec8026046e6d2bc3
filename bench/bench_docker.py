"""Benchmark of the Docker target against the real engine: scan cost at 200 containers, revert latency.

Usage::

    .venv/bin/python bench/bench_docker.py                  # 200 containers, 5 passes, 7 latency samples
    .venv/bin/python bench/bench_docker.py --containers 50 --passes 3 --samples 3

Needs the local engine and test images of ``scripts/docker-env.sh``.  It creates N
hardened containers (``driftd-test/busybox:1.0``, network ``none``, user 1000, all
capabilities dropped, read-only root, no-new-privileges, started; the image's command is
a sleeping shell) labelled ``driftd-bench=<run id>`` and ``driftd-test=1``, governed by one
``ContainerBaseline`` with ``ungoverned: ignore`` (other containers on the engine are not
part of the pass), then measures:

* ``scan``: in a child process (so its peak RSS is driftd's alone), ``Engine.scan`` with
  the Docker target: one listing, then per container an inspect and a filesystem diff,
  normalised and diffed against the baseline.  Every pass is timed for wall
  (``time.perf_counter``) and CPU (``time.process_time``, user + sys of the process);
  peak RSS is ``resource.getrusage(RUSAGE_SELF).ru_maxrss`` after the passes.  The first
  pass includes connecting and resolving the approved image.
* ``revert``: ``driftd run --docker`` as a subprocess (interval 3600 s, no jitter: only its
  first scan runs, so reverts are event-driven).  For each sample a drifted container
  (user root, no capabilities dropped) is started with the baseline's label; the latency
  is from the moment ``start`` returns until a container of that name with a different id
  is running as user 1000 with all capabilities dropped.

Every container with the run's label (replacements included) is removed at the end.
Results go to ``bench/results/docker.json`` and ``bench/results/docker.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
VENV_BIN = Path(sys.executable).parent
DRIFTD = VENV_BIN / "driftd"
SOCKET_URL = "unix:///var/run/docker.sock"
IMAGE = "driftd-test/busybox:1.0"
LABEL = "driftd-bench"
HARDENED: dict[str, Any] = {"user": "1000", "cap_drop": ["ALL"], "read_only": True, "security_opt": ["no-new-privileges"]}


def baseline_yaml(run_id: str, image_id: str) -> str:
    return f"""apiVersion: driftd.io/v1alpha1
kind: ContainerBaseline
metadata:
  name: bench-hardened
spec:
  selector:
    matchLabels:
      {LABEL}: "{run_id}"
  images:
    approved: ["{image_id}"]
  ungoverned: ignore
  runtime:
    user: "1000"
    privileged: false
    capAdd: []
    capDrop: [ALL]
    readOnlyRootFilesystem: true
    noNewPrivileges: true
"""


# --------------------------------------------------------------------------- scan child


def scan_child(host: Path, bdir: Path, state: Path, passes: int) -> dict[str, Any]:
    """Run in a fresh interpreter: build the runtime, scan ``passes`` times, report each pass."""
    from prometheus_client import CollectorRegistry

    from driftd.baselines.loader import load_set
    from driftd.engine.queue import KeyedQueue
    from driftd.observability.logging import configure_logging
    from driftd.runtime import build_runtime
    from driftd.settings import load_settings

    configure_logging("json", "error")
    settings = load_settings(host_root=host, baselines=bdir, state_dir=state, node_name="bench", docker={"enabled": True})
    rt = build_runtime(settings, registry=CollectorRegistry())
    bset, problems = load_set(bdir)
    assert bset is not None, problems
    rt.engine.set_baselines(bset)
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    rows = []
    for _ in range(passes):
        queue = KeyedQueue()
        w0, c0 = time.perf_counter(), time.process_time()
        report = rt.engine.scan(queue)
        rows.append({"wall_s": time.perf_counter() - w0, "cpu_s": time.process_time() - c0,
                     "resources": report.resources, "drifted": report.drifted, "errors": report.errors})
    return {"passes": rows, "rss_before_scans_kib": rss_before,
            "peak_rss_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}


# --------------------------------------------------------------------------- parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def http_status(url: str) -> int:
    import urllib.error
    import urllib.request

    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(url, timeout=2) as r:
            return int(r.status)
    except urllib.error.HTTPError as e:
        return int(e.code)
    except OSError:
        return 0


def create_containers(client: Any, run_id: str, n: int, workers: int = 8) -> float:
    labels = {LABEL: run_id, "driftd-test": "1"}

    def one(i: int) -> None:
        c = client.containers.create(IMAGE, name=f"bench-{run_id}-{i:04d}", network_mode="none", labels=labels, **HARDENED)
        c.start()

    started = time.perf_counter()
    with ThreadPoolExecutor(workers) as pool:
        list(pool.map(one, range(n)))
    return time.perf_counter() - started


def cleanup(client: Any, run_id: str) -> int:
    removed = 0
    for c in client.containers.list(all=True, filters={"label": f"{LABEL}={run_id}"}):
        try:
            client.api.remove_container(c.id, force=True, v=True)
            removed += 1
        except Exception as e:  # keep going: the label sweep can be rerun
            print(f"could not remove {c.name}: {e}", file=sys.stderr)
    return removed


def measure_scan(tmp: Path, bdir: Path, passes: int) -> dict[str, Any]:
    host = tmp / "host"
    (host / "etc").mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, __file__, "--scan-child", str(host), str(bdir), str(tmp / "scan-state"), str(passes)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:
        raise RuntimeError(f"scan child failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def wait_reverted(client: Any, name: str, old_id: str, timeout: float) -> float | None:
    import docker

    started = time.monotonic()
    while time.monotonic() - started < timeout:
        try:
            c = client.containers.get(name)
            if (c.id != old_id and c.status == "running" and c.attrs["Config"]["User"] == "1000"
                    and c.attrs["HostConfig"]["CapDrop"] == ["ALL"]):
                return time.monotonic() - started
        except docker.errors.NotFound:
            pass  # between the rename of the old container and the create of the new one
        time.sleep(0.01)
    return None


def measure_revert(client: Any, tmp: Path, bdir: Path, run_id: str, samples: int) -> dict[str, Any]:
    port = free_port()
    env = dict(os.environ, DRIFTD_SCAN__JITTER_SECONDS="0")
    env.pop("DRIFTD_CONFIG", None)
    log = tmp / "daemon.log"
    (tmp / "host" / "etc").mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen(
        [str(DRIFTD), "run", "--docker", "--host-root", str(tmp / "host"), "--baselines", str(bdir),
         "--state-dir", str(tmp / "daemon-state"), "--listen", f"127.0.0.1:{port}", "--interval", "3600",
         "--log-format", "json", "--log-level", "info"],
        env=env, stdout=log.open("wb"), stderr=subprocess.STDOUT,
    )
    labels = {LABEL: run_id, "driftd-test": "1"}
    latencies: list[float] = []
    misses = 0
    try:
        t0 = time.monotonic()
        while http_status(f"http://127.0.0.1:{port}/readyz") != 200:
            if proc.poll() is not None or time.monotonic() - t0 > 120:
                raise RuntimeError(f"daemon not ready:\n{log.read_text()[-3000:]}")
            time.sleep(0.1)
        ready_s = time.monotonic() - t0
        for i in range(samples):
            c = client.containers.create(IMAGE, name=f"bench-{run_id}-drift{i}", network_mode="none", labels=labels,
                                         user="0")
            c.start()
            took = wait_reverted(client, c.name, c.id, timeout=30)
            if took is None:
                misses += 1
            else:
                latencies.append(took)
            time.sleep(0.5)
        scans = sum(1 for line in log.read_text().splitlines() if '"scan.finished"' in line)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            rc = proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            rc = proc.wait(5)
    return {
        "samples_s": [round(x, 4) for x in latencies],
        "median_s": round(statistics.median(latencies), 4) if latencies else None,
        "max_s": round(max(latencies), 4) if latencies else None,
        "min_s": round(min(latencies), 4) if latencies else None,
        "not_reverted_in_30s": misses,
        "daemon_ready_s": round(ready_s, 3),
        "daemon_scans": scans,
        "daemon_exit_code": rc,
    }


def write_markdown(path: Path, res: dict[str, Any]) -> None:
    s, r = res["scan"], res["revert"]
    steady = s["steady"]
    lines = [
        "# Docker target benchmark",
        "",
        f"Engine {res['engine']['version']} ({res['engine']['storage_driver']}), {res['machine']['cpus']} CPUs, "
        f"Python {res['machine']['python']}; {res['containers']} hardened running containers "
        f"(created in {res['create_s']:.1f} s), one ContainerBaseline.",
        "",
        "## Scan: `Engine.scan` with the Docker target (observe + diff every container)",
        "",
        "| pass | wall (s) | CPU (s) | resources | drifted | errors |",
        "|---|---|---|---|---|---|",
    ]
    for i, p in enumerate(s["passes"], 1):
        lines.append(f"| {i} | {p['wall_s']:.3f} | {p['cpu_s']:.3f} | {p['resources']} | {p['drifted']} | {p['errors']} |")
    lines += [
        "",
        f"Steady state (passes 2..{len(s['passes'])}): median wall **{steady['wall_median_s']:.3f} s**, "
        f"median CPU **{steady['cpu_median_s']:.3f} s** ({steady['wall_per_container_ms']:.2f} ms wall, "
        f"{steady['cpu_per_container_ms']:.2f} ms CPU per container). "
        f"Peak RSS of the scanning process: **{s['peak_rss_mib']:.1f} MiB** "
        f"({s['rss_before_scans_mib']:.1f} MiB before the first pass).",
        "",
        "## Drift to revert (daemon, event-driven)",
        "",
        f"`driftd run --docker` with {res['containers']} governed containers; a container started as root without "
        f"dropped capabilities, timed until its hardened replacement runs. {len(r['samples_s'])} samples: "
        f"median **{r['median_s']} s**, max **{r['max_s']} s**, min {r['min_s']} s; "
        f"not reverted within 30 s: {r['not_reverted_in_30s']}. Scans the daemon ran: {r['daemon_scans']} "
        f"(the first only); exit code on SIGTERM: {r['daemon_exit_code']}.",
        "",
        f"Samples (s): {', '.join(str(x) for x in r['samples_s'])}",
        "",
    ]
    path.write_text("\n".join(lines))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--containers", type=int, default=200)
    ap.add_argument("--passes", type=int, default=5)
    ap.add_argument("--samples", type=int, default=7)
    ap.add_argument("--out", default=str(HERE / "results"), help="results directory")
    ap.add_argument("--scan-child", nargs=4, metavar=("HOST", "BASELINES", "STATE", "PASSES"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.scan_child:
        host, bdir, state, passes = args.scan_child
        print(json.dumps(scan_child(Path(host), Path(bdir), Path(state), int(passes))))
        return 0

    import docker

    client = docker.DockerClient(base_url=SOCKET_URL, timeout=60)
    try:
        client.ping()
        image_id = client.images.get(IMAGE).id
    except Exception as e:
        print(f"bench_docker: engine or {IMAGE} unavailable ({e}); run `bash scripts/docker-env.sh`", file=sys.stderr)
        return 1
    info = client.info()
    run_id = uuid.uuid4().hex[:10]
    res: dict[str, Any] = {
        "containers": args.containers,
        "engine": {"version": info.get("ServerVersion"), "storage_driver": info.get("Driver")},
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
        "run_id": run_id,
    }
    with tempfile.TemporaryDirectory(prefix="driftd-bench-docker-") as td:
        tmp = Path(td)
        bdir = tmp / "baselines"
        bdir.mkdir()
        (bdir / "bench.yaml").write_text(baseline_yaml(run_id, image_id))
        try:
            print(f"creating {args.containers} containers (run {run_id})", file=sys.stderr)
            res["create_s"] = round(create_containers(client, run_id, args.containers), 2)
            print(f"created in {res['create_s']} s; scanning {args.passes} passes", file=sys.stderr)
            scan = measure_scan(tmp, bdir, args.passes)
            steady = scan["passes"][1:] or scan["passes"]
            wall = statistics.median(p["wall_s"] for p in steady)
            cpu = statistics.median(p["cpu_s"] for p in steady)
            scan["steady"] = {
                "wall_median_s": round(wall, 4), "cpu_median_s": round(cpu, 4),
                "wall_per_container_ms": round(1000 * wall / args.containers, 3),
                "cpu_per_container_ms": round(1000 * cpu / args.containers, 3),
            }
            scan["peak_rss_mib"] = round(scan["peak_rss_kib"] / 1024, 1)
            scan["rss_before_scans_mib"] = round(scan["rss_before_scans_kib"] / 1024, 1)
            for p in scan["passes"]:
                p["wall_s"], p["cpu_s"] = round(p["wall_s"], 4), round(p["cpu_s"], 4)
            res["scan"] = scan
            bad = [p for p in scan["passes"] if p["resources"] != args.containers or p["drifted"] or p["errors"]]
            if bad:
                print(f"bench_docker: unexpected scan result {bad}", file=sys.stderr)
            print(f"scan: wall {wall:.3f} s, cpu {cpu:.3f} s, peak rss {scan['peak_rss_mib']} MiB; "
                  f"measuring revert latency ({args.samples} samples)", file=sys.stderr)
            res["revert"] = measure_revert(client, tmp, bdir, run_id, args.samples)
            print(f"revert: median {res['revert']['median_s']} s, max {res['revert']['max_s']} s", file=sys.stderr)
        finally:
            removed = cleanup(client, run_id)
            print(f"removed {removed} containers", file=sys.stderr)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "docker.json").write_text(json.dumps(res, indent=2) + "\n")
    write_markdown(out / "docker.md", res)
    print(f"wrote {out / 'docker.json'} and {out / 'docker.md'}", file=sys.stderr)
    return 0 if not bad and res["revert"]["not_reverted_in_30s"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
