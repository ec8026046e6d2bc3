"""Composition root: builds every part of a run from :class:`~driftd.settings.Settings`.

Pipeline position: outside the pipeline, below its callers (``driftd.cli``, ``driftd.demo``,
tests and benchmarks) and above everything it wires: metrics (``observability``), the
state store and queue (``engine``), snapshots (``safety``), the targets and the engine.
It builds each part once and hands it down; it reads no arguments and prints nothing.
Heavy client libraries (docker, kubernetes, prometheus_client) are imported here only
lazily, when the settings enable what needs them, so a host-only ``run --once`` loads none.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass
class Runtime:
    settings: Any
    engine: Any
    queue: Any
    state: Any
    metrics: Any


def build_runtime(settings: Any, *, registry: Any = None, clock: Any = None, metrics_enabled: bool = True,
                  plan_only: bool = False) -> Runtime:
    """Wire every part from the settings (tests call this with their own registry/clock).

    ``metrics_enabled=False`` (``run --once``: nothing scrapes it) records no metrics and
    leaves ``prometheus_client`` unimported.  ``plan_only`` (``driftd plan``): the engine plans
    and gates but never acts, and the targets are built in dry-run besides.
    """
    from driftd.engine.clock import SystemClock
    from driftd.engine.queue import Backoff, KeyedQueue
    from driftd.engine.reconciler import Engine
    from driftd.engine.state import StateStore
    from driftd.safety.breakglass import OverrideStore
    from driftd.safety.snapshots import SnapshotStore
    from driftd.targets.base import NodeInfo
    from driftd.targets.host import HostTarget

    clock = clock or SystemClock()
    state = StateStore(settings.state_dir)
    snapshots = SnapshotStore(Path(settings.state_dir) / "snapshots", max_bytes=settings.snapshot_max_bytes, clock=clock.time)
    targets: dict[str, Any] = {"host": HostTarget(settings.host_root, snapshots)}
    if settings.docker.enabled:
        from driftd.targets.docker import DockerTarget  # the docker SDK only when enabled

        d = settings.docker
        targets["docker"] = DockerTarget(
            snapshots,
            base_url=d.url,
            stop_timeout=d.stop_timeout_seconds,
            file_snapshot_max_bytes=d.file_snapshot_max_bytes,
            skip_kubelet_containers=d.skip_kubelet_containers,
            dry_run=settings.dry_run or plan_only,
        )
    node_name = settings.resolved_node_name()
    if settings.kubernetes.enabled:
        from driftd.targets.kubernetes import KubernetesTarget  # the kubernetes client only when enabled

        k = settings.kubernetes
        targets["kubernetes"] = KubernetesTarget(
            snapshots,
            node_name=node_name,
            namespace=k.namespace,
            kubeconfig=k.kubeconfig,
            report_max_results=k.report_max_results,
            drain_timeout=k.drain_timeout_seconds,
            eviction_retry_seconds=k.eviction_retry_seconds,
            events=k.events,
            template_guard_seconds=k.template_guard_seconds,
            policy_report=k.policy_report,
            guards=state,  # the eviction guard survives restarts
            exclude_namespaces=k.exclude_namespaces,
            max_concurrent_retirements=k.max_concurrent_retirements,
            max_retirements_per_hour=k.max_retirements_per_hour,
            retirement_cooldown_seconds=k.retirement_cooldown_seconds,
        )
    retirer = None
    if settings.retire_hook and "kubernetes" not in targets:
        from driftd.targets.hook import HookRetirer

        retirer = HookRetirer(settings.retire_hook, node_name)
    patcher = None
    if settings.patch_hook:
        from driftd.targets.hook import HookPatcher

        patcher = HookPatcher(settings.patch_hook, node_name, str(settings.host_root),
                              timeout=settings.patch_hook_timeout_seconds)
    metrics: Any
    if metrics_enabled:
        from driftd.observability.metrics import Metrics

        metrics = Metrics(registry, targets=list(targets))
        for tname, target in targets.items():
            reach = getattr(target, "reach", None)
            if reach is not None:  # event streams and API calls update the gauge as they see changes, not only scans
                gauge = metrics.target_up.labels(tname)
                reach.on_change = lambda up, _gauge=gauge: _gauge.set(1 if up else 0)
    else:
        from driftd.observability.nullmetrics import NullMetrics

        metrics = NullMetrics()
    labels = dict(settings.node_labels)
    if "kubernetes" in targets and not labels:
        from driftd.targets.base import TargetError

        try:
            labels = targets["kubernetes"].node_labels()
        except TargetError:
            labels = {}  # selectors on labels match nothing until configured; name selectors still work
    node = NodeInfo(name=node_name, labels=labels)
    audit = None
    if settings.audit.enabled:
        from driftd.observability.audit import AuditLog

        a = settings.audit
        audit = AuditLog(a.path or Path(settings.state_dir) / "audit", node=node_name, max_bytes=a.max_bytes, keep=a.keep,
                         on_write_error=metrics.audit_write_errors.inc)
    engine = Engine(
        targets=targets,
        state=state,
        metrics=metrics,
        node=node,
        dry_run=settings.dry_run,
        escalate_after=settings.retry.escalate_after,
        clock=clock,
        retirer=retirer,
        patcher=patcher,
        safety=settings.safety,
        overrides=OverrideStore(settings.state_dir, max_ttl=settings.safety.break_glass.max_ttl_seconds),
        audit=audit,
        plan_only=plan_only,
    )
    engine.snapshots = snapshots  # retention prunes it (Engine.prune, the daemon's prune job)
    if metrics_enabled:
        from driftd.observability.metrics import StateCollector

        esc = settings.retry.escalate_after
        margin = settings.safety.deadline_margin_seconds
        metrics.registry.register(StateCollector(
            lambda: {**state.summary(clock.time(), esc, margin), "snapshot_store": snapshots.usage()}, targets=list(targets)))
    queue = KeyedQueue(clock=clock, backoff=Backoff(settings.retry.base_seconds, settings.retry.max_seconds))
    return Runtime(settings=settings, engine=engine, queue=queue, state=state, metrics=metrics)


def build_api_server(settings: Any, *, registry: Any, healthy: Any, ready: Any, drifts: Any, reviews: Any = None,
                     baselines: Any = None) -> Any:
    """The HTTP listeners (``driftd.api.http.ApiServer``) from ``settings.http``.

    With ``http.api_auth`` or ``http.metrics_auth`` set to ``kubernetes``, requests are
    authorised by TokenReview + SubjectAccessReview (``driftd.api.auth``): the drifts API as
    ``get`` on ``drifts.driftd.io`` named after this node, ``/metrics`` as ``get`` on that
    non-resource URL.  The reviews go through
    driftd's Kubernetes REST client (``kubernetes.kubeconfig``, in-cluster when unset);
    ``reviews(path, body) -> dict`` replaces that client (tests).  Raises ``ValueError`` for
    an API client that cannot be built and ``OSError`` for a TLS file or an address in use.
    """
    from driftd.api.http import DRIFTS_PATH, ApiServer, server_tls_context

    h = settings.http
    authorize = None
    if "kubernetes" in (h.api_auth, h.metrics_auth):
        from driftd.api.auth import KubernetesAuth

        if reviews is None:
            from driftd.targets.kubernetes.client import Kube, load_api_client

            try:
                kube = Kube(load_api_client(settings.kubernetes.kubeconfig))
            except Exception as e:  # no kubeconfig, not in a cluster: say which setting needs it
                raise ValueError(f"http auth kubernetes needs a Kubernetes API client: {e}") from None

            def reviews(path: str, body: Any) -> Any:
                return kube.request("POST", path, body=body, timeout=5.0)

        drifts_resource = {"group": "driftd.io", "resource": "drifts", "name": settings.resolved_node_name()}
        authorize = KubernetesAuth(reviews, cache_seconds=h.auth_cache_seconds, audiences=h.auth_audiences,
                                   resources={DRIFTS_PATH: drifts_resource})
    tls = server_tls_context(h.tls_cert_file, h.tls_key_file) if h.tls_cert_file else None
    host, port = h.host_port
    return ApiServer(
        host,
        port,
        registry=registry,
        healthy=healthy,
        ready=ready,
        drifts=drifts,
        baselines=baselines,
        api_address=h.api_host_port,
        api_authorize=authorize if h.api_auth == "kubernetes" else None,
        metrics_authorize=authorize if h.metrics_auth == "kubernetes" else None,
        tls=tls,
        request_timeout=h.request_timeout_seconds,
        max_connections=h.max_connections,
    )
