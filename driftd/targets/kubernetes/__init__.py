"""Kubernetes target: pods on this node, Events, PolicyReport, node retirement (adapter).

Pipeline position: the effectful ends of the pipeline for ``kind: PodBaseline``, an event
source (one pod watch limited to this node), a notifier (Kubernetes Events), a reporter
(one PolicyReport per node) and the node retirer.  :class:`KubernetesTarget` is only the
composition of one part per job; each part's module says what it may touch:

=====================  =====================================================================
``client.py``          REST client (:class:`Kube`, :class:`Api`), paths, :func:`load_api_client`;
                       the only importer of the ``kubernetes`` library (lazily)
``watch.py``           the pod watch (resourceVersion resume, 410 relist), over the shared
                       reconnect-with-backoff loop of :mod:`driftd.targets.streams`
``pods.py``            the pod adapter: desired/discover/resolve/observe/apply (evict),
                       template at fault, eviction guards
``owners.py``          controllers and their pod templates (get only)
``events.py``          Kubernetes Events on pods, owners and this node
``policyreport.py``    the node's PolicyReport, written only on change
``retirement.py``      node retirement: Lease, cordon, taint, label, drain
=====================  =====================================================================

Parts depend downwards only: ``client`` ← ``events``, ``owners``, ``policyreport``,
``watch`` ← ``pods`` ← (``retirement`` through the ``evict`` it is given).  This package is
imported only when the Kubernetes target is enabled, and importing it does not import the
``kubernetes`` library until an API client is built.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Generic, TypeVar, cast, overload

from driftd.baselines.loader import BaselineSet
from driftd.models.resources import ActResult, DesiredResource, ObservedResource, Plan, ResourceResult
from driftd.observability.logging import Event, get_logger
from driftd.safety.breakglass import ANNOTATION_REASON, ANNOTATION_UNTIL, AnnotatedOverride, set_time
from driftd.safety.snapshots import SnapshotStore
from driftd.targets.base import NodeInfo, Reachability, TargetError
from driftd.targets.kubernetes.client import Api, Kube, KubeError, WatchStream, load_api_client, node_path
from driftd.targets.kubernetes.events import KubeEvents
from driftd.targets.kubernetes.owners import TEMPLATE_OWNERS, OwnerRef, OwnerTemplate
from driftd.targets.kubernetes.pods import (
    EVICT_GUARD,
    FAULT_GUARD,
    FAULT_REPORT_SECONDS,
    MemoryGuards,
    PodAdapter,
)
from driftd.targets.kubernetes.policyreport import REPORT_API, VOLATILE_ROW_FIELDS, PolicyReportWriter
from driftd.targets.kubernetes.retirement import RETIRED_LABEL, TAINT_KEY, NodeRetirement
from driftd.targets.kubernetes.watch import PodWatch

if TYPE_CHECKING:
    import threading

    from driftd.targets.base import GuardStore

__all__ = [
    "EVICT_GUARD", "FAULT_GUARD", "FAULT_REPORT_SECONDS", "REPORT_API", "RETIRED_LABEL", "TAINT_KEY",
    "TEMPLATE_OWNERS", "VOLATILE_ROW_FIELDS", "Kube", "KubeError", "KubernetesTarget", "MemoryGuards", "OwnerRef",
    "OwnerTemplate", "WatchStream", "load_api_client",
]

T = TypeVar("T")


class _Part(Generic[T]):
    """An attribute that lives on one part, read and set through the target (``t.clock = ...``)."""

    def __init__(self, part: str, attr: str | None = None) -> None:
        self.part = part
        self.attr = attr or ""

    def __set_name__(self, owner: type, name: str) -> None:
        self.attr = self.attr or name

    @overload
    def __get__(self, obj: None, objtype: type | None = None) -> _Part[T]: ...
    @overload
    def __get__(self, obj: object, objtype: type | None = None) -> T: ...
    def __get__(self, obj: object | None, objtype: type | None = None) -> T | _Part[T]:
        if obj is None:
            return self
        return cast(T, getattr(getattr(obj, self.part), self.attr))

    def __set__(self, obj: object, value: T) -> None:
        setattr(getattr(obj, self.part), self.attr, value)


class KubernetesTarget:
    """Adapter for the pods of one node, and the node itself (one part per job, see the module)."""

    name = "kubernetes"
    key_prefix = "pod"  # keys are pod:<namespace>/<name>

    # knobs of one part each, settable on the target after construction
    clock: _Part[Callable[[], float]] = _Part("pods")
    guards: _Part[GuardStore] = _Part("pods")
    template_guard_seconds: _Part[float] = _Part("pods")
    exclude_namespaces: _Part[tuple[str, ...]] = _Part("pods")
    events_enabled: _Part[bool] = _Part("events", "enabled")
    policy_report_enabled: _Part[bool] = _Part("report", "enabled")
    report_max_results: _Part[int] = _Part("report", "max_results")
    report_resync_seconds: _Part[float] = _Part("report", "resync_seconds")
    last_report: _Part[dict[str, Any] | None] = _Part("report")
    sleep: _Part[Callable[[float], None]] = _Part("retirement")
    drain_timeout: _Part[float] = _Part("retirement")
    eviction_retry_seconds: _Part[float] = _Part("retirement")
    lease_name: _Part[str] = _Part("retirement")
    lease_duration_seconds: _Part[int] = _Part("retirement")
    skipped_bare: _Part[set[str]] = _Part("retirement")
    ledger_clock: _Part[Callable[[], float]] = _Part("retirement", "clock")

    def __init__(self, snapshots: SnapshotStore, *, node_name: str, namespace: str, api_client: Any = None,
                 kubeconfig: str | None = None, report_max_results: int = 200, drain_timeout: float = 300.0,
                 eviction_retry_seconds: float = 5.0, lease_name: str = "driftd-node-retirement",
                 lease_duration_seconds: int = 900, events: bool = True, policy_report: bool = True,
                 sleep: Callable[[float], None] = time.sleep, template_guard_seconds: float = 900.0,
                 clock: Callable[[], float] = time.time, guards: GuardStore | None = None,
                 exclude_namespaces: Sequence[str] = (), report_resync_seconds: float = 3600.0,
                 max_concurrent_retirements: int = 1, max_retirements_per_hour: int = 1,
                 retirement_cooldown_seconds: float = 3600.0) -> None:
        """``clock`` is wall-clock seconds (guards outlive the process); ``guards`` is the state store in the daemon."""
        self.snapshots = snapshots
        self._node_name = node_name
        self._namespace = namespace
        self.log = get_logger()
        self.kube = Kube(api_client if api_client is not None else load_api_client(kubeconfig))
        self.reach = Reachability(self.name, node=node_name)
        self.api = Api(self.kube, self.reach)
        self.events = KubeEvents(self.api, node_name=node_name, target=self.name, enabled=events, log=self.log)
        self.pods = PodAdapter(self.api, snapshots, self.events, node_name=node_name, target=self.name,
                               exclude_namespaces=exclude_namespaces, template_guard_seconds=template_guard_seconds,
                               clock=clock, guards=guards if guards is not None else MemoryGuards(), log=self.log)
        self.report = PolicyReportWriter(self.api, node_name=node_name, namespace=namespace,
                                         max_results=report_max_results, resync_seconds=report_resync_seconds,
                                         enabled=policy_report, target=self.name, log=self.log)
        self.retirement = NodeRetirement(self.api, snapshots, self.pods.evict, node_name=node_name,
                                         namespace=namespace, drain_timeout=drain_timeout,
                                         eviction_retry_seconds=eviction_retry_seconds, lease_name=lease_name,
                                         lease_duration_seconds=lease_duration_seconds, sleep=sleep,
                                         target=self.name, log=self.log, max_concurrent=max_concurrent_retirements,
                                         max_per_hour=max_retirements_per_hour,
                                         cooldown_seconds=retirement_cooldown_seconds)
        # reachability goes through self._set_up at call time (so a wrapper set on the target sees the watch)
        self._node_glass: AnnotatedOverride | None = None
        self._node_glass_read = -float("inf")
        self.pod_watch = PodWatch(self.api, node_name, on_up=lambda: self._set_up(True),
                                  on_down=lambda e: self._set_up(False, f"pod watch: {e}"))

    # ------------------------------------------------------------------ identity, reachability
    @property
    def node_name(self) -> str:
        return self._node_name

    @property
    def namespace(self) -> str:
        return self._namespace

    def _set_up(self, up: bool, error: str = "") -> None:
        self.reach.set(up, error)

    @property
    def up(self) -> bool | None:
        """None until the endpoint was first tried, then whether it last answered."""
        return self.reach.up

    def node_labels(self) -> dict[str, str]:
        """This node's labels, for HostBaseline selectors (the downward API cannot give them)."""
        node = self.api("GET", node_path(self.node_name))
        return dict((node.get("metadata") or {}).get("labels") or {})

    # ------------------------------------------------------------------ break-glass (OverrideSource)
    NODE_GLASS_REFRESH_SECONDS = 15.0  # the node's annotations are read at most this often

    def override_requests(self) -> list[AnnotatedOverride]:
        """Break-glass asked for by this node's annotations (read at most every 15 s) and its pods' (as last seen)."""
        mono = time.monotonic()
        if mono - self._node_glass_read >= self.NODE_GLASS_REFRESH_SECONDS:
            self._node_glass_read = mono
            try:
                meta = self.api("GET", node_path(self.node_name)).get("metadata") or {}
            except (KubeError, TargetError) as e:
                self.log.warning(Event.OBSERVE_FAILED, error=f"node annotations (break-glass) not read: {e}")
            else:
                ann = meta.get("annotations") or {}
                at, by = set_time(meta)
                self._node_glass = AnnotatedOverride(source=f"node {self.node_name}", annotations=dict(ann),
                                                     set_at=at, by=by) if (
                    ANNOTATION_REASON in ann or ANNOTATION_UNTIL in ann) else None
        return ([self._node_glass] if self._node_glass else []) + self.pods.override_requests()

    # ------------------------------------------------------------------ Target (pods.py)
    def desired(self, baselines: BaselineSet, node: NodeInfo) -> list[DesiredResource]:
        return self.pods.desired(baselines, node)

    def discover(self) -> list[DesiredResource]:
        return self.pods.discover()

    def resolve(self, key: str) -> DesiredResource | None:
        return self.pods.resolve(key)

    def begin_pass(self, *, full: bool) -> None:
        return None

    def observe(self, desired: DesiredResource) -> ObservedResource:
        return self.pods.observe(desired)

    def apply(self, desired: DesiredResource, observed: ObservedResource, plan: Plan) -> ActResult:
        return self.pods.apply(desired, observed, plan)

    def evict(self, ns: str, name: str, *, uid: str | None = None) -> None:
        """One eviction request; a PDB refusal (429) is a transient failure, never a delete."""
        self.pods.evict(ns, name, uid=uid)

    @property
    def _owner_reads_refused(self) -> set[str]:
        return self.pods.owners.reads_refused

    # ------------------------------------------------------------------ EventSource (watch.py)
    def watch(self, on_key: Callable[[str], None], stop: threading.Event, *, max_backoff: float = 30.0) -> None:
        """One watch on this node's pods; resumes from the last resourceVersion, relists on 410."""
        self.pod_watch.run(on_key, stop, max_backoff=max_backoff)

    @property
    def _stream(self) -> WatchStream | None:
        return self.pod_watch.stream

    def close(self) -> None:
        self.pod_watch.close()

    # ------------------------------------------------------------------ Notifier (events.py)
    def notify(self, reason: str, desired: DesiredResource, message: str, *, warning: bool = True) -> None:
        """A Kubernetes Event on the pod (pod keys) or on this node (everything else)."""
        self.events.notify(reason, desired, message, warning=warning)

    # ------------------------------------------------------------------ Reporter (policyreport.py)
    def publish_report(self, results: Sequence[ResourceResult], *, baseline_set: str = "") -> None:
        """Replace this node's PolicyReport with ``results`` (failures first, capped), only when it changed."""
        self.report.publish(results, baseline_set=baseline_set)

    # ------------------------------------------------------------------ NodeRetirer (retirement.py)
    def retire_node(self, reason: str) -> dict[str, Any]:
        """Cordon, taint, label and drain this node, holding the cluster-wide retirement Lease."""
        return self.retirement.retire_node(reason)

    def would_evict(self) -> list[str]:
        """The pods a retirement of this node would evict now; changes nothing."""
        return self.retirement.would_evict()

    def cordon_and_mark(self, slug: str, reason: str) -> None:
        self.retirement.cordon_and_mark(slug, reason)

    def drain(self) -> list[str]:
        """Evict every drainable pod honouring PDBs, then wait until they are gone."""
        return self.retirement.drain()
