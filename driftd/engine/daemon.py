"""The daemon (``driftd run``): scheduler, workers, hot reload, HTTP, clean shutdown.

Pipeline position: the long-running driver of the engine.  APScheduler 3.x runs the
full scan at a cadence with jitter (never overlapping itself) and polls the baselines
directory; worker threads drain the keyed queue.  Event sources (the targets that are an
``EventSource``, and the inotify :class:`~driftd.targets.inotify.HostWatcher` over the host
target's files when ``scan.inotify`` is on) run in their own threads and only enqueue keys;
the watcher gets the desired set at start and after each successful reload, and is armed
before the first scan.  On stop (SIGTERM) the scheduler stops, the queue closes, and each
worker finishes the action in flight before exiting; writes are atomic, so nothing is left
half-written.
"""

from __future__ import annotations

import threading
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from driftd.baselines import guardrails
from driftd.baselines.loader import Problem, fingerprint, load_set
from driftd.engine.clock import Clock
from driftd.engine.queue import KeyedQueue
from driftd.engine.reconciler import Engine
from driftd.observability.logging import Event, get_logger
from driftd.observability.metrics import Metrics
from driftd.settings import Settings
from driftd.targets.base import EventSource

if TYPE_CHECKING:
    from driftd.targets.inotify import HostWatcher


class BaselineManager:
    """Hot reload: a changed directory is loaded whole; a broken set never replaces a good one.

    With ``require_signature`` the loader also verifies the set's signature against
    ``allowed_signers`` (an unsigned, wrongly signed or altered set is a broken set); a change
    of the allowed_signers file retries a rejected set.  A rejection is logged
    (``baseline.rejected``), counted (``driftd_baseline_load_errors_total``) and, with the
    Kubernetes target, recorded as a ``BaselineRejected`` Event on this node.
    """

    def __init__(self, settings: Settings, engine: Engine, metrics: Metrics, clock: Clock) -> None:
        self.settings = settings
        self.engine = engine
        self.metrics = metrics
        self.clock = clock
        self.log = get_logger()
        self._fingerprint: str | None = None
        self.rejected_fingerprint: str | None = None
        self._signers = self._signers_state()

    def prime(self, fp: str | None = None) -> None:
        """Record the directory state the set in force was loaded from (taken *before* loading it)."""
        self._fingerprint = fingerprint(self.settings.baselines) if fp is None else fp

    def _signers_state(self) -> tuple[int, ...] | None:
        path = self.settings.baseline_signers
        if path is None:
            return None
        try:
            st = path.stat()  # follows a Secret mount's ..data symlink
        except OSError:
            return ()
        return st.st_ino, st.st_size, st.st_mtime_ns

    def check(self) -> bool:
        """Reload if the directory changed; True when a new set is now in force."""
        fp = fingerprint(self.settings.baselines)
        signers = self._signers_state()
        if signers != self._signers:  # new allowed signers: a set refused for its signer may pass now
            self._signers, self.rejected_fingerprint = signers, None
        if fp in (self._fingerprint, self.rejected_fingerprint):
            return False
        bset, problems = load_set(self.settings.baselines, max_file_bytes=self.settings.baseline_file_max_bytes,
                                  guardrails=guardrails.configured(self.settings.guardrails),
                                  allowed_signers=self.settings.baseline_signers,
                                  cache_dir=self.settings.state_dir / "cache")
        if bset is not None:
            try:
                self.engine.set_baselines(bset)  # compiles and resolves first, swaps last: a crash keeps the old set
            except Exception as e:
                problems = [Problem(str(self.settings.baselines), 1, "(compile)", f"internal error: {type(e).__name__}: {e}")]
                bset = None
        if bset is None:
            self.rejected_fingerprint = fp
            self.metrics.baseline_load_errors.inc()
            self.log.error(
                Event.BASELINE_REJECTED,
                directory=str(self.settings.baselines),
                problems=[str(p) for p in problems],
                kept_version=self.engine.baselines.version,
            )
            self._node_event("BaselineRejected", f"baselines in {self.settings.baselines} rejected, version "
                             f"{self.engine.baselines.version} stays in force: " + "; ".join(str(p) for p in problems[:3])
                             + (f" (+{len(problems) - 3} more)" if len(problems) > 3 else ""))
            return False
        self._fingerprint, self.rejected_fingerprint = fp, None
        signed = {"signed_by": bset.signed_by} if bset.signed_by else {}
        self.log.info(
            Event.BASELINE_LOADED, directory=str(self.settings.baselines), baselines=len(bset.baselines), version=bset.version,
            **signed,
        )
        log_dangerous(self.log, bset)
        return True

    def _node_event(self, reason: str, message: str) -> None:
        """A Warning Event on this node through each target that records Events (the Kubernetes target)."""
        targets = [t for t in getattr(self.engine, "targets", {}).values() if getattr(t, "events", None) is not None]
        if not targets:
            return
        from driftd.targets.kubernetes.events import KubeEvents  # only then: the package is not small

        for target in targets:
            events = target.events
            if isinstance(events, KubeEvents):
                node = events.node_name
                try:
                    events.post("default", {"apiVersion": "v1", "kind": "Node", "name": node, "uid": node}, reason, message)
                except Exception as e:  # an Event is a courtesy: never let it break the reload
                    self.log.warning(Event.OBSERVE_FAILED, target=getattr(target, "name", "?"), error=f"event not recorded: {e}")


def log_dangerous(log: Any, bset: Any) -> None:
    """Every rule the guardrails deny but ``allowDangerous`` allows, at every load: seen, not silent."""
    for p in bset.warnings:
        if p.severity == "allowed-dangerous":
            log.warning(Event.BASELINE_DANGEROUS_ALLOWED, file=p.file, line=p.line, field=p.field, reason=p.reason,
                        version=bset.version)


class Daemon:
    def __init__(
        self,
        *,
        settings: Settings,
        engine: Engine,
        queue: KeyedQueue,
        metrics: Metrics,
        manager: BaselineManager,
        api: Any | None = None,
    ) -> None:
        self.settings = settings
        self.engine = engine
        self.queue = queue
        self.metrics = metrics
        self.manager = manager
        self.api = api
        self.log = get_logger()
        self.stop_event = threading.Event()
        self.scans_done = 0
        self._scan_lock = threading.Lock()
        self._workers: list[threading.Thread] = []
        self._watchers: list[tuple[Any, threading.Thread]] = []
        self._scheduler: Any = None
        self.host_watcher = self._host_watcher()
        self._reload_lock = threading.Lock()  # the reload job and the baselines watcher never check at once

    def _host_watcher(self) -> HostWatcher | None:
        """The inotify watcher over the host target's files and directories (None: scan only)."""
        from driftd.targets.host import HostTarget

        host = getattr(self.engine, "targets", {}).get("host")
        if not self.settings.scan.inotify or not isinstance(host, HostTarget):
            return None
        from driftd.targets.inotify import HostWatcher

        return HostWatcher(
            host.fs.root, metrics=self.metrics, debounce=self.settings.scan.inotify_debounce_seconds, on_overflow=self.scan_soon
        )

    def scan_soon(self) -> None:
        """Run one full scan now in the scheduler's pool (inotify lost events); never overlaps a scan."""
        sched = self._scheduler
        if sched is not None and sched.running and not self.stop_event.is_set():
            sched.add_job(self.scan, id="scan-now", name="full scan (requested)", replace_existing=True)

    # ------------------------------------------------------------------ probes
    def healthy(self) -> tuple[bool, str]:
        if self.stop_event.is_set():
            return False, "stopping"
        dead = [w.name for w in self._workers if not w.is_alive()]
        if dead:
            return False, f"workers stopped: {', '.join(dead)}"
        if self._scheduler is None or not self._scheduler.running:
            return False, "scheduler not running"
        return True, "ok"

    def ready(self) -> tuple[bool, str]:
        ok, why = self.healthy()
        if not ok:
            return ok, why
        if self.scans_done == 0:
            return False, "first scan not finished"
        return True, f"ok baselines={self.engine.baselines.version}"

    # ------------------------------------------------------------------ jobs
    def scan(self) -> None:
        if not self._scan_lock.acquire(blocking=False):
            return  # never overlap a scan with itself
        try:
            self.engine.scan(self.queue, full_rehash_interval=self.settings.scan.full_rehash_interval_seconds)
            self.scans_done += 1
        except Exception as e:  # a scan must never kill the daemon
            self.log.exception(Event.SCAN_FAILED, error=str(e))
        finally:
            self._scan_lock.release()

    def reload(self) -> None:
        with self._reload_lock:
            self._reload()

    def _reload(self) -> None:
        try:
            if self.manager.check():
                if self.host_watcher is not None:
                    self.host_watcher.refresh(self.engine.desired.values())
                self.scan()
        except Exception as e:
            self.log.exception(Event.SCAN_FAILED, error=f"baseline reload: {e}")

    def _on_event(self, key: str) -> None:
        self.metrics.events.labels(self.engine.target_name(key)).inc()
        self.log.debug(Event.WATCH_EVENT, key=key)
        self.queue.add(key)

    def _work(self) -> None:
        while True:
            key = self.queue.get(timeout=1.0)
            if key is None:
                if self.stop_event.is_set():
                    return
                continue
            try:
                self.engine.work(self.queue, key)
            finally:
                # the pass summary of run --once reads outcomes; a daemon keeping one per key it ever reconciled would
                # hold the drift details of every resource that ever drifted (10,000 files: megabytes, for its life)
                self.engine.outcomes.pop(key, None)

    def prune(self) -> None:
        """The retention job: history bounded by age and size (never fatal: a failure is logged, retried next time)."""
        try:
            self.engine.prune(self.settings.retention)
        except Exception as e:  # a locked database or a full disk must not stop the scheduler
            self.log.warning(Event.STATE_FAILED, error=f"retention prune failed: {e}")

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> None:
        from apscheduler.schedulers.background import BackgroundScheduler
        from apscheduler.triggers.interval import IntervalTrigger

        for i in range(self.settings.workers):
            t = threading.Thread(target=self._work, name=f"driftd-worker-{i}", daemon=True)
            t.start()
            self._workers.append(t)
        if self.host_watcher is not None:  # armed before the first scan: a change after it is not missed
            self.host_watcher.refresh(self.engine.desired.values())
            self._start_source(self.host_watcher)
            self.host_watcher.wait_armed(timeout=10.0)
        sched = BackgroundScheduler(timezone=UTC, job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": None})
        sched.add_job(
            self.scan,
            IntervalTrigger(seconds=self.settings.scan.interval_seconds, jitter=self.settings.scan.jitter_seconds or None),
            id="scan",
            name="full scan",
            next_run_time=datetime.now(UTC),
        )
        if getattr(self.engine, "reporters", ()):
            sched.add_job(
                lambda: self.engine.publish_report(only_if_changed=True),
                IntervalTrigger(seconds=30),
                id="report",
                name="policy report refresh",
            )
        sched.add_job(
            self.reload, IntervalTrigger(seconds=self.settings.reload_interval_seconds), id="reload", name="baseline reload"
        )
        retention = getattr(self.settings, "retention", None)
        if retention is not None and retention.enabled:
            sched.add_job(self.prune, IntervalTrigger(seconds=retention.interval_seconds), id="prune",
                          name="retention prune")
        sched.start()
        self._scheduler = sched
        if self.settings.scan.inotify:  # a changed set is loaded within a second; the reload job stays the fallback
            from driftd.targets.inotify import BaselineWatcher

            bw = BaselineWatcher(self.settings.baselines)
            t = threading.Thread(target=bw.watch, args=(self.reload, self.stop_event), name="driftd-watch-baselines",
                                 daemon=True)
            t.start()
            self._watchers.append((bw, t))
            bw.armed.wait(timeout=5.0)  # a change made once start() returned is seen
        for target in self.engine.targets.values():
            if isinstance(target, EventSource):
                self._start_source(target)
        if self.api is not None:
            self.api.start()
            self.log.info(Event.HTTP_LISTENING, **self.api.describe())
        self.log.info(
            Event.DAEMON_STARTED,
            workers=self.settings.workers,
            interval_s=self.settings.scan.interval_seconds,
            dry_run=self.engine.dry_run,
            node=self.engine.node.name,
        )

    def _start_source(self, source: EventSource) -> None:
        name = getattr(source, "name", type(source).__name__)
        w = threading.Thread(target=source.watch, args=(self._on_event, self.stop_event), name=f"driftd-watch-{name}", daemon=True)
        w.start()
        self._watchers.append((source, w))

    def stop(self) -> None:
        self.log.info(Event.DAEMON_STOPPING, in_flight=sorted(self.queue.processing))
        self.stop_event.set()
        if self._scheduler is not None:
            self._scheduler.shutdown(wait=True)
        for target, _ in self._watchers:
            target.close()
        self.queue.close()
        for t in self._workers:
            t.join()
        for _, w in self._watchers:
            w.join(timeout=5)
        if self.api is not None:
            self.api.stop()
        self.log.info(Event.DAEMON_STOPPED)

    def run_until(self, stop: threading.Event) -> None:
        self.start()
        try:
            stop.wait()
        finally:
            self.stop()
