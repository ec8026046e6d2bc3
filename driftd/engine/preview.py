"""``driftd plan``: what a baseline set would do here, through the pipeline and gates ``run`` uses, without acting.

Pipeline position: a driver beside ``once.py``.  The engine runs in plan mode
(``Engine(plan_only=True)``: observe → diff → plan → every gate, then a plan the gates allow is
recorded as done instead of acted on) over a *copy* of the agent's state directory, so drift
ages, budgets already spent, open breakers and break-glass overrides count as they would, and
the agent's own state, snapshots, audit log, Events and PolicyReport are never touched.  This
module copies the state and turns the pass's outcomes into the plan: one row per resource that
would change or is held, a summary by outcome, action and node, as text, JSON or a bounded
Markdown comment for a pull request.
"""

from __future__ import annotations

import shutil
import sqlite3
from collections import Counter
from pathlib import Path
from typing import Any

from driftd.engine.once import PassSummary
from driftd.engine.reconciler import Outcome
from driftd.engine.state import DB_NAME
from driftd.models.resources import OutcomeStatus

SCHEMA = "driftd.io/plan/v1"
_CELL = 80  # longest Markdown cell before it is cut


def copy_state(src: Path, dst: Path) -> None:
    """A consistent copy of the agent's state database (SQLite online backup, read-only) and its overrides.

    With the agent running (a write-ahead log beside the database) the copy reads through the log; with the
    agent stopped (no log) the database is opened immutable, so that reading it creates no ``-wal``/``-shm``
    file in the agent's directory.
    """
    db = src / DB_NAME
    dst.mkdir(parents=True, exist_ok=True)
    if db.is_file():
        quiet = not (src / f"{DB_NAME}-wal").exists()
        source = sqlite3.connect(db.absolute().as_uri() + ("?mode=ro&immutable=1" if quiet else "?mode=ro"), uri=True)
        try:
            target = sqlite3.connect(dst / DB_NAME)
            try:
                source.backup(target)
            finally:
                target.close()
        finally:
            source.close()
    overrides = src / "overrides"
    if overrides.is_dir():
        shutil.copytree(overrides, dst / "overrides", symlinks=True)


def outcome_word(o: Outcome) -> str:
    """What ``run`` would do with the resource, in one phrase."""
    if o.status is OutcomeStatus.REPORTED and o.mode == "plan":
        return "would " + " + ".join(o.actions)
    if o.status is OutcomeStatus.REPORTED:
        return f"report only ({o.mode})" if o.mode and o.mode != "enforce" else "report only"
    if o.status is OutcomeStatus.HELD:
        return o.error or "held"
    if o.status is OutcomeStatus.BLOCKED:
        return f"blocked: {o.error}"
    if o.status is OutcomeStatus.FAILED:
        return o.error or "failed"
    if o.status is OutcomeStatus.RETIRED:
        return "already retired"
    return f"{o.status.value}: {o.error}" if o.error else o.status.value


def _category(o: Outcome) -> str:
    if o.status is OutcomeStatus.REPORTED:
        return "change" if o.mode == "plan" else "report"
    return {OutcomeStatus.HELD: "held", OutcomeStatus.BLOCKED: "blocked", OutcomeStatus.FAILED: "failed",
            OutcomeStatus.ERROR: "error", OutcomeStatus.RETIRED: "retired"}.get(o.status, o.status.value)


def _short(v: Any) -> str:
    text = str(v)
    if text.startswith("sha256:"):
        return text[:15]
    return text if len(text) <= 40 else text[:37] + "..."


def _drift_text(drift: list[dict[str, Any]]) -> str:
    """Live value first, then what the baseline wants: ``mode: 0600 → 0644``."""
    return ", ".join(f"{d['field']}: {_short(d['live'])} → {_short(d['desired'])}" for d in drift)


def build(summary: PassSummary, *, node: str, baselines: str) -> dict[str, Any]:
    """The plan as data (the ``-o json`` document): every count present, zero or not."""
    rows: list[dict[str, Any]] = []
    for o in summary.outcomes:
        rows.append({"node": node, "key": o.key, "resource": o.address or o.key, "target": o.target, "baseline": o.baseline,
                     "outcome": _category(o), "would": outcome_word(o), "actions": list(o.actions) if o.mode == "plan" else [],
                     "drift": [{"field": d["field"], "live": d["actual"], "desired": d["expected"]} for d in o.drift]})
    by_outcome = {k: 0 for k in ("change", "held", "report", "blocked", "failed", "error", "retired")}
    by_outcome.update(Counter(r["outcome"] for r in rows))
    by_action = Counter(a for r in rows for a in r["actions"])
    held = Counter(str(r["would"]).split(":")[1].strip() if str(r["would"]).startswith("held:") else "other"
                   for r in rows if r["outcome"] == "held")
    unchanged = summary.counts.get(OutcomeStatus.CLEAN.value, 0)
    return {
        "schema": SCHEMA,
        "baselines": baselines,
        "dry_run_of": "run",
        "nodes": {node: {"resources": summary.resources, "unchanged": unchanged, **by_outcome}},
        "summary": {"resources": summary.resources, "unchanged": unchanged, "by_outcome": by_outcome,
                    "by_action": dict(sorted(by_action.items())), "held_by_gate": dict(sorted(held.items())),
                    "targets_down": dict(summary.targets_down)},
        "changes": rows,
    }


def render_text(plan: dict[str, Any]) -> str:
    s = plan["summary"]
    lines = [f"driftd plan: baseline set {plan['baselines']}, {s['resources']} resources"]
    rows = plan["changes"]
    width = max((len(r["resource"]) for r in rows), default=0)
    for r in rows:
        mark = {"change": "~", "held": "!", "report": "?", "retired": "="}.get(r["outcome"], "x")
        drift = _drift_text(r["drift"])
        lines.append(f"  {mark} {r['resource']:<{width}}  [{r['baseline']}]  {drift}")
        lines.append(f"      {r['would']}")
    for name, err in sorted(s["targets_down"].items()):
        lines.append(f"  x target {name} unreachable: {err}")
    lines.append(_summary_line(s))
    return "\n".join(lines)


def _summary_line(s: dict[str, Any]) -> str:
    o = s["by_outcome"]
    parts = [f"{o['change']} would change", f"{o['held']} held", f"{o['report']} report only"]
    parts += [f"{o[k]} {k}" for k in ("blocked", "failed", "error", "retired") if o[k]]
    acts = ", ".join(f"{a} {n}" for a, n in s["by_action"].items())
    gates = ", ".join(f"{g} {n}" for g, n in s["held_by_gate"].items())
    return ("plan: " + ", ".join(parts) + f", {s['unchanged']} unchanged"
            + (f" (actions: {acts})" if acts else "") + (f" (held by: {gates})" if gates else ""))


def _cell(text: str) -> str:
    text = text.replace("|", "\\|").replace("\n", " ")
    return text if len(text) <= _CELL else text[: _CELL - 1] + "…"


def render_markdown(plan: dict[str, Any], *, max_rows: int = 50) -> str:
    """A pull-request comment: the summary, then at most ``max_rows`` rows (changes and holds first)."""
    s = plan["summary"]
    order = {"change": 0, "held": 1, "blocked": 2, "failed": 3, "error": 4, "report": 5, "retired": 6}
    rows = sorted(plan["changes"], key=lambda r: (order.get(r["outcome"], 9), r["node"], r["resource"]))
    lines = [f"### driftd plan — baseline set `{plan['baselines']}`", "", _summary_line(s), ""]
    if rows:
        lines += ["| node | resource | baseline | live → desired | would |", "|---|---|---|---|---|"]
        for r in rows[:max_rows]:
            drift = _drift_text(r["drift"])
            lines.append(f"| {_cell(r['node'])} | `{_cell(r['resource'])}` | {_cell(r['baseline'])} | {_cell(drift)} | "
                         f"{_cell(r['would'])} |")
        if len(rows) > max_rows:
            lines += ["", f"… and {len(rows) - max_rows} more (`driftd plan -o json` lists every one)."]
    else:
        lines.append("No resource would change.")
    return "\n".join(lines) + "\n"


__all__ = ["SCHEMA", "build", "copy_state", "outcome_word", "render_markdown", "render_text"]
