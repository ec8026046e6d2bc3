"""Output documents (presentation): the versioned JSON/YAML shape of what driftd prints.

Pipeline position: after record.  Built from the pipeline's typed results — a pass's
:class:`~driftd.engine.once.PassSummary`, the state's :class:`~driftd.engine.state.DriftRecord`
rows — never from log lines.  Every document carries ``apiVersion: driftd.io/v1`` and a ``kind``;
every count is present (zero included); drifts read live before desired; status words come from
:mod:`driftd.models.wording`.  ``docs/output.schema.json`` is generated from these models
(``driftd output-schema``; ``tests/test_output.py`` keeps it current) and ``docs/output.md``
describes it.  Values are as redacted as the state holds them: sensitive fields arrive as
``<redacted>``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Mapping
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from driftd.engine.once import PassSummary
from driftd.engine.reconciler import Outcome
from driftd.engine.state import DriftRecord
from driftd.exitcodes import ExitCode
from driftd.models.resources import OutcomeStatus
from driftd.models.wording import WORDS, live_desired, record_word, status_word

API_VERSION: Literal["driftd.io/v1"] = "driftd.io/v1"
RECORD_WORDS: tuple[str, ...] = ("detected", "reported", "held", "blocked", "failed", "retired")


class _Doc(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True, json_schema_serialization_defaults_required=True)


class DriftItem(_Doc):
    """One drifted field: the live value first, then what the baseline wants."""

    field: str
    live: Any = Field(description="The value found (``<redacted>`` for a sensitive field).")
    desired: Any = Field(description="What the baseline wants (``<redacted>`` for a sensitive field).")
    changes: list[str] = Field(default_factory=list, description="What inside a structured value differs, in words.")
    text: str = Field(description="The drift as one line: ``mode: 0777 → 0755``.")


class PassResult(_Doc):
    """One resource a pass did not find clean."""

    key: str
    resource: str = Field(description="The file, sysctl, container or pod, as people name it.")
    target: str
    baseline: str
    status: str = Field(description="One of: " + ", ".join(WORDS) + ".")
    mode: str = Field(description="The enforcement the resource was under: enforce, warn, dryrun, plan.")
    drift: list[DriftItem]
    did: list[str] = Field(default_factory=list, description="Actions applied and verified (reverted, retired).")
    tried: list[str] = Field(default_factory=list, description="Actions applied that failed or did not fix the drift.")
    would: list[str] = Field(default_factory=list, description="Actions planned but not applied (reported, held, blocked).")
    reason: str | None = Field(default=None, description="Why it is held, blocked, failed or in error.")
    snapshots: list[str] = Field(default_factory=list, description="Ids of the drifted content kept before overwriting.")
    first_seen: str | None = Field(default=None, alias="firstSeen")
    deadline: str | None = None
    diff: str | None = Field(default=None, description="Unified diff live → desired of a non-sensitive text file (capped).")


class TargetDown(_Doc):
    target: str
    reason: str


class PassDocument(_Doc):
    """``driftd run --once -o json|yaml``."""

    api_version: Literal["driftd.io/v1"] = Field(default=API_VERSION, alias="apiVersion")
    kind: Literal["PassResult"] = "PassResult"
    node: str
    baseline_set: str = Field(alias="baselineSet")
    dry_run: bool = Field(alias="dryRun")
    duration_seconds: float = Field(alias="durationSeconds")
    resources: int
    counts: dict[str, int] = Field(description="Resources by status word; every word present, zero or not.")
    targets_down: list[TargetDown] = Field(alias="targetsDown")
    exit_code: int = Field(alias="exitCode")
    exit: str = Field(description="What the exit code means: clean, error, drift remained, remediation failed.")
    results: list[PassResult]


class BaselineSetInfo(_Doc):
    version: str | None = None
    since: str | None = None
    baselines: int = 0
    signed_by: str | None = Field(default=None, alias="signedBy")


class DriftRecordItem(_Doc):
    """One open drift as the state holds it (``status``, ``GET /api/v1/drifts``)."""

    key: str
    resource: str
    target: str
    baseline: str
    status: str = Field(description="One of: " + ", ".join(RECORD_WORDS) + ".")
    drift: list[DriftItem]
    first_seen: str = Field(alias="firstSeen")
    age_seconds: float = Field(alias="ageSeconds")
    deadline: str
    deadline_in_seconds: float = Field(alias="deadlineInSeconds", description="Negative once the deadline has passed.")
    past_deadline: bool = Field(alias="pastDeadline")
    attempts: int
    last_action: str | None = Field(default=None, alias="lastAction")
    last_result: str | None = Field(default=None, alias="lastResult")
    reason: str | None = Field(default=None, description="The last error or hold reason.")
    snapshots: list[str] = Field(default_factory=list)


class Guard(_Doc):
    """A safety state a person should know of: an override, an open breaker, a quarantined resource."""

    kind: Literal["override", "override-refused", "breaker", "flapping"]
    scope: str
    reason: str
    expires_in_seconds: float | None = Field(default=None, alias="expiresInSeconds")


class ScanInfo(_Doc):
    """A target's last full scan, as the agent recorded it."""

    target: str
    at: str | None = None
    age_seconds: float = Field(alias="ageSeconds")
    result: str = Field(description="clean, drift or error")
    resources: int = 0


class StatusDocument(_Doc):
    """``driftd status -o json|yaml``."""

    api_version: Literal["driftd.io/v1"] = Field(default=API_VERSION, alias="apiVersion")
    kind: Literal["DriftList"] = "DriftList"
    node: str | None = Field(default=None, description="The node the agent runs on (null before its first scan).")
    baseline_set: BaselineSetInfo | None = Field(alias="baselineSet")
    scans: list[ScanInfo] = Field(default_factory=list, description="Each target's last full scan.")
    counts: dict[str, int] = Field(description="Open drifts by status word; every word present, zero or not.")
    items: list[DriftRecordItem]
    guards: list[Guard] = Field(default_factory=list)


def iso(t: float | None) -> str | None:
    return None if t is None else time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))


def exit_name(code: int) -> str:
    return ExitCode(code).name.lower().replace("_", " ")


def outcome_status(o: Outcome) -> str:
    return status_word(o.status, retired=getattr(o, "retired", False))


def _result(o: Outcome, diffs: Mapping[str, str]) -> PassResult:
    word = outcome_status(o)
    actions = list(o.actions)
    did = actions if word in ("reverted", "retired") else []
    tried = actions if o.status is OutcomeStatus.FAILED and o.mode != "plan" else []
    would = actions if not did and not tried else []
    return PassResult(
        key=o.key, resource=o.address or o.key, target=o.target, baseline=o.baseline, status=word, mode=o.mode,
        drift=[DriftItem(**live_desired(d)) for d in o.drift], did=did, tried=tried, would=would, reason=o.error,
        snapshots=list(o.snapshots), first_seen=iso(o.first_seen), deadline=iso(o.deadline), diff=diffs.get(o.key),
    )


def pass_document(s: PassSummary, *, node: str, diffs: Mapping[str, str] | None = None) -> PassDocument:
    results = [_result(o, diffs or {}) for o in s.outcomes]
    counts = dict.fromkeys(WORDS, 0)
    counts["clean"] = s.counts.get(OutcomeStatus.CLEAN.value, 0)
    for r in results:
        counts[r.status] = counts.get(r.status, 0) + 1
    return PassDocument(
        node=node, baseline_set=s.baseline_version, dry_run=s.dry_run, duration_seconds=s.duration_seconds,
        resources=s.resources, counts=counts,
        targets_down=[TargetDown(target=t, reason=r) for t, r in sorted(s.targets_down.items())],
        exit_code=s.exit_code, exit=exit_name(s.exit_code), results=results,
    )


def record_item(r: DriftRecord, now: float, *, shown_snapshots: list[str] | None = None) -> DriftRecordItem:
    return DriftRecordItem(
        key=r.key, resource=r.address or r.key, target=r.target, baseline=r.baseline,
        status=record_word(r.last_result, held=r.held is not None),
        drift=[DriftItem(**live_desired(d)) for d in r.fields],
        first_seen=iso(r.first_seen) or "", age_seconds=round(now - r.first_seen, 1), deadline=iso(r.deadline) or "",
        deadline_in_seconds=round(r.deadline - now, 1), past_deadline=now > r.deadline, attempts=r.attempts,
        last_action=r.last_action, last_result=r.last_result, reason=r.last_error,
        snapshots=list(r.snapshots if shown_snapshots is None else shown_snapshots),
    )


def status_document(records: Iterable[DriftRecord], now: float, *, in_force: Mapping[str, Any] | None,
                    guards: Iterable[Guard] = (), scans: Mapping[str, Any] | None = None) -> StatusDocument:
    items = [record_item(r, now) for r in records]
    counts = dict.fromkeys(RECORD_WORDS, 0)
    for i in items:
        counts[i.status] = counts.get(i.status, 0) + 1
    info = None
    if in_force:
        info = BaselineSetInfo(version=in_force.get("version"), since=iso(float(in_force.get("since") or 0)),
                               baselines=len(in_force.get("hashes") or {}), signed_by=in_force.get("signed_by"))
    scanned = [ScanInfo(target=t, at=iso(float(v["at"])), age_seconds=round(max(0.0, now - float(v["at"])), 1),
                        result=str(v.get("result", "")), resources=int(v.get("resources", 0)))
               for t, v in sorted(((scans or {}).get("targets") or {}).items())]
    return StatusDocument(node=(scans or {}).get("node"), baseline_set=info, scans=scanned, counts=counts, items=items,
                          guards=list(guards))


def dump(doc: BaseModel | Mapping[str, Any] | list[Any]) -> Any:
    """The plain data of a document, in field order, by alias (what ``-o json|yaml`` prints)."""
    if isinstance(doc, BaseModel):
        return doc.model_dump(mode="json", by_alias=True)
    return json.loads(json.dumps(doc, default=str))  # plain JSON types only, as -o json prints them


def schema() -> dict[str, Any]:
    """The JSON Schema of every document kind (``docs/output.schema.json``)."""
    from pydantic.json_schema import models_json_schema

    _, defs = models_json_schema([(PassDocument, "serialization"), (StatusDocument, "serialization")],
                                 by_alias=True, title="driftd output documents (driftd.io/v1)")
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", "$id": "https://driftd.io/schemas/output/v1.json",
            **defs, "oneOf": [{"$ref": "#/$defs/PassDocument"}, {"$ref": "#/$defs/StatusDocument"}]}


__all__ = ["API_VERSION", "RECORD_WORDS", "DriftItem", "DriftRecordItem", "Guard", "PassDocument", "PassResult",
           "StatusDocument", "dump", "exit_name", "iso", "outcome_status", "pass_document", "record_item", "schema",
           "status_document"]
