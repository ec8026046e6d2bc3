"""The fast paths behind the benchmark (bench/bench_host.py) keep behaviour identical.

* the daemon's pass does not re-hash a file whose size, mtime, ctime and inode are
  unchanged, and still re-hashes everything at the configured full-rehash cadence;
* the one-walk YAML constructor of the loader gives exactly what PyYAML's constructor
  plus the duplicate-key walk give, and hands everything unusual to PyYAML;
* the metrics stand-in of ``run --once`` has exactly the metrics of the real ones, and
  accepts every call they take.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import host_baseline

from driftd.baselines.loader import _dup_keys, _fast_construct, _Loader, _SlowPath
from driftd.engine.clock import FakeClock
from driftd.observability.metrics import Metrics
from driftd.observability.nullmetrics import METRIC_NAMES, NullMetrics

# --------------------------------------------------------------------------- hash cache


def _counting(rt: Any) -> list[str]:
    """Record every path the host target hashes."""
    fs = rt.engine.targets["host"].fs
    hashed: list[str] = []
    real = fs.sha256_of

    def sha256_of(path: str) -> Any:
        hashed.append(path)
        return real(path)

    fs.sha256_of = sha256_of
    return hashed


def test_unchanged_files_are_not_rehashed_until_the_full_rehash_is_due(host_root: Path, baselines_dir, make_runtime) -> None:
    files = [f"/etc/f{i}.conf" for i in range(5)]
    for p in files:
        (host_root / p.lstrip("/")).write_text("v\n")
    spec = "files:\n" + "".join(f'  - {{path: {p}, content: "v\\n", mode: "0644"}}\n' for p in files)
    clock = FakeClock()
    rt = make_runtime(baselines_dir({"b.yaml": host_baseline(spec=spec)}), clock=clock)
    hashed = _counting(rt)

    rt.engine.scan(rt.queue, full_rehash_interval=3600)
    assert sorted(hashed) == files  # first pass: everything
    hashed.clear()
    clock.advance(60)
    report = rt.engine.scan(rt.queue, full_rehash_interval=3600)
    assert (hashed, report.drifted) == ([], 0)  # warm pass: nothing re-hashed

    changed = host_root / "etc/f3.conf"
    changed.write_text("w\n")  # same size, new mtime/ctime
    clock.advance(60)
    report = rt.engine.scan(rt.queue, full_rehash_interval=3600)
    assert (hashed, report.drifted) == (["/etc/f3.conf"], 1)  # only the changed file

    changed.write_text("v\n")
    hashed.clear()
    clock.advance(3600)
    report = rt.engine.scan(rt.queue, full_rehash_interval=3600)
    assert (sorted(hashed), report.drifted) == (files, 0)  # the full re-hash came due: everything again
    rt.state.close()


def test_a_zero_interval_rehashes_every_pass(host_root: Path, baselines_dir, make_runtime) -> None:
    (host_root / "etc/motd").write_text("v\n")
    rt = make_runtime(baselines_dir({"b.yaml": host_baseline(spec='files:\n  - {path: /etc/motd, content: "v\\n"}\n')}))
    hashed = _counting(rt)
    for _ in range(3):
        rt.engine.scan(rt.queue, full_rehash_interval=0)
    assert hashed == ["/etc/motd"] * 3
    rt.state.close()


# --------------------------------------------------------------------------- YAML


def _slow(text: str) -> list[tuple[Any, list[tuple[int, str, str]]]]:
    out = []
    for root in yaml.compose_all(text, Loader=_Loader):
        if root is not None:
            out.append((yaml.SafeLoader("").construct_document(root), list(_dup_keys(root))))
    return out


def _fast(text: str) -> list[tuple[Any, list[tuple[int, str, str]]]]:
    return [_fast_construct(root) for root in yaml.compose_all(text, Loader=_Loader) if root is not None]


PLAIN = [
    Path(__file__).resolve().parent.parent.joinpath("baselines", name).read_text()
    for name in sorted(os.listdir(Path(__file__).resolve().parent.parent / "baselines"))
    if name.endswith(".yaml")
] + [
    "a: 1\nb: 1.5\nc: true\nd: null\ne: ~\nf: 2001-12-14\ng: 2001-12-14t21:59:43.10-05:00\nh: !!binary aGVsbG8=\n",
    "a: '0644'\nb: 0644\nc: 0o17\nd: 0x1F\ne: .inf\nf: -.nan\ng: yes\nh: 'yes'\n1: int key\n'1': str key\n",
    "spec:\n  files:\n    - path: /a\n      mode: '0600'\n      mode: '0644'\n    - {path: /b, path: /c}\n",
    "a: 1\na: 2\nb: {c: 1, c: 2, d: [ {e: 1, e: 1} ]}\n",
    "top: [1, [2, [3, {k: v}]], '', \"\"]\nempty: {}\nnone:\n",
    "---\na: 1\n---\n- 1\n- 2\n---\nplain scalar\n",
    "multi: |\n  line 1\n  line 2\nfolded: >\n  a\n  b\n",
]


@pytest.mark.parametrize("text", PLAIN, ids=range(len(PLAIN)))
def test_fast_construct_equals_pyyaml(text: str) -> None:
    fast, slow = _fast(text), _slow(text)
    assert fast == slow
    assert [type(d) for d, _ in fast] == [type(d) for d, _ in slow]


UNUSUAL = [
    "base: &b {x: 1}\nuse: *b\n",  # alias
    "base: &b {x: 1}\nuse:\n  <<: *b\n  y: 2\n",  # merge key
    "s: !!set {a, b}\n",  # explicit collection tag
    "o: !!omap [a: 1, b: 2]\n",
    "? [a, b]\n: complex key\n",
    "x: !custom 1\n",  # unknown tag: PyYAML raises
    "= : value key\n",
]


@pytest.mark.parametrize("text", UNUSUAL, ids=range(len(UNUSUAL)))
def test_unusual_documents_go_to_pyyaml(text: str) -> None:
    roots = [r for r in yaml.compose_all(text, Loader=_Loader) if r is not None]
    with pytest.raises(_SlowPath):
        for root in roots:
            _fast_construct(root)


def test_loader_reports_the_same_problems_for_unusual_documents(baselines_dir) -> None:
    from driftd.baselines.loader import load_set

    bdir = baselines_dir({
        "a.yaml": "apiVersion: driftd.io/v1alpha1\nkind: HostBaseline\nmetadata: &m {name: a}\nspec:\n  files: []\n"
                  "  files: []\n",
        "b.yaml": "x: !custom 1\n",
    })
    bset, problems = load_set(bdir)
    assert bset is None
    reasons = sorted((Path(p.file).name, p.line, p.field) for p in problems)
    assert reasons == [("a.yaml", 6, "spec.files"), ("b.yaml", 1, "(yaml)")]


# --------------------------------------------------------------------------- metrics stand-in


def test_null_metrics_has_exactly_the_metrics_of_the_real_metrics() -> None:
    """A metric added to Metrics but not to NullMetrics (or the other way round) fails here."""
    from prometheus_client import CollectorRegistry

    real = Metrics(CollectorRegistry())
    real_metrics = {name for name in vars(real) if name != "registry"}
    assert set(METRIC_NAMES) == real_metrics
    assert len(METRIC_NAMES) == len(set(METRIC_NAMES))
    public = {n for n, v in vars(Metrics).items() if callable(v) and not n.startswith("_")}
    assert public == {n for n, v in vars(NullMetrics).items() if callable(v) and not n.startswith("_")}
    null: Any = NullMetrics()
    assert null.registry is None
    for name in METRIC_NAMES:
        value, series = getattr(real, name), getattr(null, name)
        for method in ("labels", "inc", "set", "observe", "clear"):
            if hasattr(value, method):
                assert callable(getattr(series, method)), (name, method)
    null.scans.labels("host", "clean").inc()
    null.scan_duration.labels("host").observe(0.1)
    null.resources.labels("host").set(3)
    null.set_baselines("v", [("a", "HostBaseline", "h")], 0.0)
    with pytest.raises(AttributeError):
        null.scans_total  # noqa: B018  (a name Metrics does not define is no metric here either)
    with pytest.raises(AttributeError):
        null.__wrapped__  # noqa: B018


# --------------------------------------------------------------------------- console exit


def test_console_fast_exit_keeps_exit_code_and_output(host_root: Path, baselines_dir, tmp_path: Path) -> None:
    """``python -m driftd run --once`` (os._exit after the pass) still exits with the pass's code, output complete."""
    import json
    import subprocess
    import sys

    (host_root / "etc/motd").write_text("drifted\n")
    bdir = baselines_dir({"b.yaml": host_baseline(spec='files:\n  - {path: /etc/motd, content: "hello\\n"}\n')})
    cmd = [sys.executable, "-m", "driftd", "run", "--once", "--host-root", str(host_root), "--baselines", str(bdir),
           "--state-dir", str(tmp_path / "state"), "--log-level", "info", "--log-format", "json"]
    dry = subprocess.run([*cmd, "--dry-run", "--output", "json"], capture_output=True, text=True, timeout=60)
    assert dry.returncode == 3, dry.stderr
    assert json.loads(dry.stdout)["exit_code"] == 3
    assert any(json.loads(line)["event"] == "scan.finished" for line in dry.stderr.splitlines())
    fixed = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert fixed.returncode == 0, fixed.stderr
    assert fixed.stdout.rstrip().endswith("-> exit 0 (clean)")
    assert (host_root / "etc/motd").read_text() == "hello\n"


# --------------------------------------------------------------------------- O(1) reverts in a flat directory


def test_a_revert_costs_no_directory_listing_after_the_first_in_a_pass(host_root: Path, baselines_dir,
                                                                       make_runtime) -> None:
    """Stale temps are swept once per directory per pass, not before every write (quadratic in a flat dir)."""
    from driftd.engine.once import run_once
    from driftd.targets import safefs

    app = host_root / "etc/app"
    app.mkdir(parents=True)
    n = 300
    for i in range(n):
        (app / f"{i:04d}.conf").write_text("drifted\n")
    stale = app / ".0007.conf.driftd-tmp-0badcafe"  # what a crash mid-write leaves
    stale.write_text("half")
    user = app / ".notes.driftd-tmp-keep"  # not a name driftd makes: never touched
    user.write_text("mine")
    spec = "files:\n" + "".join(f'  - {{path: /etc/app/{i:04d}.conf, content: "v\\n", mode: "0644"}}\n' for i in range(n))
    rt = make_runtime(baselines_dir({"b.yaml": host_baseline("b", spec)}), safety={"breaker": {"share": 1.0}})
    listings: list[int] = []
    real = os.listdir

    def counting(path: Any = ".") -> list[str]:
        if isinstance(path, int):
            listings.append(path)
        return real(path)

    safefs.os.listdir = counting  # type: ignore[attr-defined]
    try:
        s = run_once(rt.engine, rt.queue, attempts=1)
    finally:
        safefs.os.listdir = real  # type: ignore[attr-defined]
    assert [o.status for o in s.outcomes].count("remediated") == n
    assert len(listings) == 1  # one sweep of etc/app for 300 reverts
    assert not stale.exists() and user.read_text() == "mine"
    assert all((app / f"{i:04d}.conf").read_text() == "v\n" for i in range(n))


def test_a_sweep_never_removes_another_workers_temp_in_flight(host_root: Path) -> None:
    """Two writers in one directory: the second one's sweep leaves the first one's temp alone."""
    from driftd.targets.safefs import SafeRoot

    (host_root / "etc").mkdir(exist_ok=True)
    fs = SafeRoot(host_root)
    seen: list[list[str]] = []

    def second_writer(_: int) -> None:  # runs while the first write's temp is open
        if not seen:
            seen.append(sorted(p.name for p in (host_root / "etc").iterdir()))
            fs.begin_pass()  # a new pass: the directory is swept again by the next write
            fs.write_atomic("/etc/b", b"b\n", mode=None, uid=None, gid=None)

    fs.write_atomic("/etc/a", b"a" * (3 << 20), mode=None, uid=None, gid=None, on_chunk=second_writer)
    assert (host_root / "etc/a").read_bytes() == b"a" * (3 << 20)  # its temp survived the other sweep
    assert (host_root / "etc/b").read_text() == "b\n"
    assert any(".a.driftd-tmp-" in n for n in seen[0])
    assert not [p for p in (host_root / "etc").iterdir() if "driftd-tmp" in p.name]


# --------------------------------------------------------------------------- gate counts in memory


def test_the_gate_counts_come_from_memory_and_equal_the_table(tmp_path: Path) -> None:
    """Budget and flap counts are answered by the in-memory window (no SQL per plan) with the table's answers,
    also after a restart (seeded from the table) and for a window reaching past what memory holds."""
    import random

    from driftd.engine.state import StateStore

    st = StateStore(tmp_path / "st")
    now = 1_800_000_000.0
    rng = random.Random(5)
    recs = {}
    for i in range(40):
        key = f"host:file:/etc/f{i % 7}"
        rec = recs.get(key) or st.open_drift(key=key, target="host", baseline=f"b{i % 3}", address=key[10:], now=now,
                                              window_seconds=1800, fields=[])
        recs[key] = rec
        result = rng.choice(["succeeded", "failed", "held:budget", "skipped"])
        action = rng.choice(["write_file", "chmod", "none"])
        kind = rng.choice(["revert", "retirement"])
        st.count_actions("revert", now - 3600)  # seeds the window on the first call
        if i % 5 == 0:
            st.note_action(rec, now=now + i, action=action, result=result, kind=kind)
        else:
            st.record_action(rec, now=now + i, action=action, result=result, kind=kind, attempt=False)

    def sql_counts(s: StateStore, since: float) -> list[int]:
        s._window.seeded_from = None  # force SQL for the reference
        s._window.seeded_from = float("inf")
        out = [s.count_actions(k, since, baseline=b) for k in ("revert", "retirement") for b in (None, "b0", "b1", "b2")]
        out += [s.count_key_actions(f"host:file:/etc/f{j}", since) for j in range(7)]
        return out

    def mem_counts(s: StateStore, since: float) -> list[int]:
        out = [s.count_actions(k, since, baseline=b) for k in ("revert", "retirement") for b in (None, "b0", "b1", "b2")]
        out += [s.count_key_actions(f"host:file:/etc/f{j}", since) for j in range(7)]
        return out

    for since in (now - 1, now + 10.5, now + 25, now + 39):
        assert st._window.seeded_from is not None and since >= st._window.seeded_from
        mem = mem_counts(st, since)
        reads: list[Any] = []
        real = st._read

        def counting(*a: Any, _reads: list[Any] = reads, _real: Any = real, **k: Any) -> Any:
            _reads.append(a)
            return _real(*a, **k)

        st._read = counting  # type: ignore[method-assign]
        assert mem_counts(st, since) == mem and not reads  # answered from memory
        st._read = real  # type: ignore[method-assign]
        ref = StateStore(tmp_path / "st")  # a restart: seeded from the table on its first count
        assert mem_counts(ref, since) == mem
        assert sql_counts(ref, since) == mem
        ref.close()
    assert st.count_actions("revert", now - 10 * 86400) >= st.count_actions("revert", now - 1)  # past memory: SQL
