"""Rendering (presentation): documents as text people read at a glance, or as JSON / YAML.

Pipeline position: the last step of ``run --once``, ``status`` and the demo.  Text is built from
the same documents ``-o json|yaml`` prints (:mod:`driftd.presentation.documents`), so the words
cannot differ between the two: a result line per resource with its status word, the resource,
its baseline and its drift live → desired; below it what driftd did (or would do, or why it
held); a content diff where one is safe to show; a closing line with every count.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping
from typing import Any, TextIO

from pydantic import BaseModel

from driftd.models.wording import WORDS
from driftd.presentation.documents import RECORD_WORDS, PassDocument, StatusDocument, dump
from driftd.presentation.terminal import Painter, table

FORMATS = ("text", "json", "yaml")


def emit(doc: BaseModel | Mapping[str, Any] | list[Any], fmt: str, stream: TextIO | None = None) -> None:
    """Print a document as JSON (indented) or YAML (block style, field order kept)."""
    out = stream or sys.stdout
    data = dump(doc)
    if fmt == "yaml":
        import yaml

        out.write(yaml.safe_dump(data, sort_keys=False, allow_unicode=True, default_flow_style=False, width=120))
    else:
        out.write(json.dumps(data, indent=2, ensure_ascii=False, default=str) + "\n")


def _age(seconds: float) -> str:
    """``kubectl``-style age: 45s, 12m, 3h20m, 2d4h."""
    s = int(max(0.0, seconds))
    if s < 120:
        return f"{s}s"
    m = s // 60
    if m < 60:
        return f"{m}m"
    h, m = divmod(m, 60)
    if h < 24:
        return f"{h}h{m}m" if m and h < 10 else f"{h}h"
    d, h = divmod(h, 24)
    return f"{d}d{h}h" if h and d < 10 else f"{d}d"


def pass_text(doc: PassDocument, painter: Painter | None = None) -> str:
    """``run --once`` as text."""
    p = painter or Painter(sys.stdout, "never")
    head = (f"driftd run on {doc.node}: {doc.resources} resources, baseline set {doc.baseline_set}"
            + (" (dry-run: nothing changed)" if doc.dry_run else "") + f", {doc.duration_seconds:.3f} s")
    lines = [head]
    width = max((len(r.status) for r in doc.results), default=0)
    width = max(width, 5 if doc.targets_down else 0)
    res_w = max((len(r.resource) for r in doc.results), default=0)
    base_w = max((len(r.baseline) for r in doc.results), default=0)
    indent = " " * (2 + width + 2)
    for t in doc.targets_down:
        lines.append(f"  {p.word('error', width)}  target {t.target} unreachable: {t.reason}")
    for r in doc.results:
        drift = ", ".join(d.text for d in r.drift) or (r.reason or "")
        lines.append(f"  {p.word(r.status, width)}  {r.resource.ljust(res_w)}  {r.baseline.ljust(base_w)}  {drift}".rstrip())
        for detail in _details(r, doc.dry_run):
            lines.append(indent + detail)
        if r.diff:
            lines.extend(indent + _diff_line(p, ln) for ln in r.diff.splitlines())
    lines.append(_result_line(doc, p))
    return "\n".join(lines)


def _details(r: Any, dry_run: bool) -> list[str]:
    out: list[str] = []
    kept = f"; drifted content kept as {', '.join(s[:19] for s in r.snapshots)}" if r.snapshots else ""
    if r.did:
        out.append(f"did {' + '.join(r.did)}{kept}")
    elif r.tried:
        out.append(f"tried {' + '.join(r.tried)}{kept}: {r.reason or 'failed'}")
    elif r.status == "held":
        out.append(f"would {' + '.join(r.would)}; {r.reason}" if r.would else (r.reason or "held"))
    elif r.status == "blocked":
        out.append(f"not acting: {r.reason}")
    elif r.status == "reported":
        why = "dry-run" if dry_run else {"warn": "the baseline is in warn mode", "dryrun": "the baseline is in dryrun mode",
                                         "plan": "plan mode"}.get(r.mode, "report-only rule")
        out.append(f"would {' + '.join(r.would)} ({why})" if r.would else f"reported ({why})")
    elif r.reason and r.drift:
        out.append(r.reason)
    return out


def _diff_line(p: Painter, line: str) -> str:
    if line.startswith(("+++", "---")):
        return p.paint(line, "bold")
    if line.startswith("+"):
        return p.paint(line, "green")
    if line.startswith("-"):
        return p.paint(line, "red")
    if line.startswith("@@"):
        return p.paint(line, "cyan")
    return line


def _result_line(doc: PassDocument, p: Painter) -> str:
    parts = [f"{doc.counts.get(w, 0)} {w}" for w in WORDS if w not in ("gone", "unmanaged") or doc.counts.get(w)]
    if doc.targets_down:
        n = len(doc.targets_down)
        parts.append(f"{n} target{'s' if n > 1 else ''} down")
    return "result: " + ", ".join(parts) + f"; exit {doc.exit_code} ({doc.exit})"


def _deadline(seconds: float) -> str:
    return f"in {_age(seconds)}" if seconds > 0 else f"PAST ({_age(-seconds)} ago)"


def status_text(doc: StatusDocument, *, wide: bool = False, painter: Painter | None = None) -> str:
    """``driftd status`` as a ``kubectl get``-style table, then the set in force and the safety states."""
    p = painter or Painter(sys.stdout, "never")
    lines: list[str] = []
    if doc.items:
        header = ["RESOURCE", "TARGET", "BASELINE", "STATUS", "AGE", "DEADLINE"]
        if wide:
            header += ["ATTEMPTS", "LAST ACTION", "KEY"]
        header.append("DRIFT (LIVE → DESIRED)")
        rows = []
        for i in doc.items:
            row = [i.resource, i.target, i.baseline, i.status, _age(i.age_seconds), _deadline(i.deadline_in_seconds)]
            if wide:
                last = f"{i.last_action}: {i.last_result}" if i.last_action else (i.last_result or "-")
                row += [str(i.attempts), last, i.key]
            drift = ", ".join(d.text for d in i.drift)
            if wide and i.reason:
                drift += f" [{i.reason}]"
            row.append(drift)
            rows.append(row)
        lines += table(header, rows, painter=p, status_col=3)
    else:
        lines.append("no active drift")
    counts = ", ".join(f"{doc.counts[w]} {w}" for w in RECORD_WORDS if doc.counts.get(w))
    if counts:
        lines.append(f"open drifts: {counts}")
    b = doc.baseline_set
    if b is not None:
        signed = f", signed by {b.signed_by}" if b.signed_by else ""
        lines.append(f"baseline set {b.version} in force since {b.since} ({b.baselines} baselines{signed})")
    else:
        lines.append("baseline set: none recorded (driftd has not run with this state directory)")
    if doc.scans:
        where = f"node {doc.node}: " if doc.node else ""
        lines.append(where + "last scan " + "; ".join(
            f"{sc.target} {_age(sc.age_seconds)} ago ({sc.result}, {sc.resources} resources)" for sc in doc.scans))
    for g in doc.guards:
        left = f" for {_age(g.expires_in_seconds)} more" if g.expires_in_seconds is not None else ""
        lines.append({"override": f"override {g.scope} paused{left}: {g.reason}",
                      "override-refused": f"override REFUSED: {g.reason}",
                      "breaker": f"breaker OPEN {g.scope}: {g.reason}",
                      "flapping": f"flapping {g.scope}: {g.reason}"}[g.kind])
    return "\n".join(lines)


def show_pass(summary: Any, engine: Any, *, output: str = "text", color: str = "auto", stream: TextIO | None = None) -> None:
    """A pass's result: text (colour on a terminal), or the ``PassResult`` document as JSON / YAML."""
    from driftd.presentation import contentdiff
    from driftd.presentation.documents import pass_document
    from driftd.presentation.terminal import Painter

    out = stream or sys.stdout
    doc = pass_document(summary, node=engine.node.name, diffs=contentdiff.content_diffs(summary.outcomes, engine))
    if output == "text":
        out.write(pass_text(doc, Painter(out, color)) + "\n")
    else:
        emit(doc, output, out)


__all__ = ["FORMATS", "emit", "pass_text", "show_pass", "status_text"]
