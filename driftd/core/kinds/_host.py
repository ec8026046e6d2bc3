"""Shared parts of the host kinds (pure): the compiled resource, path attributes, mode/owner steps.

Pipeline position: helpers of ``core.kinds.file``, ``directory``, ``sysctl`` and ``kernel``.
"""

from __future__ import annotations

import hashlib
import stat
from typing import Any

from driftd.core.kinds.ports import HostPort, StatLike
from driftd.models.baseline import HostBaseline, ManagedDirectory, ManagedFile
from driftd.models.resources import NO_PAYLOAD, Action, DesiredResource, FieldDrift, HostPayload, ObservedResource, PlannedAction

_RETIRE_ON_FAILURE = HostPayload(retire_on_failure=True)
SETID_BITS = 0o6000


def content_digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def host_resource(
    b: HostBaseline,
    key: str,
    kind: str,
    address: str,
    expected: dict[str, object],
    sensitive: frozenset[str] = frozenset(),
    content: bytes | None = None,
    payload: HostPayload | None = None,
) -> DesiredResource:
    """A host resource of baseline ``b``; names of users and groups stay names (the adapter resolves them)."""
    if payload is None:
        payload = _RETIRE_ON_FAILURE if b.spec.retire_on_failure else NO_PAYLOAD
    return DesiredResource(
        key=key, target="host", kind=kind, address=address, baseline=b.metadata.name,
        enforcement=b.spec.enforcement, window=b.spec.window, grace=b.spec.grace, expected=expected,
        sensitive=sensitive, content=content, payload=payload,
    )


def attrs(entry: ManagedFile | ManagedDirectory) -> dict[str, object]:
    out: dict[str, object] = {}
    if entry.mode is not None:
        out["mode"] = entry.mode
    if entry.owner is not None:
        out["owner"] = entry.owner
    if entry.group is not None:
        out["group"] = entry.group
    return out


def ftype(mode: int) -> str:
    """The type name a path observation reports for an ``st_mode``."""
    if stat.S_ISREG(mode):
        return "file"
    if stat.S_ISDIR(mode):
        return "directory"
    if stat.S_ISLNK(mode):
        return "symlink"
    return "other"


def observe_path(port: HostPort, desired: DesiredResource) -> ObservedResource:
    """Type, mode, owner, group (and links, content digest of a file) of the path."""
    st: StatLike | None = port.lstat(desired.address)
    if st is None:
        return ObservedResource(key=desired.key, actual={"present": False})
    kind = ftype(st.st_mode)
    actual: dict[str, Any] = {
        "present": True, "type": kind, "mode": f"{stat.S_IMODE(st.st_mode):04o}", "owner": st.st_uid, "group": st.st_gid,
    }
    if kind == "file":
        actual["links"] = st.st_nlink  # not governed: the planner refuses chmod/chown of a shared inode
        if "content" in desired.expected:
            actual["content"] = port.digest(desired.address, st)
    # ctime moves on every write, chmod, chown and rename onto the name, and no one can set it back
    return ObservedResource(key=desired.key, actual=actual, changed_at=st.st_ctime)


def unresolved(desired: DesiredResource) -> str | None:
    for f in ("owner", "group"):
        v = desired.expected.get(f)
        if isinstance(v, str):
            return f"{f} {v!r} is not defined on this host"
    return None


def attrs_params(desired: DesiredResource, observed: ObservedResource) -> dict[str, Any]:
    """Mode/owner/group a rewritten file must carry: governed values, else the current ones.

    Current values are kept only from a resource of the right type: a symlink's 0777 mode
    and its owner must not carry over to the file that replaces it (defaults apply).
    A current mode never carries set-uid/set-gid into the rewritten file: only the baseline's
    own ``mode`` may name them (a rewrite must not re-issue a set-id binary's privilege).
    """
    exp, act = desired.expected, observed.actual
    same_type = act.get("type") == desired.expected.get("type", desired.kind)
    out = {f: exp.get(f, act.get(f) if same_type else None) for f in ("mode", "owner", "group")}
    if "mode" not in exp and isinstance(out["mode"], str) and desired.kind == "file":
        out["mode"] = f"{int(out['mode'], 8) & ~SETID_BITS:04o}"
    return out


def attr_actions(drift: dict[str, FieldDrift], desired: DesiredResource) -> list[PlannedAction]:
    out = []
    if "mode" in drift:
        out.append(PlannedAction(action=Action.CHMOD, reason="mode differs", params={"mode": desired.expected["mode"]}))
    if "owner" in drift or "group" in drift:
        params = {"owner": desired.expected.get("owner"), "group": desired.expected.get("group")}
        if "mode" in desired.expected:  # set-id bits survive a chown only when the baseline names them
            params["mode"] = desired.expected["mode"]
        out.append(PlannedAction(action=Action.CHOWN, reason="ownership differs", params=params))
    return out


def mode_of(v: object) -> int | None:
    return int(v, 8) if isinstance(v, str) else None


def id_of(v: object) -> int | None:
    return v if isinstance(v, int) else None


def apply_attrs(port: HostPort, desired: DesiredResource, step: PlannedAction) -> bool:
    """CHMOD/CHOWN of a file or directory; False for any other action."""
    p, is_dir = step.params, desired.kind == "directory"
    if step.action is Action.CHMOD:
        port.chmod(desired.address, int(p["mode"], 8), is_dir=is_dir)
    elif step.action is Action.CHOWN:
        port.chown(desired.address, id_of(p.get("owner")), id_of(p.get("group")), is_dir=is_dir, mode=mode_of(p.get("mode")))
    else:
        return False
    return True
