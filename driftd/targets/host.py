"""Host target: files, directories, sysctls, the kernel and packages under ``--host-root`` (observe + act).

Pipeline position: the effectful ends of the pipeline for ``kind: HostBaseline``.
``desired`` compiles the baselines and resolves user and group names against
``<host-root>/etc/passwd`` and ``/etc/group`` (never the agent's own); ``observe`` reads
metadata, hashing content only when size, mtime, ctime or inode changed since the last
pass (or on a full pass); ``apply`` snapshots drifted bytes, then writes atomically
through :class:`SafeRoot`, which refuses symlinks and never leaves the root.
"""

from __future__ import annotations

import contextlib
import errno
import os
import struct
from collections.abc import Callable, Iterator

from driftd.baselines.loader import BaselineSet
from driftd.core import kinds
from driftd.core.compile import iter_host, with_ids
from driftd.core.kinds.ports import InstalledPackages, StatLike
from driftd.models.keys import sysctl_path
from driftd.models.resources import Action, ActResult, DesiredResource, ObservedResource, Plan
from driftd.safety.snapshots import SnapshotError, SnapshotStore
from driftd.targets.base import NodeInfo, TargetError
from driftd.targets.packages import PackageDatabases
from driftd.targets.safefs import NO_SPACE_ERRNOS, ParentMissingError, SafeRoot, UnsafePathError


def parse_id_db(text: str) -> dict[str, int]:
    """``name -> id`` from passwd/group formatted text (fields separated by ':')."""
    out: dict[str, int] = {}
    for line in text.splitlines():
        parts = line.split(":")
        if len(parts) >= 3 and parts[0] and not parts[0].startswith("#") and parts[2].isdigit():
            out.setdefault(parts[0], int(parts[2]))
    return out


_STAT = struct.Struct("<QQqqq")  # dev, ino, size, mtime_ns, ctime_ns
_STAT_BYTES = _STAT.size


def _pack_stat(st: os.stat_result) -> bytes:
    return _STAT.pack(st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


class HostIO(SafeRoot):
    """The host kinds' port (``core.kinds.ports.HostPort``): SafeRoot plus a content-digest cache."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        super().__init__(root)
        # path -> the stat key packed (40 bytes) + the raw sha256 (32): one bytes object of ~105 B per file, where
        # a tuple of five ints and the "sha256:..." string took ~370 B (10,000 files: 1.0 instead of 3.5 MiB)
        self.hash_cache: dict[str, bytes] = {}
        self._packages: PackageDatabases | None = None  # made on the first packages rule observed

    def forget_packages(self) -> None:
        """A full re-hash is due: parse the package database again even if its stat did not change."""
        self._packages = None

    def packages(self) -> InstalledPackages:
        if self._packages is None:
            self._packages = PackageDatabases(self)
        return self._packages.installed()

    def digest(self, path: str, st: StatLike) -> str:
        """sha256 of the file, re-hashed only when (dev, ino, size, mtime, ctime) changed."""
        assert isinstance(st, os.stat_result)
        skey = _pack_stat(st)
        cached = self.hash_cache.get(path)
        if cached is not None and cached.startswith(skey):
            return "sha256:" + cached[_STAT_BYTES:].hex()
        # the key is the stat of the very bytes hashed (fstat of the open file), not the lstat taken before:
        # a file replaced in between must not have its new digest cached under the old file's stat
        read_st, digest = self.sha256_of(path)
        if read_st is not None:
            self.hash_cache[path] = _pack_stat(read_st) + bytes.fromhex(digest.removeprefix("sha256:"))
        else:
            self.hash_cache.pop(path, None)
        return digest

    def read_optional(self, path: str, max_bytes: int) -> bytes | None:
        try:
            return self.read(path, max_bytes)
        except (FileNotFoundError, ParentMissingError):
            return None


class HostTarget:
    """Adapter for the host filesystem and ``/proc/sys`` seen through ``host_root``."""

    name = "host"

    def __init__(self, host_root: str | os.PathLike[str], snapshots: SnapshotStore) -> None:
        self.fs = HostIO(host_root)
        self.snapshots = snapshots
        self._root_ok: bool | None = None
        # set by the engine: records snapshot ids durably in state before anything is overwritten
        # (raises TargetError when it cannot; then nothing is overwritten)
        self.journal: Callable[[str, tuple[str, ...]], None] | None = None
        # set by the engine, which then calls settle() after each reconcile (or pass): the directory fsync
        # after an atomic rename is batched per directory (targets/safefs.py, docs/operations.md)
        self.defer_dir_sync = False

    # ------------------------------------------------------------------ desired
    def _id_db(self, path: str) -> dict[str, int]:
        try:
            return parse_id_db(self.fs.read(path, 16 * 1024 * 1024).decode("utf-8", "replace"))
        except (OSError, UnsafePathError, ParentMissingError):
            return {}

    def desired(self, baselines: BaselineSet, node: NodeInfo) -> Iterator[DesiredResource]:
        """The host resources of this node in order, each compiled as the caller reaches it (the engine keeps rows)."""
        users = self._id_db("/etc/passwd")
        groups = self._id_db("/etc/group")
        yield from with_ids(iter_host(baselines.baselines, baselines.sources, node.name, node.labels,
                                      baselines.rule_lines), users, groups)

    def discover(self) -> list[DesiredResource]:
        """Nothing to list (host resources are static, all from ``desired``), but a missing root is a target down."""
        self._check_root()
        return []

    def _check_root(self) -> None:
        if self._root_ok is None:
            self._root_ok = os.path.isdir(self.fs.root)
        if not self._root_ok:
            raise TargetError(f"host root {self.fs.root} is not a directory (is --host-root mounted?)", transient=True)

    def resolve(self, key: str) -> DesiredResource | None:
        return None

    # ------------------------------------------------------------------ observe
    def begin_pass(self, *, full: bool) -> None:
        self.fs.begin_pass()
        self._root_ok = None  # looked at once per pass
        if full:
            self.fs.hash_cache.clear()
            self.fs.forget_packages()

    def observe(self, desired: DesiredResource) -> ObservedResource:
        self._check_root()
        handler = kinds.find(self.name, desired.kind)
        if handler is None:  # an unknown kind is an error to report, never a silent lstat
            raise TargetError(f"the host target cannot observe a {desired.kind!r} resource", transient=False)
        try:
            return handler.observe(self.fs, desired)
        except UnsafePathError as e:
            raise TargetError(str(e), transient=False) from None
        except OSError as e:
            raise TargetError(f"cannot observe {desired.address}: {e.strerror or e}") from None

    def sysctl_path(self, key: str) -> str:
        return sysctl_path(key)

    # ------------------------------------------------------------------ act
    def apply(self, desired: DesiredResource, observed: ObservedResource, plan: Plan) -> ActResult:
        try:
            return self._apply(desired, observed, plan)
        except SnapshotError as e:
            raise TargetError(f"{e}; {desired.address} was not changed", transient=e.transient, escalate=True) from None
        except (UnsafePathError, IsADirectoryError) as e:
            raise TargetError(str(e), transient=False) from None
        except ParentMissingError as e:
            raise TargetError(str(e), transient=True) from None
        except OSError as e:
            if e.errno in NO_SPACE_ERRNOS:
                raise TargetError(
                    f"{desired.address}: cannot write the baseline content whole ({e.strerror or e}); "
                    "the file was left as it was",
                    escalate=True,
                ) from None
            transient = e.errno not in (errno.EROFS, errno.EPERM, errno.EFBIG)
            raise TargetError(f"{desired.address}: {e.strerror or e}", transient=transient) from None

    def settle(self, key: str | None = None) -> list[tuple[str, str]]:
        """Make the deferred renames durable (``key`` done; ``None``: all, the end of a pass), as
        ``SafeRoot.settle`` decides; returns (key, error) for every write whose directory fsync failed."""
        return [(owner, f"{path}: renamed into place, but the fsync of its directory {f.directory} failed "
                 f"({f.error.strerror or f.error}); the revert may not survive a crash")
                for f in self.fs.settle(key) for owner, path in f.writes]

    def changed_by_another_writer(self, desired: DesiredResource) -> bool:
        """After ``apply``: the path no longer holds what driftd wrote (replaced or rewritten since)."""
        try:
            return self.fs.replaced_since_write(desired.address)
        except (OSError, UnsafePathError):
            return False

    def _snapshot(self, path: str, observed: ObservedResource) -> str | None:
        kind = observed.actual.get("type")
        if kind == "file":
            return self.snapshots.put(self.fs.read(path, self.snapshots.max_bytes))
        if kind == "symlink":
            return self.snapshots.put(("symlink -> " + self.fs.readlink(path)).encode())
        return None

    def _apply(self, desired: DesiredResource, observed: ObservedResource, plan: Plan) -> ActResult:
        handler = kinds.handler_for(self.name, desired.kind)
        handler.check(desired, plan.actions)  # planner and adapter disagree: refuse before touching anything
        applied: list[Action] = []
        snaps: list[str] = []
        self.fs.written.pop(desired.address, None)
        with self.fs.deferring(desired.key) if self.defer_dir_sync else contextlib.nullcontext():
            for step in plan.actions:
                if step.action in handler.overwrites and observed.actual.get("present"):
                    sid = self._snapshot(desired.address, observed)  # durable (fsynced, directory too) before ...
                    if sid is not None:
                        snaps.append(sid)
                        if self.journal is not None:  # ... its FULL journal commit; no durable record, no overwrite
                            self.journal(desired.key, tuple(snaps))
                snaps.extend(handler.apply(self.fs, desired, observed, step))
                applied.append(step.action)
        self.fs.hash_cache.pop(desired.address, None)
        return ActResult(key=desired.key, applied=tuple(applied), snapshots=tuple(snaps))
