"""Host target: files, directories and sysctls under ``--host-root`` (observe + act).

Pipeline position: the effectful ends of the pipeline for ``kind: HostBaseline``.
``desired`` compiles the baselines and resolves user and group names against
``<host-root>/etc/passwd`` and ``/etc/group`` (never the agent's own); ``observe`` reads
metadata, hashing content only when size, mtime, ctime or inode changed since the last
pass (or on a full pass); ``apply`` snapshots drifted bytes, then writes atomically
through :class:`SafeRoot`, which refuses symlinks and never leaves the root.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Callable
from typing import Any

from driftd.baselines.loader import BaselineSet
from driftd.core.compile import compile_host
from driftd.models.keys import sysctl_path
from driftd.models.resources import (
    Action,
    ActResult,
    DesiredResource,
    ObservedResource,
    Plan,
)
from driftd.safety.snapshots import SnapshotError, SnapshotStore
from driftd.targets.base import NodeInfo, TargetError
from driftd.targets.safefs import NO_SPACE_ERRNOS, ParentMissingError, SafeRoot, UnsafePathError, ftype

_StatKey = tuple[int, int, int, int, int]


def _mode_str(mode: int) -> str:
    return f"{stat.S_IMODE(mode):04o}"


def parse_id_db(text: str) -> dict[str, int]:
    """``name -> id`` from passwd/group formatted text (fields separated by ':')."""
    out: dict[str, int] = {}
    for line in text.splitlines():
        parts = line.split(":")
        if len(parts) >= 3 and parts[0] and not parts[0].startswith("#") and parts[2].isdigit():
            out.setdefault(parts[0], int(parts[2]))
    return out


class HostTarget:
    """Adapter for the host filesystem and ``/proc/sys`` seen through ``host_root``."""

    name = "host"

    def __init__(self, host_root: str | os.PathLike[str], snapshots: SnapshotStore) -> None:
        self.fs = SafeRoot(host_root)
        self.snapshots = snapshots
        self._hash_cache: dict[str, tuple[_StatKey, str]] = {}
        self._root_ok: bool | None = None
        # set by the engine: records snapshot ids durably in state before anything is overwritten
        # (raises TargetError when it cannot; then nothing is overwritten)
        self.journal: Callable[[str, tuple[str, ...]], None] | None = None
        # one observer per resource kind, one step per action: the whole of this adapter's vocabulary
        self._observers: dict[str, Callable[[DesiredResource], ObservedResource]] = {
            "file": self._observe_path,
            "directory": self._observe_path,
            "sysctl": self._observe_sysctl,
            "kernel": self._observe_kernel,
        }
        self._steps: dict[Action, Callable[[DesiredResource, dict[str, Any]], None]] = {
            Action.WRITE_FILE: self._write_file,
            Action.REMOVE: lambda d, p: self.fs.remove(d.address),
            Action.CHMOD: lambda d, p: self.fs.chmod(d.address, int(p["mode"], 8), is_dir=d.kind == "directory"),
            Action.CHOWN: lambda d, p: self.fs.chown(d.address, _id(p.get("owner")), _id(p.get("group")),
                                                     is_dir=d.kind == "directory", mode=_mode(p.get("mode"))),
            Action.MKDIR: lambda d, p: self.fs.mkdir(d.address, _mode(p.get("mode")), _id(p.get("owner")), _id(p.get("group"))),
            Action.WRITE_SYSCTL: lambda d, p: self.fs.write_in_place(sysctl_path(d.address), (p["value"] + "\n").encode()),
        }

    # ------------------------------------------------------------------ desired
    def _id_db(self, path: str) -> dict[str, int]:
        try:
            return parse_id_db(self.fs.read(path, 16 * 1024 * 1024).decode("utf-8", "replace"))
        except (OSError, UnsafePathError, ParentMissingError):
            return {}

    def desired(self, baselines: BaselineSet, node: NodeInfo) -> list[DesiredResource]:
        resources = compile_host(baselines.baselines, baselines.sources, node.name, node.labels)
        users = self._id_db("/etc/passwd")
        groups = self._id_db("/etc/group")
        out = []
        for r in resources:
            exp = r.expected
            owner, group = exp.get("owner"), exp.get("group")
            if isinstance(owner, str) or isinstance(group, str):
                exp = dict(exp)
                # unresolvable names stay strings: plan reports them as blocked
                if isinstance(owner, str) and owner in users:
                    exp["owner"] = users[owner]
                if isinstance(group, str) and group in groups:
                    exp["group"] = groups[group]
                r = r.model_copy(update={"expected": exp})
            out.append(r)
        return out

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
            self._hash_cache.clear()

    def observe(self, desired: DesiredResource) -> ObservedResource:
        self._check_root()
        observer = self._observers.get(desired.kind)
        if observer is None:  # a kind without an observer is a bug to report, never a silent lstat
            raise TargetError(f"the host target cannot observe a {desired.kind!r} resource", transient=False)
        try:
            return observer(desired)
        except UnsafePathError as e:
            raise TargetError(str(e), transient=False) from None
        except OSError as e:
            raise TargetError(f"cannot observe {desired.address}: {e.strerror or e}") from None

    def _observe_kernel(self, desired: DesiredResource) -> ObservedResource:
        raw = self.fs.read("/proc/sys/kernel/osrelease", 4096)
        return ObservedResource(key=desired.key, actual={"release": raw.decode("utf-8", "replace").strip()})

    def _observe_path(self, desired: DesiredResource) -> ObservedResource:
        path = desired.address
        st = self.fs.lstat(path)
        if st is None:
            return ObservedResource(key=desired.key, actual={"present": False})
        kind = ftype(st.st_mode)
        actual: dict[str, Any] = {
            "present": True,
            "type": kind,
            "mode": _mode_str(st.st_mode),
            "owner": st.st_uid,
            "group": st.st_gid,
        }
        if kind == "file":
            actual["links"] = st.st_nlink  # not governed: the planner refuses chmod/chown of a shared inode
        if kind == "file" and "content" in desired.expected:
            actual["content"] = self._digest(path, st)
        return ObservedResource(key=desired.key, actual=actual)

    def _digest(self, path: str, st: os.stat_result) -> str:
        skey = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
        cached = self._hash_cache.get(path)
        if cached is not None and cached[0] == skey:
            return cached[1]
        digest = self.fs.sha256(path)
        self._hash_cache[path] = (skey, digest)
        return digest

    def sysctl_path(self, key: str) -> str:
        return sysctl_path(key)

    def _observe_sysctl(self, desired: DesiredResource) -> ObservedResource:
        path = self.sysctl_path(desired.address)
        try:
            raw = self.fs.read(path, 1 << 16)
        except (FileNotFoundError, ParentMissingError):
            return ObservedResource(key=desired.key, actual={"value": None})
        value = " ".join(raw.decode("utf-8", "replace").split())
        return ObservedResource(key=desired.key, actual={"value": value})

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

    def _write_file(self, d: DesiredResource, p: dict[str, Any]) -> None:
        if d.content is None:
            raise TargetError(f"{d.address}: no content to write", transient=False)
        self.fs.write_atomic(d.address, d.content, mode=_mode(p.get("mode")), uid=_id(p.get("owner")), gid=_id(p.get("group")))

    def _snapshot(self, path: str, observed: ObservedResource) -> str | None:
        kind = observed.actual.get("type")
        if kind == "file":
            return self.snapshots.put(self.fs.read(path, self.snapshots.max_bytes))
        if kind == "symlink":
            return self.snapshots.put(("symlink -> " + self.fs.readlink(path)).encode())
        return None

    def _apply(self, desired: DesiredResource, observed: ObservedResource, plan: Plan) -> ActResult:
        path = desired.address
        applied: list[Action] = []
        snaps: list[str] = []
        for step in plan.actions:
            do = self._steps.get(step.action)
            if do is None:  # planner and adapter disagree: refuse before touching anything
                raise TargetError(f"the host target cannot {step.action}", transient=False)
            if step.action in (Action.WRITE_FILE, Action.REMOVE) and observed.actual.get("present"):
                sid = self._snapshot(path, observed)
                if sid is not None:
                    snaps.append(sid)
                    if self.journal is not None:  # no durable record of the snapshot, no overwrite
                        self.journal(desired.key, tuple(snaps))
            do(desired, step.params)
            applied.append(step.action)
        self._hash_cache.pop(path, None)
        return ActResult(key=desired.key, applied=tuple(applied), snapshots=tuple(snaps))


def _mode(v: object) -> int | None:
    return int(v, 8) if isinstance(v, str) else None


def _id(v: object) -> int | None:
    return v if isinstance(v, int) else None
