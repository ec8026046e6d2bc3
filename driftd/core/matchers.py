"""Matchers (pure): expected values that are rules rather than literal values.

Pipeline position: used by ``diff``.  A baseline often says "one of these images",
"at least these capabilities dropped", "none of these host mounts", or "these labels
with these values, others untouched".  Such an expected value is a one-key dict whose
key starts with ``$``; anything else is compared literally.
"""

from __future__ import annotations

from fnmatch import fnmatchcase
from typing import Any

OPERATORS = ("$in", "$superset", "$none_of", "$contains", "$all_match", "$version_at_least")


def is_matcher(value: Any) -> bool:
    return isinstance(value, dict) and len(value) == 1 and next(iter(value)) in OPERATORS


def check(expected: dict[str, Any], actual: Any) -> tuple[bool, tuple[str, ...]]:
    """(ok, changes) for a matcher; ``changes`` name what violates it."""
    op, arg = next(iter(expected.items()))
    if op == "$version_at_least":
        running = version_tuple(str(actual or ""))
        ok = bool(running) and running >= version_tuple(str(arg))
        return ok, () if ok else (f"below:{arg}",)
    if op == "$in":
        return actual in arg, () if actual in arg else (f"not_in:{actual}",)
    items = actual if isinstance(actual, list | tuple | set | frozenset) else ([] if actual is None else [actual])
    if op == "$superset":
        missing = sorted(set(arg) - set(items))
        return not missing, tuple(f"missing:{m}" for m in missing)
    if op == "$none_of":
        present = sorted(set(arg) & set(items))
        return not present, tuple(f"forbidden:{p}" for p in present)
    if op == "$all_match":
        bad = sorted(i for i in items if not any(fnmatchcase(str(i), p) for p in arg))
        return not bad, tuple(f"not_allowed:{b}" for b in bad)
    if op == "$contains":
        have = actual if isinstance(actual, dict) else {}
        diffs = sorted(k for k, v in arg.items() if have.get(k) != v)
        return not diffs, tuple(f"differs:{k}" for k in diffs)
    raise ValueError(f"unknown matcher {op}")  # pragma: no cover - guarded by is_matcher


def version_tuple(release: str) -> tuple[int, ...]:
    """Leading numeric components: '6.1.0-13-amd64' -> (6, 1, 0)."""
    out: list[int] = []
    for part in release.split("-", 1)[0].split("."):
        digits = "".join(ch for ch in part if ch.isdigit()) if part[:1].isdigit() else ""
        if not digits:
            break
        out.append(int(digits))
    return tuple(out)
