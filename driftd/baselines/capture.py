"""Baseline capture (pure): what is observed today → a baseline document that loads clean.

Pipeline position: before the pipeline, beside lint.  ``driftd baseline capture`` reads a
known-good host tree, container, image or pod (the I/O is ``driftd.targets.capture_io``, the
Docker and Kubernetes adapters) and hands the observations here; these functions turn them
into the dict of a ``HostBaseline``, ``ContainerBaseline`` or ``PodBaseline`` (validated by the
models and the guardrails before it is returned) plus the ``source:`` files to write beside
it and the notes to print and keep as YAML comments.  No I/O: every function is unit-testable.

Rules the output keeps: a sensitive file (``--sensitive`` globs and :data:`SENSITIVE_PATHS`)
is referenced by ``source:`` with ``sensitive: true`` and its bytes never enter the YAML; a
symlink, a hard-linked file or anything but a regular file or directory is left out with the
reason (the host target refuses to manage them); a rule the guardrails deny either carries
``allowDangerous`` with the operator's reason or is left out (a denied *content* keeps the
metadata-only rule, as the shipped CIS baselines manage ``/etc/shadow``); environment values
are never written (``ContainerBaseline`` has no names-only rule, so env is left out and said so).
"""

from __future__ import annotations

import fnmatch
import hashlib
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import yaml

from driftd.baselines.guardrails import DEFAULT, Guardrails, findings
from driftd.core.container_engine import normalize
from driftd.models.baseline import API_VERSION, HostBaseline, check_managed_path
from driftd.models.container import ContainerBaseline, RuntimePolicy
from driftd.models.pod import PodBaseline

# well-known secrets: always captured by reference (``*`` matches across '/')
SENSITIVE_PATHS: tuple[str, ...] = (
    "/etc/shadow", "/etc/shadow-", "/etc/gshadow", "/etc/gshadow-", "*.key", "/etc/ssh/ssh_host_*_key",
    "*/.ssh/id_*[!b]", "/etc/ssl/private/*",  # id_* but not id_*.pub (ends in 'b')
)
DEFAULT_INLINE_MAX = 4096
CAPTURE_LABEL = "driftd.io/baseline"  # default selector of an image capture: containers run with this label = NAME
_NAME_OK = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]*\$?$")
_CTRL = re.compile(r"[\x00-\x1f\x7f]")


class CaptureError(ValueError):
    """The observation cannot become a valid baseline (a bad name, nothing left to capture)."""


@dataclass(frozen=True)
class ObservedPath:
    """One path under the host root as read (lstat of the leaf, bytes read from the same descriptor)."""

    path: str
    kind: Literal["file", "dir", "symlink", "other"]
    mode: int = 0  # permission bits (st_mode & 0o7777)
    uid: int = 0
    gid: int = 0
    nlink: int = 1
    data: bytes | None = None  # a regular file's bytes; None for a directory or a file not read
    unread: str | None = None  # why a regular file's bytes were not read (over the size limit)
    link_target: str | None = None


@dataclass
class Capture:
    """A captured baseline: its document, the source files to write (relative path → bytes), the notes."""

    name: str
    doc: dict[str, Any]
    sources: dict[str, bytes] = field(default_factory=dict)
    sensitive_sources: set[str] = field(default_factory=set)
    notes: list[str] = field(default_factory=list)  # kept as YAML comments and printed
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (what, why) left out
    inline: dict[str, bytes] = field(default_factory=dict)  # path -> bytes written inline (checked after loading)


def comment_safe(text: str) -> str:
    """One comment line: control characters (a newline in a file name) escaped, never a YAML line of their own."""
    return _CTRL.sub(lambda m: f"\\x{ord(m.group()):02x}", text)


def is_sensitive(path: str, globs: Iterable[str] = ()) -> bool:
    """Whether ``path`` is a secret: a well-known one or one of the operator's ``--sensitive`` globs."""
    return any(fnmatch.fnmatchcase(path, g) for g in (*SENSITIVE_PATHS, *globs))


def source_name(path: str, prefix: str = "files") -> str:
    """``files/<path>`` relative to the output directory; a ``.yaml``/``.yml`` gets ``.source`` appended,
    or the loader would read the copy as a baseline."""
    rel = f"{prefix}{path}"
    return rel + ".source" if rel.endswith((".yaml", ".yml")) else rel


def _principal(ident: int, names: Mapping[int, str]) -> str | int:
    name = names.get(ident)
    return name if name is not None and _NAME_OK.match(name) and not name.isdigit() else ident


def _text(data: bytes, inline_max: int) -> str | None:
    """The bytes as inline text when they are UTF-8 text under the limit (tabs and newlines only as control)."""
    if len(data) >= inline_max:
        return None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return None
    if any(c < " " and c not in "\t\n" for c in text) or "\x7f" in text or "\ufeff" in text:
        return None
    return text


def _one_rule_findings(field_name: str, rule: dict[str, Any], g: Guardrails) -> list[tuple[str, str]]:
    """(field, reason) the guardrails raise against one rule (the model validates it first)."""
    b = HostBaseline.model_validate({"apiVersion": API_VERSION, "kind": "HostBaseline", "metadata": {"name": "capture"},
                                     "spec": {field_name: [rule]}})
    return [(str(f.loc[-1]), f.reason) for f in findings(b, g)]


def _guarded(kind: str, rule: dict[str, Any], allow_dangerous: str | None, g: Guardrails,
             cap: Capture) -> dict[str, Any] | None:
    """The rule as it may be written: with ``allowDangerous``, without a denied content, or None (left out)."""
    path = rule["path"]
    found = _one_rule_findings(kind, rule, g)
    if not found:
        return rule
    reasons = "; ".join(r for _, r in found)
    if allow_dangerous is not None:
        cap.notes.append(f"{path}: allowDangerous ({reasons})")
        return {**rule, "allowDangerous": allow_dangerous}
    if all(f in ("content", "source") for f, _ in found):
        meta = {k: v for k, v in rule.items() if k not in ("content", "source")}
        if not _one_rule_findings(kind, meta, g):
            cap.notes.append(f"{path}: content left out, mode/owner/group kept ({reasons}; "
                             "--allow-dangerous REASON captures it)")
            return meta
    cap.skipped.append((path, f"{reasons} (guardrail; --allow-dangerous REASON captures it)"))
    return None


def host_capture(
    name: str, observed: Iterable[ObservedPath], *, users: Mapping[int, str], groups: Mapping[int, str],
    sensitive: Iterable[str] = (), inline_max: int = DEFAULT_INLINE_MAX, allow_dangerous: str | None = None,
    guardrails: Guardrails = DEFAULT, enforcement: str = "warn",
) -> Capture:
    """A HostBaseline governing each observed regular file and directory as it is.

    ``users``/``groups``: id → name from the host root's account databases (an id without a
    name stays numeric).  A file's content is inline when it is UTF-8 text under
    ``inline_max`` bytes and not sensitive; otherwise ``source: files/<path>``.
    """
    cap = Capture(name=name, doc={})
    globs = tuple(sensitive)
    files: list[dict[str, Any]] = []
    dirs: list[dict[str, Any]] = []
    seen: set[str] = set()
    for o in observed:
        if o.path in seen:
            continue
        seen.add(o.path)
        try:
            check_managed_path(o.path)
        except ValueError as e:
            cap.skipped.append((o.path, str(e)))
            continue
        if o.kind == "symlink":
            cap.skipped.append((o.path, f"a symlink (-> {o.link_target}): driftd never manages through a link; "
                                        "capture its target's path instead"))
            continue
        if o.kind == "other":
            cap.skipped.append((o.path, "not a regular file or directory"))
            continue
        meta: dict[str, Any] = {"path": o.path, "mode": f"{o.mode & 0o7777:04o}",
                                "owner": _principal(o.uid, users), "group": _principal(o.gid, groups)}
        if o.kind == "dir":
            rule = _guarded("directories", meta, allow_dangerous, guardrails, cap)
            if rule is not None:
                dirs.append(rule)
            continue
        if o.nlink > 1:
            cap.skipped.append((o.path, f"{o.nlink} hard links: its inode may be shared with a file outside the "
                                        "host root, so driftd will not manage it"))
            continue
        secret = is_sensitive(o.path, globs)
        rule = dict(meta)
        if o.data is None:
            cap.notes.append(f"{o.path}: content not captured ({o.unread or 'not read'}); mode/owner/group only")
        else:
            text = None if secret else _text(o.data, inline_max)
            if text is not None:
                rule["content"] = text
            else:
                rule["source"] = source_name(o.path)
        if secret:
            rule["sensitive"] = True
        kept = _guarded("files", rule, allow_dangerous, guardrails, cap)
        if kept is None:
            continue
        if "source" in kept and o.data is not None:
            cap.sources[kept["source"]] = o.data
            if secret:
                cap.sensitive_sources.add(kept["source"])
        if "content" in kept and o.data is not None:
            cap.inline[o.path] = o.data
        files.append(kept)
    if not files and not dirs:
        raise CaptureError("nothing to capture: " + ("; ".join(f"{p}: {r}" for p, r in cap.skipped) or "no paths"))
    spec: dict[str, Any] = {"enforcement": enforcement, "window": "30m"}
    if files:
        spec["files"] = files
    if dirs:
        spec["directories"] = dirs
    cap.doc = {"apiVersion": API_VERSION, "kind": "HostBaseline", "metadata": {"name": name}, "spec": spec}
    _validate(HostBaseline, cap.doc)
    return cap


def packages_capture(
    name: str, fmt: str | None, database: str | None, versions: Mapping[str, str], packages: Iterable[str], *,
    absent: Iterable[str] = (), all_installed: bool = False, severity: str = "medium", action: str = "report",
    enforcement: str = "warn", problem: str | None = None,
) -> Capture:
    """A HostBaseline holding ``packages`` (or every installed one) at least at the version installed now.

    ``versions`` is the known-good host's installed set (``targets.capture_io.read_packages``);
    ``absent`` names packages that must not be installed (refused if this host has them).  A
    package installed in several versions (multiarch, RPM) is held at the lowest.
    """
    if fmt is None:
        raise CaptureError(problem or "no package database under the host root")
    import functools

    from driftd.core.matchers import INSTALLED_SEP
    from driftd.core.versions import compare

    cap = Capture(name=name, doc={})
    wanted = sorted(versions) if all_installed else list(dict.fromkeys(packages))
    rules: list[dict[str, Any]] = []
    for pkg in wanted:
        have = versions.get(pkg)
        if have is None:
            cap.skipped.append((pkg, f"not installed on this host ({database})"))
            continue
        def order(a: str, b: str, f: str = fmt) -> int:
            return compare(f, a, b)

        installed = sorted(have.split(INSTALLED_SEP), key=functools.cmp_to_key(order))
        if len(installed) > 1:
            cap.notes.append(f"{pkg}: installed as {have}; held at the lowest, {installed[0]}")
        rules.append({"name": pkg, "minimum": installed[0], "severity": severity, "action": action})
    for pkg in dict.fromkeys(absent):
        if pkg in versions:
            raise CaptureError(f"{pkg} must be absent but this host has it installed ({versions[pkg]}): "
                               "capture from a host without it")
        rules.append({"name": pkg, "absent": True, "severity": severity, "action": action})
    if not rules:
        raise CaptureError("nothing to capture: " + ("; ".join(f"{p}: {r}" for p, r in cap.skipped) or "no packages named"))
    cap.notes.append(f"versions read from {database} ({fmt}); each is the minimum a node must have")
    spec: dict[str, Any] = {"enforcement": enforcement, "window": "30m", "packages": rules}
    cap.doc = {"apiVersion": API_VERSION, "kind": "HostBaseline", "metadata": {"name": name}, "spec": spec}
    _validate(HostBaseline, cap.doc)
    return cap


# ------------------------------------------------------------------ containers and images


def _validate(model: Any, doc: dict[str, Any]) -> None:
    from pydantic import ValidationError

    try:
        model.model_validate(doc)
    except ValidationError as e:
        first = e.errors()[0]
        loc = ".".join(str(p) for p in first["loc"])
        raise CaptureError(f"the captured baseline does not validate: {loc}: {first['msg']}") from None


def _approved(image_id: str, digests: Iterable[str]) -> list[str]:
    pinned = [d for d in digests if re.match(r"^[^@\s]+@sha256:[0-9a-f]{64}$", d)]
    return [image_id, *sorted(set(pinned))] if image_id else sorted(set(pinned))


def _env_note(env: Iterable[str], where: str) -> str:
    names = sorted({e.split("=", 1)[0] for e in env})
    if not names:
        return f"environment: {where} sets no variables"
    return (f"environment: {where} sets {len(names)} variable(s) ({', '.join(names)}); values are never captured and "
            "ContainerBaseline has no names-only rule, so env is left out (runtime.forbiddenEnv can name "
            "variables that must not be set)")


def container_capture(
    name: str, ins: Mapping[str, Any], *, repo_digests: Iterable[str] = (), fs_changes: Iterable[str] | None = None,
    match_labels: Iterable[str] = (), enforcement: str = "warn",
) -> Capture:
    """A ContainerBaseline from a container's inspect document: every runtime rule as the container has it.

    The selector is the container's exact name, or with ``match_labels`` those label keys with the
    container's values.  ``fs_changes``: the container's changed paths now (leaf paths); each
    becomes an allowed change beside the model's defaults, so the capture is compliant.
    """
    cap = Capture(name=name, doc={})
    cfg = ins.get("Config") or {}
    cname = str(ins.get("Name") or "").lstrip("/")
    labels: dict[str, str] = dict(cfg.get("Labels") or {})
    obs = normalize(dict(ins), None)
    keys = list(match_labels)
    if keys:
        missing = [k for k in keys if k not in labels]
        if missing:
            raise CaptureError(f"container {cname} has no label {', '.join(missing)}")
        selector: dict[str, Any] = {"matchLabels": {k: labels[k] for k in keys}}
    else:
        selector = {"names": [cname]}
    image = str(ins.get("Image") or "")
    runtime: dict[str, Any] = {}
    user = obs["user"]
    if user:
        runtime["user"] = user
    if obs["nonRoot"]:
        runtime["nonRoot"] = True
    else:
        cap.notes.append("hardening: runs as root (empty, 'root' or '0' user): nonRoot left out; set runtime.user")
    runtime["privileged"] = obs["privileged"]
    runtime["capAdd"] = obs["capAdd"]
    runtime["capDrop"] = obs["capDrop"]
    runtime["readOnlyRootFilesystem"] = obs["readOnlyRootFilesystem"]
    runtime["noNewPrivileges"] = obs["noNewPrivileges"]
    runtime["seccompProfile"] = obs["seccompProfile"]
    if obs["apparmorProfile"]:
        runtime["apparmorProfile"] = obs["apparmorProfile"]
    runtime["pidMode"] = obs["pidMode"]
    runtime["ipcMode"] = obs["ipcMode"]
    runtime["networkMode"] = obs["networkMode"]
    binds = obs["forbiddenHostMounts"]
    default_forbidden = list(RuntimePolicy.model_fields["forbidden_host_mounts"].get_default(call_default_factory=True))
    kept = [p for p in default_forbidden if p not in binds]
    runtime["forbiddenHostMounts"] = kept
    if binds:
        cap.notes.append(f"bind mounts from the host: {', '.join(binds)}")
    for p in default_forbidden:
        if p in binds:
            cap.notes.append(f"hardening: bind-mounts {p}, which the model forbids by default: left out of forbiddenHostMounts")
    runtime["ports"] = obs["ports"]
    res = {k: obs[k] for k in ("memory", "cpus", "pidsLimit") if isinstance(obs[k], int | float) and obs[k] > 0}
    if res:
        runtime["resources"] = res
    runtime["restartPolicy"] = obs["restartPolicy"]
    if labels:
        runtime["labels"] = labels
    if obs["privileged"]:
        cap.notes.append("hardening: runs privileged")
    if obs["capAdd"]:
        cap.notes.append(f"hardening: adds capabilities {', '.join(obs['capAdd'])}")
    for mode in ("pidMode", "ipcMode", "networkMode"):
        if obs[mode] == "host":
            cap.notes.append(f"hardening: {mode} host (the host's namespace)")
    if obs["seccompProfile"] == "unconfined":
        cap.notes.append("hardening: seccomp unconfined")
    cap.notes.append(_env_note(cfg.get("Env") or [], f"container {cname}"))
    allowed = list(_default_allowed())
    extra = sorted(set(fs_changes or ()) - set(allowed))
    if extra:
        cap.notes.append(f"filesystem: changed inside the container at capture, allowed here: {', '.join(extra)}")
    spec: dict[str, Any] = {
        "enforcement": enforcement, "window": "30m", "selector": selector,
        "images": {"approved": _approved(image, repo_digests)},
        "runtime": runtime,
        "filesystem": {"allowedChanges": allowed + extra},
        # a captured baseline governs its own containers; the strictest ``ungoverned`` of the set applies, so
        # ignore never weakens another baseline's policy
        "ungoverned": "ignore",
    }
    cap.doc = {"apiVersion": API_VERSION, "kind": "ContainerBaseline", "metadata": {"name": name}, "spec": spec}
    _validate(ContainerBaseline, cap.doc)
    return cap


def _default_allowed() -> list[str]:
    from driftd.models.container import FilesystemPolicy

    return list(FilesystemPolicy.model_fields["allowed_changes"].get_default(call_default_factory=True))


def image_capture(
    name: str, image: Mapping[str, Any], *, files: Mapping[str, bytes | str] | None = None,
    match_labels: Mapping[str, str] | None = None, names: Iterable[str] = (), enforcement: str = "warn",
) -> Capture:
    """A ContainerBaseline from an image's inspect document (its configuration), the image pinned by id/digest.

    Containers of this image are selected by ``match_labels`` / ``names``, by default the label
    ``driftd.io/baseline=<name>``.  ``files``: path in the image → its bytes (or why it could not be
    read).  ContainerBaseline has no rule for a file's content inside a container, so the bytes are
    written under ``files/<name>/<path>`` and listed in comments, never governed.
    """
    cap = Capture(name=name, doc={})
    cfg = image.get("Config") or {}
    selector: dict[str, Any] = {}
    if match_labels:
        selector["matchLabels"] = dict(match_labels)
    if names:
        selector["names"] = list(names)
    if not selector:
        selector = {"matchLabels": {CAPTURE_LABEL: name}}
        cap.notes.append(f"selector: containers labelled {CAPTURE_LABEL}={name} (docker run --label {CAPTURE_LABEL}={name})")
    runtime: dict[str, Any] = {}
    user = str(cfg.get("User") or "")
    if user:
        runtime["user"] = user
    if user and user.split(":")[0] not in ("root", "0"):
        runtime["nonRoot"] = True
    else:
        cap.notes.append("hardening: the image runs as root (no USER): nonRoot left out; set runtime.user")
    labels = dict(cfg.get("Labels") or {})
    if labels:
        runtime["labels"] = labels
    exposed = sorted(cfg.get("ExposedPorts") or {})
    if exposed:
        cap.notes.append(f"exposes {', '.join(exposed)}: which ports are published is decided at run time "
                         "(runtime.ports), not captured from the image")
    vols = sorted(cfg.get("Volumes") or {})
    if vols:
        cap.notes.append(f"image volumes: {', '.join(vols)}")
    cap.notes.append(_env_note(cfg.get("Env") or [], "the image"))
    cap.notes.append("runtime rules an image does not carry (privileged, capabilities, read-only root, "
                     "no-new-privileges, namespaces, resources) are left to you; see baselines/container-hardened.yaml")
    for path, got in sorted((files or {}).items()):
        if isinstance(got, str):
            cap.skipped.append((path, got))
            continue
        rel = source_name(path, f"files/{name}")
        cap.sources[rel] = got
        digest = hashlib.sha256(got).hexdigest()
        cap.notes.append(f"image file {path}: {len(got)} bytes, sha256:{digest}, copied to {rel} "
                         "(not governed: ContainerBaseline has no rule for file content inside a container)")
    spec: dict[str, Any] = {
        "enforcement": enforcement, "window": "30m", "selector": selector,
        "images": {"approved": _approved(str(image.get("Id") or ""), image.get("RepoDigests") or [])},
        "runtime": runtime,
        "ungoverned": "ignore",
    }
    cap.doc = {"apiVersion": API_VERSION, "kind": "ContainerBaseline", "metadata": {"name": name}, "spec": spec}
    _validate(ContainerBaseline, cap.doc)
    return cap


# ------------------------------------------------------------------ pods


def _all_containers(pod: Mapping[str, Any]) -> list[dict[str, Any]]:
    spec = pod.get("spec") or {}
    return [*(spec.get("initContainers") or []), *(spec.get("containers") or []), *(spec.get("ephemeralContainers") or [])]


def pod_capture(name: str, pod: Mapping[str, Any], *, enforcement: str = "warn") -> Capture:
    """A PodBaseline whose every rule holds for ``pod`` (a Pod object as the API server returns it).

    Selects the pod's namespace and labels; a security rule is written only when every container
    meets it (e.g. ``runAsNonRoot: true`` when each container or the pod sets it), otherwise it is
    left out with a note.  Images are pinned by the running containers' ``imageID`` digests.
    """
    cap = Capture(name=name, doc={})
    meta = pod.get("metadata") or {}
    spec = pod.get("spec") or {}
    ns = str(meta.get("namespace") or "default")
    pod_sc = spec.get("securityContext") or {}
    cs = _all_containers(pod)
    scs = [c.get("securityContext") or {} for c in cs]

    def every(pred: Any) -> bool:
        return bool(cs) and all(pred(sc) for sc in scs)

    security: dict[str, Any] = {}
    if every(lambda sc: sc.get("runAsNonRoot", pod_sc.get("runAsNonRoot")) is True
             and sc.get("runAsUser", pod_sc.get("runAsUser")) != 0):
        security["runAsNonRoot"] = True
    if every(lambda sc: sc.get("allowPrivilegeEscalation") is False):
        security["allowPrivilegeEscalation"] = False
    if every(lambda sc: not sc.get("privileged")):
        security["privileged"] = False
    drops = [{d.upper().removeprefix("CAP_") for d in (sc.get("capabilities") or {}).get("drop") or []} for sc in scs]
    common = set.intersection(*drops) if drops else set()
    if common:
        security["requiredDropCapabilities"] = sorted(common)
    adds = sorted({a.upper().removeprefix("CAP_") for sc in scs for a in (sc.get("capabilities") or {}).get("add") or []})
    security["allowedCapabilities"] = adds
    seccomp = {(sc.get("seccompProfile") or pod_sc.get("seccompProfile") or {}).get("type") for sc in scs}
    if cs and None not in seccomp and seccomp <= {"RuntimeDefault", "Localhost", "Unconfined"}:
        security["seccompProfiles"] = sorted(str(s) for s in seccomp)
    if every(lambda sc: sc.get("readOnlyRootFilesystem") is True):
        security["readOnlyRootFilesystem"] = True
    for rule in ("runAsNonRoot", "allowPrivilegeEscalation", "privileged", "seccompProfiles", "readOnlyRootFilesystem"):
        if rule not in security:
            cap.notes.append(f"security.{rule} left out: not every container meets it")
    host_ns = any(spec.get(k) for k in ("hostNetwork", "hostPID", "hostIPC"))
    host_paths = sorted({str((v.get("hostPath") or {}).get("path")) for v in spec.get("volumes") or [] if v.get("hostPath")})
    status = pod.get("status") or {}
    statuses = [*(status.get("initContainerStatuses") or []), *(status.get("containerStatuses") or [])]
    ids = sorted({str(s.get("imageID") or "").removeprefix("docker-pullable://") for s in statuses})
    digests = [i for i in ids if re.match(r"^(?:[^@\s]+@)?sha256:[0-9a-f]{64}$", i)]
    limits: list[str] = [r for r in ("cpu", "memory")
                         if cs and all(r in ((c.get("resources") or {}).get("limits") or {}) for c in cs)]
    requests: list[str] = [r for r in ("cpu", "memory")
                           if cs and all(r in ((c.get("resources") or {}).get("requests") or {}) for c in cs)]
    labels = dict(meta.get("labels") or {})
    for k in ("pod-template-hash", "controller-revision-hash", "pod-template-generation"):
        labels.pop(k, None)  # change with every rollout: the next pods would not be selected
    out: dict[str, Any] = {
        "enforcement": enforcement, "window": "30m",
        "selector": {"namespaces": [ns], "excludeNamespaces": [], "matchLabels": labels},
    }
    if digests:
        out["images"] = {"approved": digests}
    elif statuses:
        cap.notes.append("images left out: no container reports an imageID digest yet")
    out["security"] = security
    out["forbidHostNamespaces"] = not host_ns
    out["allowedHostPaths"] = host_paths
    out["forbidEphemeralContainers"] = not spec.get("ephemeralContainers")
    out["resources"] = {"requireLimits": limits, "requireRequests": requests}
    if host_ns:
        cap.notes.append("hardening: uses a host namespace (hostNetwork/hostPID/hostIPC)")
    if host_paths:
        cap.notes.append(f"hardening: hostPath volumes {', '.join(host_paths)}")
    cap.doc = {"apiVersion": API_VERSION, "kind": "PodBaseline", "metadata": {"name": name}, "spec": out}
    _validate(PodBaseline, cap.doc)
    return cap


# ------------------------------------------------------------------ rendering


class _Dumper(yaml.SafeDumper):
    pass


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    # block style where PyYAML allows it (it falls back to quoting when a line cannot be a block line)
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style="|" if "\n" in value else None)


_Dumper.add_representer(str, _str)


def render(cap: Capture, header: Iterable[str] = ()) -> str:
    """The YAML text: header lines and notes as comments (escaped), then the document."""
    lines = [f"# {comment_safe(h)}" for h in header]
    lines += [f"# note: {comment_safe(n)}" for n in cap.notes]
    lines += [f"# left out: {comment_safe(p)}: {comment_safe(r)}" for p, r in cap.skipped]
    body = yaml.dump(cap.doc, Dumper=_Dumper, sort_keys=False, default_flow_style=False, allow_unicode=True, width=120)
    return "\n".join(lines) + ("\n" if lines else "") + body
