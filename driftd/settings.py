"""Settings: one pydantic root, built once in the CLI and passed down.

Precedence, highest first: CLI flags, ``DRIFTD_*`` environment variables (nested
sections with ``__``, e.g. ``DRIFTD_SCAN__INTERVAL_SECONDS=120``; a list, mapping or
section as JSON), the YAML config file (``--config`` or ``DRIFTD_CONFIG``), then the
defaults below.  Every field is documented with its unit; ``docs/configuration.md`` lists
them.  The sources are merged here (:func:`load_settings`) and validated once by pydantic:
pydantic-settings did the same for ~75 ms of imports (asyncio, dotenv, cloud providers) on
every ``run --once``.
"""

from __future__ import annotations

import json
import os
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ScanSettings(_Section):
    interval_seconds: float = Field(300.0, gt=0, description="Cadence of the full scan, in seconds.")
    jitter_seconds: float = Field(30.0, ge=0, description="Random delay added to each scheduled scan, in seconds.")
    full_rehash_interval_seconds: float = Field(
        3600.0, ge=0, description="How often a scan re-hashes every file even if size, mtime, ctime and inode are unchanged."
    )
    inotify: bool = Field(True, description="Watch managed host paths with inotify (reverts in seconds); the scan stays on.")
    inotify_debounce_seconds: float = Field(0.2, ge=0, description="Quiet time after a host path's last event before it is enqueued.")


class RetrySettings(_Section):
    base_seconds: float = Field(1.0, gt=0, description="First retry delay after a failed remediation.")
    max_seconds: float = Field(300.0, gt=0, description="Cap on the retry delay.")
    attempts_per_pass: int = Field(4, ge=1, description="Attempts per key in one `run --once` pass.")
    escalate_after: int = Field(3, ge=1, description="Consecutive failures after which a drift is escalated (log + metric).")


def _host_port(v: str) -> tuple[str, int]:
    host, _, port = v.rpartition(":")
    return host.strip("[]"), int(port)


def _check_address(v: str, example: str) -> str:
    host, sep, port = v.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) < 65536:
        raise ValueError(f"address must be host:port, e.g. {example}")
    return v


def is_loopback(host: str) -> bool:
    """127.0.0.0/8, ::1 or localhost: only this machine can connect."""
    import ipaddress

    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class HttpSettings(_Section):
    address: str = Field("127.0.0.1:9808", description="host:port of the metrics listener: /metrics, /healthz, /readyz.")
    api_address: str = Field(
        "127.0.0.1:9809", description="host:port of the drifts API (/api/v1/drifts: paths and errors); the same as "
        "address serves everything on one listener."
    )
    api_auth: Literal["none", "kubernetes"] = Field(
        "none", description="Who may read the drifts API: none (only allowed on a loopback api_address) or kubernetes "
        "(bearer token, TokenReview + SubjectAccessReview: get on resource drifts.driftd.io named after the node)."
    )
    metrics_auth: Literal["none", "kubernetes"] = Field(
        "none", description="Who may scrape /metrics: none or kubernetes (as api_auth, nonResourceURL /metrics); "
        "/healthz and /readyz stay open for probes."
    )
    auth_audiences: list[str] = Field(
        default_factory=list, description="Audiences a token must carry (TokenReview spec.audiences); empty = the API server's."
    )
    auth_cache_seconds: float = Field(
        60.0, ge=0, description="How long an authentication/authorisation decision (allowed or denied) is reused."
    )
    tls_cert_file: Path | None = Field(None, description="PEM certificate (chain): serve both listeners over HTTPS (TLS >= 1.2).")
    tls_key_file: Path | None = Field(None, description="PEM private key of tls_cert_file.")
    request_timeout_seconds: float = Field(
        10.0, gt=0, description="Per connection: TLS handshake, reading the request and writing the answer, in seconds."
    )
    max_connections: int = Field(
        16, ge=1, le=1024, description="Handler threads per listener; further connections wait (up to request_timeout_seconds) "
        "for one."
    )

    @field_validator("address")
    @classmethod
    def _v_address(cls, v: str) -> str:
        return _check_address(v, "127.0.0.1:9808")

    @field_validator("api_address")
    @classmethod
    def _v_api_address(cls, v: str) -> str:
        return _check_address(v, "127.0.0.1:9809")

    @model_validator(mode="after")
    def _v_exposure(self) -> HttpSettings:
        if self.api_auth == "none" and not is_loopback(self.api_host_port[0]):
            raise ValueError(
                f"http.api_auth none serves /api/v1/drifts (paths and errors) to anyone who can connect: it is only allowed "
                f"on a loopback http.api_address, not {self.api_address}; set http.api_auth: kubernetes or "
                f"http.api_address: 127.0.0.1:PORT"
            )
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            raise ValueError("http.tls_cert_file and http.tls_key_file go together: set both or neither")
        return self

    @property
    def host_port(self) -> tuple[str, int]:
        return _host_port(self.address)

    @property
    def api_host_port(self) -> tuple[str, int]:
        return _host_port(self.api_address)


class LogSettings(_Section):
    format: Literal["auto", "json", "console"] = Field("auto", description="auto = JSON unless stderr is a terminal.")
    level: Literal["debug", "info", "warning", "error"] = "info"


class DockerSettings(_Section):
    enabled: bool = Field(False, description="Enable the Docker target (imports the docker SDK).")
    url: str = Field("unix:///var/run/docker.sock", description="Docker Engine API endpoint.")
    stop_timeout_seconds: int = Field(10, ge=0, description="Grace period when stopping a container to recreate or retire it.")
    file_snapshot_max_bytes: int = Field(1024 * 1024, ge=0, description="Largest changed file copied into a container snapshot.")
    skip_kubelet_containers: bool = Field(True, description="Leave containers managed by the kubelet to the Kubernetes target.")


class KubernetesSettings(_Section):
    enabled: bool = Field(False, description="Enable the Kubernetes target (imports the kubernetes client).")
    kubeconfig: str | None = Field(None, description="Kubeconfig file; unset = the pod's service account (in-cluster).")
    namespace: str = Field("driftd", description="driftd's own namespace: its PolicyReports and the retirement Lease live here.")
    report_max_results: int = Field(200, ge=1, description="Results kept in the node's PolicyReport (failures first).")
    drain_timeout_seconds: float = Field(300.0, gt=0, description="How long a node drain may take before it is reported failed.")
    eviction_retry_seconds: float = Field(5.0, gt=0, description="Pause between eviction rounds while PDBs refuse.")
    template_guard_seconds: float = Field(
        900.0, ge=0, description="After evicting a controller's pod, do not evict its replacement for the same rules this long "
        "(kept in the state store: a restart does not reset it). Rules the controller's template itself breaks are never evicted for."
    )
    exclude_namespaces: list[str] = Field(
        default_factory=list, description="Namespaces (glob patterns) whose pods are never governed, on top of each "
        "PodBaseline's own selector.excludeNamespaces."
    )
    max_concurrent_retirements: int = Field(1, ge=1, description="Nodes of the cluster retiring (or cooling down) at once.")
    max_retirements_per_hour: int = Field(1, ge=0, description="Node retirements that may start across the cluster per hour.")
    retirement_cooldown_seconds: float = Field(
        3600.0, ge=0, description="A retirement's cluster slot stays taken this long after its drain finished."
    )
    events: bool = Field(True, description="Record Kubernetes Events on pods and the node.")
    policy_report: bool = Field(True, description="Maintain one PolicyReport (wgpolicyk8s.io/v1alpha2) per node.")


class BudgetSettings(_Section):
    interval_seconds: float = Field(3600.0, gt=0, description="The sliding interval budgets are counted over.")
    reverts_per_node: int = Field(2000, ge=0, description="Reverts (rewrites, recreates, evictions) one node may do per interval.")
    reverts_per_baseline: int = Field(1000, ge=0, description="Reverts one baseline may cause on this node per interval.")
    retirements_per_node: int = Field(20, ge=0, description="Container/pod retirements and node retirements per interval.")
    retirements_per_baseline: int = Field(10, ge=0, description="Retirements one baseline may cause on this node per interval.")


class BreakerSettings(_Section):
    share: float = Field(0.5, gt=0, le=1, description="Share of a baseline's resources drifting at once that opens its breaker.")
    min_resources: int = Field(10, ge=1, description="Fewest drifting resources that can open a breaker (small baselines never trip).")
    retirement_share: float = Field(
        0.2, gt=0, le=1, description="The stricter share for retirements (container/pod retire, node retirement)."
    )
    retirement_min_resources: int = Field(3, ge=1, description="Fewest resources whose retirement can open the retirement breaker.")


class FlapSettings(_Section):
    reverts: int = Field(5, ge=1, description="Reverts of the same drift on one resource that make it flapping...")
    window_seconds: float = Field(1800.0, gt=0, description="...within this many seconds; acting then stops until a reset.")


class BreakGlassSettings(_Section):
    max_ttl_seconds: float = Field(24 * 3600.0, gt=0, description="Longest override `driftd pause` or an annotation may ask for.")


class RetireSettings(_Section):
    after_seconds: float = Field(600.0, ge=0, description="A finding must persist this long before anything is retired for it.")
    dry_run: bool = Field(False, description="Report retirements only, while reverts are enforced.")


DAY = 86400.0


class RetentionSettings(_Section):
    """How long driftd keeps history (state rows, snapshots, in-memory outcomes); ``Engine.prune`` applies it."""

    enabled: bool = Field(True, description="Prune history on the daemon's prune job (off: keep everything).")
    interval_seconds: float = Field(600.0, gt=0, description="How often the daemon prunes (seconds).")
    resolved_drift_max_age_seconds: float = Field(
        7 * DAY, ge=60, description="Resolved drift records older than this are deleted (seconds); open ones never.")
    actions_max_age_seconds: float = Field(
        7 * DAY, ge=60, description="Action rows older than this are deleted (seconds), except those of open drifts; "
        "at least the budget interval and the flap window, which count them.")
    snapshots_max_age_seconds: float = Field(
        7 * DAY, ge=60, description="Snapshots older than this are deleted (seconds) unless an open drift or a key's "
        "latest action names them.")
    snapshots_max_bytes: int = Field(
        256 * 1024 * 1024, ge=0, description="Total size of the snapshot store (bytes); above it the oldest snapshots no "
        "open drift or latest action names are deleted first.")
    outcomes_max: int = Field(
        50_000, ge=100, description="Most per-resource outcomes the daemon keeps in memory (entries); keys a full scan "
        "no longer sees are dropped first.")


class SafetySettings(_Section):
    deadline_margin_seconds: float = Field(
        300.0, ge=0, description="A drift this close to its deadline counts in driftd_drifts_near_deadline."
    )
    budget: BudgetSettings = Field(default_factory=BudgetSettings)
    breaker: BreakerSettings = Field(default_factory=BreakerSettings)
    flap: FlapSettings = Field(default_factory=FlapSettings)
    break_glass: BreakGlassSettings = Field(default_factory=BreakGlassSettings)
    retire: RetireSettings = Field(default_factory=RetireSettings)


class GuardrailSettings(_Section):
    extra_paths: list[str] = Field(
        default_factory=list,
        description="More host paths (globs; '*' spans '/', a trailing '/**' covers a whole tree) a baseline may "
        "only manage with allowDangerous, on top of the built-in list.",
    )
    extra_sysctls: list[str] = Field(
        default_factory=list, description="More sysctl keys (globs) a baseline may only set with allowDangerous."
    )


class AuditSettings(_Section):
    enabled: bool = Field(True, description="Keep the hash-chained audit log of every action and deliberate non-action.")
    path: Path | None = Field(None, description="Directory of the audit log; unset = <state_dir>/audit.")
    max_bytes: int = Field(16 * 1024 * 1024, ge=1024, description="Size at which audit.jsonl is rotated to audit.jsonl.1.")
    keep: int = Field(10, ge=1, description="Rotated audit files kept (audit.jsonl.1 .. .N); the oldest is dropped.")


class Settings(BaseModel):
    """Root of every driftd setting."""

    model_config = ConfigDict(extra="forbid", validate_default=True)

    host_root: Path = Field(Path("/"), description="Where the host filesystem is mounted (/host in the DaemonSet).")
    baselines: Path = Field(Path("/etc/driftd/baselines"), description="Directory of baseline YAML files.")
    require_signature: bool = Field(
        False, description="Load only a baseline set signed (`driftd baseline sign`, SSHSIG) by a key in allowed_signers; "
        "an unsigned, wrongly signed or altered set is rejected like an invalid one."
    )
    allowed_signers: Path | None = Field(
        None, description="OpenSSH allowed_signers file of the keys that may sign baseline sets (needed by require_signature)."
    )
    state_dir: Path = Field(Path("/var/lib/driftd"), description="SQLite state and snapshots.")
    dry_run: bool = Field(False, description="Never change anything, whatever the baselines say.")
    node_name: str | None = Field(
        None, description="Node name for selectors; default: $NODE_NAME, <host-root>/etc/hostname, hostname."
    )
    node_labels: dict[str, str] = Field(default_factory=dict, description="Node labels for selectors.")
    workers: int = Field(2, ge=1, le=32, description="Reconcile worker threads in the daemon.")
    reload_interval_seconds: float = Field(10.0, gt=0, description="How often the baselines directory is checked for changes.")
    baseline_file_max_bytes: int = Field(8 * 1024 * 1024, gt=0, description="Largest baseline or source file accepted.")
    snapshot_max_bytes: int = Field(
        64 * 1024 * 1024, gt=0, description="Largest drifted file kept as a snapshot; larger ones are not overwritten."
    )
    scan: ScanSettings = Field(default_factory=ScanSettings)
    retry: RetrySettings = Field(default_factory=RetrySettings)
    http: HttpSettings = Field(default_factory=HttpSettings)
    log: LogSettings = Field(default_factory=LogSettings)
    docker: DockerSettings = Field(default_factory=DockerSettings)
    kubernetes: KubernetesSettings = Field(default_factory=KubernetesSettings)
    safety: SafetySettings = Field(default_factory=SafetySettings)
    guardrails: GuardrailSettings = Field(default_factory=GuardrailSettings)
    audit: AuditSettings = Field(default_factory=AuditSettings)
    retention: RetentionSettings = Field(default_factory=RetentionSettings)
    retire_hook: list[str] | None = Field(
        None, description="On a plain server: command run to retire this machine (argv list); gets DRIFTD_NODE and DRIFTD_REASON."
    )
    patch_hook: list[str] | None = Field(
        None, description="On a plain server: command run for a package rule with action 'hook' (argv list, e.g. "
        "['unattended-upgrade']); gets DRIFTD_NODE, DRIFTD_REASON, DRIFTD_PACKAGE, DRIFTD_INSTALLED, DRIFTD_REQUIRED "
        "and DRIFTD_HOST_ROOT; its output goes to the audit log.",
    )
    patch_hook_timeout_seconds: float = Field(1800.0, gt=0, description="How long the patch hook may run before it counts as failed.")

    @model_validator(mode="after")
    def _v_retention(self) -> Settings:
        need = max(self.safety.budget.interval_seconds, self.safety.flap.window_seconds)
        if self.retention.actions_max_age_seconds < need:
            raise ValueError(
                f"retention.actions_max_age_seconds ({self.retention.actions_max_age_seconds:g}) must be at least "
                f"{need:g}: the budget interval and the flap window count action rows that far back")
        return self

    @model_validator(mode="after")
    def _v_signature(self) -> Settings:
        if self.require_signature and self.allowed_signers is None:
            raise ValueError("require_signature needs allowed_signers: the allowed_signers file of the keys that may sign")
        return self

    @property
    def baseline_signers(self) -> Path | None:
        """The allowed_signers file baseline sets are verified against (None: signatures not required)."""
        return self.allowed_signers if self.require_signature else None

    def resolved_node_name(self) -> str:
        if self.node_name:
            return self.node_name
        if env := os.environ.get("NODE_NAME"):
            return env
        try:
            name = (self.host_root / "etc/hostname").read_text().strip()
            if name:
                return name
        except OSError:
            pass
        import socket

        return socket.gethostname()


ENV_PREFIX = "DRIFTD_"
ENV_NESTED_DELIMITER = "__"


def load_settings(config_file: str | None = None, **overrides: Any) -> Settings:
    """Build the settings root; ``overrides`` are CLI flags (None means not given).

    ``config_file`` (else ``$DRIFTD_CONFIG``) is the YAML file.  Raises ``ValueError`` for a
    config file or variable that cannot be read as settings, pydantic's ``ValidationError``
    (a ``ValueError`` too) for values out of range, with the setting's dotted location.
    """
    merged = _config_file(config_file or os.environ.get("DRIFTD_CONFIG"))
    _deep_update(merged, env_values(os.environ))
    _deep_update(merged, {k: v for k, v in overrides.items() if v is not None})
    return Settings.model_validate(merged)


def _config_file(path: str | None) -> dict[str, Any]:
    if not path:
        return {}
    with open(path, encoding="utf-8") as fh:
        text = fh.read()
    import yaml  # only when there is a file to read

    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as e:  # a ValueError, so the CLI reports it as a usage error
        raise ValueError(f"{path}: config file is not valid YAML: {e}") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: config file must be a mapping")
    return {str(k).replace("-", "_"): v for k, v in data.items()}


def env_values(environ: Mapping[str, str]) -> dict[str, Any]:
    """The settings ``DRIFTD_*`` variables give, as nested raw values (validated later, with the rest).

    Names are case-insensitive; ``__`` descends into a section (``DRIFTD_SAFETY__BUDGET__REVERTS=5``).
    A value whose setting is a list, a mapping or a section is JSON (``DRIFTD_NODE_LABELS='{"zone": "a"}'``,
    ``DRIFTD_RETIRE_HOOK='["/usr/local/bin/retire"]'``); any other is the string, which pydantic converts.
    A variable naming no top-level setting (``DRIFTD_CONFIG`` among them) is not a setting and is left alone;
    an unknown key inside a section is rejected like one in the config file.
    """
    out: dict[str, Any] = {}
    for name in sorted(environ):  # sorted: a section's JSON, then its keys on top, whatever the environment's order
        if not name.upper().startswith(ENV_PREFIX):
            continue
        path = name[len(ENV_PREFIX):].lower().split(ENV_NESTED_DELIMITER)
        if path[0] not in Settings.model_fields or not all(path):
            continue
        raw = environ[name]
        value: Any = raw
        if _is_complex(_annotation_at(path)):
            try:
                value = json.loads(raw)
            except ValueError:
                raise ValueError(f"environment variable {name}: not valid JSON for setting {'.'.join(path)}") from None
        node = out
        for part in path[:-1]:
            child = node.get(part)
            if not isinstance(child, dict):
                child = node[part] = {}
            node = child
        leaf = path[-1]
        if isinstance(value, dict) and isinstance(node.get(leaf), dict):
            _deep_update(node[leaf], value)
        else:
            node[leaf] = value
    return out


def _annotation_at(path: list[str]) -> Any:
    """The type annotation of the setting at ``path`` (None below a mapping or an unknown key)."""
    model: Any = Settings
    ann: Any = None
    for part in path:
        fields = getattr(model, "model_fields", None) if isinstance(model, type) else None
        if fields is None or part not in fields:
            return None
        ann = fields[part].annotation
        model = _model_in(ann)
    return ann


def _model_in(ann: Any) -> Any:
    if isinstance(ann, type) and issubclass(ann, BaseModel):
        return ann
    for arg in typing.get_args(ann):
        if isinstance(arg, type) and issubclass(arg, BaseModel):
            return arg
    return None


def _is_complex(ann: Any) -> bool:
    """A list, tuple, set, mapping or section (or an Optional of one): given as JSON in the environment."""
    if ann is None:
        return False
    origin = typing.get_origin(ann)
    if origin in (typing.Union, types.UnionType):
        return any(_is_complex(a) for a in typing.get_args(ann) if a is not type(None))
    if origin in (list, tuple, set, frozenset, dict):
        return True
    return isinstance(ann, type) and (issubclass(ann, BaseModel) or ann in (list, tuple, set, frozenset, dict))


def _deep_update(into: dict[str, Any], new: Mapping[str, Any]) -> None:
    """Merge ``new`` into ``into``: sections key by key, anything else replaced."""
    for k, v in new.items():
        if isinstance(v, Mapping) and isinstance(into.get(k), dict):
            _deep_update(into[k], v)
        else:
            into[k] = dict(v) if isinstance(v, Mapping) else v
