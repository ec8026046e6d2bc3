"""The node's PolicyReport (``wgpolicyk8s.io/v1alpha2``): one per node, written only on change.

Pipeline position: a reporter after a scan (the engine calls
:meth:`PolicyReportWriter.publish` with one row per governed resource).  The rows are
built by the engine today (``driftd.engine.reconciler``); this module owns the report
around them: order (failures first), the cap (``report_max_results``, the summary still
counts all), the ``driftd.io/truncated`` annotation, and when it is written.

May touch: ``get``, ``create`` and ``update`` of ``policyreports`` named
``driftd-<node>`` in the agent's namespace, through :mod:`.client`; nothing else.  A
failed write is logged and retried on the next scan, never raised.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import quote

from driftd.models.resources import ReportResult, ResourceResult
from driftd.observability.logging import Event
from driftd.targets.base import TargetError
from driftd.targets.kubernetes.client import Api, KubeError

REPORT_API = "wgpolicyk8s.io/v1alpha2"
# row fields that change on every scan without the result changing: not a reason to write the report
VOLATILE_ROW_FIELDS = ("timestamp",)


def report_content(report: Mapping[str, Any]) -> str:
    """What a PolicyReport says, without what changes on every scan (row timestamps, server metadata)."""
    meta = report.get("metadata") or {}
    rows = [{k: v for k, v in r.items() if k not in VOLATILE_ROW_FIELDS} for r in report.get("results") or []]
    return json.dumps({"labels": meta.get("labels") or {}, "annotations": meta.get("annotations") or {},
                       "scope": report.get("scope"), "summary": report.get("summary"), "results": rows},
                      sort_keys=True, default=str)


def to_row(r: ResourceResult) -> dict[str, Any]:
    """The wire format of one result (``wgpolicyk8s.io/v1alpha2`` PolicyReportResult)."""
    row: dict[str, Any] = {
        "source": "driftd",
        "policy": r.baseline,
        "rule": f"{r.target}/{r.kind}",
        "result": r.result.value,
        "severity": (r.severity or "high") if r.result is ReportResult.FAIL else "info",
        "scored": True,
        "message": f"{r.address}: {r.message}"[:500],
        "timestamp": {"seconds": int(r.at), "nanos": 0},
        "properties": {"key": r.key, "baselineHash": r.baseline_hash},
    }
    if r.subject is not None:
        row["resources"] = [{"apiVersion": "v1", "kind": "Pod", "namespace": r.subject.namespace,
                             "name": r.subject.name, "uid": r.subject.uid or ""}]
    return row


class PolicyReportWriter:
    """This node's PolicyReport; :attr:`last_report` is what the server holds since the last publish."""

    def __init__(self, api: Api, *, node_name: str, namespace: str, max_results: int, resync_seconds: float,
                 enabled: bool, target: str, log: Any) -> None:
        self.api = api
        self.node_name = node_name
        self.namespace = namespace
        self.max_results = max_results
        self.resync_seconds = resync_seconds
        self.enabled = enabled
        self.target = target
        self.log = log
        self.last_report: dict[str, Any] | None = None
        self._written: tuple[str, float] | None = None  # (content, monotonic time it was known on the server)

    def publish(self, resources: Sequence[ResourceResult], *, baseline_set: str = "") -> None:
        """Replace this node's PolicyReport with ``results`` (failures first, capped), only when it changed.

        Row timestamps change on every scan and are not a change: a report whose content is what
        was last written (or, after a restart, what is on the server) is not written again.  The
        server copy is re-read every ``resync_seconds`` so a deleted or edited report is restored.
        """
        if not self.enabled:
            return
        results = [to_row(r) for r in resources]
        ordered = sorted(results, key=lambda r: (r["result"] == "pass", r["policy"], r.get("rule", ""),
                                                 str((r.get("properties") or {}).get("key", "")), r.get("message", "")))
        summary = {k: sum(1 for r in results if r["result"] == k) for k in ("pass", "fail", "warn", "error", "skip")}
        name = f"driftd-{self.node_name}"
        report: dict[str, Any] = {
            "apiVersion": REPORT_API, "kind": "PolicyReport",
            "metadata": {"name": name, "namespace": self.namespace,
                         "labels": {"app.kubernetes.io/managed-by": "driftd", "driftd.io/node": self.node_name}},
            "scope": {"apiVersion": "v1", "kind": "Node", "name": self.node_name},
            "summary": summary, "results": ordered[: self.max_results],
        }
        annotations = {"driftd.io/baseline-set": baseline_set} if baseline_set else {}  # the set the results are of
        if len(ordered) > self.max_results:
            annotations["driftd.io/truncated"] = f"{len(ordered) - self.max_results}"
        if annotations:
            report["metadata"]["annotations"] = annotations
        content = report_content(report)
        written = self._written
        if written is not None and written[0] == content and time.monotonic() - written[1] < self.resync_seconds:
            return  # nothing changed since it was written
        base = f"/apis/{REPORT_API}/namespaces/{quote(self.namespace)}/policyreports"
        try:
            try:
                current = self.api("GET", f"{base}/{quote(name)}")
                if report_content(current) == content:
                    self._written = (content, time.monotonic())
                    self.last_report = current
                    return  # the server already says this
                report["metadata"]["resourceVersion"] = current["metadata"]["resourceVersion"]
                self.api("PUT", f"{base}/{quote(name)}", body=report)
            except KubeError as e:
                if e.status != 404:
                    raise
                self.api("POST", base, body=report)
            self.last_report = report
            self._written = (content, time.monotonic())
        except TargetError as e:
            self._written = None
            self.log.warning(Event.OBSERVE_FAILED, target=self.target, error=f"policy report not written: {e}")
