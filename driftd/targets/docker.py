"""Docker target: containers held to ``kind: ContainerBaseline`` (observe + act + events).

Pipeline position: the effectful ends of the pipeline for containers, and an event
source.  This module is the only importer of the docker SDK and is imported only when
the Docker target is enabled.

* discover: one listing per scan; each container is matched to its baseline (or to the
  ``ungoverned`` policy) by ``core.compile_container``.
* observe: ``inspect`` normalised into the fields baselines name, plus the container's
  filesystem changes against its image when a baseline governs them.
* act: **recreate** (same name, approved image, hardened configuration, fresh filesystem,
  everything the baseline does not govern carried over) or **retire** (stop, remove).
  Before either, a snapshot: the inspect document, the changed paths and the changed
  files' bytes up to a cap.  A recreate parks the original under a name that records its
  run state and restart policy (``<name>-driftd-old-<id12>.<run|stop>.<policy>.<count>``),
  with restart policy "no" while parked; a failed recreate is rolled back to it, and one
  interrupted by a crash of driftd or the engine is finished or undone by the next
  discovery, restoring exactly what ran before (never zero, never two copies running).
  Anonymous volumes are re-attached by name, and no mount point is filesystem drift.
* watch: the events stream enqueues a container as soon as it is created, started,
  updated or exec'd into; it reconnects with backoff when the engine restarts.
* capture: read-only helpers for ``driftd baseline capture`` (:func:`inspect_container`,
  :func:`image_config`, :func:`read_image_files`: an image's files read from a container
  created and removed, never started).
"""

from __future__ import annotations

import contextlib
import io
import json
import secrets
import tarfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import docker
from docker import errors as docker_errors

from driftd.baselines.loader import BaselineSet
from driftd.core import kinds
from driftd.core.compile_container import (
    OLD_SUFFIX,
    ContainerSummary,
    container_key,
    desired_container,
    governing,
    ungoverned_policy,
)
from driftd.core.container_engine import (
    leaf_changes,
    mount_points,
    recreate_config,
)
from driftd.models.container import ContainerBaseline, Ungoverned
from driftd.models.keys import ResourceKey
from driftd.models.resources import Action, ActResult, DesiredResource, ObservedResource, Plan
from driftd.observability.logging import Event, get_logger
from driftd.safety.snapshots import SnapshotError, SnapshotStore
from driftd.targets.base import NodeInfo, Reachability, ResourceGoneError, TargetError
from driftd.targets.streams import Reconnecting

# exec_die: an exec's writes are done only when it ends (exec_start comes before them)
WATCHED_ACTIONS = frozenset({"create", "start", "restart", "update", "exec_create", "exec_start", "exec_die", "rename",
                             "unpause"})


@dataclass(frozen=True)
class Parked:
    """What a parked original's name records: ``<name>-driftd-old-<id12>.<run|stop>.<policy>.<count>``."""

    original: str
    running: bool | None  # None: parked by a driftd that recorded nothing (name ends at the id)
    restart: dict[str, Any] | None  # the original's restart policy, restored on rollback


def parked_name(name: str, cid: str, *, running: bool, restart: dict[str, Any]) -> str:
    """The name a recreate parks the original under; it is the manifest of the interrupted recreate."""
    policy = restart.get("Name") or "no"
    count = int(restart.get("MaximumRetryCount") or 0)
    return f"{name}{OLD_SUFFIX}{cid[:12]}.{'run' if running else 'stop'}.{policy}.{count}"


def parse_parked(parked: str) -> Parked:
    original, _, rest = parked.rpartition(OLD_SUFFIX)
    parts = rest.split(".")
    if len(parts) == 4 and parts[1] in ("run", "stop") and parts[3].isdigit():
        return Parked(original, parts[1] == "run", {"Name": parts[2], "MaximumRetryCount": int(parts[3])})
    return Parked(original, None, None)


# --------------------------------------------------------------------------- adapter


class _Port:
    """The container kinds' port (``core.kinds.ports.ContainerPort``) over one API client; in ``apply``,
    bound to the container inspected (and snapshotted) before the first step."""

    def __init__(self, target: DockerTarget, api: Any, ins: dict[str, Any] | None = None) -> None:
        self.target, self.api, self.ins = target, api, ins

    def inspect(self, address: str) -> dict[str, Any]:
        try:
            ins: dict[str, Any] = self.target._call(self.api.inspect_container, address)
        except docker_errors.NotFound:
            raise ResourceGoneError(f"container {address} no longer exists") from None
        except docker_errors.APIError as e:
            raise TargetError(f"inspect {address}: {e}") from None
        return ins

    def changes(self, container_id: str) -> list[dict[str, Any]] | None:
        try:
            out: list[dict[str, Any]] | None = self.target._call(self.api.diff, container_id)
        except docker_errors.NotFound:
            raise ResourceGoneError(f"container {container_id[:12]} no longer exists") from None
        except docker_errors.APIError as e:
            raise TargetError(f"diff {container_id[:12]}: {e}") from None
        return out

    def event_time(self, address: str) -> float | None:
        return self.target._event_times.get(address)

    def _bound(self) -> dict[str, Any]:
        if self.ins is None:
            raise TargetError("no container was inspected before acting", transient=False)
        return self.ins

    def recreate(self, address: str, runtime: dict[str, Any], image: str) -> None:
        self.target._recreate(self.api, self._bound(), runtime, image)

    def retire(self, address: str) -> None:
        self.target._retire(self.api, self._bound())


class DockerTarget:
    """Adapter for a Docker Engine reached through its API socket."""

    name = "docker"

    def __init__(self, snapshots: SnapshotStore, *, base_url: str = "unix:///var/run/docker.sock",
                 timeout: float = 30.0, stop_timeout: int = 10, file_snapshot_max_bytes: int = 1024 * 1024,
                 max_snapshot_files: int = 200, skip_kubelet_containers: bool = True, dry_run: bool = False) -> None:
        self.snapshots = snapshots
        self.dry_run = dry_run  # recovery of interrupted recreates is an action too: never in a dry run
        self.base_url = base_url
        self.timeout = timeout
        self.stop_timeout = stop_timeout
        self.file_snapshot_max_bytes = file_snapshot_max_bytes
        self.max_snapshot_files = max_snapshot_files
        self.skip_kubelet_containers = skip_kubelet_containers
        self.log = get_logger()
        self._api_client: Any = None
        self._lock = threading.Lock()
        self._baselines: tuple[ContainerBaseline, ...] = ()
        self._policy = Ungoverned.REPORT
        self._approved_cache: dict[str, dict[str, str]] = {}  # baseline -> ref -> pinned image id
        self._streams: Reconnecting[Any] = Reconnecting()
        self._in_flight: set[str] = set()
        self._event_times: dict[str, float] = {}  # container name -> time of its last watched event (change time)
        self.reach = Reachability(self.name, endpoint=self.base_url)

    # ------------------------------------------------------------------ connection
    def api(self) -> Any:
        with self._lock:
            if self._api_client is None:
                try:
                    client = docker.APIClient(base_url=self.base_url, timeout=self.timeout)
                    client.ping()
                except Exception as e:
                    self._set_up(False, str(e))
                    raise TargetError(f"docker engine unreachable at {self.base_url}: {e}") from None
                self._api_client = client
            return self._api_client

    def _set_up(self, up: bool, error: str = "") -> None:
        self.reach.set(up, error)

    @property
    def up(self) -> bool | None:
        """None until the endpoint was first tried, then whether it last answered."""
        return self.reach.up

    def _call(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Run an API call; connection failures drop the client so the next call reconnects."""
        try:
            out = fn(*args, **kwargs)
        except docker_errors.NotFound:
            raise
        except docker_errors.APIError:
            raise
        except Exception as e:
            with self._lock:
                self._api_client = None
            self._set_up(False, str(e))
            raise TargetError(f"docker engine unreachable: {e}") from None
        self._set_up(True)
        return out

    # ------------------------------------------------------------------ desired
    def desired(self, baselines: BaselineSet, node: NodeInfo) -> list[DesiredResource]:
        self._baselines = tuple(b for b in baselines.baselines if isinstance(b, ContainerBaseline))
        self._policy = ungoverned_policy(self._baselines)
        self._approved_cache.clear()
        return []  # containers are discovered every scan

    def _approved(self, b: ContainerBaseline) -> list[str]:
        """Approved image ids; a tag is resolved once per baseline load and then stays pinned.

        A reference that cannot be resolved yet (image not pulled, engine down) is retried on
        the next scan; references already resolved keep the id they had.
        """
        pinned = self._approved_cache.setdefault(b.metadata.name, {})
        api = None
        for ref in b.spec.images.approved:
            if ref in pinned:
                continue
            api = api or self.api()
            try:
                pinned[ref] = self._call(api.inspect_image, ref)["Id"]
                if ref not in b.spec.images.unpinned():
                    continue
                self.log.info(Event.BASELINE_LOADED, baseline=b.metadata.name, pinned=ref, image_id=pinned[ref])
            except docker_errors.NotFound:
                if ref.startswith("sha256:"):
                    pinned[ref] = ref  # an id not present here still approves nothing else
            except docker_errors.APIError as e:
                raise TargetError(f"cannot resolve image {ref}: {e}") from None
        return [pinned[r] for r in b.spec.images.approved if r in pinned]

    def _desired_for(self, c: ContainerSummary) -> DesiredResource | None:
        return desired_container(self._baselines, self._policy, c, self._approved, target=self.name,
                                 skip_kubelet=self.skip_kubelet_containers)

    def listing(self) -> list[ContainerSummary]:
        """Every container of the engine (parked ones too), as the listing gives them."""
        rows = self._call(self.api().containers, all=True)
        return [ContainerSummary(id=row["Id"], name=names[0].lstrip("/"), image_id=row.get("ImageID", ""),
                                 labels=row.get("Labels") or {})
                for row in rows if (names := row.get("Names") or [])]

    def port(self) -> _Port:
        """The container kinds' port, read side (inspect, changes, event times): ``driftd state export`` reads through it."""
        return _Port(self, self.api())

    def image_ids(self) -> dict[str, str]:
        """Every local image reference (repo tags and digests) and id -> the image id (what ``_approved`` resolves)."""
        out: dict[str, str] = {}
        for img in self._call(self.api().images) or []:
            iid = img.get("Id") or ""
            for ref in [iid, *(img.get("RepoTags") or []), *(img.get("RepoDigests") or [])]:
                if ref and not ref.startswith("<none>"):
                    out[ref] = iid
        return out

    def discover(self) -> list[DesiredResource]:
        api = self.api()
        out = []
        summaries = self.listing()
        names_now = {c.name for c in summaries}
        stale = time.time() - 600  # gone for a while: its destroy event was missed (a reconnect); not one just created
        for gone in [n for n, t in list(self._event_times.items()) if n not in names_now and t < stale]:
            self._event_times.pop(gone, None)
        # interrupted recreates first: a recovered original is governed in this very pass
        for c in sorted((c for c in summaries if OLD_SUFFIX in c.name), key=lambda c: c.name):
            if self.dry_run:
                self.log.warning(Event.REMEDIATION_SKIPPED, target=self.name, container=c.name, dry_run=True,
                                 planned=[{"action": "recover", "reason": "an interrupted recreate left this container parked"}])
                continue
            restored = self._recover_parked(api, c, names_now)
            if restored is not None:
                names_now.add(restored.name)
                d = self._desired_for(restored)
                if d is not None:
                    out.append(d)
        for c in summaries:
            if OLD_SUFFIX in c.name:
                continue
            d = self._desired_for(c)
            if d is not None:
                out.append(d)
        return out

    def _recover_parked(self, api: Any, c: ContainerSummary, names_now: set[str]) -> ContainerSummary | None:
        """Finish or undo a recreate that was interrupted (driftd or the engine died mid-way).

        Only a parked container whose original a baseline governs is touched (anything else
        that merely looks parked is left alone).  The parked name records whether the original
        was running and its restart policy, and recovery restores exactly that:

        * the replacement exists: the recreate got that far.  If the original was running and
          the replacement is not, the replacement is started (the original stopped first, so
          never two run at once); if it cannot start, the original is restored instead.  Then
          the parked original is removed (its snapshot was taken before it was parked).
        * no replacement: roll back.  The original gets its name and restart policy back and is
          started again if it was running; it is returned, so this pass governs it (and
          recreates it properly).
        """
        p = parse_parked(c.name)
        with self._lock:
            if p.original in self._in_flight:
                return None  # a recreate of ours is running right now
        as_original = ContainerSummary(id=c.id, name=p.original, image_id=c.image_id, labels=c.labels)
        if governing(self._baselines, as_original) is None:
            return None  # not parked by us (or no longer governed): not ours to touch
        key = container_key(p.original)
        try:
            if p.original in names_now:
                self._finish_parked(api, c, p)
                return None
            state = self._restore_original(api, c.id, p.original, p.restart, p.running)
            self.log.warning(Event.REMEDIATION_FAILED, key=key, action="rollback",
                             error=f"interrupted recreate rolled back: {c.name} renamed to {p.original}, {state}")
            return as_original
        except docker_errors.NotFound:
            return None  # a recreate finished (or someone removed it) since the listing
        except (docker_errors.APIError, TargetError) as e:
            self.log.warning(Event.REMEDIATION_FAILED, key=key, action="recover", error=f"cannot recover {c.name}: {e}")
            return None

    def _finish_parked(self, api: Any, c: ContainerSummary, p: Parked) -> None:
        key = container_key(p.original)
        new = self._call(api.inspect_container, p.original)
        new_running = bool((new.get("State") or {}).get("Running"))
        if p.running and not new_running:
            old = self._call(api.inspect_container, c.id)
            if (old.get("State") or {}).get("Running"):
                self._call(api.stop, c.id, timeout=self.stop_timeout)  # never two running at once
            try:
                self._call(api.start, new["Id"])
            except docker_errors.APIError as e:
                self._call(api.remove_container, new["Id"], v=False, force=True)
                state = self._restore_original(api, c.id, p.original, p.restart, p.running)
                self.log.error(Event.REMEDIATION_FAILED, key=key, action="rollback",
                               error=f"interrupted recreate: the replacement would not start ({e}); "
                                     f"it was removed and the original {p.original} restored, {state}")
                return
            new_running = True
        self._call(api.remove_container, c.id, v=False, force=True)
        self.log.warning(Event.REMEDIATION_SUCCEEDED, key=key, action="cleanup",
                         note=f"finished an interrupted recreate: replacement {p.original} "
                              f"{'running' if new_running else 'not running, as the original was not'}; "
                              f"removed {c.name}")

    def _restore_original(self, api: Any, cid: str, name: str, restart: dict[str, Any] | None,
                          running: bool | None) -> str:
        """Give a parked original its name and restart policy back; start it if it was running."""
        self._call(api.rename, cid, name)
        if restart is not None and (restart.get("Name") or "no") != "no":
            self._call(api.update_container, cid, restart_policy=restart)
        if running is None:
            return "run state left as it was (the parked name records none)"
        if not running:
            return "left stopped, as it was"
        if not (self._call(api.inspect_container, cid).get("State") or {}).get("Running"):
            self._call(api.start, cid)
        return "running again"

    def resolve(self, key: str) -> DesiredResource | None:
        name = ResourceKey.parse(key).locator
        api = self.api()
        try:
            ins = self._call(api.inspect_container, name)
        except docker_errors.NotFound:
            return None
        except docker_errors.APIError as e:
            raise TargetError(f"inspect {name}: {e}") from None
        c = ContainerSummary(id=ins["Id"], name=ins["Name"].lstrip("/"), image_id=ins.get("Image", ""),
                             labels=(ins.get("Config") or {}).get("Labels") or {})
        return self._desired_for(c)

    # ------------------------------------------------------------------ observe
    def begin_pass(self, *, full: bool) -> None:
        return None

    def observe(self, desired: DesiredResource) -> ObservedResource:
        return kinds.handler_for(self.name, desired.kind).observe(_Port(self, self.api()), desired)

    # ------------------------------------------------------------------ act
    def apply(self, desired: DesiredResource, observed: ObservedResource, plan: Plan) -> ActResult:
        handler = kinds.handler_for(self.name, desired.kind)
        handler.check(desired, plan.actions)
        api = self.api()
        name = desired.address
        try:
            ins = self._call(api.inspect_container, name)
        except docker_errors.NotFound:
            raise ResourceGoneError(f"container {name} vanished before acting") from None
        snaps = self._snapshot(api, ins)
        port = _Port(self, api, ins)
        applied: list[Action] = []
        for step in plan.actions:
            snaps.extend(handler.apply(port, desired, observed, step))
            applied.append(step.action)
        return ActResult(key=desired.key, applied=tuple(applied), snapshots=tuple(snaps))

    def _snapshot(self, api: Any, ins: dict[str, Any]) -> list[str]:
        """Inspect document, changed paths and changed files' bytes, before anything is removed."""
        cid = ins["Id"]
        try:
            changes = self._call(api.diff, cid) or []
        except docker_errors.APIError:
            changes = []
        files: dict[str, str] = {}
        ids: list[str] = []
        budget = self.max_snapshot_files
        for path in leaf_changes(changes, mount_points(ins)):
            kind = next((c["Kind"] for c in changes if c["Path"] == path), None)
            if kind == 2 or budget <= 0:
                files[path] = "deleted" if kind == 2 else "skipped: too many changed files"
                continue
            budget -= 1
            files[path] = self._snapshot_file(api, cid, path, ids)
        manifest = {"kind": "docker-container", "name": ins.get("Name", "").lstrip("/"), "inspect": ins,
                    "changes": changes, "files": files}
        try:
            mid = self.snapshots.put(json.dumps(manifest, sort_keys=True, default=str).encode())
        except SnapshotError as e:
            raise TargetError(str(e), transient=False) from None
        return [mid, *ids]

    def _snapshot_file(self, api: Any, cid: str, path: str, ids: list[str]) -> str:
        try:
            stream, stat = self._call(api.get_archive, cid, path)
            if int(stat.get("size", 0)) > self.file_snapshot_max_bytes:
                for _ in stream:
                    pass
                return f"skipped: {stat.get('size')} bytes over the {self.file_snapshot_max_bytes}-byte cap"
            raw = b"".join(stream)
            with tarfile.open(fileobj=io.BytesIO(raw)) as tar:
                member = tar.next()
                if member is None or not member.isfile():
                    return "skipped: not a regular file"
                fh = tar.extractfile(member)
                data = fh.read() if fh else b""
            sid = self.snapshots.put(data)
            ids.append(sid)
            return sid
        except (docker_errors.APIError, tarfile.TarError, SnapshotError) as e:
            return f"skipped: {e}"

    def _retire(self, api: Any, ins: dict[str, Any]) -> None:
        cid = ins["Id"]
        try:
            if (ins.get("State") or {}).get("Running"):
                self._call(api.stop, cid, timeout=self.stop_timeout)
            self._call(api.remove_container, cid, v=False)
        except docker_errors.NotFound:
            return  # already gone: retired either way
        except docker_errors.APIError as e:
            raise TargetError(f"retire {ins.get('Name')}: {e}") from None

    def _inherited_mounts(self, api: Any, ins: dict[str, Any]) -> list[str]:
        """Mount destinations the container gets from ``VolumesFrom`` (not its own to re-attach)."""
        out: list[str] = []
        for spec in (ins.get("HostConfig") or {}).get("VolumesFrom") or []:
            try:
                src = self._call(api.inspect_container, spec.split(":", 1)[0])
            except docker_errors.APIError:
                continue  # gone: the create fails on it and is rolled back
            out.extend(mount_points(src))
        return out

    def _recreate(self, api: Any, ins: dict[str, Any], runtime: dict[str, Any], image: str) -> None:
        cid = ins["Id"]
        name = ins["Name"].lstrip("/")
        was_running = bool((ins.get("State") or {}).get("Running"))
        restart = dict((ins.get("HostConfig") or {}).get("RestartPolicy") or {})
        body = recreate_config(ins, runtime, image, self._inherited_mounts(api, ins))
        parked = parked_name(name, cid, running=was_running, restart=restart)
        with self._lock:
            self._in_flight.add(name)
        try:
            self._recreate_parked(api, cid, name, parked, was_running, restart, body)
        finally:
            with self._lock:
                self._in_flight.discard(name)

    def _recreate_parked(self, api: Any, cid: str, name: str, parked: str, was_running: bool,
                         restart: dict[str, Any], body: dict[str, Any]) -> None:
        """Park the original (rename; its name is the manifest), replace it, remove it.

        Order: rename → restart policy "no" (so an engine restart cannot start the parked
        original next to its replacement) → stop → create → start → remove the original.
        Whatever step dies, ``_recover_parked`` can tell from the names what is left to do.
        """
        try:
            self._call(api.rename, cid, parked)
        except docker_errors.NotFound:
            raise ResourceGoneError(f"container {name} vanished before recreate") from None
        except docker_errors.APIError as e:
            raise TargetError(f"rename {name}: {e}") from None
        new_id: str | None = None
        try:
            if (restart.get("Name") or "no") != "no":
                self._call(api.update_container, cid, restart_policy={"Name": "no", "MaximumRetryCount": 0})
            if was_running:
                self._call(api.stop, cid, timeout=self.stop_timeout)
            new_id = self._call(api.create_container_from_config, body, name)["Id"]
            if was_running:
                self._call(api.start, new_id)
        except (docker_errors.APIError, TargetError) as e:
            restored, failed = self._rollback(api, cid, name, new_id, was_running, restart, body,
                                              unknown=isinstance(e, TargetError))
            conflict = isinstance(e, docker_errors.APIError) and e.status_code == 409
            if failed is None:
                msg = f"recreate {name} failed and was rolled back ({restored}): {e}"
            else:
                msg = (f"recreate {name} failed: {e}; rollback incomplete ({failed}), done: {restored or 'nothing'}; "
                       f"the original is parked as {parked} and is restored by the next pass")
            raise TargetError(msg, transient=conflict or isinstance(e, TargetError) or failed is not None) from None
        try:
            self._call(api.remove_container, cid, v=False)
        except (docker_errors.APIError, TargetError) as e:
            self.log.warning(Event.REMEDIATION_FAILED, key=container_key(name),
                             error=f"old container {parked} left behind (the next pass removes it): {e}")

    def _rollback(self, api: Any, old_id: str, name: str, new_id: str | None, was_running: bool,
                  restart: dict[str, Any], body: dict[str, Any], *, unknown: bool) -> tuple[str, str | None]:
        """Undo a failed recreate step by step; stops at the first step that fails.

        Returns (what was restored, the step that failed or None).  ``unknown``: the failing
        call never answered, so a replacement may exist although its id is not known.
        """
        done: list[str] = []

        def remove_replacement() -> None:
            rid = new_id
            if rid is None and unknown:
                try:
                    cur = self._call(api.inspect_container, name)
                except docker_errors.NotFound:
                    return
                same = (cur.get("Config") or {}).get("Labels") == body.get("Labels")
                if cur["Id"] != old_id and same:
                    rid = cur["Id"]
            if rid is not None:
                self._call(api.remove_container, rid, force=True)
                done.append("replacement removed")

        def rename_back() -> None:
            self._call(api.rename, old_id, name)
            done.append(f"original renamed back to {name}")

        def restore_policy() -> None:
            if (restart.get("Name") or "no") != "no":
                self._call(api.update_container, old_id, restart_policy=restart)
                done.append(f"restart policy {restart.get('Name')} restored")

        def start_original() -> None:
            if was_running:
                self._call(api.start, old_id)
                done.append("original running again")
            else:
                done.append("original left stopped, as it was")

        steps = (("remove the replacement", remove_replacement), ("rename the original back", rename_back),
                 ("restore the restart policy", restore_policy), ("start the original", start_original))
        for what, step in steps:
            try:
                step()
            except Exception as e:
                self.log.error(Event.REMEDIATION_FAILED, key=container_key(name), error=f"rollback step failed: {what}: {e}")
                return ", ".join(done), f"could not {what}: {e}"
        return ", ".join(done), None

    # ------------------------------------------------------------------ events
    def watch(self, on_key: Callable[[str], None], stop: threading.Event, *, max_backoff: float = 30.0) -> None:
        """Feed container keys from the events stream into ``on_key`` until ``stop`` is set.

        A reconnect asks the engine for the events since the last one seen (or since the
        stream was opened), so what happened while the stream was down is not lost.
        """
        since: int | None = None

        def open_stream() -> Any:
            nonlocal since
            opened = int(time.time())
            stream = self.api().events(decode=True, filters={"type": "container"}, since=since)
            if since is None:
                since = opened
            return stream

        def consume(stream: Any) -> None:
            nonlocal since
            for ev in stream:
                if stop.is_set():
                    break
                since = max(since or 0, int(ev.get("time") or 0))
                action = str(ev.get("Action") or ev.get("status") or "").split(":", 1)[0]
                name = ((ev.get("Actor") or {}).get("Attributes") or {}).get("name")
                if action == "destroy" and name:
                    self._event_times.pop(name, None)
                if action in WATCHED_ACTIONS and name and OLD_SUFFIX not in name:
                    nano = ev.get("timeNano")
                    self._event_times[name] = nano / 1e9 if isinstance(nano, int) else float(ev.get("time") or 0)
                    on_key(container_key(name, self.name))

        def down(e: Exception) -> None:
            with self._lock:
                self._api_client = None  # reconnect from scratch (the engine may have restarted)
            self._set_up(False, f"event stream: {e}")

        self._streams.run(open_stream, consume, stop, on_up=lambda: self._set_up(True), on_down=down,
                          end_is_error=True, max_backoff=max_backoff)

    def close(self) -> None:
        self._streams.close()  # unblocks a pending read of the events stream


# --------------------------------------------------------------------------- capture (``driftd baseline capture``)
# Small read-only helpers, independent of a DockerTarget: one client per call, closed after it.

CAPTURE_LABEL = "driftd.io/capture"  # on the never-started container an image file is read through


@contextlib.contextmanager
def _client(url: str, timeout: float = 30.0) -> Iterator[Any]:
    try:
        api = docker.APIClient(base_url=url, timeout=timeout)
        api.ping()
    except Exception as e:
        raise TargetError(f"docker engine unreachable at {url}: {e}") from None
    try:
        yield api
    finally:
        api.close()


def inspect_container(url: str, name: str) -> tuple[dict[str, Any], list[dict[str, Any]] | None]:
    """A container's inspect document and its filesystem changes against its image (``docker diff``)."""
    with _client(url) as api:
        try:
            ins: dict[str, Any] = api.inspect_container(name)
            changes: list[dict[str, Any]] | None = api.diff(ins["Id"])
        except docker_errors.NotFound:
            raise TargetError(f"no container {name!r} on {url}", transient=False) from None
        except docker_errors.APIError as e:
            raise TargetError(f"inspect {name}: {e}") from None
    return ins, changes


def image_config(url: str, ref: str) -> dict[str, Any]:
    """An image's inspect document (``Id``, ``RepoDigests``, ``Config``: user, labels, env, exposed ports ...)."""
    with _client(url) as api:
        try:
            doc: dict[str, Any] = api.inspect_image(ref)
        except docker_errors.NotFound:
            raise TargetError(f"no image {ref!r} on {url} (pull it first)", transient=False) from None
        except docker_errors.APIError as e:
            raise TargetError(f"inspect image {ref}: {e}") from None
    return doc


def read_image_files(url: str, ref: str, paths: list[str], max_bytes: int) -> dict[str, bytes | str]:
    """The bytes of each path in the image ``ref`` (or why not), read without running it.

    One container is created from the image (never started, no network, labelled
    ``driftd.io/capture``), each path is copied out of it (``get_archive``) and the container is
    removed whatever happens.  Only a regular file is returned; a symlink, a directory or a file
    over ``max_bytes`` gives the reason instead.
    """
    out: dict[str, bytes | str] = {}
    with _client(url) as api:
        try:
            cid = api.create_container(
                ref, command=["/driftd-capture-never-started"], network_disabled=True, labels={CAPTURE_LABEL: "1"},
                host_config=api.create_host_config(network_mode="none"),
                name=f"driftd-capture-{secrets.token_hex(6)}")["Id"]
        except docker_errors.NotFound:
            raise TargetError(f"no image {ref!r} on {url} (pull it first)", transient=False) from None
        except docker_errors.APIError as e:
            raise TargetError(f"create a container of {ref} to read files from: {e}") from None
        try:
            for path in paths:
                out[path] = _archive_file(api, cid, path, max_bytes)
        finally:
            with contextlib.suppress(docker_errors.NotFound):
                api.remove_container(cid, force=True, v=True)
    return out


def _archive_file(api: Any, cid: str, path: str, max_bytes: int) -> bytes | str:
    try:
        stream, stat = api.get_archive(cid, path)
    except docker_errors.NotFound:
        return "not found in the image"
    except docker_errors.APIError as e:
        return f"cannot read it from the image: {e}"
    if stat.get("linkTarget"):
        for _ in stream:
            pass
        return f"a symlink in the image (-> {stat['linkTarget']}): name its target instead"
    if int(stat.get("size") or 0) > max_bytes:
        for _ in stream:
            pass
        return f"{stat.get('size')} bytes, over the {max_bytes}-byte limit"
    raw = b"".join(stream)
    try:
        with tarfile.open(fileobj=io.BytesIO(raw)) as tar:
            member = tar.next()
            if member is None or not member.isfile():
                return "not a regular file in the image"
            fh = tar.extractfile(member)
            return fh.read() if fh else b""
    except tarfile.TarError as e:
        return f"unreadable archive from the engine: {e}"
