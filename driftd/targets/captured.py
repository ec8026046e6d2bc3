"""Captured state: ``driftd state export`` writes what driftd observes on a node; replaying targets read it back.

Pipeline position: the observe end of the pipeline, without the node.  :func:`capture` runs on the node, through
the real targets, read-only (their ``desired``/``discover``/``observe`` and read calls, never ``apply``), and
returns one JSON document (``driftd.io/state-export/v1``): the node, the baseline set in force, every governed
resource's observed fields, and for containers and pods the documents a *different* baseline set needs to be
compiled and observed against later (the listing, a trimmed inspect document with its filesystem changes, the
pod objects, the local image table).  :func:`captured_targets` turns such a document into a host, a Docker and a
Kubernetes target (names and keys as the live ones) that ``driftd plan --state`` runs the engine over in plan
mode: ``desired``/``discover`` compile the NEW set through the same pure code as the live targets
(``core.compile``, ``core.compile_container.desired_container``, ``core.pod_policy.desired_pod``), ``observe``
serves the capture through the same kind handlers, and ``apply`` raises: a capture is never acted on.

Secrets never leave the node: a file's content is only ever its sha256 (the host kinds observe no bytes); the
values of container and pod environment variables, and every field a baseline marks sensitive, are replaced by
a keyed hash (``hmac-sha256:<hex>``, HMAC-SHA256 under a random salt kept in the export).  Names stay.  The
keyed hash is enough to tell later whether a value equals what another set wants (the replay hashes the wanted
value and compares), and, unlike a bare sha256, cannot be looked up in a table of precomputed hashes nor
correlated across exports.  ``kubectl.kubernetes.io/last-applied-configuration`` (a copy of the manifest, env
values included) and ``managedFields`` are dropped from pods.
"""

from __future__ import annotations

import copy
import hashlib
import hmac
import json
import os
import threading
from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

from driftd.baselines.loader import BaselineSet
from driftd.core import kinds
from driftd.core.compile import iter_host, with_ids
from driftd.core.compile_container import ContainerSummary, desired_container, ungoverned_policy
from driftd.core.container_engine import observed_subset
from driftd.core.pod_policy import desired_pod
from driftd.models.container import ContainerBaseline
from driftd.models.pod import PodBaseline
from driftd.models.resources import ActResult, DesiredResource, ObservedResource, Plan, PlannedAction
from driftd.targets.base import NodeInfo, ResourceGoneError, TargetError
from driftd.targets.host import HostTarget, parse_id_db

SCHEMA = "driftd.io/state-export/v1"
HASHED = "hmac-sha256:"  # the prefix of a hashed secret value
LAST_APPLIED = "kubectl.kubernetes.io/last-applied-configuration"
_PROBE_DIGEST = "sha256:"  # an expected content that makes the file kind hash a file whatever the set governs


class ExportError(ValueError):
    """A file that is not a state export this driftd can read."""


def token(salt: bytes, value: Any) -> str:
    """The keyed hash that stands for a secret value in an export."""
    data = json.dumps(value, sort_keys=True, default=str).encode()
    return HASHED + hmac.new(salt, data, hashlib.sha256).hexdigest()


def _redact_field(salt: bytes, value: Any) -> Any:
    """A sensitive field's value as exported: a mapping keeps its keys (env names), every value is hashed."""
    if isinstance(value, dict):
        return {k: token(salt, v) for k, v in value.items()}
    return None if value is None else token(salt, value)


def _reveal(salt: bytes, live: Any, want: Any) -> Any:
    """A hashed live value as the value wanted when the two are equal; anything else stays as captured."""
    if isinstance(live, str) and live.startswith(HASHED):
        return want if not isinstance(want, dict) and hmac.compare_digest(token(salt, want), live) else live
    if isinstance(live, dict) and isinstance(want, dict):
        inner = want.get("$contains", want)
        if isinstance(inner, dict):
            return {k: _reveal(salt, v, inner[k]) if k in inner else v for k, v in live.items()}
    return live


def _redact_env_list(salt: bytes, env: list[str]) -> list[str]:
    """``["NAME=value"]`` (an inspect document's ``Config.Env``) with every value hashed."""
    out = []
    for e in env:
        name, sep, value = e.partition("=")
        out.append(f"{name}={token(salt, value)}" if sep else e)
    return out


def redact_pod(salt: bytes, pod: Mapping[str, Any]) -> dict[str, Any]:
    """A pod object fit for an export: env values hashed, the last-applied manifest and managed fields dropped."""
    out: dict[str, Any] = copy.deepcopy(dict(pod))
    meta = out.get("metadata") or {}
    meta.pop("managedFields", None)
    ann = meta.get("annotations")
    if isinstance(ann, dict):
        ann.pop(LAST_APPLIED, None)
    spec = out.get("spec") or {}
    for group in ("containers", "initContainers", "ephemeralContainers"):
        for c in spec.get(group) or []:
            for e in c.get("env") or []:
                if "value" in e:
                    e["value"] = token(salt, e["value"])
    return out


def _iso(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _row(d: DesiredResource) -> dict[str, Any]:
    return {"key": d.key, "target": d.target, "kind": d.kind, "address": d.address, "baseline": d.baseline}


def _observed_row(salt: bytes, d: DesiredResource, obs: ObservedResource) -> dict[str, Any]:
    actual = dict(obs.actual)
    for f in d.sensitive:
        if f in actual:
            actual[f] = _redact_field(salt, actual[f])
    return {**_row(d), "actual": actual, "changed_at": obs.changed_at}


# --------------------------------------------------------------------------- capture (on the node)


def _capture_host(host: HostTarget, bset: BaselineSet, node: NodeInfo, salt: bytes) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    ids: dict[str, dict[str, int]] = {}
    for name, path in (("users", "/etc/passwd"), ("groups", "/etc/group")):
        raw = None
        try:
            raw = host.fs.read_optional(path, 16 * 1024 * 1024)
        except (OSError, ValueError):
            raw = None
        ids[name] = parse_id_db(raw.decode("utf-8", "replace")) if raw else {}
    host.begin_pass(full=True)
    rows = []
    for d in host.desired(bset, node):
        probe = d
        if d.kind == "file" and "content" not in d.expected:  # the digest too: another set may govern the content
            probe = d.model_copy(update={"expected": {**d.expected, "content": _PROBE_DIGEST}})
        try:
            rows.append(_observed_row(salt, d, host.observe(probe)))
        except TargetError as e:
            rows.append({**_row(d), "error": str(e)})
    return rows, ids


def _capture_docker(docker: Any, bset: BaselineSet, node: NodeInfo, salt: bytes) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    docker.desired(bset, node)
    port = docker.port()
    containers = []
    for c in docker.listing():
        try:
            ins = port.inspect(c.name)
            changes = port.changes(ins["Id"]) or []
        except ResourceGoneError:
            continue  # removed since the listing
        doc = observed_subset(ins)
        cfg = doc.get("Config") or {}
        if cfg.get("Env"):
            cfg["Env"] = _redact_env_list(salt, list(cfg["Env"]))
        containers.append({
            "summary": {"id": c.id, "name": c.name, "image_id": c.image_id, "labels": dict(c.labels)},
            "inspect": doc,
            "changes": [{"Path": ch.get("Path"), "Kind": ch.get("Kind")} for ch in changes],
            "event_time": port.event_time(c.name),
        })
    rows = []
    for d in docker.discover():
        try:
            rows.append(_observed_row(salt, d, docker.observe(d)))
        except ResourceGoneError:
            continue
        except TargetError as e:
            rows.append({**_row(d), "error": str(e)})
    section = {"images": docker.image_ids(), "containers": containers,
               "skip_kubelet_containers": bool(docker.skip_kubelet_containers)}
    return rows, section


def _capture_pods(kube: Any, bset: BaselineSet, node: NodeInfo, salt: bytes) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    from driftd.targets.kubernetes.client import node_pods

    kube.desired(bset, node)
    path, query = node_pods(kube.node_name)
    pods = [redact_pod(salt, p) for p in kube.api("GET", path, query=query).get("items") or []]
    rows = []
    for d in kube.discover():
        try:
            rows.append(_observed_row(salt, d, kube.observe(d)))
        except ResourceGoneError:
            continue
        except TargetError as e:
            rows.append({**_row(d), "error": str(e)})
    return rows, {"pods": pods, "exclude_namespaces": list(kube.exclude_namespaces)}


def capture(targets: Mapping[str, Any], bset: BaselineSet, node: NodeInfo, *, state: Mapping[str, Any],
            now: float, version: str, salt: bytes | None = None) -> dict[str, Any]:
    """The export document of this node: what every target observes of what ``bset`` governs, secrets hashed.

    ``state`` is the node's open drift records, recent actions and guards (``engine.preview.read_state``).  A
    target that cannot be reached is recorded under ``targets_down`` (its resources are then not in the capture).
    """
    salt = salt if salt is not None else os.urandom(32)
    doc: dict[str, Any] = {
        "schema": SCHEMA, "driftd": version, "taken_at": _iso(now), "taken_at_unix": now,
        "node": {"name": node.name, "labels": dict(node.labels)}, "baselines": bset.version,
        "redaction": {"scheme": "hmac-sha256", "salt": salt.hex(),
                      "note": "file content as sha256 only; env values and sensitive fields as HMAC-SHA256 under salt"},
        "resources": [], "host": None, "docker": None, "kubernetes": None, "targets_down": {}, "state": dict(state),
    }
    resources: list[dict[str, Any]] = doc["resources"]
    for name, target in targets.items():
        try:
            if isinstance(target, HostTarget):
                rows, ids = _capture_host(target, bset, node, salt)
                doc["host"] = ids
            elif name == "docker":
                rows, doc["docker"] = _capture_docker(target, bset, node, salt)
            elif name == "kubernetes":
                rows, doc["kubernetes"] = _capture_pods(target, bset, node, salt)
            else:
                continue
        except TargetError as e:
            doc["targets_down"][name] = str(e)
            continue
        resources.extend(rows)
    return doc


def load(text: str, *, source: str = "export") -> dict[str, Any]:
    """Parse an export; raises :class:`ExportError` for anything that is not one."""
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as e:
        raise ExportError(f"{source}: not JSON: {e}") from None
    if not isinstance(doc, dict) or doc.get("schema") != SCHEMA:
        got = doc.get("schema") if isinstance(doc, dict) else type(doc).__name__
        raise ExportError(f"{source}: not a driftd state export (schema {got!r}, expected {SCHEMA})")
    node = doc.get("node")
    if not isinstance(node, dict) or not node.get("name") or not isinstance(doc.get("resources"), list):
        raise ExportError(f"{source}: a state export without its node name or resources")
    try:
        bytes.fromhex((doc.get("redaction") or {}).get("salt", ""))
    except (TypeError, ValueError):
        raise ExportError(f"{source}: the redaction salt is not hex") from None
    return doc


# --------------------------------------------------------------------------- replay (driftd plan --state)


class _Captured:
    """What the three replaying targets share: the capture, lookups, no acting."""

    name = "captured"

    def __init__(self, doc: Mapping[str, Any]) -> None:
        self.doc = doc
        self.node_name = str(doc["node"]["name"])
        self.salt = bytes.fromhex(str((doc.get("redaction") or {}).get("salt", "")))
        self.rows: dict[str, dict[str, Any]] = {r["key"]: r for r in doc.get("resources") or [] if r.get("target") == self.name}
        self._found: dict[str, DesiredResource] = {}

    def _missing(self, what: str) -> TargetError:
        return TargetError(f"not in the captured state of {self.node_name}: observe it there ({what})", transient=False)

    def _down(self) -> None:
        err = (self.doc.get("targets_down") or {}).get(self.name)
        if err:
            raise TargetError(f"{self.name} was unreachable when the state of {self.node_name} was captured: {err}",
                              transient=False)

    def discover(self) -> list[DesiredResource]:
        return []

    def resolve(self, key: str) -> DesiredResource | None:
        return self._found.get(key)

    def begin_pass(self, *, full: bool) -> None:
        return None

    def apply(self, desired: DesiredResource, observed: ObservedResource, plan: Plan) -> ActResult:
        raise TargetError(f"{desired.address}: captured state of {self.node_name} is never acted on", transient=False)


class _Dynamic(_Captured):
    """Containers and pods come and go: the engine resolves them by key (from this pass's discovery) as an
    event source's; a capture has no events to watch."""

    def watch(self, on_key: Callable[[str], None], stop: threading.Event) -> None:
        return None

    def close(self) -> None:
        return None


class CapturedHost(_Captured):
    """The host resources of the NEW set, observed as the export saw them."""

    name = "host"

    def desired(self, baselines: BaselineSet, node: NodeInfo) -> Iterable[DesiredResource]:
        ids = self.doc.get("host") or {}
        users, groups = ids.get("users") or {}, ids.get("groups") or {}
        # names resolved as the node resolves them
        yield from with_ids(iter_host(baselines.baselines, baselines.sources, node.name, node.labels,
                                      baselines.rule_lines), users, groups)

    def discover(self) -> list[DesiredResource]:
        self._down()
        return []

    def observe(self, desired: DesiredResource) -> ObservedResource:
        row = self.rows.get(desired.key)
        if row is None:
            raise self._missing(desired.key)
        if "error" in row:
            raise TargetError(f"{desired.address}: could not be observed when captured: {row['error']}", transient=False)
        actual = dict(row.get("actual") or {})
        if "content" in desired.expected and actual.get("type") == "file" and "content" not in actual:
            raise self._missing(f"{desired.key} content")
        for f, v in list(actual.items()):
            if f in desired.expected:
                actual[f] = _reveal(self.salt, v, desired.expected[f])
        return ObservedResource(key=desired.key, actual=actual, changed_at=row.get("changed_at"))


class _ContainerPort:
    """The container kinds' port over the captured inspect documents (read side only)."""

    def __init__(self, owner: CapturedContainers) -> None:
        self.owner = owner

    def _one(self, address: str) -> dict[str, Any]:
        c = self.owner.containers.get(address)
        if c is None:
            raise self.owner._missing(f"container {address}")
        return c

    def inspect(self, address: str) -> dict[str, Any]:
        return copy.deepcopy(dict(self._one(address)["inspect"]))

    def changes(self, container_id: str) -> list[dict[str, Any]] | None:
        for c in self.owner.containers.values():
            if c["inspect"].get("Id") == container_id:
                return copy.deepcopy(list(c.get("changes") or []))
        return []

    def event_time(self, address: str) -> float | None:
        t = self._one(address).get("event_time")
        return float(t) if isinstance(t, int | float) else None

    def recreate(self, address: str, runtime: dict[str, Any], image: str) -> None:
        raise TargetError(f"{address}: captured state is never acted on", transient=False)

    def retire(self, address: str) -> None:
        raise TargetError(f"{address}: captured state is never acted on", transient=False)


def _image_id(images: Mapping[str, str], ref: str) -> str | None:
    """An image reference resolved as the engine would from its local images (``busybox`` is ``busybox:latest``)."""
    candidates = [ref]
    short = ref.removeprefix("docker.io/").removeprefix("library/")
    candidates.append(short)
    if "@" not in short and ":" not in short.rsplit("/", 1)[-1]:
        candidates.append(short + ":latest")
    for c in candidates:
        if c in images:
            return images[c]
    if ref.startswith("sha256:"):
        return ref  # an id not present here still approves nothing else
    return None


class CapturedContainers(_Dynamic):
    """The containers the export listed, compiled against the NEW set and observed from their inspect documents."""

    name = "docker"

    def __init__(self, doc: Mapping[str, Any]) -> None:
        super().__init__(doc)
        section = doc.get("docker")
        self.captured = isinstance(section, dict)
        sec: Mapping[str, Any] = section if isinstance(section, dict) else {}
        self.images: dict[str, str] = dict(sec.get("images") or {})
        self.skip_kubelet = bool(sec.get("skip_kubelet_containers", True))
        self.containers: dict[str, dict[str, Any]] = {c["summary"]["name"]: c for c in sec.get("containers") or []}
        self._baselines: tuple[ContainerBaseline, ...] = ()

    def desired(self, baselines: BaselineSet, node: NodeInfo) -> list[DesiredResource]:
        self._baselines = tuple(b for b in baselines.baselines if isinstance(b, ContainerBaseline))
        return []

    def _approved(self, b: ContainerBaseline) -> list[str]:
        return [i for i in (_image_id(self.images, r) for r in b.spec.images.approved) if i is not None]

    def discover(self) -> list[DesiredResource]:
        self._down()
        if not self.captured:  # as a node without --docker; with it, every container counts (ungoverned: report)
            if self._baselines:
                raise self._missing("containers were not captured: export with --docker")
            return []
        policy = ungoverned_policy(self._baselines)
        out = []
        for c in self.containers.values():
            s = c["summary"]
            summary = ContainerSummary(id=s["id"], name=s["name"], image_id=s.get("image_id", ""), labels=s.get("labels") or {})
            d = desired_container(self._baselines, policy, summary, self._approved, target=self.name,
                                  skip_kubelet=self.skip_kubelet)
            if d is not None:
                out.append(d)
        self._found = {d.key: d for d in out}
        return out

    def observe(self, desired: DesiredResource) -> ObservedResource:
        obs = kinds.handler_for(self.name, desired.kind).observe(_ContainerPort(self), desired)
        actual = dict(obs.actual)
        if "env" in actual and "env" in desired.expected:
            actual["env"] = _reveal(self.salt, actual["env"], desired.expected["env"])
        return obs.model_copy(update={"actual": actual})


class CapturedPods(_Dynamic):
    """The pods of the node the export listed, compiled against the NEW set and evaluated as captured."""

    name = "kubernetes"
    key_prefix = "pod"

    def __init__(self, doc: Mapping[str, Any]) -> None:
        super().__init__(doc)
        section = doc.get("kubernetes")
        self.captured = isinstance(section, dict)
        sec: Mapping[str, Any] = section if isinstance(section, dict) else {}
        self.pods: list[dict[str, Any]] = list(sec.get("pods") or [])
        self.exclude_namespaces = tuple(sec.get("exclude_namespaces") or ())
        self._baselines: dict[str, PodBaseline] = {}
        self._by_key: dict[str, dict[str, Any]] = {}

    def desired(self, baselines: BaselineSet, node: NodeInfo) -> list[DesiredResource]:
        self._baselines = {b.metadata.name: b for b in baselines.baselines if isinstance(b, PodBaseline)}
        return []

    def discover(self) -> list[DesiredResource]:
        self._down()
        if not self._baselines:
            return []
        if not self.captured:
            raise self._missing("pods were not captured: export with --kubernetes")
        out = []
        self._by_key = {}
        for pod in self.pods:
            d = desired_pod(self._baselines.values(), pod, node_name=self.node_name,
                            exclude_namespaces=self.exclude_namespaces)
            if d is not None:
                self._by_key[d.key] = pod
                out.append(d)
        self._found = {d.key: d for d in out}
        return out

    # PodPort
    def fetch(self, desired: DesiredResource) -> dict[str, Any]:
        pod = self._by_key.get(desired.key)
        if pod is None:
            raise self._missing(f"pod {desired.address}")
        return copy.deepcopy(pod)

    def baseline(self, name: str) -> PodBaseline | None:
        return self._baselines.get(name)

    def evict_for(self, desired: DesiredResource, observed: ObservedResource, step: PlannedAction) -> str:
        raise TargetError(f"{desired.address}: captured state is never acted on", transient=False)

    def observe(self, desired: DesiredResource) -> ObservedResource:
        return kinds.handler_for(self.name, desired.kind).observe(self, desired)


def captured_targets(doc: Mapping[str, Any]) -> dict[str, Any]:
    """The replaying targets of one export, under the live targets' names (so keys and handlers are theirs)."""
    return {"host": CapturedHost(doc), "docker": CapturedContainers(doc), "kubernetes": CapturedPods(doc)}


__all__ = [
    "HASHED",
    "SCHEMA",
    "CapturedContainers",
    "CapturedHost",
    "CapturedPods",
    "ExportError",
    "capture",
    "captured_targets",
    "load",
    "redact_pod",
    "token",
]
