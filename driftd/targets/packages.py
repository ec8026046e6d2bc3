"""The host's installed packages, read from its own package database (effectful edge).

Pipeline position: behind ``HostPort.packages()`` (``targets/host.py``), which the ``packages``
kind (``core/kinds/packages.py``) observes through.  The database is read under --host-root,
root-confined and refusing symlinks like every host read, never by running the host's package
manager: ``var/lib/dpkg/status`` (Debian, Ubuntu), ``lib/apk/db/installed`` (Alpine) or
``var/lib/rpm/rpmdb.sqlite`` (RPM >= 4.16: Fedora, RHEL 9, SUSE), whose ``Packages`` table
holds one RPM header blob per package.  The parsed set is cached under the database file's
stat (and its write-ahead log's): a scan re-reads it only after the package manager wrote.
"""

from __future__ import annotations

import os
import sqlite3
import struct
import tempfile
from collections.abc import Iterable
from typing import Protocol

from driftd.core.kinds.ports import InstalledPackages
from driftd.core.matchers import INSTALLED_SEP
from driftd.targets.base import TargetError

DPKG_STATUS = "/var/lib/dpkg/status"
APK_INSTALLED = "/lib/apk/db/installed"
RPM_SQLITE = "/var/lib/rpm/rpmdb.sqlite"
# RPM databases driftd does not read (Berkeley DB before RPM 4.16, SUSE's ndb): named in the blocked result
RPM_OTHER = ("/var/lib/rpm/Packages", "/var/lib/rpm/Packages.db", "/usr/lib/sysimage/rpm/Packages.db")
RPM_SQLITE_ALT = "/usr/lib/sysimage/rpm/rpmdb.sqlite"  # openSUSE's location (/var/lib/rpm is a symlink to it)
DATABASES = (DPKG_STATUS, APK_INSTALLED, RPM_SQLITE, RPM_SQLITE_ALT)
MAX_TEXT_DB = 64 << 20  # a dpkg status of 5,000 packages is ~8 MiB
MAX_RPM_DB = 512 << 20

# dpkg states whose files are (at least partly) on disk; ``not-installed`` and ``config-files`` are not
_DPKG_GONE = frozenset({"not-installed", "config-files"})
# RPM header tags (rpmtag.h) and types (rpm/header.h)
_TAG_NAME, _TAG_VERSION, _TAG_RELEASE, _TAG_EPOCH = 1000, 1001, 1002, 1003
_TYPE_INT32, _TYPE_STRING = 4, 6


class RootReader(Protocol):
    """The root-confined reads this module needs (``targets.safefs.SafeRoot``)."""

    def lstat(self, path: str) -> os.stat_result | None: ...
    def read(self, path: str, max_bytes: int) -> bytes: ...


def _join(found: dict[str, list[str]]) -> dict[str, str]:
    return {name: INSTALLED_SEP.join(sorted(set(vs))) for name, vs in found.items()}


def parse_dpkg_status(data: bytes) -> dict[str, str]:
    """Package → installed version(s) of a dpkg ``status`` file (deb822 stanzas)."""
    found: dict[str, list[str]] = {}
    for stanza in data.decode("utf-8", "replace").split("\n\n"):
        fields: dict[str, str] = {}
        for line in stanza.splitlines():
            if not line or line[0] in " \t" or ":" not in line:
                continue  # continuation lines (Description, Conffiles) carry nothing we read
            k, _, v = line.partition(":")
            if k in ("Package", "Status", "Version"):
                fields[k] = v.strip()
        name, version, status = fields.get("Package"), fields.get("Version"), fields.get("Status", "").split()
        if name and version and status and status[-1] not in _DPKG_GONE:
            found.setdefault(name, []).append(version)
    return _join(found)


def parse_apk_installed(data: bytes) -> dict[str, str]:
    """Package → installed version of an apk ``installed`` database (``P:``/``V:`` records)."""
    found: dict[str, list[str]] = {}
    name = version = None
    for line in [*data.decode("utf-8", "replace").splitlines(), ""]:
        if not line:
            if name and version:
                found.setdefault(name, []).append(version)
            name = version = None
        elif line.startswith("P:"):
            name = line[2:].strip()
        elif line.startswith("V:"):
            version = line[2:].strip()
    return _join(found)


def parse_rpm_header(blob: bytes) -> tuple[str, str]:
    """(name, ``[epoch:]version-release``) of one RPM header blob as rpmdb.sqlite stores it.

    The blob is the header without its 8-byte magic: index count and data length (big-endian
    u32), then 16-byte index entries (tag, type, offset, count) into the data store.
    """
    if len(blob) < 8:
        raise ValueError("header blob shorter than its preamble")
    il, dl = struct.unpack_from(">II", blob, 0)
    start = 8 + 16 * il
    if il > 100_000 or start + dl > len(blob):
        raise ValueError(f"header index ({il} entries, {dl} data bytes) overruns the {len(blob)}-byte blob")
    store = blob[start:start + dl]
    values: dict[int, str | int] = {}
    for i in range(il):
        tag, typ, off, count = struct.unpack_from(">iIiI", blob, 8 + 16 * i)
        if tag not in (_TAG_NAME, _TAG_VERSION, _TAG_RELEASE, _TAG_EPOCH) or not 0 <= off < dl:
            continue
        if typ == _TYPE_STRING:
            end = store.find(b"\0", off)
            values[tag] = store[off:end if end >= 0 else dl].decode("utf-8", "replace")
        elif typ == _TYPE_INT32 and count >= 1 and off + 4 <= dl:
            values[tag] = struct.unpack_from(">i", store, off)[0]
    name, version, release = values.get(_TAG_NAME), values.get(_TAG_VERSION), values.get(_TAG_RELEASE)
    if not (isinstance(name, str) and isinstance(version, str) and isinstance(release, str)):
        raise ValueError("header has no name, version or release")
    epoch = values.get(_TAG_EPOCH)
    evr = f"{version}-{release}" if epoch is None else f"{epoch}:{version}-{release}"
    return name, evr


def parse_rpm_headers(blobs: Iterable[bytes]) -> dict[str, str]:
    found: dict[str, list[str]] = {}
    for blob in blobs:
        name, evr = parse_rpm_header(blob)
        if name == "gpg-pubkey":  # imported signing keys are headers too, not packages
            continue
        found.setdefault(name, []).append(evr)
    return _join(found)


def _rpm_blobs(db: bytes, wal: bytes | None) -> list[bytes]:
    """The Packages blobs of an rpmdb.sqlite copy (with its WAL, so uncheckpointed writes count)."""
    with tempfile.TemporaryDirectory(prefix="driftd-rpmdb-") as tmp:
        path = os.path.join(tmp, "rpmdb.sqlite")
        for name, data in (("rpmdb.sqlite", db), ("rpmdb.sqlite-wal", wal)):
            if data is not None:
                fd = os.open(os.path.join(tmp, name), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                with os.fdopen(fd, "wb") as f:
                    f.write(data)
        conn = sqlite3.connect(path)  # a private copy: the host's database is never opened, locked or written
        try:
            return [bytes(row[0]) for row in conn.execute("SELECT blob FROM Packages")]
        finally:
            conn.close()


def _stat_key(st: os.stat_result | None) -> tuple[int, ...] | None:
    return None if st is None else (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


class PackageDatabases:
    """Detects the host's package database and reads it, again only when its stat changed."""

    def __init__(self, fs: RootReader) -> None:
        self.fs = fs
        self._cached: tuple[object, InstalledPackages] | None = None
        self.reads = 0  # how many times a database was parsed (the cache's test, and a debug figure)

    def _find(self) -> tuple[str | None, tuple[object, ...]]:
        """The database path and the stat keys that decide whether it changed (a missing one is None)."""
        for path in DATABASES:
            st = self.fs.lstat(path)
            if st is not None:
                keys: tuple[object, ...] = (path, _stat_key(st))
                if path in (RPM_SQLITE, RPM_SQLITE_ALT):
                    keys += (_stat_key(self.fs.lstat(path + "-wal")),)
                return path, keys
        return None, tuple(_stat_key(self.fs.lstat(p)) for p in RPM_OTHER)

    def installed(self) -> InstalledPackages:
        """The installed set (cached by stat); ``format`` None when the host has no database driftd reads."""
        path, key = self._find()
        if self._cached is not None and self._cached[0] == key:
            return self._cached[1]
        result = self._read(path)
        self._cached = (key, result)
        return result

    def _read(self, path: str | None) -> InstalledPackages:
        if path is None:
            other = [p for p in RPM_OTHER if self.fs.lstat(p) is not None]
            problem = (f"{other[0]} is an RPM database driftd cannot read (Berkeley DB or ndb; RPM 4.16 and later "
                       "keep rpmdb.sqlite)" if other else
                       "no package database under the host root (looked for " + ", ".join(DATABASES) + ")")
            return InstalledPackages(format=None, database=other[0] if other else None, versions={}, problem=problem)
        self.reads += 1
        try:
            if path == DPKG_STATUS:
                return InstalledPackages(format="deb", database=path, versions=parse_dpkg_status(self.fs.read(path, MAX_TEXT_DB)))
            if path == APK_INSTALLED:
                return InstalledPackages(format="apk", database=path,
                                         versions=parse_apk_installed(self.fs.read(path, MAX_TEXT_DB)))
            db = self.fs.read(path, MAX_RPM_DB)
            wal = self.fs.read(path + "-wal", MAX_RPM_DB) if self.fs.lstat(path + "-wal") is not None else None
            return InstalledPackages(format="rpm", database=path, versions=parse_rpm_headers(_rpm_blobs(db, wal)))
        except (ValueError, sqlite3.Error, struct.error) as e:
            raise TargetError(f"cannot read the package database {path}: {e}", transient=False) from None
