"""The ports kind handlers talk through (pure Protocols; adapters implement them).

Pipeline position: between a kind handler (what to read and write) and its adapter (how):
``HostPort`` is ``targets.host.HostIO`` over ``SafeRoot``; ``ContainerPort`` is bound by a
container runtime's target to one container; ``PodPort`` is the Kubernetes pods adapter.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from driftd.models.pod import PodBaseline
from driftd.models.resources import DesiredResource, ObservedResource, PlannedAction


class StatLike(Protocol):
    """The fields of an ``os.stat_result`` a host handler reads."""

    @property
    def st_mode(self) -> int: ...
    @property
    def st_uid(self) -> int: ...
    @property
    def st_gid(self) -> int: ...
    @property
    def st_nlink(self) -> int: ...
    @property
    def st_ctime(self) -> float: ...


@dataclass(frozen=True)
class InstalledPackages:
    """A host's installed packages as its package database lists them.

    ``format`` is the version syntax (``deb``, ``rpm``, ``apk``), None when the host has no database
    driftd reads (``problem`` says why); ``versions`` maps a name to its version, several installed
    instances (multiarch, RPM) joined by ``core.matchers.INSTALLED_SEP``.
    """

    format: str | None
    database: str | None
    versions: Mapping[str, str] = field(default_factory=dict)
    problem: str | None = None


class HostPort(Protocol):
    """Root-confined, symlink-refusing file operations under the host root (raise OSError/TargetError)."""

    def lstat(self, path: str) -> StatLike | None: ...
    def digest(self, path: str, st: StatLike) -> str: ...
    def read(self, path: str, max_bytes: int) -> bytes: ...
    def read_optional(self, path: str, max_bytes: int) -> bytes | None:
        """The bytes, or None when the path (or a parent) does not exist."""
    def write_atomic(self, path: str, data: bytes, *, mode: int | None, uid: int | None, gid: int | None) -> None: ...
    def write_in_place(self, path: str, data: bytes) -> None: ...
    def remove(self, path: str) -> None: ...
    def chmod(self, path: str, mode: int, *, is_dir: bool = False) -> None: ...
    def chown(self, path: str, uid: int | None, gid: int | None, *, is_dir: bool = False,
              mode: int | None = None) -> None: ...
    def mkdir(self, path: str, mode: int | None, uid: int | None, gid: int | None) -> None: ...
    def packages(self) -> InstalledPackages:
        """The installed packages, from the host's own package database (re-read only when it changed)."""


class ContainerPort(Protocol):
    """One container runtime (raises ResourceGoneError when the container is gone)."""

    def inspect(self, address: str) -> dict[str, Any]: ...
    def changes(self, container_id: str) -> list[dict[str, Any]] | None: ...
    def event_time(self, address: str) -> float | None:
        """Time of the last change event seen for the container (None when none was seen)."""
    def recreate(self, address: str, runtime: dict[str, Any], image: str) -> None: ...
    def retire(self, address: str) -> None: ...


class PodPort(Protocol):
    """The pods of this node (raises ResourceGoneError when the pod is gone)."""

    def fetch(self, desired: DesiredResource) -> dict[str, Any]: ...
    def baseline(self, name: str) -> PodBaseline | None: ...
    def evict_for(self, desired: DesiredResource, observed: ObservedResource, step: PlannedAction) -> str:
        """Evict the pod for ``step`` (checks, snapshot, eviction); returns the snapshot id."""
