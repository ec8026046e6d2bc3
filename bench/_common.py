"""Helpers the benchmarks share (bench_revert_docker.py, bench_revert_pods.py, bench_host.py, bench_vs_cfengine.py, ...).

Loopback only: ``free_port`` binds 127.0.0.1, ``http_get`` uses no proxy.
"""

from __future__ import annotations

import json
import signal
import socket
import statistics
import subprocess
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def http_get(url: str) -> tuple[int, str]:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(url, timeout=5) as r:
            return int(r.status), r.read().decode()
    except urllib.error.HTTPError as e:
        return int(e.code), ""
    except OSError:
        return 0, ""


def metric_sum(text: str, name: str, **labels: str) -> float:
    """Sum of the samples of ``name`` whose labels include ``labels`` (Prometheus text format)."""
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        head, _, value = line.rpartition(" ")
        if all(f'{k}="{v}"' in head for k, v in labels.items()):
            total += float(value)
    return total


def stats(xs: list[float]) -> dict[str, Any]:
    if not xs:
        return {"n": 0}
    q = statistics.quantiles(xs, n=100, method="inclusive") if len(xs) >= 2 else xs * 99
    return {"n": len(xs), "p50_s": round(statistics.median(xs), 4), "p95_s": round(q[94], 4),
            "p99_s": round(q[98], 4), "min_s": round(min(xs), 4), "max_s": round(max(xs), 4)}


def run_stats(samples: list[float]) -> dict[str, Any]:
    """Median, min, max and the samples of repeated whole-process runs (bench_host.py, bench_vs_cfengine.py)."""
    return {
        "median": round(statistics.median(samples), 4),
        "min": round(min(samples), 4),
        "max": round(max(samples), 4),
        "samples": [round(s, 4) for s in samples],
    }


def stop_daemon(proc: subprocess.Popen[Any]) -> int:
    """SIGTERM, then SIGKILL after 60 s; the exit code."""
    proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(60)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.wait(5)


def log_summary(log: Path) -> tuple[int, dict[str, int], dict[str, int]]:
    """(scans finished, lines per level, warnings/errors per event) of a daemon's JSON log."""
    lines = log.read_text().splitlines()
    scans_logged = sum(1 for line in lines if '"scan.finished"' in line)
    levels: dict[str, int] = {}
    problems: dict[str, int] = {}
    for line in lines:
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        lvl = str(rec.get("level", "?"))
        levels[lvl] = levels.get(lvl, 0) + 1
        if lvl in ("warning", "error", "critical"):
            what = f"{lvl}: {rec.get('event')}"
            problems[what] = problems.get(what, 0) + 1
    return scans_logged, levels, problems
