"""Baseline schema (pure data): what a release engineer writes in ``baselines/*.yaml``.

Pipeline position: input to everything.  The loader (``driftd.baselines``) turns YAML
into these models; ``driftd.core.compile`` turns them into desired resources.  Unknown
fields are rejected everywhere so a typo never silently weakens a baseline.
"""

from __future__ import annotations

import re
import typing
from collections.abc import Iterator
from datetime import timedelta
from enum import StrEnum
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

API_VERSION = "driftd.io/v1alpha1"

_DURATION_RE = re.compile(r"^\s*(?:(\d+)h)?\s*(?:(\d+)m)?\s*(?:(\d+)s)?\s*$")
_NAME_RE = re.compile(r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$")
_SYSCTL_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.:/-]*$")
_MODE_RE = re.compile(r"^0?[0-7]{3,4}$")


class Strict(BaseModel):
    """Base for every schema model: immutable, unknown fields rejected."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True, defer_build=True)


def parse_duration(value: object) -> timedelta:
    """Parse ``30m``, ``1h30m``, ``90s`` or a number of seconds into a timedelta."""
    if isinstance(value, timedelta):
        return value
    if isinstance(value, bool):
        raise ValueError("expected a duration such as '30m'")
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str):
        m = _DURATION_RE.match(value)
        if not value.strip() or not m or not any(m.groups()):
            raise ValueError(f"invalid duration {value!r}: use e.g. '30m', '1h', '90s'")
        h, mi, s = (int(g) if g else 0 for g in m.groups())
        seconds = h * 3600 + mi * 60 + s
    else:
        raise ValueError("expected a duration such as '30m'")
    if seconds <= 0:
        raise ValueError("duration must be positive")
    return timedelta(seconds=seconds)


def check_managed_path(value: str) -> str:
    """A managed path is absolute, normalised and cannot climb out of the host root."""
    if not value.startswith("/"):
        raise ValueError("path must be absolute (start with '/')")
    if "\x00" in value:
        raise ValueError("path contains a NUL byte")
    parts = value.split("/")[1:]
    if any(p in ("..", ".") for p in parts):
        raise ValueError("path must not contain '.' or '..' components (escapes the host root)")
    if value != "/" and (value.endswith("/") or "" in parts):
        raise ValueError("path must be normalised (no '//' and no trailing '/')")
    if value == "/":
        raise ValueError("the host root itself cannot be managed")
    return value  # already normalised: str(PurePosixPath(value)) == value after the checks above


class Enforcement(StrEnum):
    """What driftd does with drift under a baseline: fix it, report it, or log the plan."""

    ENFORCE = "enforce"
    WARN = "warn"
    DRYRUN = "dryrun"


def _check_mode(value: object) -> str | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, str):
        raise ValueError("mode must be a quoted octal string such as '0644' (an unquoted number is ambiguous)")
    if not _MODE_RE.match(value):
        raise ValueError(f"invalid mode {value!r}: use an octal string such as '0644'")
    return value if len(value) == 4 else "0" + value


def _check_principal(value: object) -> str | int | None:
    if value is None:
        return None
    if isinstance(value, bool):
        raise ValueError("expected a user/group name or numeric id")
    if isinstance(value, int):
        if value < 0:
            raise ValueError("numeric id must be >= 0")
        return value
    if isinstance(value, str):
        if value.isdigit():
            return int(value)
        if not re.match(r"^[A-Za-z_][A-Za-z0-9_.-]*\$?$", value):
            raise ValueError(f"invalid user/group name {value!r}")
        return value
    raise ValueError("expected a user/group name or numeric id")


ModeStr = Annotated[str | None, Field(default=None, description="Octal permission bits as a quoted string, e.g. '0644'.")]
Principal = Annotated[
    str | int | None,
    Field(default=None, description="Name (resolved against <host-root>/etc/passwd or /etc/group) or numeric id."),
]


class Rule(Strict):
    """A host rule: one thing on the node that at most one baseline may govern.

    A new rule kind is a model deriving from this, a field on HostSpec, and its kind handler
    in ``driftd.core.kinds`` (which compiles it and names what it claims for lint).
    """

    allow_dangerous: str | None = Field(
        default=None, alias="allowDangerous",
        description="Why this rule may manage what the guardrails deny (an account database's content, sudoers, "
        "a set-id mode, a code-loading sysctl, ...): a reason, logged at every load. Without it such a rule is refused.",
    )

    @field_validator("allow_dangerous")
    @classmethod
    def _v_allow_dangerous(cls, v: str | None) -> str | None:
        if v is not None and len(v.strip()) < 8:
            raise ValueError("allowDangerous needs a reason a reviewer can check (at least 8 characters), "
                             "e.g. 'INC-42: sudo rule for the backup agent'")
        return v


class _PathEntry(Rule):
    """Shared fields of files and directories: path, mode, owner, group."""

    path: str = Field(description="Absolute path on the host, relative to --host-root.")
    mode: ModeStr = None
    owner: Principal = None
    group: Principal = None

    @field_validator("path")
    @classmethod
    def _v_path(cls, v: str) -> str:
        return check_managed_path(v)

    @field_validator("mode", mode="before")
    @classmethod
    def _v_mode(cls, v: object) -> str | None:
        return _check_mode(v)

    @field_validator("owner", "group", mode="before")
    @classmethod
    def _v_owner(cls, v: object) -> str | int | None:
        return _check_principal(v)


class ManagedFile(_PathEntry):
    """A file whose content, mode, owner, group or presence the baseline governs."""

    content: str | None = Field(default=None, description="Inline content (UTF-8).")
    source: str | None = Field(default=None, description="File beside the baseline holding the content (bytes, any encoding).")
    absent: bool = Field(default=False, description="The file must not exist.")
    sensitive: bool = Field(
        default=False, description="Content is secret: never show hashes or bytes in logs, metrics or reports."
    )

    @model_validator(mode="after")
    def _exclusive(self) -> ManagedFile:
        if self.content is not None and self.source is not None:
            raise ValueError("set either content or source, not both")
        if self.absent and any(v is not None for v in (self.content, self.source, self.mode, self.owner, self.group)):
            raise ValueError("an absent file cannot also set content, source, mode, owner or group")
        return self

    @field_validator("source")
    @classmethod
    def _v_source(cls, v: str | None) -> str | None:
        if v is not None and (v.startswith("/") or ".." in v.split("/")):
            raise ValueError("source must be a relative path inside the baselines directory")
        return v


class ManagedDirectory(_PathEntry):
    """A directory that must exist with the given mode, owner and group."""


class Sysctl(Rule):
    """A kernel parameter read and written under ``<host-root>/proc/sys``."""

    key: str = Field(description="Dotted key, e.g. net.ipv4.ip_forward.")
    value: str = Field(description="Expected value; whitespace between fields is normalised.")
    namespace: Literal["host"] = Field(
        default="host",
        description="Which network namespace governs per-netns keys: 'host' is the namespace "
        "of the /proc mounted at <host-root>/proc (the node's own when driftd runs with hostNetwork).",
    )

    @field_validator("value", mode="before")
    @classmethod
    def _v_value(cls, v: object) -> str:
        if isinstance(v, bool):
            return "1" if v else "0"
        if isinstance(v, int | str):
            return " ".join(str(v).split())
        raise ValueError("sysctl value must be a string or number")

    @field_validator("key")
    @classmethod
    def _v_key(cls, v: str) -> str:
        if not _SYSCTL_RE.match(v) or ".." in v or "//" in v:
            raise ValueError(f"invalid sysctl key {v!r}")
        return v


class HostSelector(Strict):
    """Which hosts a baseline applies to; an empty selector matches every host."""

    hostnames: list[str] = Field(default_factory=list, description="Glob patterns matched against the node name.")
    match_labels: dict[str, str] = Field(
        default_factory=dict, alias="matchLabels", description="Node labels that must all match."
    )


class KernelRule(Rule):
    """The running kernel must be at least this release (read from <host-root>/proc/sys/kernel/osrelease)."""

    minimum_release: str = Field(alias="minimumRelease", description="e.g. '6.1.0'; compared numerically.")
    action: Literal["retire", "report"] = Field(
        "retire", description="An out-of-patch kernel cannot be reverted: retire the node, or only report."
    )

    @field_validator("minimum_release")
    @classmethod
    def _v_release(cls, v: str) -> str:
        if not re.match(r"^\d+(\.\d+){0,3}$", v):
            raise ValueError("minimumRelease must look like '6.1' or '6.1.0'")
        return v


_PKG_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9+._-]{0,127}$")
_PKG_VERSION_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9.+~:_^-]{0,127}$")
_PKG_RANGE_RE = re.compile(r"^(?:(?:>=|<=|!=|>|<|=)?[A-Za-z0-9][A-Za-z0-9.+~:_^-]{0,127})(?:\|(?:>=|<=|!=|>|<|=)?[A-Za-z0-9][A-Za-z0-9.+~:_^-]{0,127})*$")


class Severity(StrEnum):
    """How bad an out-of-patch package is (the PolicyReport's severities; a metric label)."""

    CRITICAL = "critical"
    HIGH = "high"
    MEDIUM = "medium"
    LOW = "low"
    INFO = "info"


class PackageRule(Rule):
    """An installed package held to a version: at least ``minimum``, inside ``versions``, or ``absent``.

    Read from the host's own package database under --host-root (dpkg, apk or RPM sqlite) and
    compared with that distribution's version rules.  A package that is not installed satisfies
    ``minimum`` and ``versions`` (nothing installed is nothing out of patch).
    """

    name: str = Field(description="Package name as the package database spells it (e.g. openssl, openssh-server).")
    minimum: str | None = Field(default=None, description="Lowest acceptable version in the distribution's syntax, "
                                "e.g. '3.0.15-1~deb12u1' (dpkg), '1:3.0.7-27.el9' (rpm), '3.1.4-r5' (apk).")
    versions: str | None = Field(default=None, description="Allowed versions as a vers constraint list "
                                 "(https://github.com/package-url/vers-spec), e.g. '>=1.9.13p3-1|<1.9.16'.")
    absent: bool = Field(default=False, description="The package must not be installed.")
    severity: Severity = Field(default=Severity.MEDIUM, description="critical, high, medium, low or info.")
    reason: str | None = Field(default=None, description="Why: an advisory id (DSA-5764-1, CVE-2024-6387) or a policy.")
    action: Literal["report", "retire", "hook"] = Field(
        "report", description="What an out-of-patch package makes driftd do: report it, retire the node (after "
        "safety.retire.after_seconds, under the retirement budgets and the cluster cap), or run the operator's "
        "patch_hook (plain servers).",
    )

    @field_validator("name")
    @classmethod
    def _v_name(cls, v: str) -> str:
        if not _PKG_NAME_RE.match(v):
            raise ValueError(f"invalid package name {v!r}")
        return v

    @field_validator("minimum")
    @classmethod
    def _v_minimum(cls, v: str | None) -> str | None:
        if v is not None and not _PKG_VERSION_RE.match(v):
            raise ValueError(f"invalid version {v!r}: a version has no spaces and starts with a letter or digit")
        return v

    @field_validator("versions")
    @classmethod
    def _v_versions(cls, v: str | None) -> str | None:
        if v is None:
            return None
        v = v.removeprefix("vers:").split("/", 1)[-1] if v.startswith("vers:") else v
        v = "".join(v.split())
        if not _PKG_RANGE_RE.match(v):
            raise ValueError(f"invalid versions {v!r}: use vers constraints joined by '|', e.g. '>=1.2-1|<2.0'")
        return v

    @field_validator("reason")
    @classmethod
    def _v_reason(cls, v: str | None) -> str | None:
        if v is not None and (not v.strip() or len(v) > 200 or "\n" in v):
            raise ValueError("reason must be one line of at most 200 characters")
        return v

    @model_validator(mode="after")
    def _one_requirement(self) -> PackageRule:
        given = [f for f, v in (("minimum", self.minimum), ("versions", self.versions)) if v is not None]
        if self.absent and given:
            raise ValueError(f"an absent package cannot also set {' or '.join(given)}")
        if not self.absent and len(given) != 1:
            raise ValueError("set exactly one of minimum, versions or absent: true")
        return self


class Timing(Strict):
    """What every baseline kind's spec starts with: its mode, its window and its grace."""

    enforcement: Enforcement = Enforcement.ENFORCE
    window: timedelta = Field(
        default=timedelta(minutes=30),
        description="Time allowed from the change (where its time is known, else first detection) to revert, e.g. '30m'.",
    )
    grace: timedelta = Field(
        default=timedelta(0),
        description="Wait this long after a change before acting on it (for changes that settle, e.g. '2m'); "
        "0 acts at once. Must be shorter than window.",
    )

    @field_validator("window", mode="before")
    @classmethod
    def _v_window(cls, v: object) -> timedelta:
        return parse_duration(v)

    @field_validator("grace", mode="before")
    @classmethod
    def _v_grace(cls, v: object) -> timedelta:
        return timedelta(0) if v in (0, "0", "0s") else parse_duration(v)

    @model_validator(mode="after")
    def _v_grace_in_window(self) -> Timing:
        if self.grace >= self.window:
            raise ValueError(f"grace ({self.grace}) must be shorter than window ({self.window}): "
                             "a drift would pass its deadline before driftd may act")
        return self


_RULE_FIELDS: dict[type, dict[str, type[Rule]]] = {}


class HostSpec(Timing):
    selector: HostSelector = Field(default_factory=HostSelector)
    files: list[ManagedFile] = Field(default_factory=list)
    directories: list[ManagedDirectory] = Field(default_factory=list)
    sysctls: list[Sysctl] = Field(default_factory=list)
    kernel: KernelRule | None = None
    packages: list[PackageRule] = Field(default_factory=list, description="Installed packages held to versions.")
    retire_on_failure: bool = Field(
        False,
        alias="retireOnFailure",
        description="Retire the node when a remediation of this baseline keeps failing (a file that cannot be restored).",
    )

    @classmethod
    def rule_fields(cls) -> dict[str, type[Rule]]:
        """Each field that holds rules and its rule model (files -> ManagedFile, kernel -> KernelRule, ...)."""
        found = _RULE_FIELDS.get(cls)
        if found is None:
            found = {}
            for name, info in cls.model_fields.items():
                for t in (info.annotation, *typing.get_args(info.annotation)):
                    for c in typing.get_args(t) or (t,):
                        if isinstance(c, type) and issubclass(c, Rule):
                            found[name] = c
            _RULE_FIELDS[cls] = found
        return found

    def rules(self) -> Iterator[tuple[str, int | None, Rule]]:
        """Every rule with its field's YAML name and list index, found from the fields (no list of kinds)."""
        for name, info in type(self).model_fields.items():
            value = getattr(self, name)
            alias = info.alias or name
            if isinstance(value, list):
                for i, rule in enumerate(value):
                    if isinstance(rule, Rule):
                        yield alias, i, rule
            elif isinstance(value, Rule):
                yield alias, None, value


class Metadata(Strict):
    name: str = Field(description="DNS-1123 name, unique across the baseline set.")
    labels: dict[str, str] = Field(default_factory=dict)
    annotations: dict[str, str] = Field(default_factory=dict)

    @field_validator("name")
    @classmethod
    def _v_name(cls, v: str) -> str:
        if not _NAME_RE.match(v):
            raise ValueError("name must be a lowercase DNS-1123 name (a-z, 0-9, '-', '.')")
        return v


class HostBaseline(Strict):
    """``kind: HostBaseline``: files, directories and sysctls of a node or server."""

    api_version: Literal["driftd.io/v1alpha1"] = Field(alias="apiVersion")
    kind: Literal["HostBaseline"]
    metadata: Metadata
    spec: HostSpec
