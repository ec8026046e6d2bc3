"""The Kubernetes REST client: the one module that imports the ``kubernetes`` library.

Pipeline position: below every other part of the Kubernetes target (pods, watch, Events,
PolicyReport, node retirement); none of them talks to the API server except through
:class:`Api` (JSON requests that keep the target's reachability current) or
:meth:`Kube.watch` (one streaming watch response).

May touch: the network, through the kubernetes package's authenticated connection pool
(``ApiClient.param_serialize``/``call_api`` only; no generated API classes).  The
``kubernetes`` package is imported lazily in :func:`load_api_client`, so importing this
module (and the target) costs nothing until the target is enabled.  Knows no baseline,
policy or pipeline type.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

from driftd.targets.base import Reachability, TargetError


class KubeError(TargetError):
    """A non-2xx answer from the API server."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"HTTP {status}: {message}", transient=status >= 500 or status in (409, 429))
        self.status = status


def now_rfc3339(micro: bool = False) -> str:
    now = datetime.now(UTC)
    return now.strftime("%Y-%m-%dT%H:%M:%S.%fZ") if micro else now.strftime("%Y-%m-%dT%H:%M:%SZ")


class Kube:
    """A thin JSON REST client over the kubernetes package's authenticated connection pool."""

    def __init__(self, api_client: Any) -> None:
        self.api_client = api_client

    def request(self, method: str, path: str, *, query: Mapping[str, Any] | None = None, body: Any = None,
                content_type: str | None = None, timeout: float = 30.0, stream: bool = False) -> Any:
        headers = {"Accept": "application/json"}
        if body is not None:
            headers["Content-Type"] = content_type or "application/json"
        params = self.api_client.param_serialize(
            method=method, resource_path=path, query_params=[(k, v) for k, v in (query or {}).items() if v is not None],
            header_params=headers, body=body, auth_settings=["BearerToken"])
        try:
            # a watch gets a read timeout past the server's timeoutSeconds (300), so a half-open
            # connection is noticed instead of hanging the watch forever
            resp = self.api_client.call_api(*params, _request_timeout=(10, 360) if stream else timeout)
        except Exception as e:  # connection refused, TLS, timeouts: the API server is unreachable
            raise TargetError(f"kubernetes API unreachable: {e}") from None
        if stream:
            if resp.status >= 300:
                resp.read()
                raise KubeError(resp.status, _message(resp.data))
            return resp.response
        resp.read()
        if resp.status >= 300:
            raise KubeError(resp.status, _message(resp.data))
        return json.loads(resp.data) if resp.data else {}

    def watch(self, path: str, query: Mapping[str, Any]) -> WatchStream:
        return WatchStream(self.request("GET", path, query={**query, "watch": "true"}, stream=True))


class WatchStream:
    """The events of one watch response; :meth:`close` from another thread unblocks a pending read."""

    def __init__(self, raw: Any) -> None:
        self._raw = raw

    def __iter__(self) -> Iterator[dict[str, Any]]:
        buf = b""
        finished = False
        try:
            for chunk in self._raw.stream(4096, decode_content=True):
                buf += chunk
                while b"\n" in buf:
                    line, buf = buf.split(b"\n", 1)
                    if line.strip():
                        yield json.loads(line)
            finished = True
        finally:
            if not finished:  # left mid-response: the connection cannot be reused
                with contextlib.suppress(Exception):
                    self._raw.close()
            self._raw.release_conn()

    def close(self) -> None:
        # closing a generator another thread is iterating fails ("already executing") and a
        # plain close() does not wake a blocked recv(): shut the socket down instead
        with contextlib.suppress(Exception):
            shutdown = getattr(self._raw, "shutdown", None)  # urllib3 >= 2.3
            if shutdown is not None:
                shutdown()
            else:
                self._raw.close()


def _message(data: bytes | None) -> str:
    try:
        return str(json.loads(data or b"{}").get("message") or data)
    except ValueError:
        return (data or b"").decode("utf-8", "replace")[:500]


def load_api_client(kubeconfig: str | None) -> Any:
    """An authenticated ApiClient: from a kubeconfig file, or the in-cluster service account."""
    from kubernetes import client, config

    if kubeconfig:
        return config.new_client_from_config(config_file=kubeconfig)  # type: ignore[no-untyped-call]
    cfg = client.Configuration()
    config.load_incluster_config(client_configuration=cfg)  # type: ignore[no-untyped-call]
    return client.ApiClient(cfg)


class Api:
    """JSON requests that keep the target's :class:`Reachability` current (shared by every part).

    Any answer from the server (a non-2xx too) means it is up; no answer means it is down.
    """

    def __init__(self, kube: Kube, reach: Reachability) -> None:
        self.kube = kube
        self.reach = reach

    def __call__(self, method: str, path: str, **kw: Any) -> Any:
        try:
            out = self.kube.request(method, path, **kw)
        except KubeError:
            self.reach.set(True)
            raise
        except TargetError as e:
            self.reach.set(False, str(e))
            raise
        self.reach.set(True)
        return out


# ---------------------------------------------------------------------------- paths
def node_path(node: str) -> str:
    return f"/api/v1/nodes/{quote(node)}"


def pod_path(ns: str, name: str) -> str:
    return f"/api/v1/namespaces/{quote(ns)}/pods/{quote(name)}"


def node_pods(node: str) -> tuple[str, dict[str, str]]:
    """The list (and watch) of one node's pods: never cluster-wide."""
    return "/api/v1/pods", {"fieldSelector": f"spec.nodeName={node}"}


def get_pod(kubeconfig: str | None, ns: str, name: str) -> dict[str, Any]:
    """One pod object (``driftd baseline capture pod``): a single GET, with its own client."""
    try:
        api_client = load_api_client(kubeconfig)
    except Exception as e:  # a missing or malformed kubeconfig, no service account
        raise TargetError(f"kubernetes client: {e}", transient=False) from None
    try:
        pod: dict[str, Any] = Kube(api_client).request("GET", pod_path(ns, name))
    except KubeError as e:
        if e.status == 404:
            raise TargetError(f"no pod {ns}/{name}", transient=False) from None
        raise
    finally:
        with contextlib.suppress(Exception):
            api_client.close()
    return pod
