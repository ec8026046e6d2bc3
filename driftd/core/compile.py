"""Compile baselines into desired resources (pure).

Pipeline position: baseline set → **compile** → desired resources, which the scanner
observes and diffs.  Names of users and groups stay names here; the host adapter
resolves them against ``<host-root>/etc/passwd`` and ``/etc/group``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from functools import partial

from driftd.core.selectors import matches
from driftd.models.baseline import HostBaseline, ManagedDirectory, ManagedFile
from driftd.models.keys import ResourceKey
from driftd.models.resources import NO_PAYLOAD, DesiredResource, HostPayload

_RETIRE_ON_FAILURE = HostPayload(retire_on_failure=True)


def content_digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def file_key(path: str) -> str:
    return ResourceKey.host("file", path)


def dir_key(path: str) -> str:
    return ResourceKey.host("directory", path)


def sysctl_key(key: str) -> str:
    return ResourceKey.host("sysctl", key)


def _attrs(entry: ManagedFile | ManagedDirectory) -> dict[str, object]:
    out: dict[str, object] = {}
    if entry.mode is not None:
        out["mode"] = entry.mode
    if entry.owner is not None:
        out["owner"] = entry.owner
    if entry.group is not None:
        out["group"] = entry.group
    return out


def _make(
    b: HostBaseline,
    key: str,
    kind: str,
    address: str,
    expected: dict[str, object],
    sensitive: frozenset[str] = frozenset(),
    content: bytes | None = None,
    payload: HostPayload | None = None,
) -> DesiredResource:
    if payload is None:
        payload = _RETIRE_ON_FAILURE if b.spec.retire_on_failure else NO_PAYLOAD
    return DesiredResource(
        key=key,
        target="host",
        kind=kind,
        address=address,
        baseline=b.metadata.name,
        enforcement=b.spec.enforcement,
        window=b.spec.window,
        expected=expected,
        sensitive=sensitive,
        content=content,
        payload=payload,
    )


def compile_host(
    baselines: Iterable[object],
    sources: Mapping[tuple[str, str], bytes],
    node_name: str,
    node_labels: Mapping[str, str],
) -> list[DesiredResource]:
    """Desired host resources for this node, directories first so parents exist before files.

    ``sources`` maps (baseline name, source file) to the bytes the loader read.
    """
    dirs: list[DesiredResource] = []
    files: list[DesiredResource] = []
    sysctls: list[DesiredResource] = []
    kernels: list[DesiredResource] = []
    labels = dict(node_labels)
    for b in baselines:
        if not isinstance(b, HostBaseline):
            continue
        if not matches(b.spec.selector, node_name, labels):
            continue
        make = partial(_make, b)
        for d in b.spec.directories:
            expected: dict[str, object] = {"present": True, "type": "directory", **_attrs(d)}
            dirs.append(make(dir_key(d.path), "directory", d.path, expected))
        for f in b.spec.files:
            content: bytes | None = None
            if f.absent:
                expected = {"present": False}
            else:
                expected = {"present": True, "type": "file"}
                if f.content is not None:
                    content = f.content.encode("utf-8")
                elif f.source is not None:
                    content = sources[(b.metadata.name, f.source)]
                if content is not None:
                    expected["content"] = content_digest(content)
                expected.update(_attrs(f))
            files.append(
                make(file_key(f.path), "file", f.path, expected, frozenset({"content"}) if f.sensitive else frozenset(), content)
            )
        if b.spec.kernel is not None:
            kernels.append(
                make(
                    "host:kernel:release",
                    "kernel",
                    "kernel release",
                    {"release": {"$version_at_least": b.spec.kernel.minimum_release}},
                    payload=HostPayload(retire_on_failure=b.spec.retire_on_failure, kernel_action=b.spec.kernel.action),
                )
            )
        for s in b.spec.sysctls:
            sysctls.append(make(sysctl_key(s.key), "sysctl", s.key, {"value": s.value}))
    dirs.sort(key=lambda r: r.address.count("/"))
    return dirs + files + sysctls + kernels
