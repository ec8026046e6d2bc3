"""Benchmark of change-to-eviction latency of the Kubernetes target, daemon at its default scan interval (issue 9).

Usage::

    .venv/bin/python bench/bench_revert_pods.py                      # 20 background pods, 50 samples
    .venv/bin/python bench/bench_revert_pods.py --pods 5 --samples 5

Needs the kube-apiserver and etcd binaries of ``scripts/k8s-bins.sh`` (``~/.cache/driftd-bin``).
It starts a throwaway control plane exactly as the tests do (``tests/k8s_support.py``:
``scripts/k8s-testenv.sh``, etcd + kube-apiserver on 127.0.0.1 only, RBAC on, an audit log of
every write request), installs the PolicyReport CRD, creates the namespace ``driftd``
(driftd's own, the default ``kubernetes.namespace``), the namespace ``bench`` and a Node
object ``bench-node-a``.  There is no kubelet, scheduler or controller-manager: pods are
bound by ``spec.nodeName``, the background pods get a Running status written through the
status subresource, and ``k8s_support.FakeKubelet`` force-deletes pods left Terminating (as a
kubelet would once their containers stopped).

One PodBaseline: the shipped ``baselines/pod-restricted.yaml`` limited to namespace
``bench`` with an approved image digest.  Before the daemon starts, ``--pods`` compliant
Running pods, each owned by its own (compliant) ReplicaSet, are bound to the node.  Then
``driftd run --kubernetes --kubeconfig <admin> --node-name bench-node-a`` runs as a
subprocess with **no** ``--interval`` and no ``DRIFTD_*`` environment, i.e. the default
scan interval and jitter of ``driftd/settings.py`` (300 s, up to 30 s): it scans once at
start and then only the pod watch triggers reconciles.

Samples, one at a time: a ReplicaSet with a compliant pod template is created (not timed;
driftd evicts only when the controller's template would bring back a compliant pod, and
after an eviction it guards that controller for ``template_guard_seconds``, so every sample
has its own), then a pod it owns (``ownerReferences`` controller), bound to the node, whose
container is ``privileged: true`` with ``allowPrivilegeEscalation: true`` (breaks the
``security`` rules, action revert).  The latency is from the moment the pod's ``create``
call returns until the eviction is seen issued: the pod, polled with GET every 10 ms, has a
``deletionTimestamp`` or is gone.  Also from the API server's audit log (its own clock, µs):
the time from the pod create's ``ResponseComplete`` to the ``pods/eviction`` create being
received, and who made it (driftd's user agent).  Reported: p50/p95/p99
(``statistics.quantiles``, inclusive), min, max; from the daemon's ``/metrics`` (scraped
just before it is stopped) and its log the scans it ran and the watch events it queued, to
show the evictions were event-driven.

The control plane (and its data directory) is removed at the end.  Results go to
``bench/results/revert-pods.json`` (raw samples) and ``bench/results/revert-pods.md``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import yaml

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO / "tests"))

from _common import free_port, http_get, log_summary, metric_sum, stats, stop_daemon  # noqa: E402  (bench/ is the script's directory)
from k8s_support import (  # noqa: E402  (the tests' helpers, not a package)
    CRD_PATH,
    DIGEST_APPROVED,
    FakeKubelet,
    KubeApiError,
    KubeCluster,
    KubeEnv,
    KubeRest,
    find_binaries,
    new_api_client,
    start_kube_env,
)

VENV_BIN = Path(sys.executable).parent
DRIFTD = VENV_BIN / "driftd"
NS = "bench"
DRIFTD_NS = "driftd"
TARGET_S = 5.0
BENCH_AGENT = "driftd-bench"


def pod_baseline() -> str:
    doc = yaml.safe_load((REPO / "baselines" / "pod-restricted.yaml").read_text())
    doc["spec"]["selector"]["namespaces"] = [NS]
    doc["spec"]["images"] = {"approved": [DIGEST_APPROVED]}
    return yaml.safe_dump(doc)


# --------------------------------------------------------------------------- helpers


def ts(value: str) -> float:
    return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


def install_crd(rest: KubeRest) -> None:
    crd = yaml.safe_load(CRD_PATH.read_text())
    rest.post("/apis/apiextensions.k8s.io/v1/customresourcedefinitions", crd)
    name = crd["metadata"]["name"]
    group, plural = crd["spec"]["group"], crd["spec"]["names"]["plural"]
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        got = rest.get(f"/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{name}")
        if any(c["type"] == "Established" and c["status"] == "True" for c in (got.get("status") or {}).get("conditions") or []):
            with contextlib.suppress(KubeApiError):  # discovery can lag the condition by a moment
                rest.get(f"/apis/{group}/{crd['spec']['versions'][0]['name']}/{plural}")
                return
        time.sleep(0.2)
    raise RuntimeError(f"CRD {name} not established")


def wait_evicted(cluster: KubeCluster, name: str, t0: float, timeout: float) -> tuple[float | None, str]:
    while time.perf_counter() - t0 < timeout:
        pod = cluster.pod(name)
        if pod is None:
            return time.perf_counter() - t0, "gone"
        if pod["metadata"].get("deletionTimestamp"):
            return time.perf_counter() - t0, "deletionTimestamp"
        time.sleep(0.01)
    return None, "timeout"


def audit_latencies(env: KubeEnv, names: list[str]) -> dict[str, dict[str, Any]]:
    """Per pod: pod create ResponseComplete → pods/eviction create received (server clock), and its user agent."""
    created: dict[str, float] = {}
    evicted: dict[str, tuple[float, str, int]] = {}
    for ev in env.audit(namespace=NS, resource="pods", verb="create"):
        ref = ev.get("objectRef") or {}
        name = ref.get("name") or ""
        if ev.get("stage") != "ResponseComplete":
            continue
        if ref.get("subresource") == "eviction":
            evicted.setdefault(name, (ts(ev["requestReceivedTimestamp"]), ev.get("userAgent", ""),
                                      int((ev.get("responseStatus") or {}).get("code") or 0)))
        elif not ref.get("subresource"):
            created.setdefault(name, ts(ev["stageTimestamp"]))
    out: dict[str, dict[str, Any]] = {}
    for n in names:
        if n in evicted:
            at, agent, code = evicted[n]
            out[n] = {"server_s": round(at - created[n], 4) if n in created else None, "agent": agent, "code": code}
    return out


# --------------------------------------------------------------------------- the run


def measure(env: KubeEnv, cluster: KubeCluster, node: str, tmp: Path, bdir: Path, samples: int, timeout: float,
            gap: float) -> dict[str, Any]:
    port = free_port()
    penv = {k: v for k, v in os.environ.items() if not k.startswith("DRIFTD_") and k != "NODE_NAME"}
    log = tmp / "daemon.log"
    (tmp / "host" / "etc").mkdir(parents=True, exist_ok=True)
    cmd = [str(DRIFTD), "run", "--kubernetes", "--kubeconfig", env.kubeconfig, "--node-name", node,
           "--host-root", str(tmp / "host"), "--baselines", str(bdir), "--state-dir", str(tmp / "daemon-state"),
           "--listen", f"127.0.0.1:{port}", "--log-format", "json", "--log-level", "info"]
    proc = subprocess.Popen(cmd, env=penv, stdout=log.open("wb"), stderr=subprocess.STDOUT)
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
        time.sleep(1.0)  # the watch's initial listing settles
        for i in range(samples):
            rs, name = f"bad-{i:03d}", f"bad-{i:03d}-x{i:03d}"
            cluster.make_owner("ReplicaSet", rs)  # compliant template; not timed
            manifest = cluster.pod_manifest(name, node, owner="ReplicaSet", owner_name=rs, privileged=True)
            t = time.perf_counter()
            cluster.rest.post(f"/api/v1/namespaces/{NS}/pods", manifest)
            t_created = time.perf_counter()
            took, seen = wait_evicted(cluster, name, t_created, timeout)
            rows.append({"i": i, "pod": name, "owner": f"ReplicaSet/{rs}",
                         "latency_s": None if took is None else round(took, 4), "seen": seen,
                         "create_call_s": round(t_created - t, 4)})
            print(f"  {i:3d} {name}: {'MISS' if took is None else f'{took:.3f} s'} ({seen})", file=sys.stderr)
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
            "command": " ".join(cmd[1:]).replace(str(tmp), "$TMP").replace(env.kubeconfig, "$KUBECONFIG")
                       .replace(f":{port}", ":$PORT"),
            "ready_s": round(ready_s, 3),
            "scans_total_at_ready": metric_sum(before, "driftd_scans_total", target="kubernetes"),
            "scans_during_samples": delta("driftd_scans_total", target="kubernetes"),
            "scans_logged_total": scans_logged,
            "pod_events_queued_during_samples": delta("driftd_events_total", target="kubernetes"),
            "evictions_succeeded_during_samples": delta("driftd_remediations_total", target="kubernetes", action="evict",
                                                        result="succeeded"),
            "remediations_failed_during_samples": delta("driftd_remediations_total", target="kubernetes", result="failed"),
            "exit_code": rc,
            "log_levels": levels,
            "log_warnings_and_errors": problems,
        },
    }


def write_markdown(path: Path, res: dict[str, Any]) -> None:
    m, s, d, st, sv = res["meta"], res["settings"], res["daemon"], res["stats"], res["stats_server"]
    seen = {k: sum(1 for r in res["rows"] if r["seen"] == k) for k in ("deletionTimestamp", "gone")}
    lines = [
        "# Change-to-eviction latency: pods (issue 9)",
        "",
        f"{m['date']} · kube-apiserver {m['kube_apiserver']} + etcd {m['etcd']} on 127.0.0.1 (no kubelet, scheduler or "
        f"controller-manager) · Python {m['python']} · {m['machine']} · {m['cpus']} CPUs · kernel {m['kernel']} · "
        f"driftd {m['git']} · load {m['loadavg_1m_at_start']} at start",
        "",
        f"`driftd {d['command']}`: no `--interval`, no `DRIFTD_*` environment, so the defaults of `driftd/settings.py`: "
        f"scan every **{s['scan_interval_seconds']:.0f} s** (+ up to {s['scan_jitter_seconds']:.0f} s jitter), "
        f"{s['workers']} workers, template guard {s['template_guard_seconds']:.0f} s. One PodBaseline (the shipped "
        f"`pod-restricted.yaml`, namespace `{NS}`, an approved digest); {m['background_pods']} compliant Running "
        f"background pods on the node, each owned by its own ReplicaSet.",
        "",
        f"{m['samples']} samples, one at a time ({m['gap_s']} s apart): a ReplicaSet with a compliant template (not "
        "timed), then a pod it controls, bound to the node (`spec.nodeName`), with a `privileged: true`, "
        "`allowPrivilegeEscalation: true` container (the `security` rules, action revert), left Pending (no status is "
        "written: the create is the only change). Timed from the pod's "
        "create call returning until the eviction is seen issued: the pod, polled with GET every 10 ms, has a "
        f"`deletionTimestamp` ({seen['deletionTimestamp']} samples) or is gone ({seen['gone']}). A FakeKubelet "
        "force-deletes Terminating pods (every 0.2 s), as a kubelet would once the containers stopped.",
        "",
        "| measured | n | p50 | p95 | p99 | min | max |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for label, x in (("**create returned → eviction seen (client)**", st),
                     ("pod create done → eviction received (API server audit log)", sv)):
        if x["n"]:
            lines.append(f"| {label} | {x['n']} | {x['p50_s']:.3f} s | {x['p95_s']:.3f} s | {x['p99_s']:.3f} s | "
                         f"{x['min_s']:.3f} s | {x['max_s']:.3f} s |")
    agents = sorted({r.get("eviction_agent") or "?" for r in res["rows"] if r.get("eviction_agent")})
    lines += [
        "",
        f"Target: p99 ≤ {TARGET_S:.0f} s with every pod evicted — **{'met' if res['met'] else 'NOT met'}** "
        f"(p99 {st.get('p99_s')} s, max {st.get('max_s')} s; not evicted within {m['timeout_s']:.0f} s: {res['missed']}). "
        f"Every eviction in the audit log came through `pods/eviction` (HTTP "
        f"{', '.join(sorted({str(r.get('eviction_code')) for r in res['rows'] if r.get('eviction_code')}))}) from "
        f"{', '.join(f'`{a}`' for a in agents) or 'nobody'} (driftd's client; it sets no user agent of its own). "
        "The bench never evicts; its only deletes are the FakeKubelet's force-deletes of pods already Terminating "
        f"({res['kubelet_force_deleted']}).",
        "",
        f"Event-driven: the daemon ran {d['scans_total_at_ready']:.0f} scan before it was ready (the scan at start) and "
        f"**{d['scans_during_samples']:.0f}** while sampling ({d['scans_logged_total']} `scan.finished` in its log in all); "
        f"it queued {d['pod_events_queued_during_samples']:.0f} pod watch events and evicted "
        f"{d['evictions_succeeded_during_samples']:.0f} pods while sampling (failed remediations: "
        f"{d['remediations_failed_during_samples']:.0f}). Ready {d['ready_s']} s after launch; exit code on SIGTERM "
        f"{d['exit_code']}.",
        "",
        "Daemon log by level: " + ", ".join(f"{k} {v}" for k, v in sorted(d["log_levels"].items()))
        + "; warnings and errors: " + (", ".join(f"{k} (x{v})" for k, v in sorted(d["log_warnings_and_errors"].items()))
                                      or "none") + ".",
        "",
        "Pod create call duration (not in the latency): median "
        f"{statistics.median(r['create_call_s'] for r in res['rows']):.3f} s.",
        "",
        "Samples (s, in order): " + ", ".join(str(r["latency_s"]) if r["latency_s"] is not None else "MISS"
                                              for r in res["rows"]) + ".",
        "",
        "Raw samples: `revert-pods.json`.",
    ]
    path.write_text("\n".join(lines) + "\n")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pods", type=int, default=20, help="compliant background pods (never changed)")
    ap.add_argument("--samples", type=int, default=50)
    ap.add_argument("--timeout", type=float, default=30.0, help="seconds before a sample counts as not evicted")
    ap.add_argument("--gap", type=float, default=1.0, help="seconds between samples")
    ap.add_argument("--out", default=str(HERE / "results"), help="results directory")
    args = ap.parse_args()

    from driftd.settings import KubernetesSettings, ScanSettings, Settings

    bins = find_binaries()
    missing = [n for n in ("ETCD", "KUBE_APISERVER") if not os.access(bins.get(n) or "", os.X_OK)]
    if missing:
        print(f"bench_revert_pods: {', '.join(missing)} not found; run `bash scripts/k8s-bins.sh`", file=sys.stderr)
        return 1
    git = subprocess.run(["git", "-C", str(REPO), "describe", "--always", "--dirty"], capture_output=True, text=True)
    scan_defaults, kube_defaults = ScanSettings(), KubernetesSettings()
    res: dict[str, Any] = {
        "meta": {
            "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "python": platform.python_version(), "machine": f"{platform.system()} {platform.machine()}",
            "kernel": platform.release(), "cpus": os.cpu_count(), "git": git.stdout.strip() or "unknown",
            "kube_apiserver": Path(bins["KUBE_APISERVER"]).parent.name.removeprefix("kube-apiserver-"),
            "etcd": Path(bins["ETCD"]).parent.name.removeprefix("etcd-"),
            "loadavg_1m_at_start": round(os.getloadavg()[0], 2), "background_pods": args.pods,
            "samples": args.samples, "timeout_s": args.timeout, "gap_s": args.gap,
        },
        "settings": {
            "scan_interval_seconds": scan_defaults.interval_seconds, "scan_jitter_seconds": scan_defaults.jitter_seconds,
            "workers": Settings.model_fields["workers"].default,
            "template_guard_seconds": kube_defaults.template_guard_seconds,
            "source": "driftd/settings.py defaults (no --interval, no DRIFTD_* environment)",
        },
    }
    print("starting etcd + kube-apiserver (scripts/k8s-testenv.sh)", file=sys.stderr)
    env = start_kube_env(bins)
    kubelet: FakeKubelet | None = None
    api = None
    try:
        api = new_api_client(env.kubeconfig, BENCH_AGENT)
        rest = KubeRest(api)
        install_crd(rest)
        for ns in (DRIFTD_NS, NS):
            rest.post("/api/v1/namespaces", {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}})
        cluster = KubeCluster(rest, env, NS)
        node = cluster.make_node("node-a")
        for j in range(args.pods):
            cluster.make_pod(f"web-{j:03d}-x{j:03d}", node, owner="ReplicaSet", owner_name=f"web-{j:03d}")
        kubelet = FakeKubelet(env.kubeconfig, (node,))
        kubelet.start()
        with tempfile.TemporaryDirectory(prefix="driftd-bench-revert-pods-") as td:
            tmp = Path(td)
            bdir = tmp / "baselines"
            bdir.mkdir()
            (bdir / "pods.yaml").write_text(pod_baseline())
            print(f"node {node}, {args.pods} background pods; starting the daemon; {args.samples} samples",
                  file=sys.stderr)
            res.update(measure(env, cluster, node, tmp, bdir, args.samples, args.timeout, args.gap))
        audit = audit_latencies(env, [r["pod"] for r in res["rows"]])
        for r in res["rows"]:
            a = audit.get(r["pod"]) or {}
            r["server_s"], r["eviction_agent"], r["eviction_code"] = a.get("server_s"), a.get("agent"), a.get("code")
        res["kubelet_force_deleted"] = len(kubelet.deleted)
    finally:
        if kubelet is not None:
            kubelet.stop()
        if api is not None:
            with contextlib.suppress(Exception):
                api.close()
        env.stop()
    rows = res["rows"]
    res["stats"] = stats([r["latency_s"] for r in rows if r["latency_s"] is not None])
    res["stats_server"] = stats([r["server_s"] for r in rows if r.get("server_s") is not None])
    res["missed"] = sum(1 for r in rows if r["latency_s"] is None)
    res["met"] = res["missed"] == 0 and res["stats"].get("p99_s", 1e9) <= TARGET_S
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "revert-pods.json").write_text(json.dumps(res, indent=2) + "\n")
    write_markdown(out / "revert-pods.md", res)
    a = res["stats"]
    print(f"p50 {a.get('p50_s')} p95 {a.get('p95_s')} p99 {a.get('p99_s')} max {a.get('max_s')}; missed {res['missed']}; "
          f"scans during samples {res['daemon']['scans_during_samples']:.0f}; wrote {out}/revert-pods.{{json,md}}",
          file=sys.stderr)
    return 0 if res["met"] else 1


if __name__ == "__main__":
    sys.exit(main())
