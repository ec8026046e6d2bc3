"""Capture I/O: reading a known-good host tree, and writing a captured baseline directory that loads clean.

Pipeline position: before the pipeline, under ``driftd baseline capture`` (``driftd.cli``).
:func:`observe_host` reads paths under a host root the way the host target does (each parent
walked with ``O_NOFOLLOW`` through :class:`~driftd.targets.safefs.SafeRoot`, the leaf opened
without following a link, its stat and bytes from the same descriptor) into
:class:`~driftd.baselines.capture.ObservedPath` rows for the pure
:mod:`driftd.baselines.capture`; :func:`write_capture` writes ``OUT/<name>.yaml`` and its
``source:`` files (never over an existing file without ``force``), loads the directory with
``load_set`` and checks every inline content came back byte for byte, and removes what it wrote
(restoring what ``force`` replaced) when not.  Docker and Kubernetes reads are the adapters'
(``targets.docker``, ``targets.kubernetes.client``).
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path

from driftd.baselines.capture import Capture, ObservedPath
from driftd.baselines.guardrails import DEFAULT, Guardrails
from driftd.baselines.loader import DEFAULT_MAX_FILE_BYTES, load_set
from driftd.core.kinds.ports import InstalledPackages
from driftd.models.baseline import HostBaseline, check_managed_path
from driftd.safety.durable import read_all, write_all
from driftd.targets.base import TargetError
from driftd.targets.host import parse_id_db
from driftd.targets.packages import PackageDatabases
from driftd.targets.safefs import ParentMissingError, SafeRoot, UnsafePathError

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_LEAF_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC


class CaptureIOError(Exception):
    """The capture cannot be read or written as asked (too many files, an output file exists)."""


def id_names(root: SafeRoot) -> tuple[dict[int, str], dict[int, str]]:
    """uid → user name and gid → group name from ``<host-root>/etc/passwd`` and ``/etc/group`` (first name per id)."""
    out: list[dict[int, str]] = []
    for db in ("/etc/passwd", "/etc/group"):
        names: dict[int, str] = {}
        try:
            text = root.read(db, 16 * 1024 * 1024).decode("utf-8", "replace")
        except (OSError, UnsafePathError, ParentMissingError):
            text = ""
        for name, ident in parse_id_db(text).items():
            names.setdefault(ident, name)
        out.append(names)
    return out[0], out[1]


def _observe_one(root: SafeRoot, path: str, max_bytes: int) -> tuple[ObservedPath, int | None]:
    """The leaf as it is (never followed), and for a directory an open descriptor of it (caller closes)."""
    with root.parent(path) as (pfd, name):
        st = os.stat(name, dir_fd=pfd, follow_symlinks=False)
        perm = stat.S_IMODE(st.st_mode)
        if stat.S_ISLNK(st.st_mode):
            return ObservedPath(path, "symlink", link_target=os.readlink(name, dir_fd=pfd)), None
        if stat.S_ISDIR(st.st_mode):
            dfd = os.open(name, _DIR_FLAGS, dir_fd=pfd)
            dst = os.fstat(dfd)
            if (dst.st_dev, dst.st_ino) != (st.st_dev, st.st_ino):
                os.close(dfd)
                raise CaptureIOError(f"{path} changed while it was read; capture again")
            return ObservedPath(path, "dir", mode=perm, uid=dst.st_uid, gid=dst.st_gid), dfd
        if not stat.S_ISREG(st.st_mode):
            return ObservedPath(path, "other", mode=perm), None
        fd = os.open(name, _LEAF_FLAGS, dir_fd=pfd)
        try:
            fst = os.fstat(fd)
            if (fst.st_dev, fst.st_ino) != (st.st_dev, st.st_ino) or not stat.S_ISREG(fst.st_mode):
                raise CaptureIOError(f"{path} changed while it was read; capture again")
            base = ObservedPath(path, "file", mode=stat.S_IMODE(fst.st_mode), uid=fst.st_uid, gid=fst.st_gid,
                                nlink=fst.st_nlink)
            if fst.st_nlink > 1:
                return base, None  # never read: refused by the pure part
            if fst.st_size > max_bytes:
                return replace(base, unread=f"{fst.st_size} bytes, over the {max_bytes}-byte limit of a baseline "
                                            "source"), None
            try:
                data = read_all(fd, max_bytes)
            except OSError as e:
                if e.errno != errno.EFBIG:
                    raise
                return replace(base, unread=f"grew past the {max_bytes}-byte limit"), None
            return replace(base, data=data), None
        finally:
            os.close(fd)


def observe_host(host_root: str | os.PathLike[str], paths: Iterable[str], *, recursive: bool = False,
                 max_files: int = 1000, max_bytes: int = DEFAULT_MAX_FILE_BYTES
                 ) -> tuple[list[ObservedPath], list[tuple[str, str]], tuple[dict[int, str], dict[int, str]]]:
    """Each path (and with ``recursive`` everything below a directory) under ``host_root``, never through a link.

    Returns the observations, the paths that could not be read with why, and the id → name maps.
    More than ``max_files`` regular files below the directories given is an error (nothing partial).
    """
    root = SafeRoot(host_root)
    if not os.path.isdir(root.root):
        raise CaptureIOError(f"host root {root.root} is not a directory")
    observed: list[ObservedPath] = []
    problems: list[tuple[str, str]] = []
    files = 0
    todo = list(reversed(list(paths)))
    explicit = set(todo)
    while todo:
        path = todo.pop()
        try:
            check_managed_path(path)
            o, dfd = _observe_one(root, path, max_bytes)
        except ValueError as e:
            problems.append((path, str(e)))
            continue
        except UnsafePathError as e:
            problems.append((path, f"{e} (a symlink on the way)"))
            continue
        except (FileNotFoundError, ParentMissingError):
            problems.append((path, "does not exist under the host root"))
            continue
        except OSError as e:
            problems.append((path, f"cannot read it: {e.strerror or e}"))
            continue
        observed.append(o)
        if o.kind == "file" and path not in explicit:
            files += 1
            if files > max_files:
                raise CaptureIOError(f"more than {max_files} files below the directories given; "
                                     "raise --max-files or name fewer or deeper paths")
        if dfd is not None:
            try:
                if recursive:
                    below = sorted(e.name for e in os.scandir(dfd))
                    todo.extend(reversed([f"{path}/{n}" for n in below]))
            finally:
                os.close(dfd)
    return observed, problems, id_names(root)


@dataclass
class WriteResult:
    """What :func:`write_capture` wrote, and the loader's findings on the directory."""

    written: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def read_packages(host_root: str | os.PathLike[str]) -> InstalledPackages:
    """The installed packages of a known-good host tree, from its own package database."""
    root = SafeRoot(host_root)
    if not os.path.isdir(root.root):
        raise CaptureIOError(f"host root {root.root} is not a directory")
    try:
        return PackageDatabases(root).installed()
    except (OSError, TargetError) as e:
        raise CaptureIOError(f"cannot read the package database: {e}") from None


def _write(path: Path, data: bytes, mode: int, *, force: bool) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if force:
        tmp = path.with_name(f".{path.name}.driftd-capture-tmp")
        tmp.unlink(missing_ok=True)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, mode)
        try:
            write_all(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
        return
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, mode)
    try:
        write_all(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)


def write_capture(out: str | os.PathLike[str], cap: Capture, text: str, *, force: bool = False,
                  guardrails: Guardrails = DEFAULT) -> WriteResult:
    """Write ``OUT/<name>.yaml`` and the capture's sources, then prove the directory loads.

    Refuses (writing nothing) when any of the files exists and ``force`` is not given.  When the
    directory does not load without errors, or an inline content does not load back byte for
    byte, what was written is removed (and what ``force`` replaced restored) and the reasons are
    returned in ``errors``.
    """
    res = WriteResult()
    outdir = Path(out)
    targets: list[tuple[Path, bytes, int]] = [(outdir / f"{cap.name}.yaml", text.encode("utf-8"), 0o644)]
    for rel, data in sorted(cap.sources.items()):
        targets.append((outdir / rel, data, 0o600 if rel in cap.sensitive_sources else 0o644))
    existing = [str(p) for p, _, _ in targets if os.path.lexists(p)]
    if existing and not force:
        raise CaptureIOError(f"{', '.join(existing)} exists; not overwriting it (--force replaces it)")
    saved: dict[Path, tuple[bytes, int] | None] = {}
    try:
        for p, data, mode in targets:
            if os.path.lexists(p) and (os.path.islink(p) or not os.path.isfile(p)):
                raise CaptureIOError(f"{p} exists and is not a regular file; not replacing it")
            saved[p] = (p.read_bytes(), stat.S_IMODE(p.stat().st_mode)) if p.exists() else None
            _write(p, data, mode, force=force)
            res.written.append(str(p))
    except OSError as e:
        _rollback(saved)
        raise CaptureIOError(f"cannot write the capture: {e}") from None
    except CaptureIOError:
        _rollback(saved)
        raise
    bset, problems = load_set(outdir, guardrails=guardrails)
    res.errors = [str(p) for p in problems if p.severity == "error"]
    res.warnings = [str(p) for p in problems if p.severity != "error"]
    if bset is not None and not res.errors:
        mine = [b for b in bset.baselines if b.metadata.name == cap.name]
        if not mine:
            res.errors.append(f"{outdir}: the set loaded without baseline {cap.name}")
        elif isinstance(mine[0], HostBaseline):
            for f in mine[0].spec.files:
                want = cap.inline.get(f.path)
                if want is not None and (f.content or "").encode("utf-8") != want:
                    res.errors.append(f"{f.path}: its inline content does not load back byte for byte")
    if res.errors:
        _rollback(saved)
        res.written = []
    return res


def _rollback(saved: dict[Path, tuple[bytes, int] | None]) -> None:
    for p, old in saved.items():
        try:
            if old is None:
                p.unlink(missing_ok=True)
            else:
                _write(p, old[0], old[1], force=True)
        except OSError:
            pass
