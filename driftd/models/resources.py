"""Pipeline data (pure): desired resource → observed resource → drift → plan → result.

Every stage of observe → diff → plan → act hands the next one of these frozen models.
They carry no behaviour beyond small helpers, so the pure core and the adapters share
one vocabulary and tests can build them by hand.
"""

from __future__ import annotations

from datetime import timedelta
from enum import StrEnum
from typing import Annotated, Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field

from driftd.models.baseline import Enforcement

REDACTED = "<redacted>"


class Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", arbitrary_types_allowed=True)


class HostPayload(Frozen):
    """What act and plan need of a host resource beyond its expected fields."""

    kind: Literal["host"] = "host"
    retire_on_failure: bool = False
    kernel_action: str | None = Field(default=None, description="A kernel rule's action: 'retire' or 'report'.")
    package_action: str | None = Field(default=None, description="A packages rule's action: 'report', 'retire' or 'hook'.")
    severity: str | None = Field(default=None, description="A packages rule's severity (reports, metrics).")


class ContainerPayload(Frozen):
    """A governed container: per-field rule actions, approved image ids, the runtime rules to recreate with."""

    kind: Literal["container"] = "container"
    actions: dict[str, str] = Field(default_factory=dict)
    approved: tuple[str, ...] = ()
    runtime: dict[str, Any] = Field(default_factory=dict, description="RuntimePolicy, dumped by alias (JSON names).")
    container_id: str = ""


class UngovernedPayload(Frozen):
    """A container no baseline governs, handled by the ``ungoverned`` policy."""

    kind: Literal["ungoverned"] = "ungoverned"
    policy: str = "report"
    container_id: str = ""


class PodPayload(Frozen):
    """A pod of this node: rule actions and the identity eviction and reports need."""

    kind: Literal["pod"] = "pod"
    actions: dict[str, str] = Field(default_factory=dict)
    controller: dict[str, str] | None = None
    uid: str | None = None
    namespace: str = ""
    name: str = ""


Payload = Annotated[HostPayload | ContainerPayload | UngovernedPayload | PodPayload, Field(discriminator="kind")]
NO_PAYLOAD = HostPayload()


class DesiredResource(Frozen):
    """One resource a baseline governs, with the values every governed field must have.

    ``expected`` holds only the fields the baseline names: diff never looks further.
    ``content`` carries the bytes a host file must hold (compared through its sha256).
    """

    key: str = Field(description="Queue key, e.g. 'host:file:/etc/ssh/sshd_config'.")
    target: str
    kind: str
    address: str = Field(description="Human locator: a path, a sysctl key, a container name.")
    baseline: str
    enforcement: Enforcement = Enforcement.ENFORCE
    window: timedelta = timedelta(minutes=30)
    grace: timedelta = Field(default=timedelta(0), description="How long a change settles before driftd acts.")
    expected: dict[str, Any]
    sensitive: frozenset[str] = frozenset()
    content: bytes | None = None
    payload: Payload = Field(default=NO_PAYLOAD, description="Typed per-kind data for plan and act, e.g. rule actions.")

    def shown_snapshots(self, ids: list[str] | tuple[str, ...]) -> list[str]:
        """Snapshot ids as logs, summaries, reports and the drifts API may show them.

        The one redaction rule: a snapshot id is the hash of the drifted content, so the id of
        sensitive *content* is itself a secret; a container's sensitive env is no reason to
        hide the id of its inspect snapshot.
        """
        return [REDACTED] * len(ids) if "content" in self.sensitive else list(ids)


P = TypeVar("P", HostPayload, ContainerPayload, UngovernedPayload, PodPayload)


def payload_of(desired: DesiredResource, cls: type[P]) -> P:
    """The resource's payload as ``cls`` (its defaults when the resource carries another kind)."""
    p = desired.payload
    return p if isinstance(p, cls) else cls()


class ObservedResource(Frozen):
    """What an adapter saw of one resource; ``actual`` uses the same field names as ``expected``."""

    key: str
    actual: dict[str, Any]
    changed_at: float | None = Field(
        default=None, description="Wall-clock time of the last change, where the adapter can know it (a file's ctime)."
    )


class FieldDrift(Frozen):
    """One governed field whose live value differs from the baseline."""

    field: str
    expected: Any
    actual: Any
    changes: tuple[str, ...] = Field(default=(), description="Paths inside a structured value that differ.")

    def redacted(self) -> FieldDrift:
        """Values hidden; ``changes`` kept, as they name keys and paths, never values."""
        return self.model_copy(update={"expected": REDACTED, "actual": REDACTED})


class Action(StrEnum):
    """Everything an adapter can be asked to do."""

    WRITE_FILE = "write_file"
    CHMOD = "chmod"
    CHOWN = "chown"
    REMOVE = "remove"
    MKDIR = "mkdir"
    WRITE_SYSCTL = "write_sysctl"
    RECREATE = "recreate"
    RETIRE = "retire"
    EVICT = "evict"
    RETIRE_NODE = "retire_node"
    PATCH_HOOK = "patch_hook"


class OutcomeStatus(StrEnum):
    """How reconciling one key ended (pass summary, exit codes, docs: one definition)."""

    CLEAN = "clean"  # matches its baseline
    REMEDIATED = "remediated"  # drift reverted and verified
    REPORTED = "reported"  # drift left in place: dry-run, warn/dryrun baseline, report rule
    BLOCKED = "blocked"  # no safe action exists (the plan says why)
    HELD = "held"  # a safety gate holds the action (budget, breaker, break-glass, flap, retire): reported, not dropped
    FAILED = "failed"  # an action failed, or succeeded without fixing the drift (terminal)
    ERROR = "error"  # the resource could not be observed, or state could not be written
    RETIRED = "retired"  # the node was taken out of service; its drift stays
    GONE = "gone"  # the resource no longer exists
    UNMANAGED = "unmanaged"  # no baseline governs it any more


class RemediationResult(StrEnum):
    """The ``result`` label of ``driftd_remediations_total``."""

    SUCCEEDED = "succeeded"
    FAILED = "failed"
    SKIPPED = "skipped"  # planned, not carried out (dry-run, warn)


class ReportResult(StrEnum):
    """A resource's result as policy reports know it (wgpolicyk8s.io result values)."""

    PASS = "pass"  # noqa: S105 - a result value, not a password
    FAIL = "fail"
    WARN = "warn"
    ERROR = "error"
    SKIP = "skip"


class ResourceResult(Frozen):
    """The latest result of one governed resource, handed by the engine to every Reporter.

    Field names only in ``message``, never values; the wire format (a PolicyReport row) is the
    reporter's business.
    """

    key: str
    baseline: str
    baseline_hash: str = ""
    target: str
    kind: str
    address: str
    result: ReportResult
    message: str
    at: float = Field(description="Wall-clock time of the observation (seconds).")
    subject: PodPayload | None = Field(default=None, description="The pod, for pod resources.")
    severity: str | None = Field(default=None, description="The rule's own severity (packages rules), for a failing result.")


class PlannedAction(Frozen):
    action: Action
    reason: str
    params: dict[str, Any] = Field(default_factory=dict)


class Plan(Frozen):
    """What would bring one resource back to its baseline, and whether it may be applied."""

    key: str
    mode: Enforcement
    drift: tuple[FieldDrift, ...]
    actions: tuple[PlannedAction, ...]
    blocked: str | None = Field(default=None, description="Why no safe action exists (reported, not acted on).")

    @property
    def applies(self) -> bool:
        return self.mode is Enforcement.ENFORCE and not self.blocked and bool(self.actions)


class ActResult(Frozen):
    """What an adapter did; ``snapshots`` are ids of drifted content saved before overwriting."""

    key: str
    applied: tuple[Action, ...] = ()
    snapshots: tuple[str, ...] = ()
    output: str = Field(default="", description="What an operator's command printed (the patch hook), for the audit log.")
