"""Node retirement: take this node out of service the way an operator would.

Pipeline position: the engine's node retirer (``Action.RETIRE_NODE``: a kernel out of
patch, ``retireOnFailure``), outside the per-pod pipeline.  Retiring cordons, taints and
labels the node, then drains it the way ``kubectl drain --ignore-daemonsets`` does
(DaemonSet and mirror pods stay; a bare pod is left and reported, like ``kubectl drain``
without ``--force``), one node at a time per cluster: a Lease in the agent's namespace is
the lock.

May touch: ``get``/``patch`` of this node (taint ``driftd.io/non-compliant``, label
``driftd.io/retired``, ``spec.unschedulable``), ``list`` of this node's pods, evictions
through the pod adapter's ``evict`` (PDBs honoured, never a delete), the snapshot store
(each pod before it is evicted), and ``create``/``get``/``update`` of one Lease.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any, Protocol
from urllib.parse import quote

from driftd.core.pod_policy import controller_of, is_mirror
from driftd.models.errors import HeldError
from driftd.models.keys import ResourceKey
from driftd.observability.logging import Event
from driftd.safety.snapshots import SnapshotStore
from driftd.targets.base import ResourceGoneError, TargetError
from driftd.targets.kubernetes.client import Api, KubeError, node_path, node_pods, now_rfc3339

TAINT_KEY = "driftd.io/non-compliant"
RETIRED_LABEL = "driftd.io/retired"
LEDGER_ANNOTATION = "driftd.io/retirement-starts"  # on the ledger Lease: [[node, start time], ...] of the last hour


class Evict(Protocol):
    def __call__(self, ns: str, name: str, *, uid: str | None = None) -> None: ...


def _expired(spec: Mapping[str, Any]) -> bool:
    renew = spec.get("renewTime") or spec.get("acquireTime")
    if not renew:
        return True
    try:
        t = datetime.strptime(renew.replace("Z", "+0000"), "%Y-%m-%dT%H:%M:%S.%f%z")
    except ValueError:
        return True
    return (datetime.now(UTC) - t).total_seconds() > float(spec.get("leaseDurationSeconds") or 0)


class NodeRetirement:
    """Cordon, taint, label and drain ``node_name`` under the cluster-wide retirement Lease."""

    def __init__(self, api: Api, snapshots: SnapshotStore, evict: Evict, *, node_name: str,
                 namespace: str, drain_timeout: float, eviction_retry_seconds: float, lease_name: str,
                 lease_duration_seconds: int, sleep: Callable[[float], None], target: str, log: Any,
                 max_concurrent: int = 1, max_per_hour: int = 1, cooldown_seconds: float = 3600.0,
                 clock: Callable[[], float] = time.time) -> None:
        self.api = api
        self.clock = clock  # wall-clock seconds of the hourly ledger (Lease expiry is the apiserver objects' own)
        self.snapshots = snapshots
        self.evict = evict  # the pod adapter's eviction (a PDB refusal is transient)
        self.node_name = node_name
        self.namespace = namespace
        self.drain_timeout = drain_timeout
        self.eviction_retry_seconds = eviction_retry_seconds
        self.lease_name = lease_name
        self.lease_duration_seconds = lease_duration_seconds
        self.sleep = sleep
        self.target = target
        self.log = log
        self.skipped_bare: set[str] = set()
        self.max_concurrent = max(1, max_concurrent)
        self.max_per_hour = max_per_hour
        self.cooldown_seconds = cooldown_seconds
        self.slot = lease_name
        self.last_refusal = ""

    def would_evict(self) -> list[str]:
        """The pods a drain of this node would evict now (``ns/name``): the retirement's impact, changing nothing."""
        return [p for p, _ in self.drain_candidates()]

    def retire_node(self, reason: str) -> dict[str, Any]:
        """Cordon, taint, label and drain this node, holding the cluster-wide retirement Lease."""
        self.last_refusal = ""
        if not self._acquire_lease():
            why = self.last_refusal or (f"{self.max_concurrent} node(s) being retired or cooling down "
                                        "(every retirement lease held)")
            raise HeldError(f"cluster retirement cap: {why}; waiting for a slot", gate="retirement-cap",
                            retry_in=max(30.0, min(300.0, self.lease_duration_seconds / 3)))
        try:
            slug = "".join(c if c.isalnum() or c in "-_." else "-" for c in reason)[:63].strip("-_.") or "retired"
            self.cordon_and_mark(slug, reason)
            self.skipped_bare.clear()
            evicted = self.drain()
            if self.skipped_bare:
                self.log.warning(Event.REMEDIATION_BLOCKED, target=self.target, action="drain",
                                 reason="bare pods (no controller) left on the retired node; nothing would recreate "
                                        "them elsewhere", pods=sorted(self.skipped_bare))
            self._hold(self.slot, int(self.cooldown_seconds) + int(self.drain_timeout))  # drained: now the cooldown
            return {"node": self.node_name, "evicted": evicted, "not_evicted_bare": sorted(self.skipped_bare)}
        except BaseException:
            self._hold(self.slot, self.lease_duration_seconds)  # mid-retirement: ours until we finish (or it expires)
            raise

    def cordon_and_mark(self, slug: str, reason: str) -> None:
        path = node_path(self.node_name)
        node = self.api("GET", path)
        taints = [t for t in (node.get("spec") or {}).get("taints") or [] if t.get("key") != TAINT_KEY]
        taints.append({"key": TAINT_KEY, "value": slug, "effect": "NoSchedule"})
        patch = {"metadata": {"labels": {RETIRED_LABEL: "true"},
                              "annotations": {"driftd.io/retired-reason": reason[:1000],
                                              "driftd.io/retired-at": now_rfc3339()},
                              "resourceVersion": node["metadata"]["resourceVersion"]},
                 "spec": {"unschedulable": True, "taints": taints}}
        self.api("PATCH", path, body=patch, content_type="application/merge-patch+json")

    def drain_candidates(self, *, terminating: bool = False) -> list[tuple[str, dict[str, Any]]]:
        """Pods `kubectl drain --ignore-daemonsets` would evict: not DaemonSet-owned, not mirror pods."""
        path, query = node_pods(self.node_name)
        out = []
        for pod in self.api("GET", path, query=query).get("items") or []:
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
        pending = dict(self.drain_candidates())
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
                    self.log.warning(Event.REMEDIATION_FAILED, target=self.target, key=ResourceKey.pod(*ref.split("/", 1)),
                                     action="evict", error=str(e))
            if pending:
                if time.monotonic() > deadline:
                    raise TargetError(f"drain timed out; still blocked: {', '.join(sorted(pending))}", transient=True)
                self.sleep(self.eviction_retry_seconds)
        while time.monotonic() < deadline:
            left = {ref for ref, pod in self.drain_candidates(terminating=True)
                    if ref in uids and (pod.get("metadata") or {}).get("uid") == uids[ref]}
            if not left:
                return sorted(evicted)
            self.sleep(min(2.0, self.eviction_retry_seconds))
        raise TargetError("drain timed out waiting for evicted pods to terminate", transient=True)

    # ------------------------------------------------------------------ the retirement Leases (cluster-wide cap)
    def slot_names(self) -> list[str]:
        """One Lease per concurrent retirement the cluster allows (``max_concurrent``)."""
        return [self.lease_name] + [f"{self.lease_name}-{i}" for i in range(1, self.max_concurrent)]

    def _lease_path(self, name: str | None = None) -> str:
        return f"/apis/coordination.k8s.io/v1/namespaces/{quote(self.namespace)}/leases/{quote(name or self.lease_name)}"

    def _acquire_lease(self) -> bool:
        """A retirement slot for this node, if the cluster-wide caps allow one now.

        At most ``max_concurrent`` nodes hold a slot at once; a slot stays held until its node is
        drained *and* ``cooldown_seconds`` passed (never released right after a drain), and at most
        ``max_per_hour`` retirements start across the cluster in any hour (the ledger Lease).
        """
        names = self.slot_names()
        for name in names:  # already ours (a retry after a failed drain): keep it, do not count again
            lease = self._get_lease(name)
            if lease is not None and (lease.get("spec") or {}).get("holderIdentity") == self.node_name:
                return self._take(name, lease)
        free = []
        for name in names:
            lease = self._get_lease(name)
            held = (lease or {}).get("spec") or {}
            if lease is None or not held.get("holderIdentity") or _expired(held):
                free.append((name, lease))
        if not free or not self._ledger_allows():
            return False
        for name, lease in free:
            if self._take(name, lease):
                if self._ledger_record():
                    self.slot = name
                    return True
                self._hold(name, 1)  # lost the ledger race: give the slot back (expires in a second)
                return False
        return False

    def _get_lease(self, name: str) -> dict[str, Any] | None:
        try:
            lease: dict[str, Any] = self.api("GET", self._lease_path(name))
        except KubeError as e:
            if e.status != 404:
                raise
            return None
        return lease

    def _take(self, name: str, lease: dict[str, Any] | None, duration: int | None = None) -> bool:
        now = now_rfc3339(micro=True)
        spec = {"holderIdentity": self.node_name, "leaseDurationSeconds": duration or self.lease_duration_seconds,
                "acquireTime": now, "renewTime": now}
        try:
            if lease is None:
                self.api("POST", f"/apis/coordination.k8s.io/v1/namespaces/{quote(self.namespace)}/leases",
                         body={"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                               "metadata": {"name": name, "namespace": self.namespace}, "spec": spec})
            else:
                lease["spec"] = spec
                self.api("PUT", self._lease_path(name), body=lease)  # resourceVersion: a concurrent taker gets 409
        except KubeError as e:
            if e.status == 409:
                return False
            raise
        self.slot = name
        return True

    def _hold(self, name: str, seconds: int) -> None:
        """Keep the slot held by this node for ``seconds`` from now (the cooldown after a drain)."""
        lease = self._get_lease(name)
        if lease is not None and (lease.get("spec") or {}).get("holderIdentity") == self.node_name:
            self._take(name, lease, duration=max(1, seconds))

    def _ledger(self) -> tuple[dict[str, Any] | None, list[list[Any]]]:
        lease = self._get_lease(f"{self.lease_name}-ledger")
        raw = ((lease or {}).get("metadata") or {}).get("annotations", {}).get(LEDGER_ANNOTATION, "[]")
        try:
            starts = [s for s in json.loads(raw) if isinstance(s, list) and len(s) == 2]
        except ValueError:
            starts = []
        return lease, starts

    def _ledger_allows(self) -> bool:
        _, starts = self._ledger()
        recent = [s for s in starts if self.clock() - float(s[1]) < 3600]
        if len(recent) >= self.max_per_hour:
            self.last_refusal = (f"{len(recent)} node retirement(s) started in the cluster in the last hour "
                                 f"(cap {self.max_per_hour}): {', '.join(str(s[0]) for s in recent)}")
            return False
        return True

    def _ledger_record(self) -> bool:
        """Add this retirement's start to the cluster ledger; False when another node wrote it first."""
        lease, starts = self._ledger()
        recent = [s for s in starts if self.clock() - float(s[1]) < 3600]
        if len(recent) >= self.max_per_hour:
            return False
        body = lease or {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                         "metadata": {"name": f"{self.lease_name}-ledger", "namespace": self.namespace}, "spec": {}}
        body["spec"] = {"holderIdentity": self.node_name}  # the last writer (the admission policy checks it is the node)
        body.setdefault("metadata", {}).setdefault("annotations", {})[LEDGER_ANNOTATION] = json.dumps(
            [*recent, [self.node_name, self.clock()]])
        try:
            if lease is None:
                self.api("POST", f"/apis/coordination.k8s.io/v1/namespaces/{quote(self.namespace)}/leases", body=body)
            else:
                self.api("PUT", self._lease_path(f"{self.lease_name}-ledger"), body=body)
        except KubeError as e:
            if e.status == 409:
                return False
            raise
        return True
