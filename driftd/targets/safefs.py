"""Symlink-safe, root-confined filesystem primitives for the host target (effectful edge).

Pipeline position: used by ``targets.host`` for observe and act.  Every mutating call
walks from the host root one component at a time with ``O_NOFOLLOW | O_DIRECTORY`` and
acts relative to the parent's descriptor, so a symlink planted anywhere on the way is
refused instead of followed out of the root.  Writes are atomic: a temp file in the same
directory, fsync, rename, fsync of the directory.

Temp files are named ``.<name>.driftd-tmp-<8 hex>`` (:data:`TEMP_RE`, a pattern no package or
editor uses).  One left behind by a crash mid-write is removed the first time driftd writes into
its directory in a pass: one listing per directory per pass, not per write, so a revert costs
O(1) in the size of its directory (a flat directory of 10,000 files listed once per revert made
enforcing quadratic).  Temps of writes in flight in other workers are never swept.

The directory fsync after the rename is per write, unless the write is made for an *owner*
(:meth:`SafeRoot.deferring`, the engine's key being reconciled): then it is deferred and batched per
directory until :meth:`SafeRoot.settle` — the owner is done and no other owner is still writing in that
directory (or the first rename has waited ``SYNC_MAX_AGE``), or ``settle(None)`` at the end of a pass.
Safe because the temp file's bytes are fsynced before the rename: a crash before the directory fsync
can only lose the rename, leaving the old file whole (its bytes are in the snapshot too) and the drift
for the next pass to find; nothing half-written is ever visible.  A failed deferred fsync is returned by
``settle`` (:class:`SyncFailure`), never swallowed.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import re
import secrets
import stat
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from driftd.core.kinds._host import ftype as ftype
from driftd.safety.durable import read_all, write_all

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_CHUNK = 1 << 20
TMP_MARK = ".driftd-tmp-"
TEMP_RE = re.compile(r"^\..+\.driftd-tmp-[0-9a-f]{8}$")
_SETID = stat.S_ISUID | stat.S_ISGID
# a write that fails for one of these is the disk (or the device) refusing, not a bug of ours
NO_SPACE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EIO})


class UnsafePathError(Exception):
    """The path crosses a symlink or a non-directory, or would leave the root."""


class HardLinkError(UnsafePathError):
    """A regular file has more than one link: changing its inode may change a file outside the root."""


class ParentMissingError(Exception):
    """A parent directory of the path does not exist (yet)."""


@dataclass
class SyncFailure:
    """A deferred directory fsync that failed: the renames of ``writes`` ((owner, path)) may not survive a crash."""

    directory: str
    writes: list[tuple[str, str]]
    error: OSError


@dataclass
class _Unsynced:
    """A directory with renames not yet fsynced: its own descriptor (the directory they happened in)."""

    fd: int
    since: float
    writes: list[tuple[str, str]] = field(default_factory=list)


class SafeRoot:
    """A directory tree that paths like ``/etc/ssh/sshd_config`` are resolved inside."""

    SYNC_MAX_AGE = 1.0  # seconds a deferred directory fsync waits for other owners still writing there, at most
    SYNC_MAX_DIRS = 64  # directories held open for a deferred fsync at most (past it the oldest is synced at once)

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = os.path.abspath(os.fspath(root))
        self._checked_dirs: dict[str, bool] = {}
        self._swept: set[str] = set()  # directories whose stale temps were removed in this pass
        self._in_flight: set[tuple[str, str]] = set()  # (directory, temp name) being written now
        self._temps = threading.Lock()
        # path -> (dev, ino, mtime_ns) of the file the last write_atomic put there: tells a verification
        # that finds another writer's file (replaced or rewritten after ours) from a write that did not take
        self.written: dict[str, tuple[int, int, int]] = {}
        self._local = threading.local()  # .owner: whose writes this thread makes now (deferring)
        self._sync = threading.Lock()
        self._unsynced: dict[str, _Unsynced] = {}  # directory -> its deferred fsync, oldest first
        self._busy: dict[str, set[str]] = {}  # directory -> owners that wrote there and have not settled
        self._owned: dict[str, set[str]] = {}  # owner -> directories it wrote in
        self._sync_failures: list[SyncFailure] = []  # of fsyncs forced early (SYNC_MAX_DIRS), for the next settle

    # ------------------------------------------------------------------ helpers
    def full(self, path: str) -> str:
        return self.root.rstrip("/") + path

    def begin_pass(self) -> None:
        """Forget which parent directories were verified (they may have changed) and which were swept."""
        self._checked_dirs.clear()
        with self._temps:
            self._swept.clear()

    def _split(self, path: str) -> tuple[list[str], str]:
        parts = [p for p in path.split("/") if p]
        if not parts or any(p in (".", "..") for p in parts):
            raise UnsafePathError(f"{path!r} is not a normalised absolute path")
        return parts[:-1], parts[-1]

    @contextlib.contextmanager
    def parent(self, path: str) -> Iterator[tuple[int, str]]:
        """Descriptor of the parent directory of ``path``, reached without following links."""
        dirs, name = self._split(path)
        fd = os.open(self.root, _DIR_FLAGS)
        walked = ""
        try:
            for comp in dirs:
                walked += "/" + comp
                try:
                    nfd = os.open(comp, _DIR_FLAGS, dir_fd=fd)
                except FileNotFoundError:
                    raise ParentMissingError(f"parent directory {walked} does not exist") from None
                except OSError as e:
                    if e.errno in (errno.ELOOP, errno.ENOTDIR):
                        raise UnsafePathError(f"{walked} is a symlink or not a directory; refusing to follow it") from None
                    raise
                os.close(fd)
                fd = nfd
            yield fd, name
        finally:
            os.close(fd)

    def unsafe_parent(self, path: str) -> str | None:
        """Fast check (cached per pass): the first parent of ``path`` that is a symlink or not a directory."""
        dirs, _ = self._split(path)
        walked = ""
        for comp in dirs:
            walked += "/" + comp
            ok = self._checked_dirs.get(walked)
            if ok is None:
                try:
                    ok = stat.S_ISDIR(os.lstat(self.full(walked)).st_mode)
                except FileNotFoundError:
                    ok = True  # missing parent: the leaf simply does not exist
                self._checked_dirs[walked] = ok
            if not ok:
                return walked
        return None

    def parents_safe(self, path: str) -> bool:
        """Fast check (cached per pass) that no parent of ``path`` is a symlink."""
        return self.unsafe_parent(path) is None

    # ------------------------------------------------------------------ read side
    def lstat(self, path: str) -> os.stat_result | None:
        """lstat of the leaf, or None when absent; refuses paths below a symlink."""
        bad = self.unsafe_parent(path)
        if bad is not None:
            raise UnsafePathError(f"{bad} (a parent of {path}) is a symlink or not a directory; refusing to follow it")
        try:
            return os.lstat(self.full(path))
        except (FileNotFoundError, NotADirectoryError):
            return None

    def _open_leaf(self, path: str, flags: int = os.O_RDONLY) -> int:
        with self.parent(path) as (pfd, name):
            try:
                return os.open(name, flags | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK, dir_fd=pfd)
            except OSError as e:
                if e.errno == errno.ELOOP:
                    raise UnsafePathError(f"{path} is a symlink; refusing to follow it") from None
                raise

    def sha256(self, path: str) -> str:
        return self.sha256_of(path)[1]

    def sha256_of(self, path: str) -> tuple[os.stat_result | None, str]:
        """(stat of the bytes hashed, their sha256); the stat is None when the file changed while being read."""
        fd = self._open_leaf(path)
        try:
            before = os.fstat(fd)
            h = hashlib.sha256()
            while chunk := os.read(fd, _CHUNK):
                h.update(chunk)
            after = os.fstat(fd)
            same = (before.st_size, before.st_mtime_ns, before.st_ctime_ns) == (
                after.st_size, after.st_mtime_ns, after.st_ctime_ns)
            return (after if same else None), "sha256:" + h.hexdigest()
        finally:
            os.close(fd)

    def read(self, path: str, max_bytes: int) -> bytes:
        """Whole content of a regular file, refusing more than ``max_bytes``."""
        fd = self._open_leaf(path)
        try:
            size = os.fstat(fd).st_size
            if size > max_bytes:
                raise OSError(errno.EFBIG, f"{path} is {size} bytes, over the {max_bytes}-byte limit")
            try:
                return read_all(fd, max_bytes)
            except OSError as e:
                if e.errno == errno.EFBIG:
                    raise OSError(errno.EFBIG, f"{path} grew past the {max_bytes}-byte limit") from None
                raise
        finally:
            os.close(fd)

    def readlink(self, path: str) -> str:
        with self.parent(path) as (pfd, name):
            return os.readlink(name, dir_fd=pfd)

    # ------------------------------------------------------------------ write side
    def write_atomic(
        self,
        path: str,
        data: bytes,
        *,
        mode: int | None,
        uid: int | None,
        gid: int | None,
        on_chunk: Callable[[int], None] | None = None,
    ) -> None:
        """Replace ``path`` with ``data`` in one rename; the old file is intact on any failure.

        ``on_chunk`` (tests only) is called after each chunk is written.
        """
        with self.parent(path) as (pfd, name):
            try:
                st = os.stat(name, dir_fd=pfd, follow_symlinks=False)
                if stat.S_ISDIR(st.st_mode):
                    raise IsADirectoryError(errno.EISDIR, f"{path} is a directory; not replacing it")
            except FileNotFoundError:
                pass
            directory = path.rsplit("/", 1)[0] or "/"
            tmp = f".{name}{TMP_MARK}{secrets.token_hex(4)}"
            with self._temps:
                sweep = directory not in self._swept
                self._swept.add(directory)
                self._in_flight.add((directory, tmp))
            if sweep:
                self._clean_stale_temps(pfd, directory)
            try:
                fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600, dir_fd=pfd)
            except BaseException:
                with self._temps:
                    self._in_flight.discard((directory, tmp))
                raise
            try:
                write_all(fd, data, on_chunk)
                if uid is not None or gid is not None:
                    os.fchown(fd, -1 if uid is None else uid, -1 if gid is None else gid)
                os.fchmod(fd, 0o644 if mode is None else mode)  # after fchown, which clears set-id bits
                os.fsync(fd)
                fst = os.fstat(fd)
                os.close(fd)
                fd = -1
                os.rename(tmp, name, src_dir_fd=pfd, dst_dir_fd=pfd)
            except BaseException:
                if fd >= 0:
                    os.close(fd)
                with contextlib.suppress(OSError):
                    os.unlink(tmp, dir_fd=pfd)
                raise
            finally:
                with self._temps:
                    self._in_flight.discard((directory, tmp))
            owner: str | None = getattr(self._local, "owner", None)
            if owner is None or not self._defer_sync(directory, pfd, owner, path):
                os.fsync(pfd)
            self.written[path] = (fst.st_dev, fst.st_ino, fst.st_mtime_ns)

    # ------------------------------------------------------------------ deferred directory fsyncs
    @contextlib.contextmanager
    def deferring(self, owner: str) -> Iterator[None]:
        """Atomic writes of this thread inside the block are ``owner``'s: their directory fsync waits for
        :meth:`settle` (which the caller must then call: ``settle(owner)`` or ``settle(None)``)."""
        prev = getattr(self._local, "owner", None)
        self._local.owner = owner
        try:
            yield
        finally:
            self._local.owner = prev

    def _defer_sync(self, directory: str, pfd: int, owner: str, path: str) -> bool:
        """Note the rename of ``path`` for a later fsync of ``directory``; False: fsync it now instead."""
        evicted: list[tuple[str, _Unsynced]] = []
        with self._sync:
            entry = self._unsynced.get(directory)
            if entry is None:
                try:
                    fd = os.dup(pfd)  # the very directory the rename happened in, whatever its path names later
                except OSError:
                    return False
                while len(self._unsynced) >= self.SYNC_MAX_DIRS:
                    old = next(iter(self._unsynced))
                    evicted.append((old, self._unsynced.pop(old)))
                entry = self._unsynced[directory] = _Unsynced(fd, time.monotonic())
            entry.writes.append((owner, path))
            self._busy.setdefault(directory, set()).add(owner)
            self._owned.setdefault(owner, set()).add(directory)
        failures = [f for d, e in evicted if (f := self._fsync(d, e)) is not None]
        if failures:
            with self._sync:
                self._sync_failures.extend(failures)
        return True

    def settle(self, owner: str | None = None) -> list[SyncFailure]:
        """Make deferred renames durable: ``owner`` is done writing, so fsync every directory no owner is
        still writing in (or whose first deferred rename has waited ``SYNC_MAX_AGE``); ``None``: fsync every
        deferred directory now and forget all owners (the end of a pass).  Returns the fsyncs that failed."""
        with self._sync:
            if owner is None:
                due = list(self._unsynced.items())
                self._unsynced.clear()
                self._busy.clear()
                self._owned.clear()
            else:
                for d in self._owned.pop(owner, ()):
                    left = self._busy.get(d)
                    if left is not None:
                        left.discard(owner)
                        if not left:
                            del self._busy[d]
                if not self._unsynced:
                    failures, self._sync_failures = self._sync_failures, []
                    return failures
                now = time.monotonic()
                due = [(d, e) for d, e in self._unsynced.items() if d not in self._busy or now - e.since >= self.SYNC_MAX_AGE]
                for d, _ in due:
                    del self._unsynced[d]
            failures, self._sync_failures = self._sync_failures, []
        failures.extend(f for d, e in due if (f := self._fsync(d, e)) is not None)
        return failures

    def unsynced(self) -> dict[str, list[tuple[str, str]]]:
        """The deferred fsyncs still to do: directory -> the (owner, path) renamed in since its last fsync."""
        with self._sync:
            return {d: list(e.writes) for d, e in self._unsynced.items()}

    @staticmethod
    def _fsync(directory: str, entry: _Unsynced) -> SyncFailure | None:
        try:
            os.fsync(entry.fd)
        except OSError as e:
            return SyncFailure(directory, entry.writes, e)
        finally:
            os.close(entry.fd)
        return None

    def replaced_since_write(self, path: str) -> bool:
        """True when ``path`` is no longer the file the last ``write_atomic`` put there (another writer since)."""
        ours = self.written.get(path)
        if ours is None:
            return False
        st = self.lstat(path)
        return st is None or (st.st_dev, st.st_ino, st.st_mtime_ns) != ours

    def _clean_stale_temps(self, pfd: int, directory: str) -> None:
        """Remove temp files a crashed write left in ``directory`` (one listing; never one in flight)."""
        for entry in os.listdir(pfd):
            if TMP_MARK in entry and TEMP_RE.match(entry):
                with self._temps:
                    if (directory, entry) in self._in_flight:
                        continue
                with contextlib.suppress(OSError):
                    os.unlink(entry, dir_fd=pfd)

    def write_in_place(self, path: str, data: bytes) -> None:
        """Write a pseudo-file such as a sysctl (renaming is impossible under /proc)."""
        fd = self._open_leaf(path, os.O_WRONLY | os.O_TRUNC)
        try:
            st = os.fstat(fd)
            if stat.S_ISREG(st.st_mode) and st.st_nlink > 1:
                raise HardLinkError(f"{path} has {st.st_nlink} hard links; not writing it in place")
            # a pseudo-file takes one write; a short write would set a truncated value
            n = os.write(fd, data)
            if n != len(data):
                raise OSError(errno.EIO, f"short write to {path}: {n} of {len(data)} bytes")
        finally:
            os.close(fd)

    def remove(self, path: str) -> None:
        with self.parent(path) as (pfd, name):
            st = os.stat(name, dir_fd=pfd, follow_symlinks=False)
            if stat.S_ISDIR(st.st_mode):
                raise IsADirectoryError(errno.EISDIR, f"{path} is a directory; not removing it")
            os.unlink(name, dir_fd=pfd)
            os.fsync(pfd)

    def _fd_of_leaf(self, path: str, want_dir: bool) -> int:
        flags = _DIR_FLAGS if want_dir else os.O_RDONLY
        fd = self._open_leaf(path, flags)
        st = os.fstat(fd)
        if not (stat.S_ISDIR(st.st_mode) if want_dir else stat.S_ISREG(st.st_mode)):
            os.close(fd)
            raise UnsafePathError(f"{path} is not a {'directory' if want_dir else 'regular file'}")
        if not want_dir and st.st_nlink > 1:
            os.close(fd)
            raise HardLinkError(
                f"{path} has {st.st_nlink} hard links: its inode may be shared with a file outside the host root; "
                "not changing its mode or owner"
            )
        return fd

    def chmod(self, path: str, mode: int, *, is_dir: bool = False) -> None:
        fd = self._fd_of_leaf(path, is_dir)
        try:
            os.fchmod(fd, mode)
        finally:
            os.close(fd)

    def chown(
        self, path: str, uid: int | None, gid: int | None, *, is_dir: bool = False, mode: int | None = None
    ) -> None:
        """Change owner/group; on a file, set-uid/set-gid end up cleared unless ``mode`` (the baseline's) names them.

        The kernel clears set-id bits on a chown of a regular file (and not always both, nor
        on every filesystem); re-applying the old bits would hand an unprivileged user's
        set-id binary to the new owner — a set-uid-root binary after ``owner: root``.
        """
        fd = self._fd_of_leaf(path, is_dir)
        try:
            before = stat.S_IMODE(os.fstat(fd).st_mode)
            os.fchown(fd, -1 if uid is None else uid, -1 if gid is None else gid)
            # a directory's set-gid bit is inheritance, not privilege: its mode is kept
            want = mode if mode is not None else (before if is_dir else before & ~_SETID)
            if stat.S_IMODE(os.fstat(fd).st_mode) != want:
                os.fchmod(fd, want)
        finally:
            os.close(fd)

    def mkdir(self, path: str, mode: int | None, uid: int | None, gid: int | None) -> None:
        with self.parent(path) as (pfd, name):
            os.mkdir(name, 0o700, dir_fd=pfd)
            fd = os.open(name, _DIR_FLAGS, dir_fd=pfd)
            try:
                if uid is not None or gid is not None:
                    os.fchown(fd, -1 if uid is None else uid, -1 if gid is None else gid)
                os.fchmod(fd, 0o755 if mode is None else mode)
            finally:
                os.close(fd)
            os.fsync(pfd)
