"""The container vocabulary (pure): Engine API documents ↔ the fields a ContainerBaseline governs.

Pipeline position: observe and act of container targets, without the I/O.  ``normalize``
turns an inspect document into the observed fields that ``core.compile_container`` names
(user, privileged, caps, mounts, env, ...); ``recreate_config`` builds the create body of
the hardened replacement (everything ungoverned carried over, anonymous volumes kept);
``leaf_changes`` / ``mount_points`` decide what counts as filesystem drift.  Any adapter
that speaks the Engine API document format (dockerd, Podman's compat API) reuses them; a
CRI adapter maps its own documents onto the same vocabulary.
"""

from __future__ import annotations

import copy
import posixpath
from collections.abc import Iterable
from typing import Any

from driftd.core.times import latest, rfc3339
from driftd.models.container import normalize_caps

_CONFIG_KEYS = (
    "Hostname", "Domainname", "User", "AttachStdin", "AttachStdout", "AttachStderr", "ExposedPorts", "Tty",
    "OpenStdin", "StdinOnce", "Env", "Cmd", "Healthcheck", "ArgsEscaped", "Volumes", "WorkingDir", "Entrypoint",
    "NetworkDisabled", "OnBuild", "Labels", "StopSignal", "StopTimeout", "Shell",
)




def change_time(ins: dict[str, Any], event_at: float | None = None) -> float | None:
    """When the container's configuration last changed, where known: created, (re)started or its last event."""
    return latest((rfc3339(ins.get("Created")), rfc3339((ins.get("State") or {}).get("StartedAt")), event_at))


def _secopt(opts: list[str], kind: str) -> str | None:
    for o in opts:
        for sep in ("=", ":"):
            if o.startswith(kind + sep):
                return o.split(sep, 1)[1]
    return None


# files and mounts the engine itself puts into every container (not changes made inside it)
ENGINE_MOUNTS = ("/etc/hosts", "/etc/hostname", "/etc/resolv.conf", "/dev/shm")


def _under(path: str, roots: Iterable[str]) -> bool:
    return any(path == r or path.startswith(r.rstrip("/") + "/") for r in roots)


def leaf_changes(changes: list[dict[str, Any]] | None, mounts: Iterable[str] = ()) -> list[str]:
    """Changed paths minus directories listed only because something below them changed.

    ``mounts`` are the container's mount points: the engine creates them in the container's
    layer, which is not a change made inside the container, and nothing at or below a mount
    point is in that layer at all.
    """
    paths = sorted({c["Path"] for c in changes or []})
    skip = [posixpath.normpath(m) for m in mounts if m]
    out = []
    for i, p in enumerate(paths):
        nxt = paths[i + 1] if i + 1 < len(paths) else ""
        if not nxt.startswith(p.rstrip("/") + "/") and not _under(p, skip):
            out.append(p)
    return out


def _split_bind(spec: str) -> tuple[str | None, str, str]:
    """``Binds`` entry → (source or None for an anonymous volume, destination, options)."""
    parts = spec.split(":")
    if len(parts) >= 2 and parts[1].startswith("/"):
        return parts[0], parts[1], ":".join(parts[2:])
    return None, parts[0], ":".join(parts[1:])  # "/cache" or "/cache:ro": an anonymous volume


def _bind_target(spec: str) -> str | None:
    dest = _split_bind(spec)[1]
    return dest if dest.startswith("/") else None


def mount_points(ins: dict[str, Any]) -> list[str]:
    """Every mount point of the container: binds, volumes (named, anonymous, image ``VOLUME``),
    tmpfs (``HostConfig.Tmpfs`` and ``--mount type=tmpfs``) and the engine's own files."""
    hc = ins.get("HostConfig") or {}
    points = {m["Destination"] for m in ins.get("Mounts") or [] if m.get("Destination")}
    points.update(hc.get("Tmpfs") or {})
    points.update(m["Target"] for m in hc.get("Mounts") or [] if m.get("Target"))
    points.update(t for t in (_bind_target(b) for b in hc.get("Binds") or []) if t)
    points.update((ins.get("Config") or {}).get("Volumes") or {})
    points.update(ENGINE_MOUNTS)
    return sorted(points)


def normalize(ins: dict[str, Any], fs_changes: list[str] | None, env_keys: Iterable[str] = ()) -> dict[str, Any]:
    """Inspect document → the observed fields baselines name (``core.compile_container``)."""
    cfg = ins.get("Config") or {}
    hc = ins.get("HostConfig") or {}
    user = cfg.get("User") or ""
    opts = hc.get("SecurityOpt") or []
    env_list = cfg.get("Env") or []
    env = dict(e.split("=", 1) if "=" in e else (e, "") for e in env_list)
    ports = []
    for spec, binds in (hc.get("PortBindings") or {}).items():
        port, _, proto = spec.partition("/")
        for b in binds or [{}]:
            ports.append({"containerPort": int(port), "protocol": proto or "tcp", "hostIP": b.get("HostIp") or "",
                          "hostPort": int(b.get("HostPort") or 0)})
    ports.sort(key=lambda p: (p["containerPort"], p["protocol"], p["hostIP"], p["hostPort"]))
    nnp = _secopt(opts, "no-new-privileges")
    rp = hc.get("RestartPolicy") or {}
    return {
        "present": True,
        "image": ins.get("Image"),
        "user": user,
        "nonRoot": user.split(":")[0] not in ("", "root", "0"),
        "privileged": bool(hc.get("Privileged")),
        "capAdd": normalize_caps(hc.get("CapAdd")),
        "capDrop": normalize_caps(hc.get("CapDrop")),
        "readOnlyRootFilesystem": bool(hc.get("ReadonlyRootfs")),
        "noNewPrivileges": "no-new-privileges" in opts or (nnp is not None and nnp.lower() != "false"),
        "seccompProfile": _secopt(opts, "seccomp") or "default",
        "apparmorProfile": ins.get("AppArmorProfile") or _secopt(opts, "apparmor") or "",
        "pidMode": hc.get("PidMode") or "",
        "ipcMode": hc.get("IpcMode") or "",
        "networkMode": hc.get("NetworkMode") or "",
        "forbiddenHostMounts": sorted({m.get("Source", "") for m in ins.get("Mounts") or [] if m.get("Type") == "bind"}),
        "env": {k: env[k] for k in env_keys if k in env},
        "forbiddenEnv": sorted(env),
        "ports": ports,
        "memory": hc.get("Memory") or None,
        "cpus": (hc.get("NanoCpus") or 0) / 1e9 or None,
        "pidsLimit": hc.get("PidsLimit") or None,
        "restartPolicy": {"name": rp.get("Name") or "no", "maximumRetryCount": rp.get("MaximumRetryCount") or 0},
        "labels": cfg.get("Labels") or {},
        "fsChanges": fs_changes,
        "running": bool((ins.get("State") or {}).get("Running")),
    }


def _keep_volumes(ins: dict[str, Any], hc: dict[str, Any], inherited: Iterable[str]) -> None:
    """Attach the container's anonymous volumes to its replacement by name (in ``hc``).

    Named volumes are carried over by ``Binds``/``Mounts``; an anonymous one (``-v /cache``,
    ``--mount type=volume,target=...`` or an image ``VOLUME``) would otherwise be replaced by
    a fresh empty volume while the old one, with the data, dangles.  ``inherited`` are the
    destinations that come from ``VolumesFrom`` (the other container keeps providing them).
    """
    vols = {m["Destination"]: m for m in ins.get("Mounts") or []
            if m.get("Type") == "volume" and m.get("Name") and m.get("Destination")}
    mounts = []
    for m in hc.get("Mounts") or []:
        v = vols.get(m.get("Target") or "")
        if m.get("Type") == "volume" and not m.get("Source") and v is not None:
            m = {**m, "Source": v["Name"]}
        mounts.append(m)
    if mounts:
        hc["Mounts"] = mounts
    binds = []
    for b in hc.get("Binds") or []:
        src, dest, opts = _split_bind(b)
        v = vols.get(dest)
        if src is None and v is not None:
            b = f"{v['Name']}:{dest}" + (f":{opts}" if opts else "")
        binds.append(b)
    covered = {m.get("Target") for m in mounts} | {_split_bind(b)[1] for b in binds} | set(inherited)
    binds += [f"{v['Name']}:{dest}" + ("" if v.get("RW", True) else ":ro")
              for dest, v in sorted(vols.items()) if dest not in covered]
    if binds:
        hc["Binds"] = binds


def recreate_config(ins: dict[str, Any], runtime: dict[str, Any], image: str,
                    inherited_mounts: Iterable[str] = ()) -> dict[str, Any]:
    """Create-request body for the hardened replacement of ``ins``.

    Starts from the container's own Config and HostConfig, so everything the baseline does
    not govern (command, entrypoint, working dir, volumes with their data, log config, ...)
    is carried over, then applies every runtime rule that is set.  ``inherited_mounts``: the
    destinations the container gets through ``VolumesFrom``.
    """
    cfg = ins.get("Config") or {}
    hc = copy.deepcopy(ins.get("HostConfig") or {})
    _keep_volumes(ins, hc, inherited_mounts)
    config: dict[str, Any] = {k: copy.deepcopy(cfg[k]) for k in _CONFIG_KEYS if cfg.get(k) is not None}
    config["Image"] = image
    if config.get("Hostname") == (ins.get("Id") or "")[:12]:
        del config["Hostname"]  # the old container's generated hostname
    r = runtime
    if r.get("user") is not None:
        config["User"] = r["user"]
    for key, hkey in (("privileged", "Privileged"), ("readOnlyRootFilesystem", "ReadonlyRootfs"),
                      ("pidMode", "PidMode"), ("ipcMode", "IpcMode"), ("networkMode", "NetworkMode")):
        if r.get(key) is not None:
            hc[hkey] = r[key]
    if r.get("capAdd") is not None:
        hc["CapAdd"] = list(r["capAdd"]) or None
    if r.get("capDrop") is not None:
        hc["CapDrop"] = sorted(set(normalize_caps(hc.get("CapDrop"))) | set(r["capDrop"]))
    opts = [o for o in hc.get("SecurityOpt") or []]
    if r.get("privileged") is False:
        # --privileged implies label=disable; it must not outlive the privilege
        opts = [o for o in opts if o not in ("label=disable", "label:disable")]
    if r.get("noNewPrivileges") is not None:
        opts = [o for o in opts if not o.startswith("no-new-privileges")]
        if r["noNewPrivileges"]:
            opts.append("no-new-privileges=true")
    for key, kind in (("seccompProfile", "seccomp"), ("apparmorProfile", "apparmor")):
        if r.get(key) is not None:
            opts = [o for o in opts if not (o.startswith(kind + "=") or o.startswith(kind + ":"))]
            if r[key] != "default":
                opts.append(f"{kind}={r[key]}")
    hc["SecurityOpt"] = opts or None
    forbidden = set(r.get("forbiddenHostMounts") or [])
    if forbidden:
        hc["Binds"] = [b for b in hc.get("Binds") or [] if b.split(":", 1)[0] not in forbidden] or None
        hc["Mounts"] = [m for m in hc.get("Mounts") or []
                        if not (m.get("Type") == "bind" and m.get("Source") in forbidden)] or None
    env = [e for e in config.get("Env") or []]
    if r.get("env"):
        env = [e for e in env if e.split("=", 1)[0] not in r["env"]] + [f"{k}={v}" for k, v in sorted(r["env"].items())]
    if r.get("forbiddenEnv"):
        env = [e for e in env if e.split("=", 1)[0] not in set(r["forbiddenEnv"])]
    if env or "Env" in config:
        config["Env"] = env
    if r.get("ports") is not None:
        bindings: dict[str, list[dict[str, str]]] = {}
        for p in r["ports"]:
            bindings.setdefault(f"{p['containerPort']}/{p.get('protocol', 'tcp')}", []).append(
                {"HostIp": p.get("hostIP", ""), "HostPort": str(p["hostPort"])})
        hc["PortBindings"] = bindings
        config["ExposedPorts"] = {**(config.get("ExposedPorts") or {}), **{k: {} for k in bindings}}
    res = r.get("resources") or {}
    if res.get("memory") is not None:
        hc["Memory"] = res["memory"]
    if res.get("cpus") is not None:
        hc["NanoCpus"] = int(res["cpus"] * 1e9)
    if res.get("pidsLimit") is not None:
        hc["PidsLimit"] = res["pidsLimit"]
    if r.get("restartPolicy") is not None:
        hc["RestartPolicy"] = {"Name": r["restartPolicy"]["name"],
                               "MaximumRetryCount": r["restartPolicy"].get("maximumRetryCount", 0)}
    if r.get("labels"):
        config["Labels"] = {**(config.get("Labels") or {}), **r["labels"]}
    config["HostConfig"] = hc
    mode = hc.get("NetworkMode") or ""
    nets = (ins.get("NetworkSettings") or {}).get("Networks") or {}
    if mode in nets and mode not in ("none", "host", "bridge", "default") and not mode.startswith("container:"):
        ep = nets[mode] or {}
        config["NetworkingConfig"] = {"EndpointsConfig": {mode: {
            k: ep[k] for k in ("Aliases", "IPAMConfig", "Links", "DriverOpts") if ep.get(k)}}}
    return config


# what normalize, mount_points and change_time read of an inspect document (and a listing needs to pick a baseline)
_OBSERVED_TOP = ("Id", "Name", "Image", "Created", "AppArmorProfile", "Mounts")
_OBSERVED_CONFIG = ("User", "Env", "Labels", "Volumes", "Image")
_OBSERVED_HOST = (
    "Privileged", "CapAdd", "CapDrop", "ReadonlyRootfs", "SecurityOpt", "PidMode", "IpcMode", "NetworkMode",
    "PortBindings", "Memory", "NanoCpus", "PidsLimit", "RestartPolicy", "Tmpfs", "Mounts", "Binds",
)


def observed_subset(ins: dict[str, Any]) -> dict[str, Any]:
    """The part of an inspect document that :func:`normalize`, :func:`mount_points` and :func:`change_time` read.

    ``driftd state export`` keeps this (never the command line, entrypoint, health check or networks): the same
    observed fields come out of it, so another baseline set can be evaluated against it later.
    """
    cfg = ins.get("Config") or {}
    hc = ins.get("HostConfig") or {}
    state = ins.get("State") or {}
    out: dict[str, Any] = {k: copy.deepcopy(ins[k]) for k in _OBSERVED_TOP if k in ins}
    out["Config"] = {k: copy.deepcopy(cfg[k]) for k in _OBSERVED_CONFIG if k in cfg}
    out["HostConfig"] = {k: copy.deepcopy(hc[k]) for k in _OBSERVED_HOST if k in hc}
    out["State"] = {k: state[k] for k in ("Running", "StartedAt") if k in state}
    return out
