"""Kubernetes target: pods on this node, Events, PolicyReport, node retirement (adapter).

Pipeline position: the effectful ends of the pipeline for ``kind: PodBaseline``, an event
source (one pod watch limited to this node), a notifier (Kubernetes Events) and a reporter
(one PolicyReport per node).  This module is the only importer of the kubernetes client
and is imported only when the Kubernetes target is enabled.

Only this node: pods are listed and watched with ``fieldSelector=spec.nodeName=<node>``,
never cluster-wide; a pod on another node is never acted on.  Reverting a pod means
*evicting* it through the Eviction API so its controller recreates it from its template;
a 429 from a PodDisruptionBudget is retried with backoff and reported, never bypassed by
a delete.  Retiring the node cordons, taints and labels it and drains it the way
``kubectl drain`` does, one node at a time per cluster (a Lease is the lock).

No eviction churn: just before evicting a controller's pod (never on the scan path) the
controller's pod template is read (DaemonSet, StatefulSet, ReplicaSet and its Deployment)
and evaluated with the same pod policy.  Rules the template itself breaks cannot be fixed
by an eviction (the replacement would be identical): the pod is not evicted, the failure
says which template is at fault, and an Event goes to the pod and to the owner.  What the
template cannot decide (an image tag resolving to an unapproved digest) is covered by a
guard kept in the state store (:class:`~driftd.targets.base.GuardStore`, wall-clock
times), so a restart of driftd does not reset it.

The PolicyReport is written only when its content changes (row timestamps aside).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from fnmatch import fnmatchcase
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from driftd.baselines.loader import BaselineSet
from driftd.core.pod_policy import compile_pod, controller_of, evaluate, governing, is_mirror, pod_key
from driftd.models.pod import PodBaseline
from driftd.models.resources import Action, ActResult, DesiredResource, ObservedResource, Plan
from driftd.observability.logging import Event, get_logger
from driftd.safety.snapshots import SnapshotError, SnapshotStore
from driftd.targets.base import NodeInfo, Reachability, ResourceGoneError, TargetError

if TYPE_CHECKING:
    from driftd.targets.base import GuardStore

TAINT_KEY = "driftd.io/non-compliant"
RETIRED_LABEL = "driftd.io/retired"
REPORT_API = "wgpolicyk8s.io/v1alpha2"
# controllers whose pod template driftd reads (get only) before evicting one of their pods
TEMPLATE_OWNERS = {"DaemonSet": "daemonsets", "ReplicaSet": "replicasets", "StatefulSet": "statefulsets",
                   "Deployment": "deployments"}
EVICT_GUARD = "evict-owner:"  # GuardStore scope prefix: <ns>/<Kind>/<name> of the pod's controller
FAULT_GUARD = "template-fault:"  # GuardStore scope prefix: the owner already told its template is at fault
FAULT_REPORT_SECONDS = 86400.0  # a template at fault is re-reported (Events) at most once a day
# row fields that change on every scan without the result changing: not a reason to write the report
VOLATILE_ROW_FIELDS = ("timestamp",)


class KubeError(TargetError):
    """A non-2xx answer from the API server."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"HTTP {status}: {message}", transient=status >= 500 or status in (409, 429))
        self.status = status


def _now_rfc3339(micro: bool = False) -> str:
    now = datetime.now(UTC)
    return now.strftime("%Y-%m-%dT%H:%M:%S.%fZ") if micro else now.strftime("%Y-%m-%dT%H:%M:%SZ")


class Kube:
    """A thin JSON REST client over the kubernetes package's authenticated connection pool."""

    def __init__(self, api_client: Any) -> None:
        self.api_client = api_client

    def request(self, method: str, path: str, *, query: Mapping[str, Any] | None = None, body: Any = None,
                content_type: str | None = None, timeout: float = 30.0, stream: bool = False) -> Any:
        headers = {"Accept": "application/json"}
        if body is not None:
            headers["Content-Type"] = content_type or "application/json"
        params = self.api_client.param_serialize(
            method=method, resource_path=path, query_params=[(k, v) for k, v in (query or {}).items() if v is not None],
            header_params=headers, body=body, auth_settings=["BearerToken"])
        try:
            # a watch gets a read timeout past the server's timeoutSeconds (300), so a half-open
            # connection is noticed instead of hanging the watch forever
            resp = self.api_client.call_api(*params, _request_timeout=(10, 360) if stream else timeout)
        except Exception as e:  # connection refused, TLS, timeouts: the API server is unreachable
            raise TargetError(f"kubernetes API unreachable: {e}") from None
        if stream:
            if resp.status >= 300:
                resp.read()
                raise KubeError(resp.status, _message(resp.data))
            return resp.response
        resp.read()
        if resp.status >= 300:
            raise KubeError(resp.status, _message(resp.data))
        return json.loads(resp.data) if resp.data else {}

    def watch(self, path: str, query: Mapping[str, Any]) -> WatchStream:
        return WatchStream(self.request("GET", path, query={**query, "watch": "true"}, stream=True))


class WatchStream:
    """The events of one watch response; :meth:`close` from another thread unblocks a pending read."""

    def __init__(self, raw: Any) -> None:
        self._raw = raw

    def __iter__(self) -> Iterator[dict[str, Any]]:
        buf = b""
        finished = False
        try:
            for chunk in self._raw.stream(4096, decode_content=True):
                buf += chunk
                while b"\n" in buf:
                    line, buf = buf.split(b"\n", 1)
                    if line.strip():
                        yield json.loads(line)
            finished = True
        finally:
            if not finished:  # left mid-response: the connection cannot be reused
                with contextlib.suppress(Exception):
                    self._raw.close()
            self._raw.release_conn()

    def close(self) -> None:
        # closing a generator another thread is iterating fails ("already executing") and a
        # plain close() does not wake a blocked recv(): shut the socket down instead
        with contextlib.suppress(Exception):
            shutdown = getattr(self._raw, "shutdown", None)  # urllib3 >= 2.3
            if shutdown is not None:
                shutdown()
            else:
                self._raw.close()


def _message(data: bytes | None) -> str:
    try:
        return str(json.loads(data or b"{}").get("message") or data)
    except ValueError:
        return (data or b"").decode("utf-8", "replace")[:500]


def load_api_client(kubeconfig: str | None) -> Any:
    """An authenticated ApiClient: from a kubeconfig file, or the in-cluster service account."""
    from kubernetes import client, config

    if kubeconfig:
        return config.new_client_from_config(config_file=kubeconfig)  # type: ignore[no-untyped-call]
    cfg = client.Configuration()
    config.load_incluster_config(client_configuration=cfg)  # type: ignore[no-untyped-call]
    return client.ApiClient(cfg)


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


@dataclass(frozen=True)
class OwnerRef:
    """A Kubernetes object that owns pods (or a ReplicaSet)."""

    api_version: str
    kind: str
    namespace: str
    name: str
    uid: str

    def __str__(self) -> str:
        return f"{self.kind} {self.namespace}/{self.name}"

    def involved(self) -> dict[str, Any]:
        return {"apiVersion": self.api_version, "kind": self.kind, "namespace": self.namespace, "name": self.name,
                "uid": self.uid}


@dataclass(frozen=True)
class OwnerTemplate:
    """The pod template a pod was made from, and where it must be fixed.

    ``controller`` is the pod's own controller (a ReplicaSet for a Deployment's pod); ``fix``
    is where a person changes the template (the Deployment when its template breaks the same
    rules, else the controller itself, e.g. an old ReplicaSet still being rolled out).
    """

    controller: OwnerRef
    template: dict[str, Any]
    digest: str
    parent: OwnerRef | None = None
    parent_template: dict[str, Any] | None = None


def _template_pod(template: Mapping[str, Any], namespace: str) -> dict[str, Any]:
    """A pod manifest as the pod policy sees it, from a pod template.

    Images pinned by digest stand in for ``status.containerStatuses[].imageID``; a tag cannot
    tell which digest the node will pull, so the image rule is undecided for it (no status).
    """
    meta = template.get("metadata") or {}
    spec = dict(template.get("spec") or {})
    statuses = [{"name": c.get("name"), "imageID": c.get("image")}
                for c in [*(spec.get("initContainers") or []), *(spec.get("containers") or [])]
                if "@sha256:" in str(c.get("image") or "")]
    return {"metadata": {"namespace": namespace, "labels": meta.get("labels") or {},
                         "annotations": meta.get("annotations") or {}},
            "spec": spec, "status": {"containerStatuses": statuses}}


def _controller_ref(obj: Mapping[str, Any], namespace: str) -> OwnerRef | None:
    for ref in (obj.get("metadata") or {}).get("ownerReferences") or []:
        if ref.get("controller"):
            return OwnerRef(str(ref.get("apiVersion") or ""), str(ref.get("kind") or ""), namespace,
                            str(ref.get("name") or ""), str(ref.get("uid") or ""))
    return None


def _iso(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _report_content(report: Mapping[str, Any]) -> str:
    """What a PolicyReport says, without what changes on every scan (row timestamps, server metadata)."""
    meta = report.get("metadata") or {}
    rows = [{k: v for k, v in r.items() if k not in VOLATILE_ROW_FIELDS} for r in report.get("results") or []]
    return json.dumps({"labels": meta.get("labels") or {}, "annotations": meta.get("annotations") or {},
                       "scope": report.get("scope"), "summary": report.get("summary"), "results": rows},
                      sort_keys=True, default=str)


class KubernetesTarget:
    """Adapter for the pods of one node, and the node itself."""

    name = "kubernetes"
    key_prefix = "pod"  # keys are pod:<namespace>/<name>
    capabilities = frozenset({"pod", "evict", "events", "policyreport", "retire_node", "watch"})

    def __init__(self, snapshots: SnapshotStore, *, node_name: str, namespace: str, api_client: Any = None,
                 kubeconfig: str | None = None, report_max_results: int = 200, drain_timeout: float = 300.0,
                 eviction_retry_seconds: float = 5.0, lease_name: str = "driftd-node-retirement",
                 lease_duration_seconds: int = 900, events: bool = True, policy_report: bool = True,
                 sleep: Callable[[float], None] = time.sleep, template_guard_seconds: float = 900.0,
                 clock: Callable[[], float] = time.time, guards: GuardStore | None = None,
                 exclude_namespaces: Sequence[str] = (), report_resync_seconds: float = 3600.0) -> None:
        """``clock`` is wall-clock seconds (guards outlive the process); ``guards`` is the state store in the daemon."""
        self.snapshots = snapshots
        self.node_name = node_name
        self.namespace = namespace
        self.kube = Kube(api_client if api_client is not None else load_api_client(kubeconfig))
        self.report_max_results = report_max_results
        self.drain_timeout = drain_timeout
        self.eviction_retry_seconds = eviction_retry_seconds
        self.lease_name = lease_name
        self.lease_duration_seconds = lease_duration_seconds
        self.events_enabled = events
        self.policy_report_enabled = policy_report
        self.sleep = sleep
        self.log = get_logger()
        self._baselines: dict[str, PodBaseline] = {}
        self._pods: dict[str, dict[str, Any]] = {}
        self._stream: Any = None
        self.skipped_bare: set[str] = set()
        self.template_guard_seconds = template_guard_seconds
        self.clock = clock
        self.guards: GuardStore = guards if guards is not None else MemoryGuards()
        self.exclude_namespaces = tuple(exclude_namespaces)
        self.reach = Reachability(self.name, node=self.node_name)
        self.last_report: dict[str, Any] | None = None
        self.report_resync_seconds = report_resync_seconds
        self._report_written: tuple[str, float] | None = None  # (content, monotonic time it was known on the server)
        self._owner_reads_refused: set[str] = set()

    # ------------------------------------------------------------------ helpers
    def _set_up(self, up: bool, error: str = "") -> None:
        self.reach.set(up, error)

    @property
    def up(self) -> bool | None:
        """None until the endpoint was first tried, then whether it last answered."""
        return self.reach.up

    def _req(self, method: str, path: str, **kw: Any) -> Any:
        try:
            out = self.kube.request(method, path, **kw)
        except KubeError:
            self._set_up(True)
            raise
        except TargetError as e:
            self._set_up(False, str(e))
            raise
        self._set_up(True)
        return out

    def _pods_path(self) -> tuple[str, dict[str, str]]:
        return "/api/v1/pods", {"fieldSelector": f"spec.nodeName={self.node_name}"}

    @staticmethod
    def _pod_path(ns: str, name: str) -> str:
        return f"/api/v1/namespaces/{quote(ns)}/pods/{quote(name)}"

    def node_labels(self) -> dict[str, str]:
        """This node's labels, for HostBaseline selectors (the downward API cannot give them)."""
        node = self._req("GET", f"/api/v1/nodes/{quote(self.node_name)}")
        return dict((node.get("metadata") or {}).get("labels") or {})

    # ------------------------------------------------------------------ desired / discover
    def desired(self, baselines: BaselineSet, node: NodeInfo) -> list[DesiredResource]:
        self._baselines = {b.metadata.name: b for b in baselines.baselines if isinstance(b, PodBaseline)}
        return []

    def _governed(self, pod: dict[str, Any]) -> DesiredResource | None:
        meta = pod.get("metadata") or {}
        if (pod.get("spec") or {}).get("nodeName") != self.node_name:
            return None  # never another node's pod
        if is_mirror(pod) or meta.get("deletionTimestamp") or (pod.get("status") or {}).get("phase") in (
                "Succeeded", "Failed"):
            return None
        if any(fnmatchcase(meta.get("namespace", ""), p) for p in self.exclude_namespaces):
            return None  # kubernetes.exclude_namespaces: never governed, whatever a baseline selects
        b = governing(self._baselines.values(), pod)
        if b is None:
            return None
        self._pods[pod_key(meta.get("namespace", ""), meta.get("name", ""))] = pod
        return compile_pod(b, pod)

    def discover(self) -> list[DesiredResource]:
        if not self._baselines:
            return []
        path, query = self._pods_path()
        items = self._req("GET", path, query=query).get("items") or []
        self._pods.clear()
        out = []
        for pod in items:
            d = self._governed(pod)
            if d is not None:
                out.append(d)
        return out

    def resolve(self, key: str) -> DesiredResource | None:
        ns, _, name = key.removeprefix("pod:").partition("/")
        try:
            pod = self._req("GET", self._pod_path(ns, name))
        except KubeError as e:
            if e.status == 404:
                return None
            raise
        return self._governed(pod)

    # ------------------------------------------------------------------ observe
    def begin_pass(self, *, full: bool) -> None:
        return None

    def observe(self, desired: DesiredResource) -> ObservedResource:
        pod = self._pods.pop(desired.key, None)
        if pod is None:
            ns, name = desired.payload["namespace"], desired.payload["name"]
            try:
                pod = self._req("GET", self._pod_path(ns, name))
            except KubeError as e:
                if e.status == 404:
                    raise ResourceGoneError(f"pod {desired.address} no longer exists") from None
                raise
        meta = pod.get("metadata") or {}
        if meta.get("deletionTimestamp") or meta.get("uid") != desired.payload.get("uid"):
            raise ResourceGoneError(f"pod {desired.address} is terminating or was replaced")
        b = self._baselines.get(desired.baseline)
        if b is None:
            raise ResourceGoneError(f"baseline {desired.baseline} no longer active")
        return ObservedResource.model_construct(key=desired.key, actual=evaluate(b, pod), note=None)

    # ------------------------------------------------------------------ act
    def apply(self, desired: DesiredResource, observed: ObservedResource, plan: Plan) -> ActResult:
        applied: list[Action] = []
        snaps: list[str] = []
        for step in plan.actions:
            if step.action is not Action.EVICT:
                raise TargetError(f"kubernetes target cannot {step.action}", transient=False)
            ns, name = desired.payload["namespace"], desired.payload["name"]
            pod = self._get_pod(ns, name)
            ref = _controller_ref(pod, ns) if desired.payload.get("controller") else None
            guard: tuple[str, dict[str, Any]] | None = None
            if ref is not None and not step.params.get("retire"):
                guard = self._check_owner(ref, pod, desired, observed)
            snaps.append(self._put_snapshot(pod))
            self.evict(ns, name, uid=desired.payload.get("uid"))
            if guard is not None and self.template_guard_seconds > 0:
                now = self.clock()
                self.guards.set_guard(guard[0], until=now + self.template_guard_seconds, data=guard[1], now=now)
            applied.append(step.action)
        return ActResult(key=desired.key, applied=tuple(applied), snapshots=tuple(snaps))

    def _evict_rules(self, desired: DesiredResource, observed: ObservedResource) -> frozenset[str]:
        """The broken rules an eviction is for (those whose action is revert; report-only rules are not)."""
        broken = _broken(observed)
        actions = desired.payload.get("actions") or {}
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
        owner = self._owner_template(ref)
        baseline = self._baselines.get(desired.baseline)
        remaining = rules
        if owner is not None and baseline is not None:
            offenders = evaluate(baseline, _template_pod(owner.template, ref.namespace))
            at_fault = frozenset(r for r in rules if offenders.get(r))
            if at_fault:
                fix = owner.controller
                if owner.parent is not None and owner.parent_template is not None:
                    parent_bad = evaluate(baseline, _template_pod(owner.parent_template, ref.namespace))
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

    def _get_owner(self, ref: OwnerRef) -> dict[str, Any] | None:
        """One controller object (get only), or None when it cannot be read (gone, not allowed, unknown kind)."""
        plural = TEMPLATE_OWNERS.get(ref.kind)
        if ref.api_version != "apps/v1" or plural is None:
            return None
        path = f"/apis/apps/v1/namespaces/{quote(ref.namespace)}/{plural}/{quote(ref.name)}"
        try:
            obj: dict[str, Any] = self._req("GET", path)
        except KubeError as e:
            if e.status == 403 and plural not in self._owner_reads_refused:
                self._owner_reads_refused.add(plural)
                self.log.warning(Event.OBSERVE_FAILED, target=self.name,
                                 error=f"cannot read {plural} (grant get on apps/{plural}): a non-compliant template "
                                       f"is then caught only by the eviction guard: {e}")
            elif e.status != 404:
                self.log.warning(Event.OBSERVE_FAILED, target=self.name, error=f"cannot read {ref}: {e}")
            return None
        if ref.uid and (obj.get("metadata") or {}).get("uid") != ref.uid:
            return None  # replaced by a namesake: not this pod's template
        return obj

    def _owner_template(self, ref: OwnerRef) -> OwnerTemplate | None:
        """The template ``ref`` makes pods from (a ReplicaSet's Deployment read too), or None if unknown."""
        obj = self._get_owner(ref)
        template = ((obj or {}).get("spec") or {}).get("template")
        if obj is None or not isinstance(template, dict):
            return None
        digest = hashlib.sha256(json.dumps(template, sort_keys=True).encode()).hexdigest()[:24]
        parent = parent_template = None
        if ref.kind == "ReplicaSet":
            up = _controller_ref(obj, ref.namespace)
            if up is not None and up.kind == "Deployment":
                dep = self._get_owner(up)
                if dep is not None:
                    parent = up
                    parent_template = (dep.get("spec") or {}).get("template") or {}
        return OwnerTemplate(controller=ref, template=template, digest=digest, parent=parent,
                             parent_template=parent_template)

    def _report_template_fault(self, fix: OwnerRef, owner: OwnerTemplate, pod: Mapping[str, Any],
                               rules: frozenset[str], message: str) -> None:
        """Events on the owner (once per template and rule set) and on each pod (once), and a log line."""
        meta = pod.get("metadata") or {}
        self.log.error(Event.REMEDIATION_BLOCKED, target=self.name, key=pod_key(meta.get("namespace", ""),
                                                                                meta.get("name", "")),
                       action="evict", owner=str(fix), reason=message)
        now = self.clock()
        scope = f"{FAULT_GUARD}{fix.namespace}/{fix.kind}/{fix.name}"
        fp = f"{fix.uid}:{owner.digest}:{','.join(sorted(rules))}"
        seen = self.guards.get_guard(scope, now) or {}
        pods: list[str] = list(seen.get("pods") or []) if seen.get("fp") == fp else []
        changed = False
        if seen.get("fp") != fp:
            self._post_event(fix.namespace, fix.involved(), "TemplateAtFault", message)
            changed = True
        uid = str(meta.get("uid") or "")
        if uid not in pods:
            self._post_event(meta.get("namespace", ""), {"apiVersion": "v1", "kind": "Pod",
                                                         "namespace": meta.get("namespace", ""),
                                                         "name": meta.get("name", ""), "uid": uid},
                             "TemplateAtFault", message)
            pods = [*pods, uid][-100:]
            changed = True
        if changed:
            self.guards.set_guard(scope, until=now + FAULT_REPORT_SECONDS, data={"fp": fp, "pods": pods}, now=now)

    def _get_pod(self, ns: str, name: str) -> dict[str, Any]:
        try:
            pod: dict[str, Any] = self._req("GET", self._pod_path(ns, name))
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
            self._req("POST", self._pod_path(ns, name) + "/eviction", body=body)
        except KubeError as e:
            if e.status == 404:
                raise ResourceGoneError(f"pod {ns}/{name} no longer exists") from None
            if e.status == 409 and uid:
                raise ResourceGoneError(f"pod {ns}/{name} was replaced (uid changed)") from None
            if e.status == 429:
                raise TargetError(f"eviction of {ns}/{name} refused by a PodDisruptionBudget: {e}",
                                  transient=True) from None
            raise

    # ------------------------------------------------------------------ watch
    def watch(self, on_key: Callable[[str], None], stop: threading.Event, *, max_backoff: float = 30.0) -> None:
        """One watch on this node's pods; resumes from the last resourceVersion, relists on 410."""
        path, query = self._pods_path()
        rv: str | None = None
        backoff = 1.0
        while not stop.is_set():
            try:
                if rv is None:
                    listing = self._req("GET", path, query=query)
                    rv = (listing.get("metadata") or {}).get("resourceVersion")
                    for pod in listing.get("items") or []:
                        meta = pod.get("metadata") or {}
                        on_key(pod_key(meta.get("namespace", ""), meta.get("name", "")))
                stream = self.kube.watch(path, {**query, "resourceVersion": rv, "allowWatchBookmarks": "true",
                                                "timeoutSeconds": "300"})
                self._stream = stream
                if stop.is_set():  # close() ran before the stream was registered
                    stream.close()
                    break
                self._set_up(True)
                backoff = 1.0
                for ev in stream:
                    if stop.is_set():
                        break
                    obj = ev.get("object") or {}
                    if ev.get("type") == "ERROR":
                        if obj.get("code") == 410:
                            rv = None  # too old: relist
                            break
                        raise KubeError(int(obj.get("code") or 500), str(obj.get("message") or "watch error"))
                    meta = obj.get("metadata") or {}
                    rv = meta.get("resourceVersion") or rv
                    if ev.get("type") in ("ADDED", "MODIFIED", "DELETED"):
                        on_key(pod_key(meta.get("namespace", ""), meta.get("name", "")))
            except KubeError as e:
                if e.status == 410:
                    rv = None
                    continue
                self._backoff(stop, backoff, e)
                backoff = min(max_backoff, backoff * 2)
            except Exception as e:
                if stop.is_set():
                    break
                self._backoff(stop, backoff, e)
                backoff = min(max_backoff, backoff * 2)

    def _backoff(self, stop: threading.Event, delay: float, error: Exception) -> None:
        self._set_up(False, f"pod watch: {error}")
        stop.wait(delay)

    def close(self) -> None:
        stream = self._stream
        if stream is not None:
            with contextlib.suppress(Exception):
                stream.close()

    # ------------------------------------------------------------------ events
    def notify(self, reason: str, desired: DesiredResource, message: str, *, warning: bool = True) -> None:
        """A Kubernetes Event on the pod (pod keys) or on this node (everything else)."""
        if desired.target == self.name:
            ns = desired.payload["namespace"]
            involved = {"apiVersion": "v1", "kind": "Pod", "namespace": ns, "name": desired.payload["name"],
                        "uid": desired.payload.get("uid")}
        else:
            ns = "default"
            involved = {"apiVersion": "v1", "kind": "Node", "name": self.node_name, "uid": self.node_name}
        self._post_event(ns, involved, reason, message, warning=warning)

    def _post_event(self, ns: str, involved: dict[str, Any], reason: str, message: str, *, warning: bool = True) -> None:
        if not self.events_enabled:
            return
        now = _now_rfc3339()
        body = {
            "apiVersion": "v1", "kind": "Event",
            "metadata": {"generateName": "driftd-", "namespace": ns,
                         "labels": {"app.kubernetes.io/managed-by": "driftd"}},
            "involvedObject": involved, "reason": reason, "message": message[:1024],
            "type": "Warning" if warning else "Normal", "source": {"component": "driftd", "host": self.node_name},
            "reportingComponent": "driftd.io/agent", "reportingInstance": self.node_name,
            "firstTimestamp": now, "lastTimestamp": now, "count": 1,
        }
        try:
            self._req("POST", f"/api/v1/namespaces/{quote(ns)}/events", body=body)
        except TargetError as e:
            self.log.warning(Event.OBSERVE_FAILED, target=self.name, error=f"event not recorded: {e}")

    # ------------------------------------------------------------------ policy report
    def publish_report(self, results: list[dict[str, Any]]) -> None:
        """Replace this node's PolicyReport with ``results`` (failures first, capped), only when it changed.

        Row timestamps change on every scan and are not a change: a report whose content is what
        was last written (or, after a restart, what is on the server) is not written again.  The
        server copy is re-read every ``report_resync_seconds`` so a deleted or edited report is
        restored.
        """
        if not self.policy_report_enabled:
            return
        ordered = sorted(results, key=lambda r: (r["result"] == "pass", r["policy"], r.get("rule", ""),
                                                 str((r.get("properties") or {}).get("key", "")), r.get("message", "")))
        summary = {k: sum(1 for r in results if r["result"] == k) for k in ("pass", "fail", "warn", "error", "skip")}
        name = f"driftd-{self.node_name}"
        report: dict[str, Any] = {
            "apiVersion": REPORT_API, "kind": "PolicyReport",
            "metadata": {"name": name, "namespace": self.namespace,
                         "labels": {"app.kubernetes.io/managed-by": "driftd", "driftd.io/node": self.node_name}},
            "scope": {"apiVersion": "v1", "kind": "Node", "name": self.node_name},
            "summary": summary, "results": ordered[: self.report_max_results],
        }
        if len(ordered) > self.report_max_results:
            report["metadata"]["annotations"] = {"driftd.io/truncated": f"{len(ordered) - self.report_max_results}"}
        content = _report_content(report)
        written = self._report_written
        if written is not None and written[0] == content and time.monotonic() - written[1] < self.report_resync_seconds:
            return  # nothing changed since it was written
        base = f"/apis/{REPORT_API}/namespaces/{quote(self.namespace)}/policyreports"
        try:
            try:
                current = self._req("GET", f"{base}/{quote(name)}")
                if _report_content(current) == content:
                    self._report_written = (content, time.monotonic())
                    self.last_report = current
                    return  # the server already says this
                report["metadata"]["resourceVersion"] = current["metadata"]["resourceVersion"]
                self._req("PUT", f"{base}/{quote(name)}", body=report)
            except KubeError as e:
                if e.status != 404:
                    raise
                self._req("POST", base, body=report)
            self.last_report = report
            self._report_written = (content, time.monotonic())
        except TargetError as e:
            self._report_written = None
            self.log.warning(Event.OBSERVE_FAILED, target=self.name, error=f"policy report not written: {e}")

    # ------------------------------------------------------------------ node retirement
    def retire_node(self, reason: str, *, dry_run: bool = False) -> dict[str, Any]:
        """Cordon, taint, label and drain this node, holding the cluster-wide retirement Lease."""
        if dry_run:
            return {"node": self.node_name, "dry_run": True, "would_evict": [p for p, _ in self._drain_candidates()]}
        if not self._acquire_lease():
            raise TargetError("another node is being retired (retirement lease held); will retry", transient=True)
        try:
            slug = "".join(c if c.isalnum() or c in "-_." else "-" for c in reason)[:63].strip("-_.") or "retired"
            self.cordon_and_mark(slug, reason)
            self.skipped_bare.clear()
            evicted = self.drain()
            if self.skipped_bare:
                self.log.warning(Event.REMEDIATION_BLOCKED, target=self.name, action="drain",
                                 reason="bare pods (no controller) left on the retired node; nothing would recreate "
                                        "them elsewhere", pods=sorted(self.skipped_bare))
            return {"node": self.node_name, "evicted": evicted, "not_evicted_bare": sorted(self.skipped_bare)}
        finally:
            self._release_lease()

    def cordon_and_mark(self, slug: str, reason: str) -> None:
        path = f"/api/v1/nodes/{quote(self.node_name)}"
        node = self._req("GET", path)
        taints = [t for t in (node.get("spec") or {}).get("taints") or [] if t.get("key") != TAINT_KEY]
        taints.append({"key": TAINT_KEY, "value": slug, "effect": "NoSchedule"})
        patch = {"metadata": {"labels": {RETIRED_LABEL: "true"},
                              "annotations": {"driftd.io/retired-reason": reason[:1000],
                                              "driftd.io/retired-at": _now_rfc3339()},
                              "resourceVersion": node["metadata"]["resourceVersion"]},
                 "spec": {"unschedulable": True, "taints": taints}}
        self._req("PATCH", path, body=patch, content_type="application/merge-patch+json")

    def _drain_candidates(self, *, terminating: bool = False) -> list[tuple[str, dict[str, Any]]]:
        """Pods `kubectl drain --ignore-daemonsets` would evict: not DaemonSet-owned, not mirror pods."""
        path, query = self._pods_path()
        out = []
        for pod in self._req("GET", path, query=query).get("items") or []:
            meta = pod.get("metadata") or {}
            if is_mirror(pod) or (meta.get("deletionTimestamp") and not terminating):
                continue
            if any(r.get("kind") == "DaemonSet" and r.get("controller") for r in meta.get("ownerReferences") or []):
                continue
            if (pod.get("status") or {}).get("phase") in ("Succeeded", "Failed"):
                continue
            ref = f"{meta.get('namespace')}/{meta.get('name')}"
            if controller_of(pod) is None:
                # like `kubectl drain` without --force: evicting a bare pod deletes it for good
                self.skipped_bare.add(ref)
                continue
            out.append((ref, pod))
        return out

    def drain(self) -> list[str]:
        """Evict every drainable pod honouring PDBs, then wait until they are gone."""
        deadline = time.monotonic() + self.drain_timeout
        pending = dict(self._drain_candidates())
        evicted: list[str] = []
        uids: dict[str, str] = {}
        while pending:
            for ref, pod in list(pending.items()):
                meta = pod["metadata"]
                try:
                    self.snapshots.put(json.dumps(pod, sort_keys=True).encode())
                    self.evict(meta["namespace"], meta["name"], uid=meta.get("uid"))
                    evicted.append(ref)
                    uids[ref] = meta.get("uid", "")
                    del pending[ref]
                except ResourceGoneError:
                    del pending[ref]
                except TargetError as e:
                    if not e.transient:
                        raise
                    self.log.warning(Event.REMEDIATION_FAILED, target=self.name, key=f"pod:{ref}",
                                     action="evict", error=str(e))
            if pending:
                if time.monotonic() > deadline:
                    raise TargetError(f"drain timed out; still blocked: {', '.join(sorted(pending))}", transient=True)
                self.sleep(self.eviction_retry_seconds)
        while time.monotonic() < deadline:
            left = {ref for ref, pod in self._drain_candidates(terminating=True)
                    if ref in uids and (pod.get("metadata") or {}).get("uid") == uids[ref]}
            if not left:
                return sorted(evicted)
            self.sleep(min(2.0, self.eviction_retry_seconds))
        raise TargetError("drain timed out waiting for evicted pods to terminate", transient=True)

    def _lease_path(self) -> str:
        return f"/apis/coordination.k8s.io/v1/namespaces/{quote(self.namespace)}/leases/{quote(self.lease_name)}"

    def _acquire_lease(self) -> bool:
        now = _now_rfc3339(micro=True)
        spec = {"holderIdentity": self.node_name, "leaseDurationSeconds": self.lease_duration_seconds,
                "acquireTime": now, "renewTime": now}
        try:
            lease = self._req("GET", self._lease_path())
        except KubeError as e:
            if e.status != 404:
                raise
            try:
                self._req("POST", f"/apis/coordination.k8s.io/v1/namespaces/{quote(self.namespace)}/leases",
                          body={"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                                "metadata": {"name": self.lease_name, "namespace": self.namespace}, "spec": spec})
                return True
            except KubeError as e2:
                if e2.status == 409:
                    return False
                raise
        held = lease.get("spec") or {}
        holder = held.get("holderIdentity")
        if holder and holder != self.node_name and not _expired(held):
            return False
        lease["spec"] = spec
        try:
            self._req("PUT", self._lease_path(), body=lease)
        except KubeError as e:
            if e.status == 409:
                return False
            raise
        return True

    def _release_lease(self) -> None:
        try:
            lease = self._req("GET", self._lease_path())
            if (lease.get("spec") or {}).get("holderIdentity") == self.node_name:
                lease["spec"]["holderIdentity"] = None
                self._req("PUT", self._lease_path(), body=lease)
        except TargetError as e:
            self.log.warning(Event.OBSERVE_FAILED, target=self.name, error=f"lease not released: {e}")


def _expired(spec: Mapping[str, Any]) -> bool:
    renew = spec.get("renewTime") or spec.get("acquireTime")
    if not renew:
        return True
    try:
        t = datetime.strptime(renew.replace("Z", "+0000"), "%Y-%m-%dT%H:%M:%S.%f%z")
    except ValueError:
        return True
    return (datetime.now(UTC) - t).total_seconds() > float(spec.get("leaseDurationSeconds") or 0)


def _broken(observed: ObservedResource) -> frozenset[str]:
    """The pod rules with offenders in an observation."""
    return frozenset(k for k, v in observed.actual.items() if v)

