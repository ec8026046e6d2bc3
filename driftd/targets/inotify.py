"""Host file watcher: inotify on the directories of managed host paths (an event source).

Pipeline position: the trigger side, beside the scheduled scan.  :class:`HostWatcher` is an
``EventSource``: the daemon runs :meth:`HostWatcher.watch` in its own thread, and all it
does with a kernel event is ``on_key(key)`` for the managed ``file``/``directory``
resources the event may have changed (debounced per key), and for every ``package`` resource when
the package manager writes its database; the reconcile re-reads the real state.  Sysctls and the
kernel release have no inotify and stay on the scan, and so does
every path this watcher could not arm: a failure here degrades to the scan, it never stops it.

May touch: ``lstat`` and ``inotify_add_watch`` below the host root (it writes nothing and
never leaves the root), its own inotify descriptor and wake-up pipe, the ``on_key`` /
``on_overflow`` callbacks and the metrics it is given.  It is the only importer of an
inotify library (``inotify_simple``, imported when :meth:`watch` starts).

What is watched: every existing directory from the host root down to the parent of each
managed path (editors and atomic writers replace a file by rename, so a watch on the file
itself would die at the first save; a directory resource's own mode and owner changes are
reported by its parent as ``IN_ATTRIB`` on its name).  When a parent does not exist yet, the
deepest existing ancestor is the last one watched, and its ``IN_CREATE``/``IN_MOVED_TO`` of
the next name re-arms the watches.  ``IN_Q_OVERFLOW`` (events were lost) asks for a full
scan (``on_overflow``, else every managed key is enqueued).  Watches exhausted (``ENOSPC``,
``fs.inotify.max_user_watches``) or inotify unavailable: logged as ``inotify.degraded``,
counted in ``driftd_inotify_degraded_total{reason}``, retried every ``retry_seconds``.
"""

from __future__ import annotations

import contextlib
import errno
import os
import select
import stat
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

from driftd.models.resources import DesiredResource
from driftd.observability.logging import Event, get_logger
from driftd.targets.packages import DATABASES, RPM_SQLITE, RPM_SQLITE_ALT
from driftd.targets.safefs import TMP_MARK

# inotify(7) event bits (the kernel ABI, <sys/inotify.h>)
IN_MODIFY = 0x00000002
IN_ATTRIB = 0x00000004
IN_CLOSE_WRITE = 0x00000008
IN_MOVED_FROM = 0x00000040
IN_MOVED_TO = 0x00000080
IN_CREATE = 0x00000100
IN_DELETE = 0x00000200
IN_DELETE_SELF = 0x00000400
IN_MOVE_SELF = 0x00000800
IN_UNMOUNT = 0x00002000
IN_Q_OVERFLOW = 0x00004000
IN_IGNORED = 0x00008000
IN_ONLYDIR = 0x01000000
IN_DONT_FOLLOW = 0x02000000
IN_EXCL_UNLINK = 0x04000000

_CHILD = IN_CREATE | IN_DELETE | IN_MODIFY | IN_CLOSE_WRITE | IN_ATTRIB | IN_MOVED_FROM | IN_MOVED_TO
_STRUCTURAL = IN_CREATE | IN_DELETE | IN_MOVED_FROM | IN_MOVED_TO  # a name appeared or went away
_SELF_GONE = IN_DELETE_SELF | IN_MOVE_SELF | IN_UNMOUNT | IN_IGNORED
WATCH_MASK = _CHILD | IN_DELETE_SELF | IN_MOVE_SELF | IN_ONLYDIR | IN_DONT_FOLLOW | IN_EXCL_UNLINK

KINDS = ("file", "directory")  # the host kinds that live in a directory tree
# a packages rule's key follows every package database file driftd may read (the one the host has is written by
# its package manager: dpkg renames status-new over status, rpm writes the sqlite WAL)
PACKAGE_DB_FILES = (*DATABASES, RPM_SQLITE + "-wal", RPM_SQLITE_ALT + "-wal")
_TICK = 10.0  # longest sleep between looks at ``stop`` when nobody calls close() (which wakes it at once)


class _Inotify(Protocol):
    """What this module uses of ``inotify_simple.INotify``."""

    def fileno(self) -> int: ...
    def add_watch(self, path: str, mask: int) -> int: ...
    def rm_watch(self, wd: int) -> None: ...
    def read(self, timeout: int | None = None) -> list[Any]: ...
    def close(self) -> None: ...


def _open_inotify() -> _Inotify:
    """A non-blocking, close-on-exec inotify instance (ImportError / OSError when unavailable)."""
    import inotify_simple  # type: ignore[import-untyped]

    ino: _Inotify = inotify_simple.INotify(nonblocking=True)
    return ino


Keys = tuple[str, ...]


def _union(a: Keys, b: Keys) -> Keys:
    return a if set(b) <= set(a) else tuple(dict.fromkeys((*a, *b)))


@dataclass
class _Dir:
    """One watched directory: which names in it matter, and to which keys."""

    # keys as tuples, not sets: one managed file per name is the rule, and 10,000 of them in one directory
    # cost 0.6 MiB as 1-tuples where sets took 2.1 MiB
    names: dict[str, Keys] = field(default_factory=dict)  # a managed child -> its keys
    via: dict[str, Keys] = field(default_factory=dict)  # a directory on the way -> keys below it
    ino: tuple[int, int] = (0, 0)  # (st_dev, st_ino) when planned: a watch is kept only on the same directory
    wd: int | None = None


class HostWatcher:
    """Event source for the host target's files and directories (see the module docstring)."""

    name = "host-inotify"

    def __init__(
        self,
        root: str | os.PathLike[str],
        *,
        metrics: Any,
        debounce: float = 0.2,
        on_overflow: Callable[[], None] | None = None,
        retry_seconds: float = 60.0,
        max_delay: float | None = None,
    ) -> None:
        self.root = os.path.abspath(os.fspath(root))
        self.metrics = metrics
        self.debounce = max(0.0, debounce)
        # a path written without a pause is still enqueued this often (debounce never starves a key)
        self.max_delay = max_delay if max_delay is not None else max(1.0, 10 * self.debounce)
        self.on_overflow = on_overflow
        self.retry_seconds = retry_seconds
        self.log = get_logger()
        self.available: bool | None = None  # None until watch() tried to open inotify
        self.degraded: set[str] = set()  # reasons in force (logged and counted once per episode)
        self.unwatched = 0  # managed paths that could not be armed (they stay on the scan)
        self._managed: dict[str, Keys] = {}  # address inside the root -> keys
        self._dirs: dict[str, _Dir] = {}  # real directory path -> interest
        self._by_wd: dict[int, set[str]] = {}
        self._due: dict[str, float] = {}
        self._first: dict[str, float] = {}
        self._ino: _Inotify | None = None
        self._lock = threading.Lock()
        self._cv = threading.Condition(self._lock)
        self._pending: dict[str, Keys] | None = None  # address -> keys of a refresh not yet armed
        self._requested = 0
        self._applied = 0
        self._closed = threading.Event()
        self._ended = False  # watch() returned (or gave up): nobody will arm anything
        self._wake_w: int | None = None
        self._retry_at: float | None = None

    # ------------------------------------------------------------------ control (any thread)
    def refresh(self, desired: Iterable[DesiredResource]) -> None:
        """Watch the host files and directories of a new desired set (the watch thread re-arms)."""
        wanted: dict[str, Keys] = {}  # only the strings: the resources are not kept
        for d in desired:
            if d.target == "host" and d.kind in KINDS:
                wanted[d.address] = _union(wanted.get(d.address, ()), (d.key,))
            elif d.target == "host" and d.kind == "package":  # the package manager writing its database
                for path in PACKAGE_DB_FILES:
                    wanted[path] = _union(wanted.get(path, ()), (d.key,))
        with self._cv:
            self._pending = wanted
            self._requested += 1
        self._wake()

    def wait_armed(self, timeout: float) -> bool:
        """Wait until the last :meth:`refresh` is in force in the watch thread; False if it is not (or never will be)."""
        with self._cv:
            self._cv.wait_for(lambda: self._ended or self._armed(), timeout)
            return self._armed()

    def _armed(self) -> bool:
        return self._ino is not None and self._applied >= self._requested

    @property
    def watches(self) -> int:
        return len(self._by_wd)

    def close(self) -> None:
        """Unblock :meth:`watch` (it returns at once)."""
        self._closed.set()
        self._wake()

    def _wake(self) -> None:
        with self._cv:  # the watch thread closes the pipe under the same lock: never a write to a reused fd
            if self._wake_w is not None:
                with contextlib.suppress(BlockingIOError):  # pipe full: a wake-up is pending anyway
                    os.write(self._wake_w, b"x")

    # ------------------------------------------------------------------ the watch thread
    def watch(self, on_key: Callable[[str], None], stop: threading.Event) -> None:
        """Report changed managed paths through ``on_key`` until ``stop`` is set or :meth:`close`."""
        try:
            ino = _open_inotify()
        except (ImportError, OSError) as e:
            self.available = False
            self._degrade("unavailable", error=f"{type(e).__name__}: {e}",
                          note="host files and directories stay on the scheduled scan")
            with self._cv:
                self._ended = True
                self._cv.notify_all()
            return
        self.available = True
        wake_r, wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        with self._cv:
            self._wake_w = wake_w
        try:
            while not (stop.is_set() or self._closed.is_set()):
                try:
                    self._run(ino, wake_r, on_key, stop)
                except Exception as e:  # a bug here must not take the scan down with it: restart clean
                    self.log.exception(Event.INOTIFY_DEGRADED, reason="error", error=f"{type(e).__name__}: {e}")
                    self.metrics.inotify_degraded.labels("error").inc()
                    self._forget_all(ino)  # the loop arms the managed set again when it restarts
                    stop.wait(1.0)
        finally:
            with self._cv:
                self._wake_w = None
                self._ino = None
                self._ended = True
                self._cv.notify_all()
                for fd in (wake_r, wake_w):
                    os.close(fd)
            ino.close()
            self._dirs.clear()
            self._by_wd.clear()
            self.metrics.inotify_watches.set(0)

    def _run(self, ino: _Inotify, wake_r: int, on_key: Callable[[str], None], stop: threading.Event) -> None:
        poller = select.poll()
        poller.register(ino.fileno(), select.POLLIN)
        poller.register(wake_r, select.POLLIN)
        with self._cv:
            self._ino = ino
        if self._managed:  # restarted after an error: arm what was managed before
            self._arm(ino)
        while not (stop.is_set() or self._closed.is_set()):
            self._apply_refresh(ino)
            now = time.monotonic()
            if self._retry_at is not None and now >= self._retry_at:
                self._arm(ino)
            timeout = _TICK
            if self._due:
                timeout = min(timeout, max(0.0, min(self._due.values()) - now))
            if self._retry_at is not None:
                timeout = min(timeout, max(0.0, self._retry_at - now))
            for fd, _ in poller.poll(timeout * 1000):
                if fd == wake_r:
                    with contextlib.suppress(BlockingIOError):
                        while os.read(wake_r, 4096):
                            pass
            events = ino.read(timeout=0)
            if events:
                self._handle(ino, events)
            self._flush(on_key)

    def _apply_refresh(self, ino: _Inotify) -> None:
        with self._cv:
            wanted, self._pending, gen = self._pending, None, self._requested
        if wanted is None:
            return
        self._managed = wanted
        self._arm(ino)
        with self._cv:
            self._applied = max(self._applied, gen)
            self._cv.notify_all()

    # ------------------------------------------------------------------ arming
    def _plan(self) -> dict[str, _Dir]:
        """Every existing directory on the way to each managed path, with the names that matter in it."""
        isdir: dict[str, tuple[int, int] | None] = {}

        def exists(path: str) -> tuple[int, int] | None:
            if path not in isdir:
                try:
                    st = os.lstat(path)
                    # a symlink is no way in (SafeRoot refuses it too)
                    isdir[path] = (st.st_dev, st.st_ino) if stat.S_ISDIR(st.st_mode) else None
                except OSError:
                    isdir[path] = None
            return isdir[path]

        plan: dict[str, _Dir] = {}
        base = self.root.rstrip("/")
        for address, keys in self._managed.items():
            parts = [p for p in address.split("/") if p]
            if not parts or any(p in (".", "..") for p in parts):
                continue
            cur = self.root
            last = len(parts) - 1
            for i, comp in enumerate(parts):
                ident = exists(cur)
                if ident is None:
                    break  # its parent (if any) watches for this name to appear
                d = plan.get(cur)
                if d is None:
                    d = plan[cur] = _Dir(ino=ident)
                m = d.names if i == last else d.via
                m[comp] = _union(m.get(comp, ()), keys)
                cur = base + "/" + "/".join(parts[: i + 1])
        return plan

    def _arm(self, ino: _Inotify) -> None:
        """Make the watches match the plan: drop those no longer needed, add the missing ones (top down)."""
        self._retry_at = None
        plan = self._plan()
        for path in [p for p in self._dirs if p not in plan]:
            self._unwatch(ino, path)
        failed: dict[str, list[str]] = {}
        unwatched: set[str] = set()
        for path in sorted(plan, key=lambda p: (p.count("/"), p)):  # ancestors first: they see a child vanish
            new = plan[path]
            old = self._dirs.get(path)
            if old is not None and old.wd is not None and old.ino != new.ino:
                self._unwatch(ino, path)  # another directory stands there now (moved, replaced)
                old = None
            new.wd = old.wd if old is not None else None
            self._dirs[path] = new
            if new.wd is not None:
                continue
            try:
                wd = ino.add_watch(path, WATCH_MASK)
            except OSError as e:
                if e.errno in (errno.ENOENT, errno.ENOTDIR, errno.ELOOP):
                    continue  # gone since the lstat: the watch above it reports that and re-arms
                reason = "watch_limit" if e.errno == errno.ENOSPC else "watch_failed"
                failed.setdefault(reason, []).append(f"{path}: {e.strerror or e}")
                for ks in (*new.names.values(), *new.via.values()):
                    unwatched.update(ks)
                continue
            new.wd = wd
            self._by_wd.setdefault(wd, set()).add(path)
        self.unwatched = len(unwatched)
        self.metrics.inotify_watches.set(len(self._by_wd))
        if failed:
            self._retry_at = time.monotonic() + self.retry_seconds
            for reason, errors in failed.items():
                self._degrade(reason, error=errors[0], directories=len(errors), unwatched_paths=self.unwatched,
                              note="those paths stay on the scheduled scan; retrying")
        else:
            self.degraded -= {"watch_limit", "watch_failed"}

    def _unwatch(self, ino: _Inotify, path: str) -> None:
        d = self._dirs.pop(path, None)
        if d is None or d.wd is None:
            return
        paths = self._by_wd.get(d.wd, set())
        paths.discard(path)
        if not paths:
            self._by_wd.pop(d.wd, None)
            with contextlib.suppress(OSError):  # EINVAL: the kernel dropped it already (directory deleted)
                ino.rm_watch(d.wd)

    def _forget_all(self, ino: _Inotify) -> None:
        for path in list(self._dirs):
            self._unwatch(ino, path)
        self._by_wd.clear()

    # ------------------------------------------------------------------ events
    def _handle(self, ino: _Inotify, events: Iterable[Any]) -> None:
        rearm = False
        keys: set[str] = set()
        for ev in events:
            mask = int(ev.mask)
            if mask & IN_Q_OVERFLOW:
                self._overflow(keys)
                rearm = True  # structural events may be among the lost ones
                continue
            paths = self._by_wd.get(int(ev.wd))
            if not paths:
                continue  # a watch already dropped (its IN_IGNORED, late events)
            if mask & _SELF_GONE:  # the directory went away (or moved): whatever was below it changed
                for path in list(paths):
                    d = self._dirs.get(path)
                    if d is not None:
                        for ks in (*d.names.values(), *d.via.values()):
                            keys.update(ks)
                    if mask & IN_MOVE_SELF:  # the watch follows the inode elsewhere: drop it
                        self._unwatch(ino, path)
                    else:
                        self._dirs.pop(path, None)
                self._by_wd.pop(int(ev.wd), None)
                rearm = True
                continue
            name = str(ev.name)
            if not name or TMP_MARK in name:  # the directory itself (its parent reports it), or driftd's temp file
                continue
            for path in paths:
                d = self._dirs.get(path)
                if d is None:
                    continue
                hit = d.names.get(name)
                if hit:
                    keys.update(hit)
                below = d.via.get(name)
                if below and mask & _STRUCTURAL:
                    keys.update(below)
                    rearm = True
        if rearm:
            self._arm(ino)
        if keys:
            self._mark(keys)

    def _overflow(self, keys: set[str]) -> None:
        self._degrade("queue_overflow", note="events were lost; a full scan was requested")
        self.degraded.discard("queue_overflow")  # every overflow is its own episode
        if self.on_overflow is not None:
            try:
                self.on_overflow()
                return
            except Exception as e:
                self.log.warning(Event.INOTIFY_DEGRADED, reason="queue_overflow", error=f"full scan request failed: {e}")
        for ks in self._managed.values():
            keys.update(ks)

    def _mark(self, keys: Iterable[str]) -> None:
        now = time.monotonic()
        for k in keys:
            first = self._first.setdefault(k, now)
            self._due[k] = min(now + self.debounce, first + self.max_delay)

    def _flush(self, on_key: Callable[[str], None]) -> None:
        if not self._due:
            return
        now = time.monotonic()
        ready = [k for k, at in self._due.items() if at <= now]
        for k in ready:
            del self._due[k]
            self._first.pop(k, None)
            try:
                on_key(k)
            except Exception as e:  # the queue refusing a key must not end the watch
                self.log.warning(Event.INOTIFY_DEGRADED, reason="error", key=k, error=f"on_key failed: {e}")

    # ------------------------------------------------------------------ degradation
    def _degrade(self, reason: str, **fields: Any) -> None:
        """Log and count a degradation once per episode (a reason already in force is not repeated)."""
        if reason in self.degraded:
            return
        self.degraded.add(reason)
        self.metrics.inotify_degraded.labels(reason).inc()
        self.log.warning(Event.INOTIFY_DEGRADED, reason=reason, root=self.root, **fields)



class BaselineWatcher:
    """Event-driven hot reload: calls ``on_change`` soon after anything in the baselines directory changes.

    Watches the directory and each of its (non-dot) subdirectories; a ConfigMap update is one rename of
    ``..data`` in the top directory, a git checkout a few writes below it.  Events are debounced
    (``debounce`` seconds of quiet), the watches re-armed after each change (a new subdirectory).  Without
    inotify it returns at once: the daemon's periodic check (``reload_interval_seconds``) stays the
    fallback either way, and ``on_change`` only asks for that same check sooner.
    """

    def __init__(self, directory: str | os.PathLike[str], *, debounce: float = 0.3) -> None:
        self.directory = os.fspath(directory)
        self.debounce = debounce
        self.available: bool | None = None
        self.armed = threading.Event()  # set once the watches are in place (or inotify is known unavailable)
        self._closed = threading.Event()

    def close(self) -> None:
        self._closed.set()

    def _arm(self, ino: _Inotify, wds: dict[int, str]) -> None:
        """Watch every directory of the tree now (adding a watch twice returns the same descriptor)."""
        seen: dict[int, str] = {}
        for dirpath, dirnames, _ in os.walk(self.directory, followlinks=True):
            dirnames[:] = [d for d in dirnames if not d.startswith(".")]
            try:
                seen[ino.add_watch(dirpath, _CHILD | IN_DELETE_SELF | IN_MOVE_SELF | IN_ONLYDIR)] = dirpath
            except OSError:
                continue  # gone, or no watches left: the periodic check covers it
        for wd in set(wds) - set(seen):
            with contextlib.suppress(OSError):
                ino.rm_watch(wd)
        wds.clear()
        wds.update(seen)

    @staticmethod
    def _changes(events: list[Any]) -> bool:
        """Anything but the kernel's IN_IGNORED for a watch removed (ours, or of a directory gone)."""
        return any(int(ev.mask) & ~IN_IGNORED for ev in events)

    def watch(self, on_change: Callable[[], None], stop: threading.Event) -> None:
        try:
            ino = _open_inotify()
        except (ImportError, OSError):
            self.available = False
            self.armed.set()
            return
        self.available = True
        wds: dict[int, str] = {}
        try:
            self._arm(ino, wds)
            self.armed.set()
            while not (stop.is_set() or self._closed.is_set()):
                if not self._changes(ino.read(timeout=1000)):
                    continue
                while ino.read(timeout=int(self.debounce * 1000)):  # until the writer is done
                    if stop.is_set() or self._closed.is_set():
                        return
                self._arm(ino, wds)
                on_change()
        finally:
            ino.close()
