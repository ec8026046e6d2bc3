"""Benchmark of change-to-revert latency of the Docker target, daemon at its default scan interval (issue 9).

Usage::

    .venv/bin/python bench/bench_revert_docker.py                    # 20 background containers, 50 samples
    .venv/bin/python bench/bench_revert_docker.py --containers 5 --samples 6

Needs the local engine and test images of ``scripts/docker-env.sh``.  Every container it
makes runs ``driftd-test/busybox:1.0`` with network ``none`` and carries the labels
``driftd-test=1`` and ``driftd-bench=<run id>`` (the baselines select on the run id, with
``ungoverned: ignore``, so no other container on the engine is governed or touched).

Two ``ContainerBaseline``\\ s: ``ro`` (user 1000, all capabilities dropped, no added ones,
not privileged, read-only root, no-new-privileges, restart policy ``no``) and ``rw`` (the
same without the read-only root, so a process inside can write to the container's layer;
the filesystem rule is the default: only ``/tmp``, ``/run``, ``/var/run`` may differ from
the image).  Before the daemon starts it creates ``--containers`` compliant ``ro``
containers that are never changed (the population the daemon watches) and one compliant
victim per ``update`` and ``exec`` sample.  Then ``driftd run --docker`` runs as a
subprocess with **no** ``--interval`` and no ``DRIFTD_*`` environment, i.e. the default
scan interval and jitter of ``driftd/settings.py`` (300 s, up to 30 s): it scans once at
start and then only events (the Docker events stream) trigger reconciles.

Samples, one at a time, rotating three kinds of change, each on a container of its own:

* ``start``: a drifted ``ro`` container (user root, no capabilities dropped) is created and
  started; timed from the moment ``start`` returns (the create and start call durations are
  recorded too, and the latency counted from just before the create is reported beside it).
* ``update``: a running compliant ``ro`` victim is changed in place with ``docker update``
  (restart policy ``always``); timed from the moment ``update`` returns.
* ``exec``: ``docker exec -u 0`` writes ``/etc/driftd-bench-drift`` into a running compliant
  ``rw`` victim; timed from the moment the exec has finished (``exec_run`` returns).

Each sample ends when the verified revert is seen: a container of that name with a
different id is running and is compliant again for what was changed (user 1000 and
``CapDrop == [ALL]``; restart policy ``no``; the written file absent from ``docker diff``).
The engine is polled with ``inspect`` every 10 ms; a sample not reverted within
``--timeout`` seconds counts as a miss.  Reported: p50/p95/p99 (``statistics.quantiles``,
inclusive), min, max, per kind and overall, and from the daemon's ``/metrics`` (scraped
just before it is stopped) and its log the scans it ran and the Docker events it queued, to
show the reverts were event-driven.

Every container with the run's label (replacements included) is removed at the end.
Results go to ``bench/results/revert-docker.json`` (raw samples) and
``bench/results/revert-docker.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from _common import free_port, http_get, log_summary, metric_sum, stats, stop_daemon

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
VENV_BIN = Path(sys.executable).parent
DRIFTD = VENV_BIN / "driftd"
SOCKET_URL = "unix:///var/run/docker.sock"
IMAGE = "driftd-test/busybox:1.0"
LABEL = "driftd-bench"
GROUP = "driftd-bench-group"
TARGET_S = 10.0
KINDS = ("start", "update", "exec")
DRIFT_FILE = "/etc/driftd-bench-drift"
HARDENED_RW: dict[str, Any] = {"user": "1000", "cap_drop": ["ALL"], "security_opt": ["no-new-privileges"],
                               "restart_policy": {"Name": "no"}}
HARDENED_RO: dict[str, Any] = {**HARDENED_RW, "read_only": True}


def baseline_yaml(name: str, run_id: str, group: str, image_id: str, *, read_only: bool) -> str:
    ro = "    readOnlyRootFilesystem: true\n" if read_only else ""
    return f"""apiVersion: driftd.io/v1alpha1
kind: ContainerBaseline
metadata:
  name: {name}
spec:
  selector:
    matchLabels:
      {LABEL}: "{run_id}"
      {GROUP}: "{group}"
  images:
    approved: ["{image_id}"]
  ungoverned: ignore
  runtime:
    user: "1000"
    privileged: false
    capAdd: []
    capDrop: [ALL]
{ro}    noNewPrivileges: true
    restartPolicy:
      name: "no"
"""


# --------------------------------------------------------------------------- helpers


def labels_for(run_id: str, group: str) -> dict[str, str]:
    return {LABEL: run_id, GROUP: group, "driftd-test": "1"}


def create_running(client: Any, names: list[str], run_id: str, group: str, workers: int = 8) -> None:
    cfg = HARDENED_RO if group == "ro" else HARDENED_RW

    def one(name: str) -> None:
        c = client.containers.create(IMAGE, name=name, network_mode="none", labels=labels_for(run_id, group), **cfg)
        c.start()

    with ThreadPoolExecutor(workers) as pool:
        list(pool.map(one, names))


def cleanup(client: Any, run_id: str) -> int:
    removed = 0
    for c in client.containers.list(all=True, filters={"label": f"{LABEL}={run_id}"}):
        try:
            client.api.remove_container(c.id, force=True, v=True)
            removed += 1
        except Exception as e:  # keep going: the label sweep can be rerun
            print(f"could not remove {c.name}: {e}", file=sys.stderr)
    return removed


def reverted(api: Any, kind: str, ins: dict[str, Any]) -> bool:
    hc = ins["HostConfig"]
    if kind == "start":
        return ins["Config"]["User"] == "1000" and hc["CapDrop"] == ["ALL"]
    if kind == "update":
        return (hc.get("RestartPolicy") or {}).get("Name") in ("no", "")
    changes = api.diff(ins["Id"]) or []
    return all(c["Path"] != DRIFT_FILE for c in changes)


def wait_reverted(api: Any, kind: str, name: str, old_id: str, t0: float, timeout: float) -> float | None:
    import docker

    while time.perf_counter() - t0 < timeout:
        try:
            ins = api.inspect_container(name)
            if ins["Id"] != old_id and ins["State"]["Running"] and reverted(api, kind, ins):
                return time.perf_counter() - t0
        except docker.errors.NotFound:
            pass  # between the rename of the original and the create of its replacement
        time.sleep(0.01)
    return None


def change(client: Any, kind: str, name: str, run_id: str) -> tuple[str, float, float]:
    """Make one change; returns (the changed container's id, the call's duration, perf_counter when it returned)."""
    if kind == "start":
        t = time.perf_counter()
        c = client.containers.create(IMAGE, name=name, network_mode="none", labels=labels_for(run_id, "ro"), user="0")
        c.start()
    elif kind == "update":
        c = client.containers.get(name)
        t = time.perf_counter()
        c.update(restart_policy={"Name": "always"})
    else:
        c = client.containers.get(name)
        t = time.perf_counter()
        rc, out = c.exec_run(["sh", "-c", f"echo drift > {DRIFT_FILE}"], user="0")
        if rc != 0:
            raise RuntimeError(f"exec into {name} failed ({rc}): {out!r}")
    done = time.perf_counter()
    return c.id, done - t, done


# --------------------------------------------------------------------------- the run


def measure(client: Any, tmp: Path, bdir: Path, run_id: str, samples: int, victims: dict[str, list[str]],
            timeout: float, gap: float) -> dict[str, Any]:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("DRIFTD_")}  # the defaults, nothing else
    log = tmp / "daemon.log"
    (tmp / "host" / "etc").mkdir(parents=True, exist_ok=True)
    cmd = [str(DRIFTD), "run", "--docker", "--host-root", str(tmp / "host"), "--baselines", str(bdir),
           "--state-dir", str(tmp / "daemon-state"), "--listen", f"127.0.0.1:{port}",
           "--log-format", "json", "--log-level", "info"]
    proc = subprocess.Popen(cmd, env=env, stdout=log.open("wb"), stderr=subprocess.STDOUT)
    rows: list[dict[str, Any]] = []
    base = f"http://127.0.0.1:{port}"
    try:
        t0 = time.monotonic()
        while http_get(f"{base}/readyz")[0] != 200:
            if proc.poll() is not None or time.monotonic() - t0 > 120:
                raise RuntimeError(f"daemon not ready:\n{log.read_text()[-3000:]}")
            time.sleep(0.1)
        ready_s = time.monotonic() - t0
        before = http_get(f"{base}/metrics")[1]
        time.sleep(1.0)  # the first scan's reconciles (none expected) settle
        pools = {k: list(v) for k, v in victims.items()}
        for i in range(samples):
            kind = KINDS[i % len(KINDS)]
            name = f"bench-{run_id}-drift{i:03d}" if kind == "start" else pools[kind].pop(0)
            old_id, call_s, t_changed = change(client, kind, name, run_id)
            took = wait_reverted(client.api, kind, name, old_id, t_changed, timeout)
            rows.append({"i": i, "kind": kind, "container": name, "latency_s": None if took is None else round(took, 4),
                         "call_s": round(call_s, 4),
                         "from_call_start_s": None if took is None else round(took + call_s, 4)})
            print(f"  {i:3d} {kind:6s} {name}: {'MISS' if took is None else f'{took:.3f} s'}", file=sys.stderr)
            time.sleep(gap)
        after = http_get(f"{base}/metrics")[1]
    finally:
        rc = stop_daemon(proc)
    scans_logged, levels, problems = log_summary(log)

    def delta(name: str, **labels: str) -> float:
        return metric_sum(after, name, **labels) - metric_sum(before, name, **labels)

    return {
        "rows": rows,
        "daemon": {
            "command": " ".join(cmd[1:]).replace(str(tmp), "$TMP").replace(f":{port}", ":$PORT"),
            "ready_s": round(ready_s, 3),
            "scans_total_at_ready": metric_sum(before, "driftd_scans_total", target="docker"),
            "scans_during_samples": delta("driftd_scans_total", target="docker"),
            "scans_logged_total": scans_logged,
            "docker_events_queued_during_samples": delta("driftd_events_total", target="docker"),
            "recreates_succeeded_during_samples": delta("driftd_remediations_total", target="docker", action="recreate",
                                                        result="succeeded"),
            "remediations_failed_during_samples": delta("driftd_remediations_total", target="docker", result="failed"),
            "exit_code": rc,
            "log_levels": levels,
            "log_warnings_and_errors": problems,
        },
    }


def write_markdown(path: Path, res: dict[str, Any]) -> None:
    m, s, d, st = res["meta"], res["settings"], res["daemon"], res["stats"]
    fc = res["stats_from_call_start"]
    lines = [
        "# Change-to-revert latency: Docker containers (issue 9)",
        "",
        f"{m['date']} · Docker Engine {m['engine']} ({m['storage_driver']}) · Python {m['python']} · {m['machine']} · "
        f"{m['cpus']} CPUs · kernel {m['kernel']} · driftd {m['git']} · load {m['loadavg_1m_at_start']} at start",
        "",
        f"`driftd {d['command']}`: no `--interval`, no `DRIFTD_*` environment, so the defaults of `driftd/settings.py`: "
        f"scan every **{s['scan_interval_seconds']:.0f} s** (+ up to {s['scan_jitter_seconds']:.0f} s jitter), "
        f"{s['workers']} workers, stop timeout {s['stop_timeout_seconds']} s. Two ContainerBaselines (hardened: user 1000, "
        "capDrop ALL, no-new-privileges, restart policy no; `ro` with a read-only root, `rw` without), "
        f"{m['background_containers']} compliant background containers never changed, plus one victim per update/exec "
        f"sample; {m['governed_at_start']} governed containers when the daemon started (busybox, network none).",
        "",
        f"{m['samples']} samples, one at a time ({m['gap_s']} s apart), rotating: **start** (a drifted container, user "
        "root and no capabilities dropped, created and started; timed from `start` returning), **update** (`docker "
        "update --restart always` on a running compliant container; from `update` returning) and **exec** (`docker exec "
        f"-u 0` writes `{DRIFT_FILE}` into a running compliant `rw` container; from the exec having finished). "
        "Each ends at the verified revert: a container of that name with a new id is running and compliant for what was "
        "changed (user 1000 + CapDrop ALL; restart policy no; the file absent from `docker diff`), polled by inspect "
        "every 10 ms. driftd reverts all three by recreating the container.",
        "",
        "| change | n | p50 | p95 | p99 | min | max |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for k in (*KINDS, "all"):
        x = st[k]
        if x["n"]:
            lines.append(f"| {'**all**' if k == 'all' else k} | {x['n']} | {x['p50_s']:.3f} s | {x['p95_s']:.3f} s | "
                         f"{x['p99_s']:.3f} s | {x['min_s']:.3f} s | {x['max_s']:.3f} s |")
    met = res["met"]
    lines += [
        "",
        f"Target: p99 ≤ {TARGET_S:.0f} s with every sample reverted — **{'met' if met else 'NOT met'}** "
        f"(p99 {st['all'].get('p99_s')} s, max {st['all'].get('max_s')} s; not reverted within {m['timeout_s']:.0f} s: "
        f"{res['missed']}).",
        "",
        f"Event-driven: the daemon ran {d['scans_total_at_ready']:.0f} scan before it was ready (the scan at start) and "
        f"**{d['scans_during_samples']:.0f}** while sampling ({d['scans_logged_total']} `scan.finished` in its log in all); "
        f"it queued {d['docker_events_queued_during_samples']:.0f} Docker events and recreated "
        f"{d['recreates_succeeded_during_samples']:.0f} containers while sampling (failed remediations: "
        f"{d['remediations_failed_during_samples']:.0f}). Ready {d['ready_s']} s after launch; exit code on SIGTERM "
        f"{d['exit_code']}. Containers removed at the end: {res['removed']}.",
        "",
        "Daemon log by level: " + ", ".join(f"{k} {v}" for k, v in sorted(d["log_levels"].items()))
        + "; warnings and errors: " + (", ".join(f"{k} (x{v})" for k, v in sorted(d["log_warnings_and_errors"].items()))
                                      or "none") + ".",
        "",
        "Duration of the change call itself (not in the latency): "
        + ", ".join(f"{k} median {statistics.median(r['call_s'] for r in res['rows'] if r['kind'] == k):.3f} s"
                    for k in KINDS if any(r["kind"] == k for r in res["rows"]))
        + " (start: create + start). Counted from just before the call instead, all kinds: "
        f"p50 {fc.get('p50_s')} s, p95 {fc.get('p95_s')} s, p99 {fc.get('p99_s')} s, max {fc.get('max_s')} s.",
        "",
        "Samples (s, in order): " + ", ".join(f"{r['kind']} {r['latency_s'] if r['latency_s'] is not None else 'MISS'}"
                                              for r in res["rows"]) + ".",
        "",
        "Raw samples: `revert-docker.json`.",
    ]
    path.write_text("\n".join(lines) + "\n")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--containers", type=int, default=20, help="compliant background containers (never changed)")
    ap.add_argument("--samples", type=int, default=50)
    ap.add_argument("--timeout", type=float, default=30.0, help="seconds before a sample counts as not reverted")
    ap.add_argument("--gap", type=float, default=1.0, help="seconds between samples")
    ap.add_argument("--out", default=str(HERE / "results"), help="results directory")
    args = ap.parse_args()

    import docker

    from driftd.settings import DockerSettings, ScanSettings, Settings

    scan_defaults, docker_defaults = ScanSettings(), DockerSettings()
    client = docker.DockerClient(base_url=SOCKET_URL, timeout=60)
    try:
        client.ping()
        image_id = client.images.get(IMAGE).id
    except Exception as e:
        print(f"bench_revert_docker: engine or {IMAGE} unavailable ({e}); run `bash scripts/docker-env.sh`",
              file=sys.stderr)
        return 1
    info = client.info()
    run_id = uuid.uuid4().hex[:10]
    git = subprocess.run(["git", "-C", str(REPO), "describe", "--always", "--dirty"], capture_output=True, text=True)
    n_kind = {k: len(range(i, args.samples, len(KINDS))) for i, k in enumerate(KINDS)}
    victims = {k: [f"bench-{run_id}-{k}{j:03d}" for j in range(n_kind[k])] for k in ("update", "exec")}
    res: dict[str, Any] = {
        "meta": {
            "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "run_id": run_id,
            "python": platform.python_version(), "machine": f"{platform.system()} {platform.machine()}",
            "kernel": platform.release(), "cpus": os.cpu_count(), "git": git.stdout.strip() or "unknown",
            "engine": info.get("ServerVersion"), "storage_driver": info.get("Driver"),
            "loadavg_1m_at_start": round(os.getloadavg()[0], 2), "background_containers": args.containers,
            "governed_at_start": args.containers + sum(len(v) for v in victims.values()),
            "samples": args.samples, "timeout_s": args.timeout, "gap_s": args.gap,
        },
        "settings": {
            "scan_interval_seconds": scan_defaults.interval_seconds, "scan_jitter_seconds": scan_defaults.jitter_seconds,
            "workers": Settings.model_fields["workers"].default,
            "stop_timeout_seconds": docker_defaults.stop_timeout_seconds,
            "source": "driftd/settings.py defaults (no --interval, no DRIFTD_* environment)",
        },
    }
    with tempfile.TemporaryDirectory(prefix="driftd-bench-revert-docker-") as td:
        tmp = Path(td)
        bdir = tmp / "baselines"
        bdir.mkdir()
        (bdir / "ro.yaml").write_text(baseline_yaml("bench-ro", run_id, "ro", image_id, read_only=True))
        (bdir / "rw.yaml").write_text(baseline_yaml("bench-rw", run_id, "rw", image_id, read_only=False))
        try:
            print(f"run {run_id}: creating {res['meta']['governed_at_start']} containers", file=sys.stderr)
            create_running(client, [f"bench-{run_id}-bg{j:03d}" for j in range(args.containers)] + victims["update"],
                           run_id, "ro")
            create_running(client, victims["exec"], run_id, "rw")
            print(f"starting the daemon; {args.samples} samples", file=sys.stderr)
            res.update(measure(client, tmp, bdir, run_id, args.samples, victims, args.timeout, args.gap))
        finally:
            res["removed"] = cleanup(client, run_id)
            print(f"removed {res['removed']} containers", file=sys.stderr)
    rows = res["rows"]
    lat = {k: [r["latency_s"] for r in rows if r["kind"] == k and r["latency_s"] is not None] for k in KINDS}
    res["stats"] = {**{k: stats(v) for k, v in lat.items()}, "all": stats([x for v in lat.values() for x in v])}
    res["stats_from_call_start"] = stats([r["from_call_start_s"] for r in rows if r["from_call_start_s"] is not None])
    res["missed"] = sum(1 for r in rows if r["latency_s"] is None)
    res["met"] = res["missed"] == 0 and bool(lat) and res["stats"]["all"].get("p99_s", 1e9) <= TARGET_S
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "revert-docker.json").write_text(json.dumps(res, indent=2) + "\n")
    write_markdown(out / "revert-docker.md", res)
    a = res["stats"]["all"]
    print(f"p50 {a.get('p50_s')} p95 {a.get('p95_s')} p99 {a.get('p99_s')} max {a.get('max_s')}; missed {res['missed']}; "
          f"scans during samples {res['daemon']['scans_during_samples']:.0f}; wrote {out}/revert-docker.{{json,md}}",
          file=sys.stderr)
    return 0 if res["met"] else 1


if __name__ == "__main__":
    sys.exit(main())
