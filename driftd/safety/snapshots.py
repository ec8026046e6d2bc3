"""Content-addressed snapshots of drifted state (effectful edge, safety net of *act*).

Pipeline position: called by adapters during **act**, before anything is overwritten
or removed.  A snapshot id is ``sha256:<hex>`` of the bytes; the same bytes are stored
once.  ``put`` returns only once the bytes are durable and verified: written whole to a
temp file (short writes and ENOSPC handled), read back against the digest, fsynced,
renamed, and the directory fsynced (a folder of the store it had to create is fsynced
into its parent first).  An existing entry whose bytes do not match its name is
replaced, never trusted.  Any failure raises :class:`SnapshotError`, and an
adapter that cannot snapshot must not overwrite.

Paths inside the store are walked with ``O_NOFOLLOW | O_DIRECTORY`` relative to the
store's descriptor, so a symlink planted inside the state directory (``sha256/ab ->
/etc/cron.d``) is refused instead of followed; folders are 0700 and files 0600 whatever
the process umask.
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
from pathlib import Path

from driftd.safety.durable import read_all, write_all

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_HEX = re.compile(r"[0-9a-f]+")
MIN_PREFIX = 12  # hex digits of an abbreviated id, as printed by the pass summary (like git)


class SnapshotError(Exception):
    """The drifted state could not be saved (or read back whole); the caller must not overwrite it."""

    def __init__(self, message: str, *, transient: bool = False) -> None:
        super().__init__(message)
        self.transient = transient


def secure_dir(parent_fd: int, name: str, *, create: bool = True) -> int:
    """Descriptor of directory ``name`` below ``parent_fd``: never a symlink, always 0700.

    A folder it creates is made durable in its parent (fsynced) before it is used: a snapshot fsynced in a
    folder whose own entry a crash could lose would not be durable.  Once per folder, not per snapshot.
    """
    created = False
    if create:
        with contextlib.suppress(FileExistsError):
            os.mkdir(name, 0o700, dir_fd=parent_fd)
            created = True
    try:
        fd = os.open(name, _DIR_FLAGS, dir_fd=parent_fd)
    except OSError as e:
        if e.errno in (errno.ELOOP, errno.ENOTDIR):
            raise SnapshotError(f"{name} in the state directory is a symlink or not a directory; refusing it") from None
        raise
    try:
        if stat.S_IMODE(os.fstat(fd).st_mode) != 0o700:
            os.fchmod(fd, 0o700)
        if created:
            os.fsync(parent_fd)
    except BaseException:
        os.close(fd)
        raise
    return fd


class SnapshotStore:
    """The store under ``root``; ``clock`` dates each snapshot (its mtime) for retention (:meth:`prune`)."""

    def __init__(self, root: str | os.PathLike[str], *, max_bytes: int = 64 * 1024 * 1024,
                 clock: Callable[[], float] | None = None) -> None:
        self.root = Path(root)
        self.max_bytes = max_bytes
        self.count = 0
        self._clock = clock or time.time
        self._lock = threading.Lock()
        self._usage: list[int] | None = None  # [bytes, snapshots], from one walk, then kept by put and prune

    @contextlib.contextmanager
    def _bucket(self, hexdigest: str, *, create: bool, depth: int = 3) -> Iterator[int]:
        """Descriptor of ``<root>/sha256/<first two hex>`` (``depth`` 2: of ``<root>/sha256``), reached without
        following links."""
        opened: list[int] = []
        try:
            parent = self.root.parent
            if create:  # the state directory (StateStore secures it); the store's own folders follow
                parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            fd = os.open(parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            opened.append(fd)
            for name in (self.root.name, "sha256", hexdigest[:2])[:depth]:
                fd = secure_dir(fd, name, create=create)
                opened.append(fd)
            yield fd
        finally:
            for fd in reversed(opened):
                os.close(fd)

    def put(self, data: bytes) -> str:
        """Store ``data`` durably (idempotent) and return its id; raises SnapshotError."""
        if len(data) > self.max_bytes:
            raise SnapshotError(
                f"drifted content is {len(data)} bytes, over the snapshot cap of {self.max_bytes}; refusing to overwrite it"
            )
        digest = hashlib.sha256(data).hexdigest()
        sid = f"sha256:{digest}"
        try:
            with self._bucket(digest, create=True) as bfd:
                if self._intact(bfd, digest):
                    self._touch(bfd, digest)  # kept again now: retention counts its age from here
                    return sid
                tmp = f".{digest}.{secrets.token_hex(4)}"
                fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600, dir_fd=bfd)
                try:
                    try:
                        os.fchmod(fd, 0o600)  # whatever the umask
                        write_all(fd, data)
                        os.fsync(fd)
                        os.lseek(fd, 0, os.SEEK_SET)
                        if hashlib.sha256(read_all(fd, self.max_bytes)).hexdigest() != digest:
                            raise OSError(errno.EIO, "snapshot read back does not match its digest")
                    finally:
                        os.close(fd)
                    replaced = self._size(bfd, digest)
                    os.rename(tmp, digest, src_dir_fd=bfd, dst_dir_fd=bfd)  # replaces a corrupt entry too
                    os.fsync(bfd)
                    self._touch(bfd, digest)
                    self._account(len(data) - (replaced or 0), 0 if replaced is not None else 1)
                except BaseException:
                    with contextlib.suppress(OSError):
                        os.unlink(tmp, dir_fd=bfd)
                    raise
        except SnapshotError:
            raise
        except OSError as e:
            full = e.errno in (errno.ENOSPC, errno.EDQUOT, errno.EIO)
            raise SnapshotError(f"cannot save snapshot in {self.root}: {e.strerror or e}", transient=full) from e
        self.count += 1
        return sid

    def _touch(self, bfd: int, digest: str) -> None:
        now = self._clock()
        with contextlib.suppress(OSError):
            os.utime(digest, (now, now), dir_fd=bfd, follow_symlinks=False)

    @staticmethod
    def _size(bfd: int, digest: str) -> int | None:
        try:
            return os.stat(digest, dir_fd=bfd, follow_symlinks=False).st_size
        except OSError:
            return None

    def _account(self, nbytes: int, count: int) -> None:
        with self._lock:
            if self._usage is not None:
                self._usage[0] += nbytes
                self._usage[1] += count

    def _entries(self) -> list[tuple[float, int, str]]:
        """(mtime, size, id) of every snapshot file, walked by descriptor: links and strays never followed."""
        out: list[tuple[float, int, str]] = []
        try:
            with self._bucket("", create=False, depth=2) as top:
                with os.scandir(top) as it:
                    buckets = [b.name for b in it if len(b.name) == 2 and b.is_dir(follow_symlinks=False)]
                for name in buckets:
                    try:
                        bfd = secure_dir(top, name, create=False)
                    except (OSError, SnapshotError):
                        continue  # replaced by a link or gone meanwhile: not ours to walk
                    try:
                        with os.scandir(bfd) as files:
                            for f in files:
                                if len(f.name) == 64 and _HEX.fullmatch(f.name) and f.is_file(follow_symlinks=False):
                                    st = f.stat(follow_symlinks=False)
                                    out.append((st.st_mtime, st.st_size, f"sha256:{f.name}"))
                    finally:
                        os.close(bfd)
        except (FileNotFoundError, NotADirectoryError, SnapshotError):
            return out
        return out

    def usage(self) -> dict[str, int]:
        """``{"bytes", "count"}`` of the store: one walk on first use, then running totals (cheap per scrape)."""
        with self._lock:
            if self._usage is None:
                entries = self._entries()
                self._usage = [sum(e[1] for e in entries), len(entries)]
            return {"bytes": self._usage[0], "count": self._usage[1]}

    def prune(self, *, keep: set[str], older_than: float, max_total_bytes: int) -> int:
        """Delete snapshots not in ``keep`` dated before ``older_than``, then the oldest others not in ``keep``
        until the store holds at most ``max_total_bytes``; returns how many were deleted.  Each file is unlinked
        relative to its bucket's descriptor, reached without following links: nothing outside the store is touched."""
        entries = sorted(self._entries())
        total = sum(e[1] for e in entries)
        removed = 0
        for mtime, size, sid in entries:
            if sid in keep or (mtime >= older_than and total <= max_total_bytes):
                continue
            digest = sid.partition(":")[2]
            try:
                with self._bucket(digest, create=False) as bfd:
                    os.unlink(digest, dir_fd=bfd)
            except FileNotFoundError:
                pass
            except (OSError, SnapshotError):
                continue
            total -= size
            removed += 1
        with self._lock:
            self._usage = [total, len(entries) - removed]
        return removed

    def _intact(self, bfd: int, digest: str) -> bool:
        """Whether the entry named ``digest`` exists as a regular file holding exactly those bytes."""
        try:
            fd = os.open(digest, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK, dir_fd=bfd)
        except FileNotFoundError:
            return False
        except OSError as e:
            if e.errno == errno.ELOOP:
                os.unlink(digest, dir_fd=bfd)  # a planted symlink: never write through it
                return False
            raise
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise SnapshotError(f"snapshot entry {digest} is not a regular file; refusing it")
            try:
                data = read_all(fd, self.max_bytes)
            except OSError:
                return False
            return hashlib.sha256(data).hexdigest() == digest
        finally:
            os.close(fd)

    def resolve(self, snapshot_id: str) -> str:
        """The full id of ``snapshot_id``, which may be abbreviated to a unique prefix of >= 12 hex digits."""
        algo, _, digest = snapshot_id.partition(":")
        if algo != "sha256" or not _HEX.fullmatch(digest) or len(digest) > 64:
            raise KeyError(f"not a snapshot id: {snapshot_id!r} (expected sha256:<hex>)")
        if len(digest) == 64:
            return snapshot_id
        if len(digest) < MIN_PREFIX:
            raise KeyError(f"snapshot id {snapshot_id!r} is too short: give at least {MIN_PREFIX} hex digits")
        bucket = self.root / "sha256" / digest[:2]
        try:
            names = [n for n in os.listdir(bucket) if n.startswith(digest) and len(n) == 64 and _HEX.fullmatch(n)]
        except (FileNotFoundError, NotADirectoryError):
            names = []
        if not names:
            raise KeyError(f"no snapshot {snapshot_id}")
        if len(names) > 1:
            raise KeyError(f"snapshot id {snapshot_id} is ambiguous ({len(names)} snapshots start with it)")
        return f"sha256:{names[0]}"

    def get(self, snapshot_id: str) -> bytes:
        """The bytes of a snapshot; KeyError when unknown, SnapshotError when corrupt."""
        sid = self.resolve(snapshot_id)
        digest = sid.partition(":")[2]
        try:
            with self._bucket(digest, create=False) as bfd:
                fd = os.open(digest, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK, dir_fd=bfd)
                try:
                    if not stat.S_ISREG(os.fstat(fd).st_mode):
                        raise SnapshotError(f"snapshot {sid} is not a regular file")
                    data = read_all(fd, max(self.max_bytes, os.fstat(fd).st_size))
                finally:
                    os.close(fd)
        except FileNotFoundError:
            raise KeyError(f"no snapshot {sid}") from None
        except SnapshotError:
            raise
        except OSError as e:
            raise SnapshotError(f"cannot read snapshot {sid}: {e.strerror or e}") from None
        if hashlib.sha256(data).hexdigest() != digest:
            raise SnapshotError(f"snapshot {sid} is corrupt: its bytes do not match its id")
        return data
