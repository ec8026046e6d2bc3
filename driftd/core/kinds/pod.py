"""Kind ``pod`` (pure): a pod of this node held to a PodBaseline.

Pipeline position: observe, plan and apply (evict) of pods; I/O through ``PodPort`` (the
Kubernetes pods adapter, which also checks the owner's template before evicting).
Compiling is per listing (``core.pod_policy.compile_pod``).
"""

from __future__ import annotations

from driftd.core.compile_container import plan_actions
from driftd.core.kinds.base import Handler, PlanResult
from driftd.core.kinds.ports import PodPort
from driftd.core.pod_policy import change_time, evaluate
from driftd.models.container import RuleAction
from driftd.models.errors import ResourceGoneError
from driftd.models.resources import Action, DesiredResource, FieldDrift, ObservedResource, PlannedAction, PodPayload, payload_of


class PodHandler(Handler[PodPort]):
    target = "kubernetes"
    kind = "pod"
    steps = frozenset({Action.EVICT})

    def observe(self, port: PodPort, desired: DesiredResource) -> ObservedResource:
        pod = port.fetch(desired)
        meta = pod.get("metadata") or {}
        if meta.get("deletionTimestamp") or meta.get("uid") != payload_of(desired, PodPayload).uid:
            raise ResourceGoneError(f"pod {desired.address} is terminating or was replaced")
        b = port.baseline(desired.baseline)
        if b is None:
            raise ResourceGoneError(f"baseline {desired.baseline} no longer active")
        return ObservedResource(key=desired.key, actual=evaluate(b, pod), changed_at=change_time(pod))

    def plan(self, desired: DesiredResource, observed: ObservedResource, drift: dict[str, FieldDrift]) -> PlanResult:
        pl = payload_of(desired, PodPayload)
        chosen = plan_actions(drift, pl.actions)
        broken = ", ".join(sorted(drift))
        if chosen is RuleAction.RETIRE:
            return [PlannedAction(action=Action.EVICT, reason=f"retire: {broken}", params={"retire": True})], None
        if chosen is RuleAction.REVERT:
            if not pl.controller:
                return [], "bare pod with no controller: eviction would not bring it back (set action retire to remove it)"
            how = f"{pl.controller['kind']} {pl.controller['name']} recreates it from its template"
            return [PlannedAction(action=Action.EVICT, reason=f"{broken}; {how}")], None
        return [], None

    def apply(self, port: PodPort, desired: DesiredResource, observed: ObservedResource,
              step: PlannedAction) -> tuple[str, ...]:
        if step.action is not Action.EVICT:
            return super().apply(port, desired, observed, step)
        return (port.evict_for(desired, observed, step),)


HANDLERS = (PodHandler(),)
