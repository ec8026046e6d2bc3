"""Real-Kubernetes test helpers: one etcd + kube-apiserver per pytest session, on 127.0.0.1 only.

The control plane is what controller-runtime's envtest runs: a real ``etcd`` and a real
``kube-apiserver`` (RBAC on, ServiceAccount admission off), started once per session by
``scripts/k8s-testenv.sh`` from the binaries ``scripts/k8s-bins.sh`` builds (found through
``$ETCD``/``$KUBE_APISERVER``/``$KUBECTL`` or ``~/.cache/driftd-bin/env.sh``).  When they are
missing the tests skip locally and fail under ``CI=true`` (``need()``), with the hint
``bash scripts/k8s-bins.sh``.  The API server writes an audit log of every write request.

There is no kubelet, scheduler or controller-manager, so the tests play those parts: they
create Node objects, bind pods by ``spec.nodeName``, write pod status (phase, Ready,
``containerStatuses[].imageID``) and PodDisruptionBudget status through the status
subresources, and :class:`FakeKubelet` force-deletes pods left Terminating.  Namespaces never
finish terminating, so every test gets a fresh one (and node names derived from it).

Fixtures (the names are stable; tests/test_chart.py uses them too):

``k8s_env`` (session)
    :class:`KubeEnv`: ``dir``, ``kubeconfig``, ``url``, ``port``, ``audit()``,
    ``restart_apiserver(down_seconds)`` (same port, same etcd data).  Torn down at session end.
``k8s_kubeconfig`` (session)
    ``str`` path of the admin kubeconfig (client certificate in ``system:masters``).
``k8s_api`` (session)
    an authenticated ``kubernetes.client.ApiClient`` (admin).
``k8s_rest`` (session)
    :class:`KubeRest` over ``k8s_api``: ``get/post/put/patch/delete(path, ...)`` on plain dicts.
``kubectl`` (session)
    ``kubectl(*args, input=None, check=True, timeout=120) -> CompletedProcess[str]`` with the
    admin kubeconfig.
``policyreport_crd`` (session)
    installs the PolicyReport CRD (``charts/driftd/crds/policyreports.wgpolicyk8s.io.yaml``)
    and waits until it is Established; returns its path.
``k8s_namespace`` (function)
    the name of a fresh namespace.
``k8s_cluster`` (function)
    :class:`KubeCluster` bound to ``k8s_namespace``: ``make_node``, ``make_owner`` (DaemonSet,
    StatefulSet, ReplicaSet, optionally owned by a Deployment; a compliant pod template unless
    told otherwise), ``owner``, ``make_pod``, ``set_pod_status``, ``make_pdb``, ``pod``, ``node``,
    ``events``, ``audit``.
    Nodes it made are deleted at teardown.
``fake_kubelet`` (function)
    ``fake_kubelet(*node_names) -> FakeKubelet``: a thread that force-deletes (grace 0) every
    Terminating pod bound to those nodes, as a kubelet would once containers stop; stopped at
    teardown.
``k8s_runtime`` (function)
    ``k8s_runtime(baselines_dir, node_name=..., dry_run=False, kubernetes={...}, **settings)``:
    like conftest's ``make_runtime`` (fresh registry, fake clock, baselines loaded) with the
    Kubernetes target enabled against this API server and ``namespace=k8s_namespace``; it
    exists because ``make_runtime`` pins ``node_name="node-a"`` and every test needs its own node.
    Each runtime gets its own state directory unless ``state_dir=`` names one (``rt.settings.state_dir``
    of an earlier runtime: a driftd restart).
"""

from __future__ import annotations

import atexit
import contextlib
import itertools
import json
import os
import re
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from conftest import need
from prometheus_client import CollectorRegistry

REPO = Path(__file__).resolve().parent.parent
TESTENV = REPO / "scripts" / "k8s-testenv.sh"
CRD_PATH = REPO / "charts" / "driftd" / "crds" / "policyreports.wgpolicyk8s.io.yaml"
SETUP_HINT = "bash scripts/k8s-bins.sh"
KUBELET_AGENT = "driftd-test-kubelet"

DIGEST_APPROVED = "sha256:" + "a" * 64
DIGEST_OTHER = "sha256:" + "b" * 64


# ---------------------------------------------------------------------------- binaries
def find_binaries() -> dict[str, str]:
    """ETCD, KUBE_APISERVER, KUBECTL (and whatever else env.sh names) from the environment or the cache."""
    found: dict[str, str] = {}
    envf = Path(os.environ.get("DRIFTD_BIN_CACHE") or Path.home() / ".cache" / "driftd-bin") / "env.sh"
    if envf.is_file():
        for line in envf.read_text().splitlines():
            m = re.match(r"^export ([A-Z_][A-Z0-9_]*)='(.*)'$", line.strip())
            if m:
                found[m.group(1)] = m.group(2)
    for name in ("ETCD", "KUBE_APISERVER", "KUBECTL"):
        if os.environ.get(name):
            found[name] = os.environ[name]
    return found


def need_binaries(*names: str) -> dict[str, str]:
    bins = find_binaries()
    for n in names:
        path = bins.get(n)
        need(bool(path) and os.access(path or "", os.X_OK), f"{n.lower()} binary not found: run `{SETUP_HINT}`")
    for tool in ("openssl", "curl"):
        need(shutil.which(tool) is not None, f"{tool} is needed to run the test API server")
    return bins


# ---------------------------------------------------------------------------- REST on dicts
class KubeApiError(Exception):
    def __init__(self, status: int, data: bytes | str | None) -> None:
        self.status = status
        try:
            self.body: dict[str, Any] = json.loads(data or b"{}")
        except ValueError:
            self.body = {"message": str(data)}
        super().__init__(f"HTTP {status}: {self.body.get('message', data)}")


class KubeRest:
    """Plain JSON calls over an authenticated ``ApiClient`` (no generated models)."""

    def __init__(self, api_client: Any) -> None:
        self.api = api_client

    def request(self, method: str, path: str, *, body: Any = None, query: dict[str, Any] | None = None,
                content_type: str | None = None, timeout: float = 30.0) -> dict[str, Any]:
        headers = {"Accept": "application/json"}
        if body is not None:
            headers["Content-Type"] = content_type or "application/json"
        params = self.api.param_serialize(method=method, resource_path=path,
                                          query_params=[(k, v) for k, v in (query or {}).items() if v is not None],
                                          header_params=headers, body=body, auth_settings=["BearerToken"])
        resp = self.api.call_api(*params, _request_timeout=timeout)
        resp.read()
        if resp.status >= 300:
            raise KubeApiError(resp.status, resp.data)
        return json.loads(resp.data) if resp.data else {}

    def get(self, path: str, **query: Any) -> dict[str, Any]:
        return self.request("GET", path, query=query)

    def get_or_none(self, path: str) -> dict[str, Any] | None:
        try:
            return self.get(path)
        except KubeApiError as e:
            if e.status == 404:
                return None
            raise

    def post(self, path: str, body: Any, **query: Any) -> dict[str, Any]:
        return self.request("POST", path, body=body, query=query)

    def put(self, path: str, body: Any) -> dict[str, Any]:
        return self.request("PUT", path, body=body)

    def patch(self, path: str, body: Any, *, merge: bool = True) -> dict[str, Any]:
        ctype = "application/merge-patch+json" if merge else "application/strategic-merge-patch+json"
        return self.request("PATCH", path, body=body, content_type=ctype)

    def delete(self, path: str, body: Any = None, **query: Any) -> dict[str, Any]:
        return self.request("DELETE", path, body=body, query=query)


def new_api_client(kubeconfig: str, user_agent: str | None = None) -> Any:
    from kubernetes import config

    api = config.new_client_from_config(config_file=kubeconfig)
    if user_agent:
        api.user_agent = user_agent
    return api


# ---------------------------------------------------------------------------- the control plane
@dataclass
class KubeEnv:
    """A running etcd + kube-apiserver (see scripts/k8s-testenv.sh)."""

    dir: Path
    kubeconfig: str
    url: str
    port: int
    bins: dict[str, str]
    _stopped: bool = field(default=False, repr=False)

    def _script(self, *args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, **{k: v for k, v in self.bins.items() if k in ("ETCD", "KUBE_APISERVER")}}
        return subprocess.run(["bash", str(TESTENV), *args], capture_output=True, text=True, timeout=timeout,
                              env=env, check=False)

    def restart_apiserver(self, down_seconds: float = 0.0) -> None:
        """Stop kube-apiserver, stay down ``down_seconds``, start it again on the same port (etcd keeps the data)."""
        r = self._script("restart-apiserver", str(self.dir), str(down_seconds))
        if r.returncode != 0:
            raise RuntimeError(f"kube-apiserver restart failed:\n{r.stderr[-3000:]}")

    def alive(self) -> bool:
        return self._script("status", str(self.dir), timeout=30).returncode == 0

    def _audit_lines(self) -> list[str]:
        path = self.dir / "audit.log"
        return path.read_text().splitlines() if path.exists() else []

    def audit_sync(self, timeout: float = 10.0) -> None:
        """Wait until requests answered so far are in the audit log.

        A client can see a response before the server has logged it, so this sends one
        more write (a SelfSubjectReview: nothing stored) and waits until it is logged.
        """
        def count() -> int:
            return sum('"selfsubjectreviews"' in line for line in self._audit_lines())

        before = count()
        rest = KubeRest(new_api_client(self.kubeconfig, "driftd-tests-audit-sync"))
        try:
            rest.post("/apis/authentication.k8s.io/v1/selfsubjectreviews",
                      {"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"})
        finally:
            rest.api.close()
        deadline = time.monotonic() + timeout
        while count() <= before and time.monotonic() < deadline:
            time.sleep(0.05)

    def audit(self, *, namespace: str | None = None, name: str | None = None, resource: str | None = None,
              verb: str | None = None, sync: bool = True) -> list[dict[str, Any]]:
        """Audit events (every write request, Metadata level) matching the given objectRef fields."""
        if sync:
            self.audit_sync()
        out = []
        for line in self._audit_lines():
            try:
                ev = json.loads(line)
            except ValueError:
                continue
            ref = ev.get("objectRef") or {}
            if namespace is not None and ref.get("namespace") != namespace:
                continue
            if name is not None and ref.get("name") != name:
                continue
            if resource is not None and ref.get("resource") != resource:
                continue
            if verb is not None and ev.get("verb") != verb:
                continue
            out.append(ev)
        return out

    def stop(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        env = {"KEEP": "1"} if os.environ.get("DRIFTD_K8S_KEEP") == "1" else {}
        with contextlib.suppress(Exception):
            subprocess.run(["bash", str(TESTENV), "stop", str(self.dir)], capture_output=True, timeout=60,
                           env={**os.environ, **env}, check=False)


def start_kube_env(bins: dict[str, str]) -> KubeEnv:
    d = Path(tempfile.mkdtemp(prefix="driftd-k8s-"))
    env = {**os.environ, "ETCD": bins["ETCD"], "KUBE_APISERVER": bins["KUBE_APISERVER"]}
    r = subprocess.run(["bash", str(TESTENV), "start", str(d)], capture_output=True, text=True, timeout=300, env=env,
                       check=False)
    if r.returncode != 0:
        subprocess.run(["bash", str(TESTENV), "stop", str(d)], capture_output=True, timeout=60, env=env, check=False)
        pytest.fail(f"the test control plane did not start (scripts/k8s-testenv.sh):\n{r.stderr[-4000:]}")
    values = dict(line.split("=", 1) for line in (d / "env").read_text().splitlines() if "=" in line)
    return KubeEnv(dir=d, kubeconfig=r.stdout.strip().splitlines()[-1], url=values["APISERVER_URL"],
                   port=int(values["APISERVER_PORT"]), bins=bins)


@pytest.fixture(scope="session")
def k8s_env() -> Iterator[KubeEnv]:
    bins = need_binaries("ETCD", "KUBE_APISERVER")
    env = start_kube_env(bins)
    atexit.register(env.stop)  # also when the session is interrupted hard
    try:
        yield env
    finally:
        env.stop()


@pytest.fixture(scope="session")
def k8s_kubeconfig(k8s_env: KubeEnv) -> str:
    return k8s_env.kubeconfig


@pytest.fixture(scope="session")
def k8s_api(k8s_kubeconfig: str) -> Iterator[Any]:
    api = new_api_client(k8s_kubeconfig, "driftd-tests")
    yield api
    with contextlib.suppress(Exception):
        api.close()


@pytest.fixture(scope="session")
def k8s_rest(k8s_api: Any) -> KubeRest:
    return KubeRest(k8s_api)


Kubectl = Callable[..., "subprocess.CompletedProcess[str]"]


@pytest.fixture(scope="session")
def kubectl(k8s_env: KubeEnv) -> Kubectl:
    bins = need_binaries("KUBECTL")
    binary = bins["KUBECTL"]

    def run(*args: str, input: str | None = None, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        r = subprocess.run([binary, "--kubeconfig", k8s_env.kubeconfig, *args], input=input, capture_output=True,
                           text=True, timeout=timeout, check=False)
        if check and r.returncode != 0:
            raise AssertionError(f"kubectl {' '.join(args)} failed ({r.returncode}):\n{r.stdout}\n{r.stderr}")
        return r

    return run


@pytest.fixture(scope="session")
def policyreport_crd(kubectl: Kubectl) -> Path:
    assert CRD_PATH.is_file(), f"PolicyReport CRD missing at {CRD_PATH}"
    kubectl("apply", "--server-side", "-f", str(CRD_PATH))
    kubectl("wait", "--for", "condition=Established", "--timeout=60s", "crd/policyreports.wgpolicyk8s.io")
    # discovery can lag the Established condition by a moment
    for _ in range(50):
        if kubectl("get", "policyreports", "-A", check=False).returncode == 0:
            break
        time.sleep(0.2)
    return CRD_PATH


# ---------------------------------------------------------------------------- per-test namespace and objects
_counter = itertools.count(1)


def _slug(text: str, n: int) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:n].strip("-") or "t"


@pytest.fixture
def k8s_namespace(k8s_rest: KubeRest, request: pytest.FixtureRequest) -> Iterator[str]:
    name = f"t{next(_counter):03d}-{_slug(request.node.name.removeprefix('test_'), 30)}"
    k8s_rest.post("/api/v1/namespaces", {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})
    yield name
    with contextlib.suppress(Exception):  # stays Terminating forever (no namespace controller): harmless
        k8s_rest.delete(f"/api/v1/namespaces/{name}")


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


class KubeCluster:
    """Builds the objects a kubelet and the controllers would: nodes, owners, bound pods with status, PDBs."""

    def __init__(self, rest: KubeRest, env: KubeEnv, namespace: str) -> None:
        self.rest = rest
        self.env = env
        self.ns = namespace
        self.nodes: list[str] = []
        self._owners: dict[tuple[str, str], dict[str, Any]] = {}

    # ---- paths
    def pod_path(self, name: str, ns: str | None = None) -> str:
        return f"/api/v1/namespaces/{quote(ns or self.ns)}/pods/{quote(name)}"

    # ---- nodes
    def node_name(self, suffix: str) -> str:
        return f"{self.ns}-{suffix}"[:63].strip("-")

    def make_node(self, suffix: str = "node-a", *, labels: dict[str, str] | None = None) -> str:
        """A Node object named ``<namespace>-<suffix>`` (Ready, schedulable); returns its name."""
        name = self.node_name(suffix)
        self.rest.post("/api/v1/nodes", {
            "apiVersion": "v1", "kind": "Node",
            "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name, **(labels or {})}},
            "spec": {},
        })
        self.rest.patch(f"/api/v1/nodes/{name}/status", {"status": {
            "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady", "message": "fake",
                            "lastHeartbeatTime": _now(), "lastTransitionTime": _now()}],
            "capacity": {"cpu": "4", "memory": "8Gi", "pods": "110"},
            "allocatable": {"cpu": "4", "memory": "8Gi", "pods": "110"},
        }})
        self.nodes.append(name)
        return name

    def node(self, name: str) -> dict[str, Any]:
        return self.rest.get(f"/api/v1/nodes/{quote(name)}")

    # ---- controllers (objects only: no controller-manager acts on them)
    def make_owner(self, kind: str = "ReplicaSet", name: str = "web", *, deployment: str | None = None,
                   **template: Any) -> dict[str, Any]:
        """A real apps/v1 ReplicaSet/DaemonSet/StatefulSet/Deployment; returns a controller ownerReference to it.

        Its pod template is :meth:`pod_template` (``**template``: ``privileged``, ``compliant``,
        ``image``, ``spec``): compliant with the restricted profile unless told otherwise.  A
        ReplicaSet with ``deployment=NAME`` is owned by that Deployment (made with the same
        template), as a Deployment's ReplicaSets are.  Made once per (kind, name).
        """
        key = (kind, name)
        if key in self._owners:
            return self._owners[key]
        plural = {"ReplicaSet": "replicasets", "DaemonSet": "daemonsets", "StatefulSet": "statefulsets",
                  "Deployment": "deployments"}[kind]
        labels = {"app": name}
        meta: dict[str, Any] = {"name": name, "labels": labels}
        if deployment:
            assert kind == "ReplicaSet", "only a ReplicaSet is owned by a Deployment"
            meta["ownerReferences"] = [self.make_owner("Deployment", deployment, **template)]
            labels = {"app": deployment, "pod-template-hash": name.rsplit("-", 1)[-1]}
            meta["labels"] = labels
        spec: dict[str, Any] = {"selector": {"matchLabels": labels}, "template": self.pod_template(labels, **template)}
        if kind != "DaemonSet":
            spec["replicas"] = 1
        if kind == "StatefulSet":
            spec["serviceName"] = name
        if kind == "Deployment":
            spec["selector"] = {"matchLabels": {"app": name}}
        obj = self.rest.post(f"/apis/apps/v1/namespaces/{self.ns}/{plural}",
                             {"apiVersion": "apps/v1", "kind": kind, "metadata": meta, "spec": spec})
        ref = {"apiVersion": "apps/v1", "kind": kind, "name": name, "uid": obj["metadata"]["uid"],
               "controller": True, "blockOwnerDeletion": True}
        self._owners[key] = ref
        return ref

    def owner(self, kind: str, name: str) -> dict[str, Any]:
        plural = {"ReplicaSet": "replicasets", "DaemonSet": "daemonsets", "StatefulSet": "statefulsets",
                  "Deployment": "deployments"}[kind]
        return self.rest.get(f"/apis/apps/v1/namespaces/{self.ns}/{plural}/{name}")

    def pod_template(self, labels: dict[str, str], *, privileged: bool = False, compliant: bool = True,
                     image: str = "registry.invalid/app:1", spec: dict[str, Any] | None = None) -> dict[str, Any]:
        """A pod template: the pod spec :meth:`pod_manifest` makes (without a node), with these labels."""
        pod = self.pod_manifest("template", "", owner=None, privileged=privileged, compliant=compliant, spec=spec)
        pod_spec = pod["spec"]
        pod_spec.pop("nodeName")
        for c in pod_spec["containers"]:
            c["image"] = image
        return {"metadata": {"labels": labels}, "spec": pod_spec}

    # ---- pods
    def pod_manifest(self, name: str, node: str, *, owner: str | None = "ReplicaSet", owner_name: str = "web",
                     labels: dict[str, str] | None = None, privileged: bool = False, compliant: bool = True,
                     emptydir: bool = False, mirror: bool = False, grace: int = 30,
                     spec: dict[str, Any] | None = None) -> dict[str, Any]:
        """A pod bound to ``node`` that meets the restricted profile unless ``privileged``/``compliant=False``."""
        csc: dict[str, Any] = {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}}
        if privileged:
            csc = {"privileged": True, "allowPrivilegeEscalation": True, "capabilities": {"drop": ["ALL"]}}
        elif not compliant:
            csc = {"allowPrivilegeEscalation": True}
        container: dict[str, Any] = {"name": "app", "image": "registry.invalid/app:1", "securityContext": csc,
                                     "resources": {"limits": {"memory": "64Mi"}}}
        pod_spec: dict[str, Any] = {
            "nodeName": node, "terminationGracePeriodSeconds": grace, "automountServiceAccountToken": False,
            "securityContext": {"runAsNonRoot": True, "runAsUser": 1000, "seccompProfile": {"type": "RuntimeDefault"}},
            "containers": [container],
        }
        if emptydir:
            pod_spec["volumes"] = [{"name": "scratch", "emptyDir": {}}]
            container["volumeMounts"] = [{"name": "scratch", "mountPath": "/scratch"}]
        pod_spec.update(spec or {})
        meta: dict[str, Any] = {"name": name, "namespace": self.ns, "labels": {"app": owner_name, **(labels or {})}}
        if owner:
            meta["ownerReferences"] = [self.make_owner(owner, owner_name)]
        if mirror:
            meta["annotations"] = {"kubernetes.io/config.mirror": "0" * 32, "kubernetes.io/config.source": "file"}
            meta["ownerReferences"] = [{"apiVersion": "v1", "kind": "Node", "name": node,
                                        "uid": self.node(node)["metadata"]["uid"], "controller": True}]
        return {"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": pod_spec}

    def make_pod(self, name: str, node: str, *, image_id: str = DIGEST_APPROVED, phase: str = "Running",
                 ready: bool = True, **kw: Any) -> dict[str, Any]:
        """Create a bound pod (see :meth:`pod_manifest`) and give it status, as a kubelet would."""
        self.rest.post(f"/api/v1/namespaces/{self.ns}/pods", self.pod_manifest(name, node, **kw))
        return self.set_pod_status(name, phase=phase, ready=ready, image_id=image_id)

    def set_pod_status(self, name: str, *, phase: str = "Running", ready: bool = True,
                       image_id: str = DIGEST_APPROVED) -> dict[str, Any]:
        """Write status through the status subresource: phase, Ready, containerStatuses[].imageID."""
        pod = self.rest.get(self.pod_path(name))
        running = phase == "Running"
        statuses = [{
            "name": c["name"], "image": c["image"], "imageID": f"registry.invalid/app@{image_id}",
            "ready": running and ready, "restartCount": 0, "started": running,
            "containerID": f"containerd://{'c' * 64}",
            "state": {"running": {"startedAt": _now()}} if running else {"waiting": {"reason": "ContainerCreating"}},
        } for c in pod["spec"]["containers"]]
        cond = "True" if running and ready else "False"
        status = {
            "phase": phase, "hostIP": "10.1.0.1", "podIP": "10.2.0.1", "startTime": _now(),
            "conditions": [{"type": t, "status": cond if t in ("Ready", "ContainersReady") else "True",
                            "lastTransitionTime": _now()}
                           for t in ("PodScheduled", "Initialized", "ContainersReady", "Ready")],
            "containerStatuses": statuses,
        }
        return self.rest.patch(self.pod_path(name) + "/status", {"status": status})

    def pod(self, name: str, ns: str | None = None) -> dict[str, Any] | None:
        return self.rest.get_or_none(self.pod_path(name, ns))

    def pods_on(self, node: str) -> list[dict[str, Any]]:
        return self.rest.get("/api/v1/pods", fieldSelector=f"spec.nodeName={node}").get("items") or []

    # ---- PDB
    def make_pdb(self, name: str, match_labels: dict[str, str], *, disruptions_allowed: int = 0,
                 healthy: int = 1) -> dict[str, Any]:
        """A policy/v1 PDB whose status (no disruption controller here) is written through /status."""
        base = f"/apis/policy/v1/namespaces/{self.ns}/poddisruptionbudgets"
        pdb = self.rest.post(base, {"apiVersion": "policy/v1", "kind": "PodDisruptionBudget",
                                    "metadata": {"name": name},
                                    "spec": {"minAvailable": healthy, "selector": {"matchLabels": match_labels}}})
        return self.rest.patch(f"{base}/{name}/status", {"status": {
            "observedGeneration": pdb["metadata"].get("generation", 1), "disruptionsAllowed": disruptions_allowed,
            "currentHealthy": healthy + disruptions_allowed, "desiredHealthy": healthy,
            "expectedPods": healthy + disruptions_allowed,
        }})

    # ---- what happened
    def events(self, pod: str | None = None, ns: str | None = None) -> list[dict[str, Any]]:
        """core/v1 Events in the namespace, optionally only those about one object."""
        q = {"fieldSelector": f"involvedObject.name={pod}"} if pod else {}
        return self.rest.get(f"/api/v1/namespaces/{ns or self.ns}/events", **q).get("items") or []

    def audit(self, **kw: Any) -> list[dict[str, Any]]:
        kw.setdefault("namespace", self.ns)
        return self.env.audit(**kw)

    def cleanup(self) -> None:
        for n in self.nodes:
            with contextlib.suppress(Exception):
                self.rest.delete(f"/api/v1/nodes/{n}")


@pytest.fixture
def k8s_cluster(k8s_rest: KubeRest, k8s_env: KubeEnv, k8s_namespace: str) -> Iterator[KubeCluster]:
    c = KubeCluster(k8s_rest, k8s_env, k8s_namespace)
    yield c
    c.cleanup()


class FakeKubelet(threading.Thread):
    """Force-deletes (grace 0) Terminating pods bound to the given nodes, as the kubelet would."""

    def __init__(self, kubeconfig: str, nodes: tuple[str, ...], interval: float = 0.2) -> None:
        super().__init__(name="fake-kubelet", daemon=True)
        self.rest = KubeRest(new_api_client(kubeconfig, KUBELET_AGENT))
        self.nodes = nodes
        self.interval = interval
        self.stop_event = threading.Event()
        self.deleted: list[str] = []

    def run(self) -> None:
        while not self.stop_event.is_set():
            for node in self.nodes:
                try:
                    pods = self.rest.get("/api/v1/pods", fieldSelector=f"spec.nodeName={node}").get("items") or []
                except Exception:
                    continue  # API server restarting
                for pod in pods:
                    meta = pod["metadata"]
                    if not meta.get("deletionTimestamp"):
                        continue
                    with contextlib.suppress(Exception):
                        self.rest.delete(f"/api/v1/namespaces/{meta['namespace']}/pods/{meta['name']}",
                                         {"apiVersion": "v1", "kind": "DeleteOptions", "gracePeriodSeconds": 0,
                                          "preconditions": {"uid": meta["uid"]}})
                        self.deleted.append(f"{meta['namespace']}/{meta['name']}")
            self.stop_event.wait(self.interval)

    def stop(self) -> None:
        self.stop_event.set()
        self.join(timeout=10)
        with contextlib.suppress(Exception):
            self.rest.api.close()


@pytest.fixture
def fake_kubelet(k8s_kubeconfig: str) -> Iterator[Callable[..., FakeKubelet]]:
    started: list[FakeKubelet] = []

    def start(*nodes: str) -> FakeKubelet:
        k = FakeKubelet(k8s_kubeconfig, nodes)
        k.start()
        started.append(k)
        return k

    yield start
    for k in started:
        k.stop()


# ---------------------------------------------------------------------------- driftd wired to this API server
@pytest.fixture
def k8s_runtime(tmp_path: Path, host_root: Path, k8s_kubeconfig: str, k8s_namespace: str,
                policyreport_crd: Path) -> Iterator[Callable[..., Any]]:
    from driftd.baselines.loader import load_set
    from driftd.engine.clock import FakeClock
    from driftd.runtime import build_runtime
    from driftd.settings import load_settings

    made: list[Any] = []

    def make(baselines: Path, *, node_name: str, dry_run: bool = False, clock: Any = None,
             registry: CollectorRegistry | None = None, kubernetes: dict[str, Any] | None = None,
             state_dir: Path | None = None, **settings: Any) -> Any:
        kube = {"enabled": True, "kubeconfig": k8s_kubeconfig, "namespace": k8s_namespace,
                "eviction_retry_seconds": 0.2, "drain_timeout_seconds": 30, **(kubernetes or {})}
        settings.setdefault("safety", {"retire": {"after_seconds": 0}})  # mechanics; gates: test_safety_gates.py
        s = load_settings(host_root=host_root, baselines=baselines, state_dir=state_dir or tmp_path / f"state{len(made)}",
                          node_name=node_name, dry_run=dry_run, kubernetes=kube, **settings)
        rt = build_runtime(s, registry=registry or CollectorRegistry(), clock=clock or FakeClock())
        bset, problems = load_set(baselines)
        assert bset is not None, problems
        rt.engine.set_baselines(bset)
        made.append(rt)
        return rt

    yield make
    for rt in made:
        with contextlib.suppress(Exception):
            rt.state.close()
