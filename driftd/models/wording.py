"""The words driftd shows people (pure): status words, drift as ``field: live → desired``, values and changes.

Pipeline position: after record.  Every surface that tells a person what happened (the ``run``
summary, ``status``, ``plan``, the drifts API, Kubernetes Events, the PolicyReport, the
presentation layer in ``driftd/presentation/``) words outcomes and drifts through these
functions, so one resource reads the same everywhere: the **live value first, then what the
baseline wants** (as ``terraform plan``, ``kubectl diff`` and ``ansible --diff`` do), and one
status word per outcome.  Values arrive already redacted where they are sensitive
(:meth:`FieldDrift.redacted`); nothing here reveals more than it is given.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from driftd.models.resources import REDACTED, OutcomeStatus

ARROW = "→"

#: The status word of each outcome, the same on every surface (text, JSON, status, API, Events, report).
STATUS_WORDS: dict[OutcomeStatus, str] = {
    OutcomeStatus.CLEAN: "clean",
    OutcomeStatus.REMEDIATED: "reverted",
    OutcomeStatus.REPORTED: "reported",
    OutcomeStatus.BLOCKED: "blocked",
    OutcomeStatus.HELD: "held",
    OutcomeStatus.FAILED: "failed",
    OutcomeStatus.ERROR: "error",
    OutcomeStatus.RETIRED: "retired",
    OutcomeStatus.GONE: "gone",
    OutcomeStatus.UNMANAGED: "unmanaged",
}
#: Every status word a document can carry, in the order summaries list them (zero counts included).
WORDS: tuple[str, ...] = ("clean", "reverted", "retired", "reported", "held", "blocked", "failed", "error", "gone",
                          "unmanaged")
#: What each word means (docs/output.md and ``--help`` quote these).
MEANINGS: dict[str, str] = {
    "clean": "matches its baseline",
    "reverted": "the drift was reverted and the revert verified",
    "retired": "could not be made compliant and was taken out of service (container retired, node cordoned/drained)",
    "reported": "drift left in place on purpose: dry-run, a warn/dryrun baseline, a report-only rule",
    "held": "a safety gate holds the action (budget, breaker, break-glass, grace, flap); retried when it lifts",
    "blocked": "no safe action exists (the reason says why); needs a person",
    "failed": "the action failed, or succeeded without fixing the drift (terminal until the drift changes)",
    "error": "the resource or its target could not be observed, or the state could not be written",
    "gone": "the resource no longer exists",
    "unmanaged": "no baseline governs it any more",
}

# an open record's last result (engine/state.py) -> its word: a mode that leaves drift in place reports it
_RESULT_WORDS = {"failed": "failed", "blocked": "blocked", "skipped": "reported", "report": "reported",
                 "dry-run": "reported", "warn": "reported", "dryrun": "reported", "released": "detected"}


def status_word(status: OutcomeStatus | str, *, retired: bool = False) -> str:
    """The word for an outcome; ``retired``: the action that closed it retired the instance (not a revert)."""
    s = OutcomeStatus(status)
    if s is OutcomeStatus.REMEDIATED and retired:
        return "retired"
    return STATUS_WORDS[s]


def record_word(last_result: str | None, *, held: bool = False) -> str:
    """The status word of an open drift record from its last action's result (``status``, the drifts API)."""
    if held:
        return "failed"  # a terminal hold: the action succeeded without fixing the drift, or kept failing
    if not last_result:
        return "detected"
    if last_result.startswith("held:"):
        return "held"
    if last_result == "succeeded":
        return "retired"  # an open record after a successful action: the node was retired with its drift in place
    return _RESULT_WORDS.get(last_result, "detected")


def value_text(value: Any, *, limit: int = 40) -> str:
    """A value as a person reads it, one line, at most ``limit`` characters."""
    if value is None:
        return "(none)"
    if isinstance(value, str):
        if value == REDACTED:
            return "(redacted)"
        if value.startswith("sha256:") and len(value) > 19:
            return value[:19]  # sha256: + 12 hex digits: enough to tell two contents apart
        text = value if value else '""'
    elif isinstance(value, bool):
        text = "yes" if value else "no"
    elif isinstance(value, dict) and len(value) == 1 and str(next(iter(value))).startswith("$"):
        text = _matcher_text(str(next(iter(value))), next(iter(value.values())))
    elif isinstance(value, dict | list | tuple):
        text = json.dumps(value, sort_keys=True, default=str, separators=(", ", ": "))
    else:
        text = str(value)
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _matcher_text(op: str, arg: Any) -> str:
    items = ", ".join(str(a) for a in arg) if isinstance(arg, list | tuple) else str(arg)
    return {
        "$in": f"one of [{items}]",
        "$superset": f"at least [{items}]",
        "$none_of": f"none of [{items}]",
        "$all_match": f"each matching [{items}]",
        "$contains": "including " + (json.dumps(arg, sort_keys=True, separators=(", ", ": ")) if isinstance(arg, dict) else items),
        "$version_at_least": f"version {arg} or later",
    }.get(op) or (package_requirement_text(arg) if op == "$package" else f"{op} {items}")


def package_requirement_text(req: Any) -> str:
    """A packages rule's requirement: ``3.0.15-1~deb12u1 or later (DSA-5764-1)``, ``within >=1|<2``, ``absent``."""
    if not isinstance(req, dict):
        return str(req)
    text = ("absent" if req.get("absent") else
            f"{req['minimum']} or later" if req.get("minimum") is not None else f"within {req.get('versions')}")
    return f"{text} ({req['reason']})" if req.get("reason") else text


# deepdiff report types (core/diff.py) and matcher violations (core/matchers.py), in words
_CHANGE_WORDS = {
    "values_changed": "changed",
    "type_changes": "type changed",
    "dictionary_item_added": "added",
    "dictionary_item_removed": "removed",
    "iterable_item_added": "added",
    "iterable_item_removed": "removed",
    "set_item_added": "added",
    "set_item_removed": "removed",
    "attribute_added": "added",
    "attribute_removed": "removed",
    "repetition_change": "repeated",
}


def change_text(change: str) -> str:
    """One entry of ``FieldDrift.changes`` in words: ``iterable_item_added:[0]`` → ``added [0]``."""
    kind, sep, rest = change.partition(":")
    if not sep:
        return change
    if kind in _CHANGE_WORDS:
        return f"{_CHANGE_WORDS[kind]} {rest}" if rest else _CHANGE_WORDS[kind]
    return {
        "not_in": f"{rest} is not an allowed value",
        "below": f"older than {rest}",
        "outside": f"outside {rest}",
        "absent": "must not be installed",
        "unreadable": rest,
        "missing": f"{rest} missing",
        "forbidden": f"{rest} is forbidden",
        "not_allowed": f"{rest} is not allowed",
        "differs": f"{rest} differs",
    }.get(kind, change)


def drift_text(d: Mapping[str, Any], *, limit: int = 40) -> str:
    """One field drift as ``field: live → desired`` (a drift dict of ``core.diff.reportable``).

    Presence reads as words (``missing``, ``present, must be absent``); a structured value adds
    what inside it differs (``ports: […] → […] (added [0])``).
    """
    name, live, want = d.get("field", "?"), d.get("actual"), d.get("expected")
    if name == "present":
        if want is False:
            return "present, must be absent"
        return "missing"
    text = f"{name}: {value_text(live, limit=limit)} {ARROW} {value_text(want, limit=limit)}"
    changes = [change_text(str(c)) for c in d.get("changes") or ()]
    if changes:
        shown = "; ".join(changes[:3]) + (f"; {len(changes) - 3} more" if len(changes) > 3 else "")
        text += f" ({shown})"
    return text


def drifts_text(drift: list[dict[str, Any]] | tuple[dict[str, Any], ...], *, limit: int = 40) -> str:
    """Every field drift of one resource, comma separated."""
    return ", ".join(drift_text(d, limit=limit) for d in drift)


def live_desired(d: Mapping[str, Any]) -> dict[str, Any]:
    """A drift dict for a document: ``field``, ``live``, ``desired`` (in that order), ``changes``, ``text``."""
    out: dict[str, Any] = {"field": d.get("field"), "live": d.get("actual"), "desired": d.get("expected")}
    out["changes"] = [change_text(str(c)) for c in d.get("changes") or ()]
    out["text"] = drift_text(d)
    return out


__all__ = [
    "ARROW",
    "MEANINGS",
    "STATUS_WORDS",
    "WORDS",
    "change_text",
    "drift_text",
    "drifts_text",
    "live_desired",
    "package_requirement_text",
    "record_word",
    "status_word",
    "value_text",
]
