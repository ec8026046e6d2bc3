"""The pod watch: this node's pods as keys for the queue (the Kubernetes event source).

Pipeline position: a trigger.  It runs in its own thread (the daemon's event-source
thread) and only calls ``on_key(pod:<ns>/<name>)``; every reconcile re-reads the pod.

May touch: list and watch of pods with ``fieldSelector=spec.nodeName=<node>`` (read
only), through :mod:`.client`.  Reconnecting with backoff is the shared loop of
:mod:`driftd.targets.streams`; what is Kubernetes-specific lives here: resume from the last
``resourceVersion`` (bookmarks keep it fresh), relist at once on 410 Gone, the server ends a
watch after ``timeoutSeconds`` (reopened without backoff) and the client read timeout past
it (:meth:`.client.Kube.request`) notices a half-open connection.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from driftd.core.pod_policy import pod_key
from driftd.targets.kubernetes.client import Api, KubeError, WatchStream, node_pods
from driftd.targets.streams import Reconnecting

WATCH_TIMEOUT_SECONDS = "300"  # the server ends each watch after this; the read timeout is past it


class PodWatch:
    """One watch on one node's pods; :meth:`close` from another thread ends a blocked read."""

    def __init__(self, api: Api, node_name: str, *, on_up: Callable[[], None],
                 on_down: Callable[[Exception], None]) -> None:
        self.api = api
        self.node_name = node_name
        self.on_up = on_up
        self.on_down = on_down
        self._streams: Reconnecting[WatchStream] = Reconnecting()

    @property
    def stream(self) -> WatchStream | None:
        """The watch response being read (None before the first one opened)."""
        return self._streams.current

    def run(self, on_key: Callable[[str], None], stop: threading.Event, *, max_backoff: float = 30.0) -> None:
        """Feed keys until ``stop``; resumes from the last resourceVersion, relists on 410."""
        path, query = node_pods(self.node_name)
        rv: str | None = None

        def open_stream() -> WatchStream:
            nonlocal rv
            if rv is None:
                listing = self.api("GET", path, query=query)
                rv = (listing.get("metadata") or {}).get("resourceVersion")
                for pod in listing.get("items") or []:
                    meta = pod.get("metadata") or {}
                    on_key(pod_key(meta.get("namespace", ""), meta.get("name", "")))
            return self.api.kube.watch(path, {**query, "resourceVersion": rv, "allowWatchBookmarks": "true",
                                              "timeoutSeconds": WATCH_TIMEOUT_SECONDS})

        def consume(stream: WatchStream) -> None:
            nonlocal rv
            for ev in stream:
                if stop.is_set():
                    return
                obj = ev.get("object") or {}
                if ev.get("type") == "ERROR":
                    if obj.get("code") == 410:
                        rv = None  # too old: relist
                        return
                    raise KubeError(int(obj.get("code") or 500), str(obj.get("message") or "watch error"))
                meta = obj.get("metadata") or {}
                rv = meta.get("resourceVersion") or rv
                if ev.get("type") in ("ADDED", "MODIFIED", "DELETED"):
                    on_key(pod_key(meta.get("namespace", ""), meta.get("name", "")))

        def gone(error: Exception) -> bool:
            nonlocal rv
            if isinstance(error, KubeError) and error.status == 410:
                rv = None  # the resume point is too old: relist now, no backoff
                return True
            return False

        self._streams.run(open_stream, consume, stop, on_up=self.on_up, on_down=self.on_down, at_once=gone,
                          max_backoff=max_backoff)

    def close(self) -> None:
        self._streams.close()
