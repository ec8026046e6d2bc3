"""``kind: ContainerBaseline`` schema (pure data): hardened containers on a Docker host.

Pipeline position: input.  ``driftd.core.compile_container`` turns these into desired
container resources; the Docker adapter resolves image references to image ids.
Fields use the Docker/Kubernetes camelCase spelling in YAML.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from enum import StrEnum
from typing import Literal

from pydantic import Field, field_validator, model_validator

from driftd.models.baseline import Metadata, Strict, Timing, check_managed_path

_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]i?|[kmgt]|[KMGT]B)?\s*$")
_UNITS = {
    None: 1, "k": 1000, "K": 1000, "KB": 1000, "Ki": 1024, "m": 1000**2, "M": 1000**2, "MB": 1000**2,
    "Mi": 1024**2, "g": 1000**3, "G": 1000**3, "GB": 1000**3, "Gi": 1024**3, "t": 1000**4, "T": 1000**4,
    "TB": 1000**4, "Ti": 1024**4,
}
_IMAGE_ID_RE = re.compile(r"^sha256:[0-9a-f]{64}$")
_DIGEST_REF_RE = re.compile(r"^[^@\s]+@sha256:[0-9a-f]{64}$")


def parse_bytes(value: object) -> int:
    """``256Mi``, ``1G``, ``1048576`` → bytes."""
    if isinstance(value, bool):
        raise ValueError("expected a size such as '256Mi'")
    if isinstance(value, int):
        return value
    if isinstance(value, str) and (m := _SIZE_RE.match(value)):
        return int(float(m.group(1)) * _UNITS[m.group(2)])
    raise ValueError(f"invalid size {value!r}: use e.g. '256Mi', '1G' or a number of bytes")


def normalize_caps(values: Iterable[str] | None) -> list[str]:
    """Capabilities as Docker reports them: upper case, no CAP_ prefix, sorted, unique."""
    return sorted({v.upper().removeprefix("CAP_") for v in values or []})


class RuleAction(StrEnum):
    """What to do when a rule is broken."""

    REVERT = "revert"
    RETIRE = "retire"
    REPORT = "report"


class Ungoverned(StrEnum):
    IGNORE = "ignore"
    REPORT = "report"
    RETIRE = "retire"


class ContainerSelector(Strict):
    """Containers a baseline governs: all label pairs must match, and the name one pattern (if any)."""

    match_labels: dict[str, str] = Field(default_factory=dict, alias="matchLabels")
    names: list[str] = Field(default_factory=list, description="Glob patterns on the container name.")

    @model_validator(mode="after")
    def _not_empty(self) -> ContainerSelector:
        if not self.match_labels and not self.names:
            raise ValueError("a container selector needs matchLabels and/or names")
        return self


class ImagePolicy(Strict):
    approved: list[str] = Field(
        min_length=1,
        description="Approved images: 'repo@sha256:<digest>', an image id 'sha256:<id>', or a tag "
        "(resolved to the image id it names when the baseline loads, and warned about by lint).",
    )
    action: RuleAction = RuleAction.RETIRE

    @field_validator("approved")
    @classmethod
    def _v_refs(cls, v: list[str]) -> list[str]:
        for ref in v:
            if not ref or any(c.isspace() for c in ref):
                raise ValueError(f"invalid image reference {ref!r}")
        return v

    def unpinned(self) -> list[str]:
        return [r for r in self.approved if not (_IMAGE_ID_RE.match(r) or _DIGEST_REF_RE.match(r))]


class RestartPolicy(Strict):
    name: Literal["no", "always", "unless-stopped", "on-failure"]
    maximum_retry_count: int = Field(0, ge=0, alias="maximumRetryCount")


class Resources(Strict):
    memory: int | None = Field(None, description="Memory limit, e.g. '256Mi'.")
    cpus: float | None = Field(None, gt=0, description="CPU limit in cores, e.g. 0.5.")
    pids_limit: int | None = Field(None, gt=0, alias="pidsLimit")

    @field_validator("memory", mode="before")
    @classmethod
    def _v_mem(cls, v: object) -> int | None:
        return None if v is None else parse_bytes(v)


class PortBinding(Strict):
    container_port: int = Field(alias="containerPort", ge=1, le=65535)
    protocol: Literal["tcp", "udp", "sctp"] = "tcp"
    host_ip: str = Field("", alias="hostIP")
    host_port: int = Field(alias="hostPort", ge=0, le=65535)


class RuntimePolicy(Strict):
    """The hardened runtime configuration; only fields that are set are governed."""

    user: str | None = Field(None, description="Required user (name or uid[:gid]) as in `docker run --user`.")
    non_root: bool | None = Field(None, alias="nonRoot", description="Refuse an empty, 'root' or '0' user.")
    privileged: bool | None = None
    cap_add: list[str] | None = Field(None, alias="capAdd", description="Exact set of added capabilities.")
    cap_drop: list[str] | None = Field(None, alias="capDrop", description="Capabilities that must be dropped (e.g. [ALL]).")
    read_only_root_filesystem: bool | None = Field(None, alias="readOnlyRootFilesystem")
    no_new_privileges: bool | None = Field(None, alias="noNewPrivileges")
    seccomp_profile: str | None = Field(None, alias="seccompProfile", description="'default' or a profile name/path; 'unconfined' is a drift unless set here.")
    apparmor_profile: str | None = Field(None, alias="apparmorProfile")
    pid_mode: str | None = Field(None, alias="pidMode", description="'' (private) or e.g. 'host'.")
    ipc_mode: str | None = Field(None, alias="ipcMode")
    network_mode: str | None = Field(None, alias="networkMode")
    forbidden_host_mounts: list[str] = Field(
        default_factory=lambda: ["/var/run/docker.sock", "/run/docker.sock", "/"],
        alias="forbiddenHostMounts",
        description="Host paths that must never be bind-mounted (exact paths).",
    )
    env: dict[str, str] | None = Field(None, description="Environment entries that must have these values (others untouched).")
    forbidden_env: list[str] = Field(default_factory=list, alias="forbiddenEnv", description="Variable names that must not be set.")
    ports: list[PortBinding] | None = Field(None, description="Exact set of published ports.")
    resources: Resources | None = None
    restart_policy: RestartPolicy | None = Field(None, alias="restartPolicy")
    labels: dict[str, str] | None = Field(None, description="Labels that must have these values.")

    @field_validator("cap_add", "cap_drop")
    @classmethod
    def _v_caps(cls, v: list[str] | None) -> list[str] | None:
        if v is None:
            return None
        out = normalize_caps(v)
        for c in out:
            if not re.match(r"^[A-Z_]+$", c):
                raise ValueError(f"invalid capability {c!r}")
        return out

    @field_validator("forbidden_host_mounts")
    @classmethod
    def _v_mounts(cls, v: list[str]) -> list[str]:
        return [p if p == "/" else check_managed_path(p) for p in v]


class FilesystemPolicy(Strict):
    allowed_changes: list[str] = Field(
        default_factory=lambda: ["/tmp", "/tmp/**", "/run", "/run/**", "/var/run", "/var/run/**"],
        alias="allowedChanges",
        description="Glob patterns of paths inside the container allowed to differ from the image.",
    )
    action: RuleAction = RuleAction.REVERT


class ContainerSpec(Timing):
    selector: ContainerSelector
    images: ImagePolicy
    runtime: RuntimePolicy = Field(default_factory=RuntimePolicy)
    runtime_action: RuleAction = Field(RuleAction.REVERT, alias="runtimeAction", description="Action for runtime rules.")
    action_overrides: dict[str, RuleAction] = Field(
        default_factory=dict, alias="actionOverrides",
        description="Per-rule action by runtime field name (YAML spelling), e.g. {privileged: retire}.",
    )
    filesystem: FilesystemPolicy = Field(default_factory=FilesystemPolicy)
    ungoverned: Ungoverned = Field(
        Ungoverned.REPORT,
        description="Containers no baseline governs: ignore, report or retire. The strictest value among "
        "the active container baselines applies.",
    )


    @model_validator(mode="after")
    def _v_overrides(self) -> ContainerSpec:
        known = {f.alias or n for n, f in RuntimePolicy.model_fields.items()}
        for k in self.action_overrides:
            if k not in known:
                raise ValueError(f"actionOverrides: unknown runtime rule {k!r} (known: {', '.join(sorted(known))})")
        return self


class ContainerBaseline(Strict):
    """``kind: ContainerBaseline``: approved images and hardened runtime of Docker containers."""

    api_version: Literal["driftd.io/v1alpha1"] = Field(alias="apiVersion")
    kind: Literal["ContainerBaseline"]
    metadata: Metadata
    spec: ContainerSpec
