"""Who may read an endpoint: Kubernetes bearer tokens, as kube-rbac-proxy checks them (edge).

Pipeline position: beside the engine, in front of the read-only HTTP endpoints.  A request's
bearer token is sent to the API server in a ``TokenReview`` (authentication.k8s.io/v1); the
user it names is checked with a ``SubjectAccessReview`` (authorization.k8s.io/v1):

* a path listed in ``resources`` is checked as that (virtual) resource, e.g. the drifts API as
  ``{group: driftd.io, resource: drifts, name: <node>, verb: get}``; RBAC rule:
  ``apiGroups: [driftd.io], resources: [drifts], verbs: [get]`` (``resourceNames`` narrows it
  to nodes).  Not a non-resource URL: the built-in ``system:discovery`` role lets every
  authenticated user get ``/api/*``, so ``nonResourceURLs: [/api/v1/drifts]`` would let
  anyone with any token in;
* any other path (``/metrics``) by the non-resource attributes ``{path, verb: get}``, the
  kube-rbac-proxy convention a Prometheus ClusterRole already grants
  (``nonResourceURLs: [/metrics], verbs: [get]``).

Decisions, allowed and denied, are kept ``cache_seconds``, keyed by the SHA-256 of the token
and the path; tokens are never logged or stored.

May touch: nothing directly: the API server is reached only through the injected ``post``
callable (``runtime.build_api_server`` builds it from driftd's Kubernetes REST client), so
this module imports no client library.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from driftd.observability.logging import Event, get_logger

Decision = tuple[int, str]
"""(HTTP status, reason): 200 allowed, 401 no valid token, 403 denied, 503 the API server could not decide."""

Authorize = Callable[[str, str], Decision]
"""``authorize(token, path) -> (status, reason)``."""

Post = Callable[[str, Mapping[str, Any]], Mapping[str, Any]]
"""``post(api_path, body) -> response body``; raises when the API server gives no 2xx answer."""

TOKEN_REVIEWS = "/apis/authentication.k8s.io/v1/tokenreviews"  # noqa: S105 (an API path)
SUBJECT_ACCESS_REVIEWS = "/apis/authorization.k8s.io/v1/subjectaccessreviews"
MAX_TOKEN_BYTES = 16 * 1024


class KubernetesAuth:
    """``authorize(token, path)`` by TokenReview + SubjectAccessReview, with a bounded decision cache."""

    def __init__(
        self,
        post: Post,
        *,
        cache_seconds: float = 60.0,
        audiences: Sequence[str] = (),
        resources: Mapping[str, Mapping[str, str]] | None = None,
        verb: str = "get",
        max_entries: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._post = post
        self.cache_seconds = cache_seconds
        self.audiences = list(audiences)
        self.resources = {path: dict(attrs) for path, attrs in (resources or {}).items()}
        self.verb = verb
        self.max_entries = max_entries
        self._clock = clock
        self._cache: dict[str, tuple[float, Decision]] = {}
        self._lock = threading.Lock()
        self._log = get_logger()
        self._last_warned = float("-inf")
        self.reviews = 0  # TokenReviews sent (cache misses that reached the API server)

    def __call__(self, token: str, path: str) -> Decision:
        if not token or len(token) > MAX_TOKEN_BYTES or not token.isascii() or not token.isprintable() or " " in token:
            return 401, "malformed bearer token"
        key = hashlib.sha256(token.encode()).hexdigest() + "\n" + path
        now = self._clock()
        with self._lock:
            hit = self._cache.get(key)
            if hit is not None and hit[0] > now:
                return hit[1]
        try:
            decision = self._review(token, path)
        except Exception as e:  # no answer, or a refusal of driftd's own reviews: nobody is let in, nothing is cached
            self._warn(e)
            return 503, "authorization unavailable"
        if self.cache_seconds > 0:
            with self._lock:
                self._remember(key, now + self.cache_seconds, decision, now)
        return decision

    def _review(self, token: str, path: str) -> Decision:
        spec: dict[str, Any] = {"token": token}
        if self.audiences:
            spec["audiences"] = self.audiences
        self.reviews += 1
        tr = self._post(TOKEN_REVIEWS, {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview", "spec": spec})
        status = tr.get("status") or {}
        if not status.get("authenticated"):
            return 401, "invalid bearer token"
        if self.audiences and not set(status.get("audiences") or []) & set(self.audiences):
            return 401, "token not meant for driftd (audience)"
        user = status.get("user") or {}
        username = str(user.get("username") or "")
        sar_spec: dict[str, Any] = {"user": username, "groups": list(user.get("groups") or [])}
        resource = self.resources.get(path)
        if resource is not None:
            sar_spec["resourceAttributes"] = {**resource, "verb": self.verb}
            what = f"{resource.get('resource')}.{resource.get('group')}"
            if resource.get("name"):
                what += f"/{resource['name']}"
        else:
            sar_spec["nonResourceAttributes"] = {"path": path, "verb": self.verb}
            what = path
        if user.get("uid"):
            sar_spec["uid"] = user["uid"]
        if user.get("extra"):
            sar_spec["extra"] = user["extra"]
        sar = self._post(SUBJECT_ACCESS_REVIEWS, {
            "apiVersion": "authorization.k8s.io/v1", "kind": "SubjectAccessReview", "spec": sar_spec})
        sstatus = sar.get("status") or {}
        if sstatus.get("allowed") and not sstatus.get("denied"):
            return 200, "allowed"
        return 403, f"user {username!r} may not {self.verb} {what}"

    def _remember(self, key: str, expires: float, decision: Decision, now: float) -> None:
        if len(self._cache) >= self.max_entries:
            for k in [k for k, (exp, _) in self._cache.items() if exp <= now]:
                del self._cache[k]
            while len(self._cache) >= self.max_entries:  # still full: forget the oldest decisions first
                del self._cache[next(iter(self._cache))]
        self._cache.pop(key, None)
        self._cache[key] = (expires, decision)

    def _warn(self, e: Exception) -> None:
        now = self._clock()
        if now - self._last_warned >= 10.0:  # at most one line per 10 s while the API server cannot answer
            self._last_warned = now
            self._log.warning(Event.HTTP_AUTH_UNAVAILABLE, error=str(e)[:500])
