"""Diff (pure): compare what a baseline names with what was observed.

Pipeline position: observe → **diff** → plan.  Only fields the baseline governs are
compared.  Scalars are compared directly (the hot path, tens of thousands of files per
pass); structured values (maps, lists) go through deepdiff, which stays inside this
module and is imported only when a structured value actually differs.
"""

from __future__ import annotations

from typing import Any

from driftd.core.matchers import check, is_matcher
from driftd.models.resources import REDACTED, DesiredResource, FieldDrift, ObservedResource


def _structured_changes(expected: Any, actual: Any) -> tuple[str, ...]:
    from deepdiff import DeepDiff  # heavy import, only when a structured value differs

    dd = DeepDiff(expected, actual, ignore_order=isinstance(expected, list), view="tree")
    paths: list[str] = []
    for report_type, items in dd.items():
        for item in items:
            paths.append(f"{report_type}:{item.path(root='')}")
    return tuple(sorted(paths))


def diff(desired: DesiredResource, observed: ObservedResource) -> tuple[FieldDrift, ...]:
    """Field drifts of one resource; empty when it matches its baseline.

    A resource that should exist but does not reports only ``present`` (its other fields
    are moot), and a resource that must be absent reports only ``present`` too.
    """
    expected = desired.expected
    actual = observed.actual
    if "present" in expected and expected["present"] != actual.get("present"):
        return (FieldDrift(field="present", expected=expected["present"], actual=actual.get("present")),)
    if expected.get("present") is False:
        return ()
    if "type" in expected and expected["type"] != actual.get("type"):
        return (FieldDrift(field="type", expected=expected["type"], actual=actual.get("type")),)
    out: list[FieldDrift] = []
    for name, want in expected.items():
        have = actual.get(name)
        if is_matcher(want):
            ok, changes = check(want, have, actual)
            if not ok:
                out.append(FieldDrift(field=name, expected=want, actual=have, changes=changes))
            continue
        if want == have:
            continue
        changes = ()
        if isinstance(want, dict | list) and isinstance(have, dict | list):
            changes = _structured_changes(want, have)
        out.append(FieldDrift(field=name, expected=want, actual=have, changes=changes))
    return tuple(out)


def reportable(desired: DesiredResource, drift: tuple[FieldDrift, ...]) -> list[dict[str, Any]]:
    """Drift as plain dicts safe for logs, state and reports: sensitive fields redacted."""
    out = []
    for d in drift:
        item = d.redacted() if d.field in desired.sensitive else d
        out.append(item.model_dump(exclude_defaults=False))
    return out


__all__ = ["REDACTED", "diff", "reportable"]
