"""The host file watcher (targets/inotify.py) against the real kernel inotify on real temp trees.

Every wait is a bounded poll.  "Nothing else was enqueued" is proven with a sentinel: after the
events that must not count, a managed sentinel file is changed; events are read in order, so once
the sentinel's key arrives every earlier event was handled.  The kernel limits the overflow and
watch-exhaustion tests lower (``/proc/sys/fs/inotify/*``, root only) are restored in ``finally``.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import host_baseline, need, poll
from prometheus_client import CollectorRegistry
from test_daemon import MOTD

from driftd.engine.daemon import BaselineManager, Daemon
from driftd.engine.queue import KeyedQueue
from driftd.models.keys import ResourceKey
from driftd.models.resources import DesiredResource
from driftd.observability.metrics import Metrics
from driftd.observability.nullmetrics import NullMetrics
from driftd.targets import inotify as inotify_mod
from driftd.targets.inotify import HostWatcher
from driftd.targets.safefs import TMP_MARK
from driftd.testing import capture_logs

WAIT = 5.0  # seconds: the bound of every poll (an event is expected well within one second)
PROC_INOTIFY = Path("/proc/sys/fs/inotify")


def _inotify_available() -> tuple[bool, str]:
    try:
        import inotify_simple  # type: ignore[import-untyped]

        inotify_simple.INotify().close()
    except (ImportError, OSError) as e:
        return False, f"inotify unavailable: {type(e).__name__}: {e}"
    return True, ""


@pytest.fixture(autouse=True)
def _need_inotify() -> None:
    ok, why = _inotify_available()
    need(ok, why or "inotify")


def need_proc_limits() -> None:
    writable = os.geteuid() == 0 and os.access(PROC_INOTIFY / "max_user_watches", os.W_OK)
    need(writable, "needs root and a writable /proc/sys/fs/inotify to lower the kernel's inotify limits")


def wait_for(pred: Callable[[], Any], what: str, timeout: float = WAIT) -> Any:
    return poll(pred, what, timeout, interval=0.01)


def res(kind: str, address: str) -> DesiredResource:
    return DesiredResource(key=ResourceKey.host(kind, address), target="host", kind=kind, address=address, baseline="b",
                           expected={})


def fkey(address: str) -> str:
    return ResourceKey.host("file", address)


def dkey(address: str) -> str:
    return ResourceKey.host("directory", address)


def save_atomically(path: Path, text: str) -> None:
    """As an editor or a config-management tool saves: a temp file beside it, then rename over it."""
    tmp = path.with_name(f".{path.name}.swp")
    tmp.write_text(text)
    os.replace(tmp, path)


class Keys:
    """What ``on_key`` received, in order, with when."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.got: list[tuple[float, str]] = []

    def __call__(self, key: str) -> None:
        with self.lock:
            self.got.append((time.monotonic(), key))

    def count(self, key: str) -> int:
        with self.lock:
            return sum(1 for _, k in self.got if k == key)

    def seen(self) -> list[str]:
        with self.lock:
            return [k for _, k in self.got]

    def wait(self, key: str, n: int = 1, timeout: float = WAIT) -> float:
        """Seconds until ``key`` has been received ``n`` times."""
        t0 = time.monotonic()
        wait_for(lambda: self.count(key) >= n, f"{key} x{n} (got {self.seen()})", timeout)
        return time.monotonic() - t0


class Running:
    def __init__(self, watcher: HostWatcher, keys: Keys, thread: threading.Thread, stop: threading.Event) -> None:
        self.w, self.keys, self.thread, self.stop = watcher, keys, thread, stop


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    root = tmp_path / "host"
    (root / "etc/app").mkdir(parents=True)
    (root / "etc/app/a.conf").write_text("a\n")
    (root / "etc/app/b.conf").write_text("b\n")
    (root / "etc/app/other.conf").write_text("unmanaged\n")
    return root


@pytest.fixture
def start(tree: Path) -> Iterator[Callable[..., Running]]:
    """Start a watcher over ``tree`` in its own thread (stopped, and proven stopped, afterwards)."""
    running: list[Running] = []

    def go(desired: list[DesiredResource], *, on_key: Callable[[str], None] | None = None, arm: bool = True,
           **kw: Any) -> Running:
        kw.setdefault("metrics", NullMetrics())
        kw.setdefault("debounce", 0.05)
        w = HostWatcher(tree, **kw)
        w.refresh(desired)
        keys = Keys()
        stop = threading.Event()
        t = threading.Thread(target=w.watch, args=(on_key or keys, stop), name="test-inotify", daemon=True)
        t.start()
        r = Running(w, keys, t, stop)
        running.append(r)
        if arm:
            assert w.wait_armed(WAIT), "the watcher never armed"
        return r

    yield go
    for r in running:
        r.stop.set()
        r.w.close()
        r.thread.join(WAIT)
        assert not r.thread.is_alive(), "the watch thread did not stop"


MANAGED = [res("file", "/etc/app/a.conf"), res("file", "/etc/app/b.conf"), res("directory", "/etc/app")]


# --------------------------------------------------------------------------- what is seen


def test_a_file_saved_by_rename_is_seen_within_a_second_and_stays_watched(tree, start):
    r = start(MANAGED)
    a = tree / "etc/app/a.conf"
    save_atomically(a, "edited\n")
    assert r.keys.wait(fkey("/etc/app/a.conf")) < 1.0
    # the watch is on the directory, so the new inode is watched as well as the old one was
    save_atomically(a, "edited again\n")
    assert r.keys.wait(fkey("/etc/app/a.conf"), n=2) < 1.0
    with a.open("a") as fh:  # an in-place write too
        fh.write("appended\n")
    r.keys.wait(fkey("/etc/app/a.conf"), n=3)
    a.unlink()  # and a deletion
    r.keys.wait(fkey("/etc/app/a.conf"), n=4)
    assert r.w.watches == 3  # host root, etc, etc/app: the whole way down, no more


def test_chmod_and_chown_of_a_file_and_of_a_managed_directory_are_seen(tree, start):
    r = start(MANAGED)
    os.chmod(tree / "etc/app/b.conf", 0o666)
    r.keys.wait(fkey("/etc/app/b.conf"))
    os.chmod(tree / "etc/app", 0o777)  # a directory resource's own mode, reported by its parent
    r.keys.wait(dkey("/etc/app"))
    os.chown(tree / "etc/app", os.getuid(), os.getgid())
    r.keys.wait(dkey("/etc/app"), n=2)


def test_a_deleted_then_recreated_parent_directory_is_rearmed(tree, start):
    r = start(MANAGED)
    shutil.rmtree(tree / "etc/app")
    r.keys.wait(fkey("/etc/app/a.conf"))  # the file went with it
    r.keys.wait(dkey("/etc/app"))
    wait_for(lambda: r.w.watches == 2, "the dead watch to be dropped")
    (tree / "etc/app").mkdir()
    r.keys.wait(fkey("/etc/app/a.conf"), n=2)  # everything below a new directory is looked at again
    wait_for(lambda: r.w.watches == 3, "the new directory to be watched")
    n = r.keys.count(fkey("/etc/app/a.conf"))
    save_atomically(tree / "etc/app/a.conf", "back\n")
    r.keys.wait(fkey("/etc/app/a.conf"), n=n + 1)
    # moved away and another put in its place: the watch follows the path, not the old inode
    os.rename(tree / "etc/app", tree / "etc/app.old")
    (tree / "etc/app").mkdir()
    wait_for(lambda: r.w.watches == 3 and str(tree / "etc/app") in r.w._dirs and r.w._dirs[str(tree / "etc/app")].wd,
             "the replacement directory to be watched")
    n = r.keys.count(fkey("/etc/app/b.conf"))
    (tree / "etc/app.old/b.conf").write_text("in the old directory: not managed any more\n")
    (tree / "etc/app/b.conf").write_text("new\n")
    r.keys.wait(fkey("/etc/app/b.conf"), n=n + 1)


def test_a_parent_that_does_not_exist_yet_is_watched_from_its_nearest_ancestor(tree, start):
    r = start([res("file", "/etc/new/deep/x.conf")])
    assert r.w.watches == 2  # root and /etc: /etc/new is not there yet
    (tree / "etc/new").mkdir()
    wait_for(lambda: r.w.watches == 3, "/etc/new to be watched")
    (tree / "etc/new/deep").mkdir()
    wait_for(lambda: r.w.watches == 4, "/etc/new/deep to be watched")
    n = r.keys.count(fkey("/etc/new/deep/x.conf"))
    (tree / "etc/new/deep/x.conf").write_text("x\n")
    r.keys.wait(fkey("/etc/new/deep/x.conf"), n=n + 1)


def test_the_package_manager_writing_its_database_enqueues_every_package_key(tree, start):
    """dpkg renames status-new over status: each packages rule is reconciled at once, not at the next scan; the
    databases this host does not have are watched from their nearest existing ancestor, nothing more."""
    (tree / "var/lib/dpkg").mkdir(parents=True)
    (tree / "var/lib/dpkg/status").write_text("Package: a\nStatus: install ok installed\nVersion: 1\n\n")
    r = start([res("package", "openssl"), res("package", "telnetd")])
    new = tree / "var/lib/dpkg/status-new"
    new.write_text("Package: telnetd\nStatus: install ok installed\nVersion: 0.17\n\n")
    new.rename(tree / "var/lib/dpkg/status")
    assert r.keys.wait("host:package:openssl") < 1.0 and r.keys.wait("host:package:telnetd") < 1.0
    assert r.keys.count("host:package:openssl") == 1  # status-new itself is nobody's name: one key per change
    (tree / "var/lib/dpkg/available").write_text("x")  # another file of dpkg's: not a database driftd reads
    time.sleep(0.3)
    assert r.keys.count("host:package:openssl") == 1
    # host root, var, var/lib, var/lib/dpkg; lib and usr are missing here: the root watches for them
    assert r.w.watches == 4


def test_unmanaged_siblings_and_driftds_own_temp_files_enqueue_nothing(tree, start):
    r = start([res("file", "/etc/app/a.conf"), res("file", "/etc/sentinel")])
    (tree / "etc/app/other.conf").write_text("changed\n")
    os.chmod(tree / "etc/app/other.conf", 0o600)
    (tree / "etc/app/new.conf").write_text("created\n")
    (tree / "etc/app/new.conf").unlink()
    (tree / "etc/app/sub").mkdir()
    (tree / "etc/app/sub/a.conf").write_text("same name, other directory\n")
    (tree / "a.conf").write_text("same name at the root\n")
    tmp = tree / f"etc/app/.a.conf{TMP_MARK}0badcafe"
    tmp.write_text("a temp file as SafeRoot writes it\n")
    tmp.unlink()
    (tree / "etc/sentinel").write_text("done\n")
    r.keys.wait(fkey("/etc/sentinel"))
    assert r.keys.seen() == [fkey("/etc/sentinel")]


def test_a_burst_of_writes_is_one_key(tree, start):
    r = start([*MANAGED, res("file", "/etc/sentinel")], debounce=0.3)
    a = tree / "etc/app/a.conf"
    for i in range(50):
        save_atomically(a, f"burst {i}\n")
        os.chmod(a, 0o600 if i % 2 else 0o644)
    t_last = time.monotonic()
    r.keys.wait(fkey("/etc/app/a.conf"))
    (tree / "etc/sentinel").write_text("after the burst\n")
    r.keys.wait(fkey("/etc/sentinel"))
    assert r.keys.count(fkey("/etc/app/a.conf")) == 1
    fired = next(t for t, k in r.keys.got if k == fkey("/etc/app/a.conf"))
    assert fired - t_last >= 0.25  # the quiet time after the last event, not the first


def test_refresh_changes_the_watch_set(tree, start):
    r = start([res("file", "/etc/app/a.conf")])
    assert r.w.watches == 3
    (tree / "srv/data").mkdir(parents=True)
    r.w.refresh([res("file", "/srv/data/d.conf"), res("file", "/etc/sentinel")])
    assert r.w.wait_armed(WAIT)
    assert r.w.watches == 4  # root, /srv, /srv/data, /etc (no longer /etc/app)
    assert str(tree / "etc/app") not in r.w._dirs
    save_atomically(tree / "etc/app/a.conf", "not managed any more\n")
    (tree / "srv/data/d.conf").write_text("d\n")
    r.keys.wait(fkey("/srv/data/d.conf"))
    (tree / "etc/sentinel").write_text("done\n")
    r.keys.wait(fkey("/etc/sentinel"))
    assert fkey("/etc/app/a.conf") not in r.keys.seen()
    r.w.refresh([])
    assert r.w.wait_armed(WAIT) and r.w.watches == 0


# --------------------------------------------------------------------------- losing events, degrading


def _set_limit(name: str, value: int) -> None:
    (PROC_INOTIFY / name).write_text(f"{value}\n")


def _watches_in_use() -> int:
    """inotify watches this user's processes hold now (``inotify wd:`` lines of /proc/*/fdinfo): they count against the limit."""
    n = 0
    for proc in Path("/proc").glob("[0-9]*"):
        with contextlib.suppress(OSError):  # a process or descriptor gone meanwhile
            if proc.stat().st_uid != os.geteuid():
                continue
            for fdinfo in (proc / "fdinfo").iterdir():
                with contextlib.suppress(OSError):
                    n += sum(1 for line in fdinfo.read_text().splitlines() if line.startswith("inotify wd:"))
    return n


def test_queue_overflow_asks_for_a_full_scan(tree, start):
    """A real IN_Q_OVERFLOW: a 16-event queue, the watcher held in on_key while 200 events arrive."""
    need_proc_limits()
    reg = CollectorRegistry()
    metrics = Metrics(reg)
    gate = threading.Event()
    keys = Keys()

    def slow_on_key(key: str) -> None:
        keys(key)
        gate.wait(WAIT)  # the watch thread reads nothing meanwhile: the kernel queue fills

    scans: list[float] = []
    before = int((PROC_INOTIFY / "max_queued_events").read_text())
    _set_limit("max_queued_events", 16)
    try:  # the limit is taken when the inotify instance is created
        r = start(MANAGED, on_key=slow_on_key, metrics=metrics, debounce=0, on_overflow=lambda: scans.append(time.monotonic()))
    finally:
        _set_limit("max_queued_events", before)
    with capture_logs() as logs:
        (tree / "etc/app/a.conf").write_text("first\n")
        wait_for(lambda: keys.count(fkey("/etc/app/a.conf")) >= 1, "the first key")
        for i in range(200):  # alternating names: the kernel merges only an event equal to the last one queued
            os.chmod(tree / ("etc/app/b.conf" if i % 2 else "etc/app/other.conf"), 0o600 if i % 4 < 2 else 0o644)
        gate.set()
        wait_for(lambda: scans, "the full-scan request")
    assert len(scans) == 1
    assert reg.get_sample_value("driftd_inotify_degraded_total", {"reason": "queue_overflow"}) == 1
    assert [e["reason"] for e in logs if e["event"] == "inotify.degraded"] == ["queue_overflow"]
    assert r.thread.is_alive()
    n = keys.count(fkey("/etc/app/a.conf"))
    (tree / "etc/app/a.conf").write_text("still watched\n")
    wait_for(lambda: keys.count(fkey("/etc/app/a.conf")) > n, "a key after the overflow")


def test_queue_overflow_without_a_scan_callback_enqueues_every_managed_key(tree):
    """The handler itself, fed the kernel's overflow event (wd -1, IN_Q_OVERFLOW) as it is read; one thread, no timing."""
    from inotify_simple import Event as RawEvent

    w = HostWatcher(tree, metrics=NullMetrics(), debounce=0)
    ino = inotify_mod._open_inotify()
    try:
        w.refresh(MANAGED)
        w._apply_refresh(ino)
        assert w.watches == 3
        w._handle(ino, [RawEvent(-1, inotify_mod.IN_Q_OVERFLOW, 0, "")])
        keys = Keys()
        w._flush(keys)
        assert sorted(keys.seen()) == sorted(d.key for d in MANAGED)
        assert "queue_overflow" not in w.degraded  # each overflow is its own episode
        assert w.watches == 3  # re-armed (structural events may have been lost): same directories
    finally:
        ino.close()


def test_exhausted_watches_degrade_to_the_scan_and_recover(tree, start):
    """max_user_watches lowered under what the tree needs: logged, counted, no crash; raised: re-armed."""
    need_proc_limits()
    reg = CollectorRegistry()
    before = int((PROC_INOTIFY / "max_user_watches").read_text())
    desired = [*MANAGED, res("file", "/srv/data/d.conf")]
    (tree / "srv/data").mkdir(parents=True)
    with capture_logs() as logs:
        _set_limit("max_user_watches", _watches_in_use() + 2)
        try:
            r = start(desired, metrics=Metrics(reg), retry_seconds=0.2)  # needs 5: root, etc, etc/app, srv, srv/data
            assert "watch_limit" in r.w.degraded
            assert r.w.watches <= 2 and r.w.unwatched >= 1
            assert r.thread.is_alive()
            assert reg.get_sample_value("driftd_inotify_degraded_total", {"reason": "watch_limit"}) == 1
            assert reg.get_sample_value("driftd_inotify_watches") == r.w.watches
            time.sleep(0.5)  # a few failed retries: still one episode, logged and counted once
            assert reg.get_sample_value("driftd_inotify_degraded_total", {"reason": "watch_limit"}) == 1
        finally:
            _set_limit("max_user_watches", before)
    degraded = [e for e in logs if e["event"] == "inotify.degraded"]
    assert [e["reason"] for e in degraded] == ["watch_limit"]
    assert degraded[0]["log_level"] == "warning" and "No space left" in degraded[0]["error"]
    wait_for(lambda: r.w.watches == 5, "the retry to arm every directory")
    assert reg.get_sample_value("driftd_inotify_watches") == 5
    assert "watch_limit" not in r.w.degraded and r.w.unwatched == 0
    (tree / "srv/data/d.conf").write_text("seen now\n")
    r.keys.wait(fkey("/srv/data/d.conf"))


@pytest.mark.parametrize("failure", ["import", "init"])
def test_inotify_unavailable_is_logged_counted_and_the_watch_returns(tree, start, monkeypatch, failure):
    reg = CollectorRegistry()
    if failure == "import":
        monkeypatch.setitem(sys.modules, "inotify_simple", None)  # import raises ImportError
    else:
        def fail() -> Any:
            raise OSError(errno.EMFILE, "Too many open files (fs.inotify.max_user_instances)")

        monkeypatch.setattr(inotify_mod, "_open_inotify", fail)
    with capture_logs() as logs:
        r = start(MANAGED, metrics=Metrics(reg), arm=False)
        r.thread.join(WAIT)
    assert not r.thread.is_alive() and r.w.available is False
    assert reg.get_sample_value("driftd_inotify_degraded_total", {"reason": "unavailable"}) == 1
    assert [e["reason"] for e in logs if e["event"] == "inotify.degraded"] == ["unavailable"]


# --------------------------------------------------------------------------- through the daemon

ISSUE = host_baseline(name="issue", spec="""
    files:
      - path: /etc/issue
        content: "authorised use only\\n"
        mode: "0644"
      - path: /etc/app/app.conf
        content: "mode = strict\\n"
    directories:
      - path: /etc/app
        mode: "0755"
""")


@pytest.fixture
def daemon(make_runtime, baselines_dir) -> Iterator[Callable[..., Daemon]]:
    made: list[Daemon] = []

    def make(**settings: Any) -> Daemon:
        settings.setdefault("scan", {"interval_seconds": 3600, "jitter_seconds": 0})
        rt = make_runtime(baselines_dir({"motd.yaml": MOTD}), registry=CollectorRegistry(), **settings)
        manager = BaselineManager(rt.settings, rt.engine, rt.metrics, rt.engine.clock)
        manager.prime()
        d = Daemon(settings=rt.settings, engine=rt.engine, queue=KeyedQueue(), metrics=rt.metrics, manager=manager, api=None)
        made.append(d)
        return d

    yield make
    for d in made:
        if d._scheduler is not None and d._scheduler.running:
            d.stop()


def sample(d: Daemon, name: str, **labels: str) -> float | None:
    return d.metrics.registry.get_sample_value(name, labels)


def test_daemon_reverts_a_drifted_file_without_waiting_for_the_scan(daemon, host_root, baselines_dir):
    d = daemon(reload_interval_seconds=0.2)
    motd = host_root / "etc/motd"
    assert d.host_watcher is not None
    d.start()
    try:
        wait_for(lambda: d.scans_done == 1 and motd.exists() and motd.read_text() == "hello\n", "the first scan")
        assert sample(d, "driftd_inotify_watches") == 2  # host root and /etc
        for drift in ("tampered by rename\n", "tampered in place\n"):
            if "rename" in drift:
                save_atomically(motd, drift)
            else:
                motd.write_text(drift)
            t0 = time.monotonic()
            wait_for(lambda: motd.read_text() == "hello\n", "the revert")
            assert time.monotonic() - t0 < 2.0
        os.chmod(motd, 0o666)
        wait_for(lambda: motd.stat().st_mode & 0o777 == 0o644, "the mode revert")
        assert d.scans_done == 1, "a scan ran: the revert did not come from the event"
        assert (sample(d, "driftd_events_total", target="host") or 0) >= 3
        assert not list((host_root / "etc").glob(f"*{TMP_MARK}*"))

        # a new baseline set: the watch set follows it (the reload scans once, then events only)
        (host_root / "etc/app").mkdir(mode=0o755)
        baselines_dir({"issue.yaml": ISSUE})
        issue = host_root / "etc/issue"
        wait_for(lambda: d.scans_done == 2 and issue.exists() and issue.read_text() == "authorised use only\n", "the reload")
        wait_for(lambda: sample(d, "driftd_inotify_watches") == 3, "the watch set to follow the reload (+ /etc/app)")
        issue.write_text("welcome, everyone\n")
        wait_for(lambda: issue.read_text() == "authorised use only\n", "the revert of a file added by the reload")
        app = host_root / "etc/app/app.conf"
        save_atomically(app, "mode = lax\n")
        wait_for(lambda: app.read_text() == "mode = strict\n", "the revert of a file in a newly watched directory")
        os.chmod(host_root / "etc/app", 0o777)
        wait_for(lambda: (host_root / "etc/app").stat().st_mode & 0o777 == 0o755, "the revert of a directory's mode")
        assert d.scans_done == 2
    finally:
        started = time.monotonic()
        d.stop()
    assert time.monotonic() - started < 5  # the watch thread stops at once


def test_daemon_asks_for_a_full_scan_on_overflow_and_runs_without_inotify(daemon):
    d = daemon()
    d.start()
    try:
        wait_for(lambda: d.scans_done == 1, "the first scan")
        assert d.host_watcher is not None and d.host_watcher.on_overflow is not None
        d.host_watcher.on_overflow()  # what IN_Q_OVERFLOW calls
        wait_for(lambda: d.scans_done == 2, "the requested full scan")
    finally:
        d.stop()
    off = daemon(scan={"interval_seconds": 3600, "jitter_seconds": 0, "inotify": False})
    assert off.host_watcher is None


def test_daemon_without_inotify_starts_at_once_and_stays_on_the_scan(daemon, host_root, monkeypatch):
    """inotify failing at init (EMFILE: fs.inotify.max_user_instances) neither delays start nor stops the scan."""
    def fail() -> Any:
        raise OSError(errno.EMFILE, "Too many open files")

    monkeypatch.setattr(inotify_mod, "_open_inotify", fail)
    d = daemon()
    t0 = time.monotonic()
    d.start()
    try:
        assert time.monotonic() - t0 < 2.0
        wait_for(lambda: d.scans_done == 1 and (host_root / "etc/motd").exists(), "the scan to write /etc/motd")
        assert sample(d, "driftd_inotify_degraded_total", reason="unavailable") == 1
        assert sample(d, "driftd_inotify_watches") == 0
        assert d.healthy() == (True, "ok")
    finally:
        d.stop()
