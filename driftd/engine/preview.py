"""``driftd plan``: what a baseline set would do here, through the pipeline and gates ``run`` uses, without acting.

Pipeline position: a driver beside ``once.py``.  The engine runs in plan mode
(``Engine(plan_only=True)``: observe → diff → plan → every gate, then a plan the gates allow is
recorded as done instead of acted on) over a *copy* of the agent's state directory, so drift
ages, budgets already spent, open breakers and break-glass overrides count as they would, and
the agent's own state, snapshots, audit log, Events and PolicyReport are never touched.  This
module copies the state and turns the pass's outcomes into the plan: one row per resource that
would change or is held, a summary by outcome, action and node, as text, JSON or a bounded
Markdown comment for a pull request.

Against captured state (``driftd plan --state FILE...``): :func:`read_state` gives ``driftd state export`` the
node's open drift records, recent actions and guards; :func:`plan_captured` runs the same plan-mode pass over the
replaying targets of one export (``targets/captured.py``), on a fresh state seeded from those records
(:func:`seed_state`), so drift ages, budgets and flap counts are the node's; :func:`merge` adds the per-node plans
into one fleet plan (``nodes``, the rows with their node, the summary summed), and the Markdown gains a per-node
table above the bounded rows.
"""

from __future__ import annotations

import json
import shutil
import sqlite3
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from driftd.engine.once import PassSummary
from driftd.engine.reconciler import Outcome
from driftd.engine.state import DB_NAME
from driftd.models.resources import OutcomeStatus
from driftd.models.wording import ARROW, value_text

SCHEMA = "driftd.io/plan/v1"
_CELL = 80  # longest Markdown cell before it is cut
ACTIONS_HORIZON = 7 * 86400.0  # how far back an export carries actions (budget, flap and breaker windows are shorter)
_DRIFT_COLS = ("key", "target", "baseline", "address", "first_seen", "deadline", "attempts", "consecutive_failures",
               "last_action", "last_result", "breached", "updated_at", "held", "changed_at", "fields")
_ACTION_COLS = ("at", "key", "action", "result", "kind", "baseline")


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


def _ro(src: Path) -> sqlite3.Connection:
    db = src / DB_NAME
    quiet = not (src / f"{DB_NAME}-wal").exists()
    return sqlite3.connect(db.absolute().as_uri() + ("?mode=ro&immutable=1" if quiet else "?mode=ro"), uri=True)


def read_state(src: Path, now: float) -> dict[str, Any]:
    """What an export carries of the agent's state (read-only): open drift records (field names only, never
    values), the actions of the last week, the unexpired guards (open breakers, flap quarantines)."""
    out: dict[str, Any] = {"drifts": [], "actions": [], "guards": []}
    if not (src / DB_NAME).is_file():
        return out
    conn = _ro(src)
    try:
        cols = ", ".join(_DRIFT_COLS)
        for row in conn.execute(f"SELECT {cols} FROM drift WHERE resolved_at IS NULL ORDER BY key"):  # noqa: S608
            rec = dict(zip(_DRIFT_COLS, row, strict=True))
            rec["held"] = json.loads(rec["held"]) if rec["held"] else None
            rec["fields"] = [{"field": f.get("field")} for f in json.loads(rec["fields"] or "[]") if isinstance(f, dict)]
            rec["breached"] = bool(rec["breached"])
            out["drifts"].append(rec)
        acols = ", ".join(_ACTION_COLS)
        out["actions"] = [dict(zip(_ACTION_COLS, r, strict=True)) for r in conn.execute(
            f"SELECT {acols} FROM actions WHERE at > ? ORDER BY at", (now - ACTIONS_HORIZON,))]  # noqa: S608
        out["guards"] = [{"scope": r[0], "until": r[1], "data": json.loads(r[2] or "{}")} for r in conn.execute(
            "SELECT scope, until, data FROM guards WHERE until > ? ORDER BY scope", (now,))]
    finally:
        conn.close()
    return out


def seed_state(dst: Path, state: Mapping[str, Any]) -> None:
    """A fresh state database in ``dst`` holding an export's drift records, actions and guards (``read_state``)."""
    from driftd.engine.state import StateStore

    StateStore(dst).close()  # the schema, as the agent creates it
    conn = sqlite3.connect(dst / DB_NAME)
    try:
        with conn:
            ids: dict[str, int] = {}
            for rec in state.get("drifts") or []:
                vals = dict(rec)
                vals["held"] = json.dumps(vals["held"]) if vals.get("held") is not None else None
                vals["fields"] = json.dumps(vals.get("fields") or [])
                vals["breached"] = int(bool(vals.get("breached")))
                vals.setdefault("updated_at", vals.get("first_seen"))
                cols = [c for c in _DRIFT_COLS if c in vals]
                cur = conn.execute(f"INSERT INTO drift ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))})",  # noqa: S608
                                   [vals[c] for c in cols])
                ids[str(rec["key"])] = int(cur.lastrowid or 0)
            for a in state.get("actions") or []:
                conn.execute("INSERT INTO actions (at, drift_id, key, action, result, kind, baseline) "
                             "VALUES (?, ?, ?, ?, ?, ?, ?)",
                             (a["at"], ids.get(str(a["key"]), 0), a["key"], a["action"], a["result"],
                              a.get("kind") or "", a.get("baseline") or ""))
            for g in state.get("guards") or []:
                conn.execute("INSERT OR REPLACE INTO guards (scope, until, data, updated_at) VALUES (?, ?, ?, ?)",
                             (g["scope"], g["until"], json.dumps(g.get("data") or {}), g["until"]))
    finally:
        conn.close()


def plan_captured(settings: Any, bset: Any, doc: Mapping[str, Any], state_dir: Path) -> PassSummary:
    """One plan-mode pass of ``bset`` over the captured state ``doc`` of a node, on a state in ``state_dir``
    seeded from the export: the engine, its gates and their settings as ``run`` has them, the node's name and
    labels from the export, targets that replay the capture (and never act)."""
    from driftd.engine.clock import SystemClock
    from driftd.engine.once import run_once
    from driftd.engine.queue import Backoff, KeyedQueue
    from driftd.engine.reconciler import Engine
    from driftd.engine.state import StateStore
    from driftd.observability.nullmetrics import NullMetrics
    from driftd.safety.breakglass import OverrideStore
    from driftd.targets.base import NodeInfo
    from driftd.targets.captured import captured_targets

    seed_state(state_dir, doc.get("state") or {})
    node = NodeInfo(name=str(doc["node"]["name"]), labels=dict(doc["node"].get("labels") or {}))
    clock = SystemClock()
    state = StateStore(state_dir)
    metrics: Any = NullMetrics()  # what run --once records with (nothing)
    try:
        engine = Engine(targets=captured_targets(doc), state=state, metrics=metrics, node=node, dry_run=False,
                        escalate_after=settings.retry.escalate_after, clock=clock, safety=settings.safety,
                        overrides=OverrideStore(state_dir, max_ttl=settings.safety.break_glass.max_ttl_seconds),
                        audit=None, plan_only=True)
        engine.set_baselines(bset)
        queue = KeyedQueue(clock=clock, backoff=Backoff(settings.retry.base_seconds, settings.retry.max_seconds))
        return run_once(engine, queue, attempts=1)
    finally:
        state.close()


_NODE_COUNTS = ("resources", "unchanged", "change", "held", "report", "blocked", "failed", "error", "retired")


def merge(plans: Sequence[dict[str, Any]], *, labels: Mapping[str, Mapping[str, str]] | None = None) -> dict[str, Any]:
    """One fleet plan from per-node plans (:func:`build`): every node, every row (each with its node), the
    summary summed (by outcome, by action, held by gate; a target down is named ``<node>/<target>``)."""
    if not plans:
        raise ValueError("no plan to merge")
    nodes: dict[str, dict[str, Any]] = {}
    rows: list[dict[str, Any]] = []
    by_outcome: Counter[str] = Counter({k: 0 for k in plans[0]["summary"]["by_outcome"]})
    by_action: Counter[str] = Counter()
    held: Counter[str] = Counter()
    down: dict[str, str] = {}
    resources = unchanged = 0
    for p in plans:
        for name, counts in p["nodes"].items():
            if name in nodes:
                raise ValueError(f"node {name} appears in two plans (two exports of one node?)")
            nodes[name] = {**counts, "labels": dict((labels or {}).get(name, {}))}
            for t, err in p["summary"]["targets_down"].items():
                down[f"{name}/{t}" if len(p["nodes"]) == 1 else t] = err
        rows.extend(p["changes"])
        s = p["summary"]
        resources += s["resources"]
        unchanged += s["unchanged"]
        by_outcome.update(s["by_outcome"])
        by_action.update(s["by_action"])
        held.update(s["held_by_gate"])
    return {
        "schema": SCHEMA,
        "baselines": plans[0]["baselines"],
        "dry_run_of": "run",
        "nodes": dict(sorted(nodes.items())),
        "summary": {"resources": resources, "unchanged": unchanged, "by_outcome": dict(by_outcome),
                    "by_action": dict(sorted(by_action.items())), "held_by_gate": dict(sorted(held.items())),
                    "targets_down": dict(sorted(down.items()))},
        "changes": sorted(rows, key=lambda r: (r["node"], r["key"])),
    }


def _node_table(plan: dict[str, Any]) -> list[str]:
    lines = ["| node | resources | would change | held | report only | unchanged |", "|---|---|---|---|---|---|"]
    for name, n in plan["nodes"].items():
        extra = ", ".join(f"{n[k]} {k}" for k in ("blocked", "failed", "error", "retired") if n.get(k))
        lines.append(f"| {_cell(name)} | {n['resources']} | {n['change']} | {n['held']} | {n['report']} | "
                     f"{n['unchanged']}{' (' + extra + ')' if extra else ''} |")
    return lines


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


def _drift_text(drift: list[dict[str, Any]]) -> str:
    """Live value first, then what the baseline wants, in the words every surface uses: ``mode: 0600 → 0644``,
    ``installed: 3.0.11-1~deb12u2 → 3.0.15-1~deb12u1 or later (DSA-5764-1)``."""
    return ", ".join(f"{d['field']}: {value_text(d['live'])} {ARROW} {value_text(d['desired'])}" for d in drift)


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
    fleet = len(plan["nodes"]) > 1
    width = max((len(r["resource"]) for r in rows), default=0)
    nwidth = max((len(n) for n in plan["nodes"]), default=0)
    for r in rows:
        mark = {"change": "~", "held": "!", "report": "?", "retired": "="}.get(r["outcome"], "x")
        drift = _drift_text(r["drift"])
        where = f"{r['node']:<{nwidth}}  " if fleet else ""
        lines.append(f"  {mark} {where}{r['resource']:<{width}}  [{r['baseline']}]  {drift}")
        lines.append(f"      {r['would']}")
    for name, err in sorted(s["targets_down"].items()):
        lines.append(f"  x target {name} unreachable: {err}")
    if fleet:
        for name, n in plan["nodes"].items():
            lines.append(f"  node {name}: {n['resources']} resources, {n['change']} would change, {n['held']} held, "
                         f"{n['report']} report only, {n['unchanged']} unchanged")
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
    if len(plan["nodes"]) > 1:
        lines += [*_node_table(plan), ""]
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


__all__ = ["SCHEMA", "build", "copy_state", "merge", "outcome_word", "plan_captured", "read_state", "render_markdown",
           "render_text", "seed_state"]
