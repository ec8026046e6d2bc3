"""The pod adapter: this node's pods as resources of ``kind: PodBaseline`` (observe and act).

Pipeline position: the effectful ends of the pipeline for pods.  ``desired`` keeps the
active PodBaselines; ``discover``/``resolve`` turn this node's governed pods into desired
resources (``core/pod_policy.compile_pod``); ``observe`` evaluates the pod policy on the
pod as it is now; ``apply`` reverts by *evicting* the pod through the Eviction API so its
controller recreates it from its template.

Only this node: pods are listed with ``fieldSelector=spec.nodeName=<node>`` and a pod whose
``spec.nodeName`` is another node's is never governed.  A 429 from a PodDisruptionBudget is
a transient failure (retried with backoff, reported), never bypassed by a delete.

No eviction churn: just before evicting a controller's pod (never on the scan path) the
controller's pod template is read (:mod:`.owners`) and evaluated with the same pod policy.
Rules the template itself breaks cannot be fixed by an eviction (the replacement would be
identical): the pod is not evicted, the failure says which template is at fault, and an
Event goes to the pod and to the owner (:mod:`.events`).  What the template cannot decide
(an image tag resolving to an unapproved digest) is covered by a guard kept in the state
store (:class:`~driftd.targets.base.GuardStore`, wall-clock times), so a restart of driftd
does not reset it.

May touch: ``list``/``get`` of pods on this node, ``create`` of ``pods/eviction``, the
snapshot store (the pod manifest before an eviction), the guard store; through
:mod:`.owners` and :mod:`.events` their calls.  Never deletes or patches a pod.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from driftd.baselines.loader import BaselineSet
from driftd.core import kinds
from driftd.core.pod_policy import desired_pod, evaluate, pod_key
from driftd.models.keys import ResourceKey
from driftd.models.pod import PodBaseline
from driftd.models.resources import (
    Action,
    ActResult,
    DesiredResource,
    ObservedResource,
    Plan,
    PlannedAction,
    PodPayload,
    payload_of,
)
from driftd.observability.logging import Event
from driftd.safety.breakglass import ANNOTATION_REASON, ANNOTATION_UNTIL, AnnotatedOverride, set_time
from driftd.safety.snapshots import SnapshotError, SnapshotStore
from driftd.targets.base import NodeInfo, ResourceGoneError, TargetError
from driftd.targets.kubernetes.client import Api, KubeError, node_pods, pod_path
from driftd.targets.kubernetes.events import KubeEvents
from driftd.targets.kubernetes.owners import OwnerReader, OwnerRef, OwnerTemplate, controller_ref, template_pod

if TYPE_CHECKING:
    from driftd.targets.base import GuardStore

EVICT_GUARD = "evict-owner:"  # GuardStore scope prefix: <ns>/<Kind>/<name> of the pod's controller
FAULT_GUARD = "template-fault:"  # GuardStore scope prefix: the owner already told its template is at fault
FAULT_REPORT_SECONDS = 86400.0  # a template at fault is re-reported (Events) at most once a day


class MemoryGuards:
    """A :class:`GuardStore` in memory, for a target built without the state store (tests, tools)."""

    def __init__(self) -> None:
        self._guards: dict[str, tuple[float, dict[str, Any]]] = {}
        self._lock = threading.Lock()

    def get_guard(self, scope: str, now: float) -> dict[str, Any] | None:
        with self._lock:
            got = self._guards.get(scope)
        return json.loads(json.dumps(got[1])) if got and got[0] > now else None

    def set_guard(self, scope: str, *, until: float, data: dict[str, Any], now: float) -> None:
        with self._lock:
            self._guards = {k: v for k, v in self._guards.items() if v[0] > now}
            self._guards[scope] = (until, json.loads(json.dumps(data)))

    def clear_guard(self, scope: str) -> None:
        with self._lock:
            self._guards.pop(scope, None)


def _iso(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _broken(observed: ObservedResource) -> frozenset[str]:
    """The pod rules with offenders in an observation."""
    return frozenset(k for k, v in observed.actual.items() if v)


class PodAdapter:
    """Desired, discover, resolve, observe and apply (evict) for the pods of ``node_name``."""

    def __init__(self, api: Api, snapshots: SnapshotStore, events: KubeEvents, *, node_name: str, target: str,
                 exclude_namespaces: Sequence[str], template_guard_seconds: float, clock: Callable[[], float],
                 guards: GuardStore, log: Any) -> None:
        self.api = api
        self.snapshots = snapshots
        self.events = events
        self.node_name = node_name
        self.target = target
        self.exclude_namespaces = tuple(exclude_namespaces)
        self.template_guard_seconds = template_guard_seconds
        self.clock = clock
        self.guards = guards
        self.log = log
        self.owners = OwnerReader(api, target=target, log=log)
        self._baselines: dict[str, PodBaseline] = {}
        self._pods: dict[str, dict[str, Any]] = {}
        self._glass: dict[str, AnnotatedOverride] = {}  # pod key -> the break-glass its annotations ask for

    # ------------------------------------------------------------------ desired / discover
    def desired(self, baselines: BaselineSet, node: NodeInfo) -> list[DesiredResource]:
        self._baselines = {b.metadata.name: b for b in baselines.baselines if isinstance(b, PodBaseline)}
        return []

    def _governed(self, pod: dict[str, Any]) -> DesiredResource | None:
        # never another node's pod; kubernetes.exclude_namespaces: never governed, whatever a baseline selects
        d = desired_pod(self._baselines.values(), pod, node_name=self.node_name, exclude_namespaces=self.exclude_namespaces)
        if d is None:
            return None
        self._pods[d.key] = pod
        self._note_glass(d.key, pod)
        return d

    def _note_glass(self, key: str, pod: dict[str, Any]) -> None:
        meta = pod.get("metadata") or {}
        ann = meta.get("annotations") or {}
        if ANNOTATION_REASON in ann or ANNOTATION_UNTIL in ann:
            at, by = set_time(meta)
            self._glass[key] = AnnotatedOverride(source=f"pod {meta.get('namespace')}/{meta.get('name')}",
                                                 annotations=dict(ann), set_at=at, by=by, key=key)
        else:
            self._glass.pop(key, None)

    def override_requests(self) -> list[AnnotatedOverride]:
        """Break-glass asked for by the annotations of this node's governed pods, as last read."""
        return list(self._glass.values())

    def discover(self) -> list[DesiredResource]:
        if not self._baselines:
            return []
        path, query = node_pods(self.node_name)
        items = self.api("GET", path, query=query).get("items") or []
        self._pods.clear()
        self._glass.clear()
        out = []
        for pod in items:
            d = self._governed(pod)
            if d is not None:
                out.append(d)
        return out

    def resolve(self, key: str) -> DesiredResource | None:
        ns, name = ResourceKey.parse(key).pod_ref()
        try:
            pod = self.api("GET", pod_path(ns, name))
        except KubeError as e:
            if e.status == 404:
                self._pods.pop(key, None)  # gone: nothing of it is kept until the next listing
                self._glass.pop(key, None)
                return None
            raise
        return self._governed(pod)

    # ------------------------------------------------------------------ observe
    def observe(self, desired: DesiredResource) -> ObservedResource:
        return kinds.handler_for(self.target, desired.kind).observe(self, desired)

    # ------------------------------------------------------------------ PodPort
    def fetch(self, desired: DesiredResource) -> dict[str, Any]:
        """The pod as the last listing saw it (once), else as the apiserver has it now."""
        pod = self._pods.pop(desired.key, None)
        if pod is not None:
            return pod
        ident = payload_of(desired, PodPayload)
        try:
            fetched: dict[str, Any] = self.api("GET", pod_path(ident.namespace, ident.name))
        except KubeError as e:
            if e.status == 404:
                self._glass.pop(desired.key, None)
                raise ResourceGoneError(f"pod {desired.address} no longer exists") from None
            raise
        self._note_glass(desired.key, fetched)
        return fetched

    def baseline(self, name: str) -> PodBaseline | None:
        return self._baselines.get(name)

    def evict_for(self, desired: DesiredResource, observed: ObservedResource, step: PlannedAction) -> str:
        """Snapshot and evict; a revert first checks that the owner's template would bring back a compliant pod."""
        ident = payload_of(desired, PodPayload)
        ns, name = ident.namespace, ident.name
        pod = self._get_pod(ns, name)
        ref = controller_ref(pod, ns) if ident.controller else None
        guard: tuple[str, dict[str, Any]] | None = None
        if ref is not None and not step.params.get("retire"):
            guard = self._check_owner(ref, pod, desired, observed)
        sid = self._put_snapshot(pod)
        self.evict(ns, name, uid=ident.uid)
        if guard is not None and self.template_guard_seconds > 0:
            now = self.clock()
            self.guards.set_guard(guard[0], until=now + self.template_guard_seconds, data=guard[1], now=now)
        return sid

    # ------------------------------------------------------------------ act
    def apply(self, desired: DesiredResource, observed: ObservedResource, plan: Plan) -> ActResult:
        handler = kinds.handler_for(self.target, desired.kind)
        handler.check(desired, plan.actions)
        applied: list[Action] = []
        snaps: list[str] = []
        for step in plan.actions:
            snaps.extend(handler.apply(self, desired, observed, step))
            applied.append(step.action)
        return ActResult(key=desired.key, applied=tuple(applied), snapshots=tuple(snaps))

    def _evict_rules(self, desired: DesiredResource, observed: ObservedResource) -> frozenset[str]:
        """The broken rules an eviction is for (those whose action is revert; report-only rules are not)."""
        broken = _broken(observed)
        actions = payload_of(desired, PodPayload).actions
        chosen = frozenset(r for r in broken if str(actions.get(r, "revert")) == "revert")
        return chosen or broken

    def _check_owner(self, ref: OwnerRef, pod: Mapping[str, Any], desired: DesiredResource,
                     observed: ObservedResource) -> tuple[str, dict[str, Any]]:
        """Refuse an eviction that cannot help; return the guard to record once it is done.

        Rules the controller's template breaks come back with the replacement: never evict for
        them ("template at fault").  For the rest (e.g. an image tag that resolved to an
        unapproved digest) one eviction is worth trying, but if the replacement breaks the
        same rules again within ``template_guard_seconds`` (and the template did not change),
        it is not evicted again.
        """
        rules = self._evict_rules(desired, observed)
        owner = self.owners.template(ref)
        baseline = self._baselines.get(desired.baseline)
        remaining = rules
        if owner is not None and baseline is not None:
            offenders = evaluate(baseline, template_pod(owner.template, ref.namespace))
            at_fault = frozenset(r for r in rules if offenders.get(r))
            if at_fault:
                fix = owner.controller
                if owner.parent is not None and owner.parent_template is not None:
                    parent_bad = evaluate(baseline, template_pod(owner.parent_template, ref.namespace))
                    if any(parent_bad.get(r) for r in at_fault):
                        fix = owner.parent
                detail = "; ".join(f"{r}: {', '.join(offenders[r])}" for r in sorted(at_fault))
                if fix is not owner.controller:
                    where = f"{fix} (through {owner.controller})"
                elif owner.parent is not None:
                    where = f"{fix}, an older revision of {owner.parent} whose current template complies"
                else:
                    where = str(fix)
                message = (f"template at fault: the pod template of {where} violates {', '.join(sorted(at_fault))} "
                           f"({detail}); evicting pod {ref.namespace}/{(pod.get('metadata') or {}).get('name')} "
                           "would only bring back the same pod, so it is not evicted for this (fix the template)")
                self._report_template_fault(fix, owner, pod, at_fault, message)
                remaining = rules - at_fault
                if not remaining:
                    raise TargetError(message, transient=False)
        scope = f"{EVICT_GUARD}{ref.namespace}/{ref.kind}/{ref.name}"
        digest = owner.digest if owner is not None else ""
        now = self.clock()
        last = self.guards.get_guard(scope, now)
        # a template that changed since the eviction releases the guard; one that cannot be read now does not
        uid = (pod.get("metadata") or {}).get("uid")
        if last is not None and last.get("pod") != uid and (not digest or last.get("template", "") in (digest, "")):
            again = remaining & frozenset(last.get("rules") or ())
            if again:
                why = ("its template does not break them (something else makes its pods non-compliant, e.g. an "
                       "image tag that resolves to an unapproved digest, or a mutating webhook)"
                       if owner is not None else
                       "its pod template violates the baseline or something changes its pods (driftd cannot read "
                       f"the template of a {ref.kind})")
                raise TargetError(
                    f"the replacement from {ref} broke {', '.join(sorted(again))} again after the eviction at "
                    f"{_iso(float(last.get('at') or now))}: {why}; not evicting again before {_iso(float(last.get('until') or now))} "
                    "(fix what makes its pods non-compliant)", transient=False)
        return scope, {"rules": sorted(remaining), "template": digest, "pod": uid, "at": now,
                       "until": now + self.template_guard_seconds}

    def _report_template_fault(self, fix: OwnerRef, owner: OwnerTemplate, pod: Mapping[str, Any],
                               rules: frozenset[str], message: str) -> None:
        """Events on the owner (once per template and rule set) and on each pod (once), and a log line."""
        meta = pod.get("metadata") or {}
        self.log.error(Event.REMEDIATION_BLOCKED, target=self.target, key=pod_key(meta.get("namespace", ""),
                                                                                  meta.get("name", "")),
                       action="evict", owner=str(fix), reason=message)
        now = self.clock()
        scope = f"{FAULT_GUARD}{fix.namespace}/{fix.kind}/{fix.name}"
        fp = f"{fix.uid}:{owner.digest}:{','.join(sorted(rules))}"
        seen = self.guards.get_guard(scope, now) or {}
        pods: list[str] = list(seen.get("pods") or []) if seen.get("fp") == fp else []
        changed = False
        if seen.get("fp") != fp:
            self.events.post(fix.namespace, fix.involved(), "TemplateAtFault", message)
            changed = True
        uid = str(meta.get("uid") or "")
        if uid not in pods:
            self.events.post(meta.get("namespace", ""), {"apiVersion": "v1", "kind": "Pod",
                                                         "namespace": meta.get("namespace", ""),
                                                         "name": meta.get("name", ""), "uid": uid},
                             "TemplateAtFault", message)
            pods = [*pods, uid][-100:]
            changed = True
        if changed:
            self.guards.set_guard(scope, until=now + FAULT_REPORT_SECONDS, data={"fp": fp, "pods": pods}, now=now)

    def _get_pod(self, ns: str, name: str) -> dict[str, Any]:
        try:
            pod: dict[str, Any] = self.api("GET", pod_path(ns, name))
        except KubeError as e:
            if e.status == 404:
                raise ResourceGoneError(f"pod {ns}/{name} vanished before eviction") from None
            raise
        return pod

    def _put_snapshot(self, pod: Mapping[str, Any]) -> str:
        try:
            return self.snapshots.put(json.dumps(pod, sort_keys=True).encode())
        except SnapshotError as e:
            raise TargetError(str(e), transient=False) from None

    def evict(self, ns: str, name: str, *, uid: str | None = None) -> None:
        """One eviction request; a PDB refusal (429) is a transient failure, never a delete."""
        body: dict[str, Any] = {"apiVersion": "policy/v1", "kind": "Eviction",
                                "metadata": {"name": name, "namespace": ns}}
        if uid:
            body["deleteOptions"] = {"preconditions": {"uid": uid}}
        try:
            self.api("POST", pod_path(ns, name) + "/eviction", body=body)
        except KubeError as e:
            if e.status == 404:
                raise ResourceGoneError(f"pod {ns}/{name} no longer exists") from None
            if e.status == 409 and uid:
                raise ResourceGoneError(f"pod {ns}/{name} was replaced (uid changed)") from None
            if e.status == 429:
                raise TargetError(f"eviction of {ns}/{name} refused by a PodDisruptionBudget: {e}",
                                  transient=True) from None
            raise
