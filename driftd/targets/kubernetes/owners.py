"""Pod controllers and their templates: what an eviction would bring back.

Pipeline position: consulted by the pod adapter (:mod:`.pods`) just before it evicts a
controller's pod, never on the scan path.  The template is turned into the pod manifest
the pod policy (:mod:`driftd.core.pod_policy`) evaluates, so "the template itself breaks
this rule" is decided by the same code that found the drift.

May touch: ``get`` of ``daemonsets``, ``replicasets``, ``statefulsets`` and ``deployments``
(apps/v1), through :mod:`.client`; nothing else.  An owner that cannot be read (gone, not
allowed, a kind driftd does not know) is None, never an error: the eviction guard then
stands in for the template check.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from driftd.observability.logging import Event
from driftd.targets.kubernetes.client import Api, KubeError

# controllers whose pod template driftd reads (get only) before evicting one of their pods
TEMPLATE_OWNERS = {"DaemonSet": "daemonsets", "ReplicaSet": "replicasets", "StatefulSet": "statefulsets",
                   "Deployment": "deployments"}


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


def template_pod(template: Mapping[str, Any], namespace: str) -> dict[str, Any]:
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


def controller_ref(obj: Mapping[str, Any], namespace: str) -> OwnerRef | None:
    """The controlling owner reference of ``obj`` (a pod or a ReplicaSet), if any."""
    for ref in (obj.get("metadata") or {}).get("ownerReferences") or []:
        if ref.get("controller"):
            return OwnerRef(str(ref.get("apiVersion") or ""), str(ref.get("kind") or ""), namespace,
                            str(ref.get("name") or ""), str(ref.get("uid") or ""))
    return None


class OwnerReader:
    """Reads controllers (get only); a refused kind is logged once (the RBAC grant is missing)."""

    def __init__(self, api: Api, *, target: str, log: Any) -> None:
        self.api = api
        self.target = target
        self.log = log
        self.reads_refused: set[str] = set()

    def get(self, ref: OwnerRef) -> dict[str, Any] | None:
        """One controller object (get only), or None when it cannot be read (gone, not allowed, unknown kind)."""
        plural = TEMPLATE_OWNERS.get(ref.kind)
        if ref.api_version != "apps/v1" or plural is None:
            return None
        path = f"/apis/apps/v1/namespaces/{quote(ref.namespace)}/{plural}/{quote(ref.name)}"
        try:
            obj: dict[str, Any] = self.api("GET", path)
        except KubeError as e:
            if e.status == 403 and plural not in self.reads_refused:
                self.reads_refused.add(plural)
                self.log.warning(Event.OBSERVE_FAILED, target=self.target,
                                 error=f"cannot read {plural} (grant get on apps/{plural}): a non-compliant template "
                                       f"is then caught only by the eviction guard: {e}")
            elif e.status != 404:
                self.log.warning(Event.OBSERVE_FAILED, target=self.target, error=f"cannot read {ref}: {e}")
            return None
        if ref.uid and (obj.get("metadata") or {}).get("uid") != ref.uid:
            return None  # replaced by a namesake: not this pod's template
        return obj

    def template(self, ref: OwnerRef) -> OwnerTemplate | None:
        """The template ``ref`` makes pods from (a ReplicaSet's Deployment read too), or None if unknown."""
        obj = self.get(ref)
        template = ((obj or {}).get("spec") or {}).get("template")
        if obj is None or not isinstance(template, dict):
            return None
        digest = hashlib.sha256(json.dumps(template, sort_keys=True).encode()).hexdigest()[:24]
        parent = parent_template = None
        if ref.kind == "ReplicaSet":
            up = controller_ref(obj, ref.namespace)
            if up is not None and up.kind == "Deployment":
                dep = self.get(up)
                if dep is not None:
                    parent = up
                    parent_template = (dep.get("spec") or {}).get("template") or {}
        return OwnerTemplate(controller=ref, template=template, digest=digest, parent=parent,
                             parent_template=parent_template)
