"""Content diffs (presentation): a unified diff live → desired of a drifted text file, never of a sensitive one.

Pipeline position: after record, for the ``run`` and ``plan`` output.  :func:`unified` is pure.
:func:`content_diffs` finds the two sides for each outcome with a ``content`` drift of a host
file: the desired bytes the engine holds, and the live bytes — the snapshot kept before the
revert when driftd rewrote the file, else the file as it is now (read through the host
target's root-confined reader).  It skips, and so never shows: a resource whose content is
sensitive, bytes that are not UTF-8 text (or hold a NUL), either side over ``max_bytes``, and
anything it cannot read.  The diff itself is capped at ``max_lines``.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from typing import Any

MAX_BYTES = 64 * 1024
MAX_LINES = 60
MAX_FILES = 20  # a pass that rewrote 1,000 files shows the first 20 diffs; `driftd snapshot` has every one


def _text(data: bytes | None, max_bytes: int) -> list[str] | None:
    if data is None or len(data) > max_bytes or b"\0" in data:
        return None
    try:
        return data.decode("utf-8").splitlines(keepends=True)
    except UnicodeDecodeError:
        return None


def unified(path: str, live: bytes | None, desired: bytes | None, *, max_bytes: int = MAX_BYTES,
            max_lines: int = MAX_LINES) -> str | None:
    """``--- path (live)`` / ``+++ path (desired)`` hunks, or None when either side is not small text."""
    a, b = _text(live, max_bytes), _text(desired, max_bytes)
    if a is None or b is None:
        return None
    lines = [ln if ln.endswith("\n") else ln + "\n\\ No newline at end of file\n"
             for ln in difflib.unified_diff(a, b, f"{path} (live)", f"{path} (desired)", n=2)]
    if not lines:
        return None
    text = "".join(lines).splitlines()
    if len(text) > max_lines:
        text = [*text[:max_lines], f"… {len(text) - max_lines} more diff lines"]
    return "\n".join(text)


def content_diffs(outcomes: Iterable[Any], engine: Any, *, max_bytes: int = MAX_BYTES,
                  max_lines: int = MAX_LINES, max_files: int = MAX_FILES) -> dict[str, str]:
    """key -> diff for the first ``max_files`` outcomes with a non-sensitive host-file content drift of text."""
    out: dict[str, str] = {}
    host = getattr(engine, "targets", {}).get("host")
    if host is None:
        return out
    for o in outcomes:
        if len(out) >= max_files:
            break
        if o.target != "host" or not any(d.get("field") == "content" for d in o.drift):
            continue
        d = engine.desired.get(o.key)
        if d is None or d.kind != "file" or "content" in d.sensitive or not isinstance(d.content, bytes):
            continue
        live: bytes | None = None
        try:
            if o.snapshots and "write_file" in o.actions and o.status.value in ("remediated", "failed"):
                live = host.snapshots.get(o.snapshots[0])  # the drifted bytes kept before the rewrite
            else:
                live = host.fs.read(d.address, max_bytes + 1)
        except Exception:  # noqa: S112 - a diff is a courtesy: an unreadable side (gone, unsafe, refused) shows none
            continue
        diff = unified(d.address, live, d.content, max_bytes=max_bytes, max_lines=max_lines)
        if diff is not None:
            out[o.key] = diff
    return out


__all__ = ["MAX_BYTES", "MAX_LINES", "content_diffs", "unified"]
