"""Kubernetes Events: what driftd found and did, on the pod, its owner or this node.

Pipeline position: a notifier at the end of a reconcile (the engine calls
:meth:`KubeEvents.notify` with DriftDetected, DriftReverted, RemediationFailed, ...) and
from the pod adapter (TemplateAtFault on a pod and on its controller).

May touch: ``create`` of ``events`` (core/v1) in the involved object's namespace, through
:mod:`.client`; nothing else.  A refused or failed Event is logged, never raised: an
Event is a courtesy to the operator, not part of an action.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

from driftd.models.resources import DesiredResource, PodPayload, payload_of
from driftd.observability.logging import Event
from driftd.targets.base import TargetError
from driftd.targets.kubernetes.client import Api, now_rfc3339


class KubeEvents:
    """Events reported by ``driftd.io/agent`` on ``node_name``: on the pod for ``target``'s resources, else the node."""

    def __init__(self, api: Api, *, node_name: str, target: str, enabled: bool, log: Any) -> None:
        self.api = api
        self.node_name = node_name
        self.target = target
        self.enabled = enabled
        self.log = log

    def notify(self, reason: str, desired: DesiredResource, message: str, *, warning: bool = True) -> None:
        """A Kubernetes Event on the pod (pod keys) or on this node (everything else)."""
        if desired.target == self.target:
            pod = payload_of(desired, PodPayload)
            ns = pod.namespace
            involved = {"apiVersion": "v1", "kind": "Pod", "namespace": ns, "name": pod.name, "uid": pod.uid}
        else:
            ns = "default"
            involved = {"apiVersion": "v1", "kind": "Node", "name": self.node_name, "uid": self.node_name}
        self.post(ns, involved, reason, message, warning=warning)

    def post(self, ns: str, involved: dict[str, Any], reason: str, message: str, *, warning: bool = True) -> None:
        """One Event about ``involved`` (an ``involvedObject``) in namespace ``ns``."""
        if not self.enabled:
            return
        now = now_rfc3339()
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
            self.api("POST", f"/api/v1/namespaces/{quote(ns)}/events", body=body)
        except TargetError as e:
            self.log.warning(Event.OBSERVE_FAILED, target=self.target, error=f"event not recorded: {e}")
