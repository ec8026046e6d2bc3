"""Kind ``file`` (pure): a host file's content, mode, owner, group or absence.

Pipeline position: compile (``spec.files``), claim, observe, plan and apply of host files;
I/O through ``HostPort``.  Drifted bytes are snapshotted by the adapter before a rewrite or
removal (``overwrites``); a file with several hard links is never chmod/chowned.  A ``source:``
file's digest comes from the loader (:class:`SourceBytes`), which hashed its bytes once.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import ClassVar

from driftd.core.kinds._host import (
    apply_attrs,
    attr_actions,
    attrs,
    attrs_params,
    content_digest,
    host_resource,
    id_of,
    mode_of,
    observe_path,
    unresolved,
)
from driftd.core.kinds.base import DemoFS, Handler, PlanResult
from driftd.core.kinds.ports import HostPort
from driftd.models.baseline import HostBaseline, ManagedFile, Rule
from driftd.models.errors import TargetError
from driftd.models.keys import ResourceKey
from driftd.models.resources import Action, DesiredResource, FieldDrift, ObservedResource, PlannedAction


def _hard_linked(observed: ObservedResource) -> str | None:
    links = observed.actual.get("links")
    if observed.actual.get("type") == "file" and isinstance(links, int) and links > 1:
        return (
            f"file has {links} hard links: changing its mode or owner would change every linked name, "
            "maybe outside the host root; refusing (break the link, or rewrite the content)"
        )
    return None


class SourceBytes(dict[tuple[str, str], bytes]):
    """(baseline name, source) -> the bytes the loader read, with each one's sha256 (hex) in ``digests``.

    The loader hashes every source once and hands both over, so compile does not hash them again;
    a plain mapping of bytes (tests, tools) still compiles, hashed here.
    """

    __slots__ = ("digests",)

    def __init__(self, data: Mapping[tuple[str, str], bytes] | None = None,
                 digests: dict[tuple[str, str], str] | None = None) -> None:
        super().__init__(data or {})
        self.digests: dict[tuple[str, str], str] = {} if digests is None else digests


def _source_digest(sources: Mapping[tuple[str, str], bytes], key: tuple[str, str], content: bytes) -> str:
    known = sources.digests.get(key) if isinstance(sources, SourceBytes) else None
    return content_digest(content) if known is None else "sha256:" + known


class FileHandler(Handler[HostPort]):
    target = "host"
    kind = "file"
    steps = frozenset({Action.WRITE_FILE, Action.REMOVE, Action.CHMOD, Action.CHOWN})
    rule: ClassVar[type[Rule] | None] = ManagedFile
    claim_field = "path"
    order = 1
    overwrites = frozenset({Action.WRITE_FILE, Action.REMOVE})

    def claim(self, rule: ManagedFile) -> str:
        return f"path {rule.path}"

    def compile(self, b: HostBaseline, rule: ManagedFile, sources: Mapping[tuple[str, str], bytes]) -> DesiredResource:
        content: bytes | None = None
        expected: dict[str, object]
        if rule.absent:
            expected = {"present": False}
        else:
            expected = {"present": True, "type": "file"}
            if rule.content is not None:
                content = rule.content.encode("utf-8")
                expected["content"] = content_digest(content)
            elif rule.source is not None:
                key = (b.metadata.name, rule.source)
                content = sources[key]
                expected["content"] = _source_digest(sources, key, content)
            expected.update(attrs(rule))
        sensitive = frozenset({"content"}) if rule.sensitive else frozenset()
        return host_resource(b, ResourceKey.host("file", rule.path), "file", rule.path, expected, sensitive, content)

    def observe(self, port: HostPort, desired: DesiredResource) -> ObservedResource:
        return observe_path(port, desired)

    def plan(self, desired: DesiredResource, observed: ObservedResource, drift: dict[str, FieldDrift]) -> PlanResult:
        actual_type = observed.actual.get("type")
        if desired.expected.get("present") is False:
            if actual_type not in ("file", "symlink", "other"):
                return [], f"a {actual_type} stands where an absent file is required; directories are never removed"
            return [PlannedAction(action=Action.REMOVE, reason="must be absent")], None
        if (blocked := unresolved(desired)) is not None:
            return [], blocked
        if "present" in drift or "type" in drift or "content" in drift:
            if actual_type not in (None, "file", "symlink"):
                return [], f"a {actual_type} stands where a file belongs; not replacing it"
            if desired.content is None:
                return [], "file must be rewritten but the baseline gives no content"
            reason = {"present": "missing", "type": f"is a {actual_type}"}.get(next(iter(drift)), "content differs")
            return [PlannedAction(action=Action.WRITE_FILE, reason=reason, params=attrs_params(desired, observed))], None
        if (linked := _hard_linked(observed)) is not None:
            return [], linked
        return attr_actions(drift, desired), None

    def apply(self, port: HostPort, desired: DesiredResource, observed: ObservedResource, step: PlannedAction) -> tuple[str, ...]:
        p = step.params
        if step.action is Action.WRITE_FILE:
            if desired.content is None:
                raise TargetError(f"{desired.address}: no content to write", transient=False)
            port.write_atomic(desired.address, desired.content, mode=mode_of(p.get("mode")), uid=id_of(p.get("owner")),
                              gid=id_of(p.get("group")))
        elif step.action is Action.REMOVE:
            port.remove(desired.address)
        elif not apply_attrs(port, desired, step):
            return super().apply(port, desired, observed, step)
        return ()

    def seed(self, fs: DemoFS, desired: DesiredResource) -> None:
        if not desired.expected.get("present"):
            return
        data = desired.content if desired.content is not None else f"# placeholder for {desired.address}\n".encode()
        fs.write(desired.address, data, int(desired.expected.get("mode", "0644"), 8))

    def inject(self, fs: DemoFS, desired: DesiredResource, done: set[str]) -> str | None:
        e, addr = desired.expected, desired.address
        if "content" in e and "content" not in done:
            fs.append(addr, b"PermitRootLogin yes\n")
            done.add("content")
            return f"{addr}: appended 'PermitRootLogin yes' (content drift)"
        if "content" in e and "missing" not in done:
            fs.unlink(addr)
            done.add("missing")
            return f"{addr}: deleted (missing file)"
        if e.get("present") and "mode" in e and "mode" not in done:
            fs.chmod(addr, 0o666)
            done.add("mode")
            return f"{addr}: chmod 0666 (mode drift{', sensitive file' if desired.sensitive else ''})"
        if e.get("present") is False and "absent" not in done:
            fs.write(addr, b"+ +\n", 0o644)
            done.add("absent")
            return f"{addr}: created (must be absent)"
        return None


HANDLERS = (FileHandler(),)
