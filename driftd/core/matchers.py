"""Matchers (pure): expected values that are rules rather than literal values.

Pipeline position: used by ``diff``.  A baseline often says "one of these images",
"at least these capabilities dropped", "none of these host mounts", or "these labels
with these values, others untouched".  Such an expected value is a one-key dict whose
key starts with ``$``; anything else is compared literally.
"""

from __future__ import annotations

from fnmatch import fnmatchcase
from typing import Any

OPERATORS = ("$in", "$superset", "$none_of", "$contains", "$all_match", "$version_at_least", "$package")
INSTALLED_SEP = ", "  # several installed instances of one package (multiarch, RPM): "1.2-1, 1.2-3"


def is_matcher(value: Any) -> bool:
    return isinstance(value, dict) and len(value) == 1 and next(iter(value)) in OPERATORS


def check(expected: dict[str, Any], actual: Any, context: dict[str, Any] | None = None) -> tuple[bool, tuple[str, ...]]:
    """(ok, changes) for a matcher; ``changes`` name what violates it.

    ``context`` is the whole observation, for a matcher whose meaning depends on another observed
    field (``$package``: the versions compare under the package database's ``format``).
    """
    op, arg = next(iter(expected.items()))
    if op == "$package":
        return package(arg, actual, str((context or {}).get("format") or ""))
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


def package(rule: dict[str, Any], installed: Any, fmt: str) -> tuple[bool, tuple[str, ...]]:
    """A ``packages`` rule over the installed versions (``None``: not installed), compared under ``fmt``.

    Every installed instance must satisfy the rule; a package not installed satisfies a minimum
    or a range.  A version the distribution's rules cannot read is a violation (``unreadable:``),
    never a silent pass.
    """
    from driftd.core.versions import VersionError, compare, in_range

    if not installed:
        return True, ()
    if rule.get("absent"):
        return False, ("absent:",)
    bad: list[str] = []
    for v in str(installed).split(INSTALLED_SEP):
        try:
            if rule.get("minimum") is not None:
                if compare(fmt, v, str(rule["minimum"])) < 0:
                    bad.append(f"below:{rule['minimum']}")
            elif rule.get("versions") is not None and not in_range(fmt, v, str(rule["versions"])):
                bad.append(f"outside:{rule['versions']}")
        except VersionError as e:
            bad.append(f"unreadable:{e}")
    return not bad, tuple(dict.fromkeys(bad))


def version_tuple(release: str) -> tuple[int, ...]:
    """Leading numeric components: '6.1.0-13-amd64' -> (6, 1, 0)."""
    out: list[int] = []
    for part in release.split("-", 1)[0].split("."):
        digits = "".join(ch for ch in part if ch.isdigit()) if part[:1].isdigit() else ""
        if not digits:
            break
        out.append(int(digits))
    return tuple(out)
