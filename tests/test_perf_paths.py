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
import stat
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
    assert json.loads(dry.stdout)["exitCode"] == 3
    assert any(json.loads(line)["event"] == "scan.finished" for line in dry.stderr.splitlines())
    fixed = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert fixed.returncode == 0, fixed.stderr
    assert fixed.stdout.rstrip().endswith("; exit 0 (clean)")
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


# --------------------------------------------------------------------------- cost of a revert: SQL statements, fsyncs

# what one revert of a new drift costs (record -> gates -> journal -> act -> resolve), measured and kept here:
# content: INSERT..RETURNING, the gates' one read, the FULL journal UPDATE, BEGIN/UPDATE/INSERT/COMMIT;
# fsyncs: snapshot blob, snapshot folder, the new file's temp, the audit line (the directory's is per pass)
SQL_PER_CONTENT_REVERT = 7
SQL_PER_MODE_REVERT = 6
FSYNC_PER_CONTENT_REVERT = 4
FSYNC_PER_MODE_REVERT = 1


def _fd_id(fd: int) -> tuple[int, int, bool]:
    st = os.fstat(fd)
    return st.st_dev, st.st_ino, stat.S_ISDIR(st.st_mode)


def _record_fsyncs(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, int, bool]]:
    """os.fsync, recording what each call made durable: (dev, inode, is a directory)."""
    synced: list[tuple[int, int, bool]] = []
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        real_fsync(fd)
        synced.append(_fd_id(fd))

    monkeypatch.setattr(os, "fsync", fsync)
    return synced


def _dir_id(path: Path) -> tuple[int, int, bool]:
    st = os.stat(path)
    return st.st_dev, st.st_ino, True


def _flat_app(host_root: Path, n_content: int, n_mode: int, n_clean: int) -> tuple[str, list[str], list[str]]:
    """/etc/app with content drift, mode drift and clean files; the baseline spec and the drifted keys."""
    app = host_root / "etc/app"
    app.mkdir(parents=True, exist_ok=True)
    spec, content, mode = "files:\n", [], []
    for i in range(n_content + n_mode + n_clean):
        p = app / f"{i:03d}.conf"
        p.write_text(f"drifted {i}\n" if i < n_content else "v\n")
        p.chmod(0o600 if n_content <= i < n_content + n_mode else 0o644)
        spec += f'  - {{path: /etc/app/{i:03d}.conf, content: "v\\n", mode: "0644"}}\n'
        (content if i < n_content else mode if i < n_content + n_mode else []).append(f"host:file:/etc/app/{i:03d}.conf")
    return spec, content, mode


def _two_directories(host_root: Path, baselines_dir, make_runtime, n_content: int, n_clean: int) -> tuple[Any, list[str]]:
    """_flat_app's /etc/app plus one drifted file in /etc/other: a pass that writes into two directories."""
    spec, content, _ = _flat_app(host_root, n_content, 0, n_clean)
    (host_root / "etc/other").mkdir()
    (host_root / "etc/other/x.conf").write_text("drifted\n")
    spec += '  - {path: /etc/other/x.conf, content: "v\\n"}\n'
    rt = make_runtime(baselines_dir({"b.yaml": host_baseline("b", spec)}), safety={"breaker": {"share": 1.0}})
    return rt, content


def test_a_revert_costs_a_bounded_number_of_sql_statements_and_fsyncs(host_root: Path, baselines_dir, make_runtime,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """Per revert through the real engine on a real filesystem: at most 7 SQL statements (6 for a mode change)
    and 4 fsyncs (1); the directory fsync after the renames is one per directory per pass, not one per revert."""
    from driftd.engine.once import run_once

    spec, content, mode = _flat_app(host_root, 0, 0, 23)  # clean for the warm-up pass
    (host_root / "etc/warm").write_text("drifted\n")
    spec += '  - {path: /etc/warm, content: "v\\n"}\n'
    rt = make_runtime(baselines_dir({"b.yaml": host_baseline("b", spec)}), safety={"breaker": {"share": 1.0}})
    snaps = Path(rt.settings.state_dir) / "snapshots/sha256"
    for i in range(256):  # every snapshot folder exists: creating one costs a folder fsync once, not per revert
        (snaps / f"{i:02x}").mkdir(mode=0o700, parents=True, exist_ok=True)
    warm = run_once(rt.engine, rt.queue, attempts=1)  # audit chain started, gate window seeded
    assert warm.counts["remediated"] == 1 and warm.exit_code == 0
    rt.engine.clock.advance(3600)
    spec, content, mode = _flat_app(host_root, 12, 6, 5)  # now 12 files drift in content, 6 in mode

    statements: list[str] = []
    rt.state._conn.set_trace_callback(statements.append)
    assert rt.state._jconn is not None
    rt.state._jconn.set_trace_callback(statements.append)
    fsyncs: list[tuple[int, int, bool]] = []
    real_fsync = os.fsync

    def counting_fsync(fd: int) -> None:
        fsyncs.append(_fd_id(fd))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", counting_fsync)
    per_key: dict[str, tuple[int, int]] = {}
    real_reconcile = rt.engine.reconcile

    def reconcile(key: str) -> Any:
        s0, f0 = len(statements), len(fsyncs)
        out = real_reconcile(key)
        per_key[key] = (len(statements) - s0, len(fsyncs) - f0)
        return out

    monkeypatch.setattr(rt.engine, "reconcile", reconcile)
    s = run_once(rt.engine, rt.queue, attempts=1)
    monkeypatch.undo()
    rt.state._conn.set_trace_callback(None)

    assert s.exit_code == 0 and s.counts["remediated"] == 18, s.counts
    assert all((host_root / "etc/app" / f"{i:03d}.conf").read_text() == "v\n" for i in range(23))
    worst_sql = max(per_key[k][0] for k in content), max(per_key[k][0] for k in mode)
    worst_fsync = max(per_key[k][1] for k in content), max(per_key[k][1] for k in mode)
    assert worst_sql <= (SQL_PER_CONTENT_REVERT, SQL_PER_MODE_REVERT), (worst_sql, statements[-20:])
    assert worst_fsync[0] <= FSYNC_PER_CONTENT_REVERT and worst_fsync[1] <= FSYNC_PER_MODE_REVERT, worst_fsync
    app = _dir_id(host_root / "etc/app")
    assert fsyncs.count(app) == 1  # 12 renames into /etc/app, one fsync of it
    in_reconciles = sum(f for _, f in per_key.values())
    assert len(fsyncs) - in_reconciles == 1  # all the pass adds: that fsync of /etc/app
    rt.state.close()


def test_the_deferred_directory_fsync_is_done_before_run_once_returns(host_root: Path, baselines_dir, make_runtime,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """Every directory a revert renamed a file into is fsynced after its last rename, before the pass returns."""
    from driftd.engine.once import run_once

    rt, _ = _two_directories(host_root, baselines_dir, make_runtime, 8, 2)
    events: list[tuple[str, tuple[int, int, bool]]] = []
    real_fsync, real_rename = os.fsync, os.rename

    def fsync(fd: int) -> None:
        real_fsync(fd)
        events.append(("fsync", _fd_id(fd)))

    def rename(src: Any, dst: Any, *, src_dir_fd: int | None = None, dst_dir_fd: int | None = None) -> None:
        real_rename(src, dst, src_dir_fd=src_dir_fd, dst_dir_fd=dst_dir_fd)
        if dst_dir_fd is not None:
            events.append(("rename", _fd_id(dst_dir_fd)))

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "rename", rename)
    summary = run_once(rt.engine, rt.queue, attempts=1)
    monkeypatch.undo()
    assert summary.exit_code == 0 and summary.counts["remediated"] == 9
    for d, renames in ((_dir_id(host_root / "etc/app"), 8), (_dir_id(host_root / "etc/other"), 1)):
        last_rename = max(i for i, e in enumerate(events) if e == ("rename", d))
        assert [e for e in events if e == ("rename", d)] == [("rename", d)] * renames
        synced = [i for i, e in enumerate(events) if e == ("fsync", d)]
        assert len(synced) == 1 and synced[0] > last_rename, (d, events)
    assert rt.engine.targets["host"].fs.unsynced() == {}
    rt.state.close()


def test_outside_a_pass_a_reconcile_returns_with_its_directory_synced(host_root: Path, baselines_dir, make_runtime,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """The daemon's step (Engine.reconcile of one key) fsyncs the directory before it returns."""
    (host_root / "etc/motd").write_text("drifted\n")
    rt = make_runtime(baselines_dir({"b.yaml": host_baseline("b", 'files:\n  - {path: /etc/motd, content: "v\\n"}\n')}))
    synced = _record_fsyncs(monkeypatch)
    out = rt.engine.reconcile("host:file:/etc/motd")
    monkeypatch.undo()
    assert out.status == "remediated" and (host_root / "etc/motd").read_text() == "v\n"
    assert synced[-1] == _dir_id(host_root / "etc")  # the last thing the reconcile made durable
    assert rt.engine.targets["host"].fs.unsynced() == {}
    rt.state.close()


def test_a_directory_is_synced_when_the_last_key_writing_in_it_settles(host_root: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """Two keys in flight in one directory: the first to finish leaves the fsync to the second."""
    from driftd.targets.safefs import SafeRoot

    fs = SafeRoot(host_root)
    etc = _dir_id(host_root / "etc")
    synced = _record_fsyncs(monkeypatch)
    with fs.deferring("host:file:/etc/a"):
        fs.write_atomic("/etc/a", b"a\n", mode=None, uid=None, gid=None)
    with fs.deferring("host:file:/etc/b"):
        fs.write_atomic("/etc/b", b"b\n", mode=None, uid=None, gid=None)
    assert etc not in synced
    assert fs.settle("host:file:/etc/a") == [] and etc not in synced  # b is still writing in /etc
    assert set(fs.unsynced()) == {"/etc"}
    assert fs.settle("host:file:/etc/b") == [] and synced.count(etc) == 1  # both renames, one fsync
    assert fs.unsynced() == {}
    fs.write_atomic("/etc/c", b"c\n", mode=None, uid=None, gid=None)  # no owner: synced at once, as before
    assert synced.count(etc) == 2 and fs.unsynced() == {}

    fs.SYNC_MAX_AGE = 0.0  # a key that keeps another in flight forever does not hold the fsync back
    with fs.deferring("k1"):
        fs.write_atomic("/etc/d", b"d\n", mode=None, uid=None, gid=None)
    with fs.deferring("k2"):
        fs.write_atomic("/etc/e", b"e\n", mode=None, uid=None, gid=None)
    assert fs.settle("k1") == [] and synced.count(etc) == 3
    assert fs.settle("k2") == [] and synced.count(etc) == 3  # nothing left to sync


def test_a_failed_deferred_directory_fsync_is_a_failed_remediation(host_root: Path, baselines_dir, make_runtime,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """The batched directory fsync fails (EIO): every key renamed into it is reported failed (log, metric, exit 4)."""
    import errno

    from driftd.engine.once import run_once
    from driftd.testing import capture_logs

    rt, content = _two_directories(host_root, baselines_dir, make_runtime, 3, 1)
    app = _dir_id(host_root / "etc/app")
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        if _fd_id(fd) == app:
            raise OSError(errno.EIO, "Input/output error")
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    with capture_logs() as logs:
        s = run_once(rt.engine, rt.queue, attempts=1)
    monkeypatch.undo()
    assert s.exit_code == 4
    status = {o.key: o.status for o in s.outcomes}
    assert status == {**dict.fromkeys(content, "failed"), "host:file:/etc/other/x.conf": "remediated"}
    failed = [e for e in logs if e["event"] == "remediation.failed"]
    assert sorted(e["key"] for e in failed) == sorted(content)
    assert all("fsync of its directory /etc/app failed" in e["error"] and "may not survive a crash" in e["error"]
               for e in failed)
    sample = rt.metrics.registry.get_sample_value(
        "driftd_remediations_total", {"target": "host", "action": "write_file", "result": "failed"})
    assert sample == 3
    assert all((host_root / "etc/app" / f"{i:03d}.conf").read_text() == "v\n" for i in range(3))  # renamed in
    rt.state.close()


def test_a_snapshot_folder_is_fsynced_into_its_parent_once_when_created(tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """The first snapshot in a new folder also makes the folder's own entry durable; later ones cost 2 fsyncs."""
    import hashlib

    from driftd.safety.snapshots import SnapshotStore

    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    store = SnapshotStore(state / "snapshots")
    first = b"first drifted bytes\n"
    bucket = hashlib.sha256(first).hexdigest()[:2]
    same = next(b for i in range(100_000) if hashlib.sha256(b := f"x{i}".encode()).hexdigest()[:2] == bucket)
    synced = _record_fsyncs(monkeypatch)
    store.put(first)
    dirs = [_dir_id(p) for p in (state, state / "snapshots", state / "snapshots/sha256", state / "snapshots/sha256" / bucket)]
    assert [s for s in synced if s[2]] == dirs  # each new folder into its parent, then the blob's folder
    assert len(synced) == 5  # + the blob itself
    synced.clear()
    store.put(same)  # same folder, which exists now
    assert len(synced) == 2 and synced[1] == dirs[3]
