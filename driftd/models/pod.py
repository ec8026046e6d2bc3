"""``kind: PodBaseline`` schema (pure data): pods running on this node.

Pipeline position: input.  ``driftd.core.pod_policy`` evaluates a pod manifest against
these rules; each rule yields the list of offending containers or volumes, and an
empty list is compliant.  The shipped example is the Kubernetes Pod Security
"restricted" profile.
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import Field, field_validator

from driftd.models.baseline import Metadata, Strict, Timing
from driftd.models.container import RuleAction

_DIGEST_RE = re.compile(r"^(?:[^@\s]+@)?sha256:[0-9a-f]{64}$")


class PodSelector(Strict):
    namespaces: list[str] = Field(default_factory=list, description="Namespaces (glob patterns); empty = all.")
    exclude_namespaces: list[str] = Field(
        default_factory=lambda: ["kube-system"], alias="excludeNamespaces",
        description="Namespaces never governed by this baseline (glob patterns).",
    )
    match_labels: dict[str, str] = Field(default_factory=dict, alias="matchLabels")


class PodImages(Strict):
    approved: list[str] = Field(
        min_length=1,
        description="Approved image digests, 'repo@sha256:<digest>' or 'sha256:<digest>', compared with "
        "status.containerStatuses[].imageID (what actually runs).",
    )

    @field_validator("approved")
    @classmethod
    def _v_digests(cls, v: list[str]) -> list[str]:
        for ref in v:
            if not _DIGEST_RE.match(ref):
                raise ValueError(f"{ref!r} is not pinned by digest (use repo@sha256:<digest> or sha256:<digest>)")
        return v


class PodSecurity(Strict):
    """Security-context rules; each set rule is checked on every container (init and ephemeral too)."""

    run_as_non_root: bool | None = Field(None, alias="runAsNonRoot")
    allow_privilege_escalation: bool | None = Field(None, alias="allowPrivilegeEscalation", description="false = must be explicitly false.")
    privileged: bool | None = Field(None, description="false = no privileged container.")
    required_drop_capabilities: list[str] | None = Field(None, alias="requiredDropCapabilities", description="e.g. [ALL].")
    allowed_capabilities: list[str] | None = Field(None, alias="allowedCapabilities", description="Capabilities that may be added.")
    seccomp_profiles: list[Literal["RuntimeDefault", "Localhost", "Unconfined"]] | None = Field(
        None, alias="seccompProfiles", description="Allowed seccompProfile.type values; unset counts as a violation."
    )
    read_only_root_filesystem: bool | None = Field(None, alias="readOnlyRootFilesystem")


class PodResources(Strict):
    require_limits: list[Literal["cpu", "memory"]] = Field(default_factory=list, alias="requireLimits")
    require_requests: list[Literal["cpu", "memory"]] = Field(default_factory=list, alias="requireRequests")


class PodActions(Strict):
    """Action per rule group; a broken rule with ``revert`` evicts the pod so its controller recreates it."""

    images: RuleAction = RuleAction.REVERT
    security: RuleAction = RuleAction.REVERT
    host: RuleAction = RuleAction.REVERT
    ephemeral: RuleAction = RuleAction.REVERT
    resources: RuleAction = RuleAction.REPORT


class PodSpec(Timing):
    selector: PodSelector = Field(default_factory=PodSelector)
    images: PodImages | None = None
    security: PodSecurity = Field(default_factory=PodSecurity)
    forbid_host_namespaces: bool = Field(True, alias="forbidHostNamespaces", description="hostNetwork/hostPID/hostIPC.")
    allowed_host_paths: list[str] | None = Field(
        default_factory=list, alias="allowedHostPaths",
        description="hostPath volumes allowed (path prefixes); [] forbids all; null allows all.",
    )
    forbid_ephemeral_containers: bool = Field(True, alias="forbidEphemeralContainers", description="Debug containers.")
    resources: PodResources = Field(default_factory=PodResources)
    actions: PodActions = Field(default_factory=PodActions)



class PodBaseline(Strict):
    """``kind: PodBaseline``: what a pod on this node must look like."""

    api_version: Literal["driftd.io/v1alpha1"] = Field(alias="apiVersion")
    kind: Literal["PodBaseline"]
    metadata: Metadata
    spec: PodSpec
