"""The Helm chart ``charts/driftd``: lint, render, real API server, RBAC, admission policies, alerts.

Everything runs against real tools: ``helm`` (lint --strict, template), ``kubeconform`` (strict,
with JSON schemas generated from the test API server's /openapi/v2, so it works offline),
``kubectl apply --dry-run=server --validate=strict`` against the test control plane of
tests/k8s_support.py, ``promtool check rules`` / ``promtool test rules`` on the PrometheusRule's
groups.  RBAC and the ValidatingAdmissionPolicies are proven with tokens minted through the
TokenRequest API for the chart's own ServiceAccount, bound to an agent pod on a node, exactly
what the kubelet mounts into the DaemonSet's pods; driftd's own Kubernetes adapter then runs
under that token.  Missing binaries skip locally and fail under CI=true (``need``).
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import need
from k8s_support import KubeApiError, KubeCluster, KubeEnv, KubeRest, find_binaries, new_api_client

pytestmark = pytest.mark.real

REPO = Path(__file__).resolve().parent.parent
CHART = REPO / "charts" / "driftd"
FIXTURES = Path(__file__).resolve().parent / "fixtures" / "chart"
MONITORING_CRDS = FIXTURES / "monitoring.coreos.com-crds.yaml"
ALERT_TESTS = FIXTURES / "alerts_test.yaml"
LEASE = "driftd-node-retirement"
NODE_NAME_EXTRA = "authentication.kubernetes.io/node-name"

# value sets every render-level check runs over
ALL_ON: dict[str, Any] = {
    "settings": {"dryRun": False},
    "docker": {"enabled": True},
    "sysctl": {"enabled": True},
    "serviceMonitor": {"enabled": True},
    "prometheusRule": {"enabled": True},
    "grafanaDashboard": {"enabled": True, "annotations": {"grafana_folder": "Compliance"}},
    "priorityClassName": "system-node-critical",
    "hostPaths": {"extra": [{"path": "/root"}, {"path": "/usr/local/etc", "readOnly": True}]},
    "extraBaselines": {"extra-motd.yaml": (
        "apiVersion: driftd.io/v1alpha1\nkind: HostBaseline\nmetadata: {name: extra-motd}\n"
        "spec:\n  enforcement: warn\n  files:\n    - {path: /etc/motd, source: files/motd, mode: \"0644\"}\n")},
    "extraBaselineFiles": {"motd": "Authorized use only.\n"},
    "kubernetes": {"excludeNamespaces": ["monitoring", "csi-*"]},
}
VARIANTS: dict[str, dict[str, Any]] = {
    "defaults": {},
    "docker": {"docker": {"enabled": True}},
    "sysctl": {"sysctl": {"enabled": True}},
    "sysctl-privileged": {"sysctl": {"enabled": True, "privileged": True}},
    "all-on": ALL_ON,
    "minimal": {"admissionPolicy": {"enabled": False}, "service": {"enabled": False},
                "kubernetes": {"events": False, "policyReport": False}, "baselines": {"shipped": {"enabled": False}}},
    "warn-only-policies": {"admissionPolicy": {"validationActions": ["Warn", "Audit"], "evictionFailurePolicy": "Ignore"}},
    "no-eviction-policy": {"admissionPolicy": {"restrictEvictions": False}},
    # the HTTP listeners locked down further (metrics auth, TLS, API clients) and opened up (loopback only, no policy)
    "http-locked-down": {"http": {"metricsAuth": "kubernetes", "tls": {"secretName": "driftd-tls"},
                                  "authAudiences": ["driftd"]},
                         "serviceMonitor": {"enabled": True},
                         "networkPolicy": {"scraperNamespaces": ["monitoring", "observability"], "apiClients": [
                             {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "security"}},
                              "podSelector": {"matchLabels": {"app": "auditor"}}}]}},
    "http-loopback": {"http": {"apiAuth": "none", "apiHost": "127.0.0.1"}, "networkPolicy": {"enabled": False}},
}


# ---------------------------------------------------------------------------- tools
def tool(name: str) -> str:
    path = find_binaries().get(name) or os.environ.get(name)
    need(bool(path) and os.access(path or "", os.X_OK), f"{name.lower()} binary not found: run `bash scripts/k8s-bins.sh`")
    assert path is not None
    return path


def run(*args: str, input: str | None = None, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    r = subprocess.run(list(args), input=input, capture_output=True, text=True, timeout=timeout, check=False)
    if check and r.returncode != 0:
        raise AssertionError(f"{' '.join(args[:3])} ... failed ({r.returncode}):\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}")
    return r


def helm(*args: str, values: dict[str, Any] | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
    binary = tool("HELM")
    with tempfile.TemporaryDirectory(prefix="driftd-chart-values-") as d:
        extra: list[str] = []
        if values:
            (Path(d) / "values.yaml").write_text(yaml.safe_dump(values))
            extra = ["--values", str(Path(d) / "values.yaml")]
        return run(binary, *args, *extra, check=check)


def template(values: dict[str, Any] | None = None, *, release: str = "driftd", namespace: str = "driftd") -> str:
    return helm("template", release, str(CHART), "--namespace", namespace, values=values).stdout


def docs_of(manifest: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(manifest) if d]


def render(values: dict[str, Any] | None = None, **kw: Any) -> list[dict[str, Any]]:
    return docs_of(template(values, **kw))


def one(docs: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    found = [d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]
    assert len(found) == 1, f"expected one {kind} {name or ''}, got {[d['metadata']['name'] for d in found]}"
    return found[0]


def kinds(docs: list[dict[str, Any]]) -> list[str]:
    return sorted(d["kind"] for d in docs)


def container(docs: list[dict[str, Any]]) -> dict[str, Any]:
    ds = one(docs, "DaemonSet")
    (c,) = ds["spec"]["template"]["spec"]["containers"]
    return c


def env_of(docs: list[dict[str, Any]]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container(docs)["env"]}


def host_paths(docs: list[dict[str, Any]]) -> dict[str, tuple[str, str, bool]]:
    """hostPath → (type, mountPath, readOnly)."""
    ds = one(docs, "DaemonSet")["spec"]["template"]["spec"]
    mounts = {m["name"]: m for m in ds["containers"][0]["volumeMounts"]}
    return {v["hostPath"]["path"]: (v["hostPath"].get("type", ""), mounts[v["name"]]["mountPath"],
                                    bool(mounts[v["name"]].get("readOnly")))
            for v in ds["volumes"] if "hostPath" in v}


# ---------------------------------------------------------------------------- chart files
def test_chart_baselines_are_identical_to_the_repository_baselines() -> None:
    """charts/driftd/baselines/ is a copy of baselines/ (the chart cannot read outside itself): never let them drift."""
    def tree(root: Path) -> dict[str, bytes]:
        return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}

    repo, chart = tree(REPO / "baselines"), tree(CHART / "baselines")
    assert repo, "no baselines in the repository"
    assert sorted(chart) == sorted(repo), "file sets differ: copy baselines/ to charts/driftd/baselines/"
    changed = [name for name in repo if repo[name] != chart[name]]
    assert not changed, f"chart copies differ from baselines/: {changed} (cp -r baselines/. charts/driftd/baselines/)"


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_helm_lint_strict(variant: str) -> None:
    r = helm("lint", "--strict", str(CHART), "--namespace", "driftd", values=VARIANTS[variant])
    assert "0 chart(s) failed" in r.stdout, r.stdout
    assert "[WARNING]" not in r.stdout and "[ERROR]" not in r.stdout, r.stdout


@pytest.mark.parametrize(("values", "message"), [
    ({"unknownKey": 1}, "additional properties 'unknownKey' not allowed"),
    ({"sysctl": {"enabled": True, "hostNetwrk": True}}, "additional properties 'hostNetwrk' not allowed"),
    ({"image": {"digest": "latest"}}, "/image/digest"),
    ({"http": {"port": 70000}}, "/http/port"),
    ({"settings": {"logLevel": "verbose"}}, "/settings/logLevel"),
    ({"capabilities": ["SYS_ADMIN", "SYS_ADMIN"]}, "/capabilities"),
    ({"hostPaths": {"extra": [{"path": "/etc"}]}}, "/hostPaths/extra/0/path"),
    ({"hostPaths": {"extra": [{"path": "relative"}]}}, "/hostPaths/extra/0/path"),
    ({"extraBaselines": {"../escape.yaml": "x"}}, "'../escape.yaml' does not match pattern"),
    ({"extraBaselines": {"notyaml.txt": "x"}}, "'notyaml.txt' does not match pattern"),
    ({"admissionPolicy": {"validationActions": ["Block"]}}, "/admissionPolicy/validationActions/0"),
    ({"serviceMonitor": {"interval": "soon"}}, "/serviceMonitor/interval"),
    ({"kubernetes": {"excludeNamespaces": ["Not A Namespace"]}}, "/kubernetes/excludeNamespaces/0"),
    ({"kubernetes": {"excludeNamespaces": "monitoring"}}, "/kubernetes/excludeNamespaces"),
])
def test_values_schema_rejects_bad_values(values: dict[str, Any], message: str) -> None:
    r = helm("template", "driftd", str(CHART), values=values, check=False)
    assert r.returncode != 0, f"accepted {values}"
    assert message in r.stderr, r.stderr


def test_template_guards() -> None:
    big = {"extraBaselineFiles": {"blob": "x" * 1_100_000}}
    r = helm("template", "driftd", str(CHART), values=big, check=False)
    assert r.returncode != 0 and "at most 1 MiB" in r.stderr, r.stderr
    dup = {"extraBaselines": {"sshd.yaml": "x: 1\n"}}
    r = helm("template", "driftd", str(CHART), values=dup, check=False)
    assert r.returncode != 0 and "baselines.shipped.exclude" in r.stderr, r.stderr
    r = helm("template", "driftd", str(CHART), values={"serviceMonitor": {"enabled": True}, "service": {"enabled": False}},
             check=False)
    assert r.returncode != 0 and "serviceMonitor.enabled needs service.enabled" in r.stderr, r.stderr


def test_packaged_chart_carries_the_baselines(tmp_path: Path) -> None:
    """`helm package` keeps baselines/ (the ConfigMap's source): .helmignore must not drop it."""
    helm("package", str(CHART), "--destination", str(tmp_path))
    (tgz,) = tmp_path.glob("driftd-*.tgz")
    docs = docs_of(helm("template", "driftd", str(tgz), "--namespace", "driftd").stdout)
    assert set(one(docs, "ConfigMap")["data"]) == set(one(render(), "ConfigMap")["data"])


# ---------------------------------------------------------------------------- rendered objects
def test_default_render() -> None:
    docs = render()
    assert kinds(docs) == sorted([
        "ServiceAccount", "ConfigMap", "ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding", "Service", "DaemonSet",
        "ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding",
        "ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding",
        "ClusterRole", "NetworkPolicy",  # the drift-reader role (http.apiAuth kubernetes), networkPolicy.enabled
    ])
    ds = one(docs, "DaemonSet")
    spec = ds["spec"]["template"]["spec"]
    assert ds["spec"]["updateStrategy"] == {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 1}}
    assert spec["tolerations"] == [{"operator": "Exists"}], "must run on every node, tainted or not"
    assert spec["serviceAccountName"] == "driftd"
    assert not spec.get("hostNetwork") and not spec.get("hostPID") and not spec.get("hostIPC")
    assert "priorityClassName" not in spec
    assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    c = container(docs)
    assert c["args"] == ["run"]
    assert c["image"] == "driftd:0.1.0"
    sc = c["securityContext"]
    assert sc["runAsUser"] == 0 and sc["runAsNonRoot"] is False
    assert sc["privileged"] is False and sc["allowPrivilegeEscalation"] is False
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["capabilities"] == {"drop": ["ALL"], "add": ["CHOWN", "DAC_OVERRIDE", "FOWNER", "FSETID"]}
    assert sc["seccompProfile"] == {"type": "RuntimeDefault"}
    assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http-metrics"}
    assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http-metrics"}
    assert c["ports"] == [{"name": "http-metrics", "containerPort": 9808, "protocol": "TCP"},
                          {"name": "http-api", "containerPort": 9809, "protocol": "TCP"}]
    assert set(c["resources"]) == {"requests", "limits"}
    # only what the shipped baselines manage, read-only in the default dry run; the state dir (test_host_mounts_*)
    assert host_paths(docs) == {
        "/etc": ("Directory", "/host/etc", True),
        "/root": ("Directory", "/host/root", True),
        "/var/lib/dpkg": ("Directory", "/host/var/lib/dpkg", True),
        "/var/lib/driftd": ("DirectoryOrCreate", "/var/lib/driftd", False),
    }
    env = env_of(docs)
    assert env["NODE_NAME"] == {"fieldRef": {"fieldPath": "spec.nodeName"}}
    assert env["DRIFTD_HOST_ROOT"] == "/host"
    assert env["DRIFTD_BASELINES"] == "/etc/driftd/baselines"
    assert env["DRIFTD_STATE_DIR"] == "/var/lib/driftd"
    assert env["DRIFTD_KUBERNETES__ENABLED"] == "true"
    assert env["DRIFTD_KUBERNETES__NAMESPACE"] == "driftd"
    assert env["DRIFTD_HTTP__ADDRESS"] == "0.0.0.0:9808"
    assert env["DRIFTD_DOCKER__ENABLED"] == "false"
    svc = one(docs, "Service")
    assert svc["spec"]["ports"] == [{"name": "http-metrics", "port": 9808, "targetPort": "http-metrics", "protocol": "TCP"}]
    assert svc["spec"]["selector"] == ds["spec"]["selector"]["matchLabels"]


def test_render_with_docker_enabled() -> None:
    docs = render({"docker": {"enabled": True}})
    assert host_paths(docs)["/var/run/docker.sock"] == ("Socket", "/var/run/docker.sock", False)
    env = env_of(docs)
    assert env["DRIFTD_DOCKER__ENABLED"] == "true"
    assert env["DRIFTD_DOCKER__URL"] == "unix:///var/run/docker.sock"
    assert not one(docs, "DaemonSet")["spec"]["template"]["spec"].get("hostNetwork")


def test_render_with_sysctl_enabled() -> None:
    docs = render({"sysctl": {"enabled": True}})
    spec = one(docs, "DaemonSet")["spec"]["template"]["spec"]
    assert spec["hostNetwork"] is True and spec["dnsPolicy"] == "ClusterFirstWithHostNet"
    assert host_paths(docs)["/proc/sys"] == ("Directory", "/host/proc/sys", True)  # dry run: observed only
    assert host_paths(render({"sysctl": {"enabled": True}, "settings": {"dryRun": False}}))["/proc/sys"] == (
        "Directory", "/host/proc/sys", False)
    sc = container(docs)["securityContext"]
    assert sc["privileged"] is False and sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"]["add"] == ["CHOWN", "DAC_OVERRIDE", "FOWNER", "FSETID", "SYS_ADMIN", "NET_ADMIN"]
    assert "sysctl.yaml" in one(docs, "ConfigMap")["data"]
    # privileged only on request; hostNetwork can be declined
    docs = render({"sysctl": {"enabled": True, "privileged": True, "hostNetwork": False}})
    sc = container(docs)["securityContext"]
    assert sc["privileged"] is True and sc["allowPrivilegeEscalation"] is True
    assert not one(docs, "DaemonSet")["spec"]["template"]["spec"].get("hostNetwork")


def test_optional_objects() -> None:
    docs = render({"serviceMonitor": {"enabled": True}, "prometheusRule": {"enabled": True},
                   "priorityClassName": "system-node-critical", "tolerations": [{"key": "dedicated", "operator": "Equal",
                                                                                 "value": "x", "effect": "NoSchedule"}]})
    sm = one(docs, "ServiceMonitor")
    (ep,) = sm["spec"]["endpoints"]
    assert ep["port"] == "http-metrics" and ep["path"] == "/metrics"
    assert {"sourceLabels": ["__meta_kubernetes_pod_node_name"], "targetLabel": "node", "action": "replace"} in ep["relabelings"]
    rules = [r["alert"] for g in one(docs, "PrometheusRule")["spec"]["groups"] for r in g["rules"]]
    assert sorted(rules) == sorted(["DriftdDriftPastDeadline", "DriftdDriftNearDeadline", "DriftdRemediationFailing",
                                    "DriftdBaselineRejected", "DriftdTargetDown", "DriftdAgentDown",
                                    "DriftdCircuitBreakerOpen", "DriftdHeldPastDeadline", "DriftdResourceFlapping",
                                    "DriftdWindowBreached", "DriftdBreakGlassActive", "DriftdAuditWriteFailing",
                                    "DriftdInotifyDegraded", "DriftdScansStale", "DriftdRetirementsAboveNormal"])
    spec = one(docs, "DaemonSet")["spec"]["template"]["spec"]
    assert spec["priorityClassName"] == "system-node-critical"
    assert spec["tolerations"] == [{"key": "dedicated", "operator": "Equal", "value": "x", "effect": "NoSchedule"}]
    minimal = render(VARIANTS["minimal"])
    assert "ValidatingAdmissionPolicy" not in kinds(minimal) and "Service" not in kinds(minimal)
    role = one(minimal, "Role")
    assert all("policyreports" not in r["resources"] for r in role["rules"])
    assert all("events" not in r["resources"] for r in one(minimal, "ClusterRole", "driftd")["rules"])
    assert one(minimal, "ConfigMap").get("data") in (None, {})


# ---------------------------------------------------------------------------- HTTP exposure
def test_network_policy_admits_only_scrapers_and_api_clients() -> None:
    np = one(render(), "NetworkPolicy")
    ds = one(render(), "DaemonSet")
    assert np["spec"]["podSelector"] == {"matchLabels": ds["spec"]["selector"]["matchLabels"]}
    assert np["spec"]["policyTypes"] == ["Ingress"]
    assert np["spec"]["ingress"] == [{
        "from": [{"namespaceSelector": {"matchExpressions": [
            {"key": "kubernetes.io/metadata.name", "operator": "In", "values": ["monitoring"]}]}}],
        "ports": [{"port": "http-metrics", "protocol": "TCP"}],
    }], "by default nobody may reach the drifts API port"
    docs = render(VARIANTS["http-locked-down"])
    (metrics, api) = one(docs, "NetworkPolicy")["spec"]["ingress"]
    assert metrics["from"][0]["namespaceSelector"]["matchExpressions"][0]["values"] == ["monitoring", "observability"]
    assert api == {"from": VARIANTS["http-locked-down"]["networkPolicy"]["apiClients"],
                   "ports": [{"port": "http-api", "protocol": "TCP"}]}
    assert {p["name"] for p in container(docs)["ports"]} == {"http-metrics", "http-api"}, "named ports the policy uses"
    # no scrapers, no clients: deny all ingress (the kubelet's probes from the node still pass)
    assert one(render({"networkPolicy": {"scraperNamespaces": []}}), "NetworkPolicy")["spec"]["ingress"] == []
    # opt-out
    assert "NetworkPolicy" not in kinds(render({"networkPolicy": {"enabled": False}}))


def test_http_auth_values_and_their_rbac() -> None:
    def review_rules(docs: list[dict[str, Any]]) -> list[str]:
        return sorted(r for rule in one(docs, "ClusterRole", "driftd")["rules"] for r in rule["resources"]
                      if r.endswith("reviews"))

    def cluster_roles(docs: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
        return {d["metadata"]["name"]: d["rules"] for d in docs if d["kind"] == "ClusterRole"}

    # default: the API on the pod network behind TokenReview + SubjectAccessReview; metrics open, plain HTTP
    docs = render()
    env = env_of(docs)
    assert (env["DRIFTD_HTTP__API_ADDRESS"], env["DRIFTD_HTTP__API_AUTH"], env["DRIFTD_HTTP__METRICS_AUTH"]) == (
        "0.0.0.0:9809", "kubernetes", "none")
    assert "DRIFTD_HTTP__TLS_CERT_FILE" not in env
    assert review_rules(docs) == ["subjectaccessreviews", "tokenreviews"]
    assert cluster_roles(docs)["driftd-drift-reader"] == [
        {"apiGroups": ["driftd.io"], "resources": ["drifts"], "verbs": ["get"]}]
    assert "driftd-metrics-reader" not in cluster_roles(docs)
    assert [p["name"] for p in one(docs, "Service")["spec"]["ports"]] == ["http-metrics"], "the API is per pod"
    # auth off everywhere (the API on loopback): no review RBAC, no reader role, no API port
    docs = render(VARIANTS["http-loopback"])
    assert review_rules(docs) == [] and set(cluster_roles(docs)) == {"driftd"}
    assert [p["name"] for p in container(docs)["ports"]] == ["http-metrics"]
    assert env_of(docs)["DRIFTD_HTTP__API_ADDRESS"] == "127.0.0.1:9809"
    # metrics auth only: the reviews RBAC stays, the scraper's role instead of the reader's
    docs = render({"http": {"apiAuth": "none", "apiHost": "127.0.0.1", "metricsAuth": "kubernetes"}})
    assert review_rules(docs) == ["subjectaccessreviews", "tokenreviews"]
    assert cluster_roles(docs)["driftd-metrics-reader"] == [{"nonResourceURLs": ["/metrics"], "verbs": ["get"]}]
    assert "driftd-drift-reader" not in cluster_roles(docs)
    # TLS and metrics auth: the Secret mounted, HTTPS probes, the ServiceMonitor sends Prometheus's token over https
    docs = render(VARIANTS["http-locked-down"])
    env = env_of(docs)
    assert (env["DRIFTD_HTTP__TLS_CERT_FILE"], env["DRIFTD_HTTP__TLS_KEY_FILE"]) == (
        "/etc/driftd/tls/tls.crt", "/etc/driftd/tls/tls.key")
    assert env["DRIFTD_HTTP__AUTH_AUDIENCES"] == '["driftd"]'
    c = container(docs)
    assert {"name": "tls", "mountPath": "/etc/driftd/tls", "readOnly": True} in c["volumeMounts"]
    volumes = one(docs, "DaemonSet")["spec"]["template"]["spec"]["volumes"]
    assert {"name": "tls", "secret": {"secretName": "driftd-tls", "defaultMode": 0o400}} in volumes
    assert c["livenessProbe"]["httpGet"]["scheme"] == "HTTPS" and c["readinessProbe"]["httpGet"]["scheme"] == "HTTPS"
    (ep,) = one(docs, "ServiceMonitor")["spec"]["endpoints"]
    assert ep["scheme"] == "https" and ep["tlsConfig"] == {"insecureSkipVerify": True}
    assert ep["bearerTokenFile"] == "/var/run/secrets/kubernetes.io/serviceaccount/token"
    assert one(docs, "Service")["spec"]["ports"][0]["appProtocol"] == "https"
    # the default ServiceMonitor scrapes plain HTTP without a token
    (ep,) = one(render({"serviceMonitor": {"enabled": True}}), "ServiceMonitor")["spec"]["endpoints"]
    assert "scheme" not in ep and "bearerTokenFile" not in ep and "tlsConfig" not in ep


@pytest.mark.parametrize(("values", "message"), [
    ({"http": {"apiAuth": "none"}}, "http.apiAuth none serves the drifts API"),
    ({"http": {"apiAuth": "basic"}}, "/http/apiAuth"),
    ({"http": {"metricsAuth": "token"}}, "/http/metricsAuth"),
    ({"http": {"maxConnections": 0}}, "/http/maxConnections"),
    ({"http": {"requestTimeoutSeconds": 0}}, "/http/requestTimeoutSeconds"),
    ({"http": {"tls": {"secretName": "Not_A_Secret"}}}, "/http/tls/secretName"),
    ({"networkPolicy": {"scraperNamespaces": ["Not A Namespace"]}}, "/networkPolicy/scraperNamespaces/0"),
    ({"networkPolicy": {"apiClients": [{"namespaceSelectr": {}}]}}, "additional properties 'namespaceSelectr' not allowed"),
    ({"networkPolicy": {"enable": False}}, "additional properties 'enable' not allowed"),
])
def test_http_values_are_checked(values: dict[str, Any], message: str) -> None:
    r = helm("template", "driftd", str(CHART), values=values, check=False)
    assert r.returncode != 0, f"accepted {values}"
    assert message in r.stderr, r.stderr


def test_http_env_is_accepted_by_driftd_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    from driftd.settings import load_settings

    for variant in ("defaults", "http-locked-down", "http-loopback"):
        for k in list(os.environ):
            if k.startswith("DRIFTD_"):
                monkeypatch.delenv(k)
        for k, v in env_of(render(VARIANTS[variant])).items():
            if isinstance(v, str) and k.startswith("DRIFTD_HTTP__"):
                monkeypatch.setenv(k, v)
        h = load_settings().http
        assert h.host_port == ("0.0.0.0", 9808)
        if variant == "http-loopback":
            assert (h.api_host_port, h.api_auth) == (("127.0.0.1", 9809), "none")
        else:
            assert (h.api_host_port, h.api_auth) == (("0.0.0.0", 9809), "kubernetes")
        assert h.metrics_auth == ("kubernetes" if variant == "http-locked-down" else "none")
        assert (h.tls_cert_file is not None) is (variant == "http-locked-down")
        assert (h.auth_cache_seconds, h.request_timeout_seconds, h.max_connections) == (60, 10, 16)


def test_daemonset_env_is_accepted_by_driftd_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every DRIFTD_* variable the chart sets is a real driftd setting (Settings forbids unknown keys)."""
    from driftd.settings import load_settings

    for variant in ("defaults", "all-on"):
        env = env_of(render(VARIANTS[variant]))
        for k in list(os.environ):
            if k.startswith("DRIFTD_") or k == "NODE_NAME":
                monkeypatch.delenv(k)
        for k, v in env.items():
            if isinstance(v, str):
                monkeypatch.setenv(k, v)
        monkeypatch.setenv("NODE_NAME", "node-a")  # the downward API's spec.nodeName
        s = load_settings()
        assert s.host_root == Path("/host") and s.baselines == Path("/etc/driftd/baselines")
        assert s.state_dir == Path("/var/lib/driftd")
        assert s.kubernetes.enabled and s.kubernetes.namespace == "driftd" and s.kubernetes.kubeconfig is None
        assert s.http.host_port == ("0.0.0.0", 9808)
        assert s.resolved_node_name() == "node-a"
        assert s.docker.enabled is (variant == "all-on")
        assert s.dry_run is (variant == "defaults")  # a default install only reports
        assert s.kubernetes.exclude_namespaces == (["monitoring", "csi-*"] if variant == "all-on" else [])


# ---------------------------------------------------------------------------- the baselines ConfigMap
def mount_configmap(docs: list[dict[str, Any]], target: Path) -> Path:
    """Lay the baselines volume out as the kubelet does: ..<timestamp>/ with the items, ..data → it, top-level symlinks."""
    ds = one(docs, "DaemonSet")["spec"]["template"]["spec"]
    (vol,) = [v for v in ds["volumes"] if v["name"] == "baselines"]
    cm = one(docs, "ConfigMap", vol["configMap"]["name"])
    data = cm.get("data") or {}
    items = vol["configMap"].get("items") or [{"key": k, "path": k} for k in data]
    assert sorted(i["key"] for i in items) == sorted(data), "every ConfigMap key must be mounted (and only those)"
    stamp = target / "..2026_01_01_00_00_00.000000001"
    for item in items:
        p = stamp / item["path"]
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(data[item["key"]])
    (target / "..data").symlink_to(stamp.name)
    for top in sorted({Path(i["path"]).parts[0] for i in items}):
        (target / top).symlink_to(Path("..data") / top)
    return target


def test_baselines_configmap_mounts_as_the_repository_set(tmp_path: Path) -> None:
    from driftd.baselines.loader import load_set

    repo_set, problems = load_set(REPO / "baselines")
    assert repo_set is not None, problems
    for variant, expect_sysctl in (("defaults", False), ("sysctl", True)):
        docs = render(VARIANTS[variant], namespace="ops-driftd")
        mounted = mount_configmap(docs, tmp_path / variant)
        bset, problems = load_set(mounted)
        assert bset is not None, problems
        names = {b.metadata.name for b in bset.baselines}
        want = {b.metadata.name for b in repo_set.baselines}
        if not expect_sysctl:
            want.discard("cis-sysctl")  # no /proc/sys mounted: its rules could never be observed or reverted
        assert names == want
        # source files resolve through the recreated files/ folder, byte for byte
        assert bset.sources == {k: v for k, v in repo_set.sources.items() if k[0] in names}
        assert bset.sources[("cis-sshd", "files/sshd_config")] == (REPO / "baselines/files/sshd_config").read_bytes()
        # host baselines are the repository's, unchanged
        by_name = {b.metadata.name: b for b in bset.baselines}
        for b in repo_set.baselines:
            if b.metadata.name in names and b.kind != "PodBaseline":
                assert by_name[b.metadata.name] == b
        # PodBaselines never govern driftd's own namespace (its pods need root and host mounts)
        pod = by_name["pod-restricted"]
        assert pod.spec.selector.exclude_namespaces == ["kube-system", "kube-public", "kube-node-lease", "ops-driftd"]
        orig = next(b for b in repo_set.baselines if b.metadata.name == "pod-restricted")
        assert pod.model_copy(update={"spec": pod.spec.model_copy(update={"selector": orig.spec.selector})}) == orig


def test_extra_baselines_and_files(tmp_path: Path) -> None:
    from driftd.baselines.loader import load_set

    docs = render({**{k: ALL_ON[k] for k in ("extraBaselines", "extraBaselineFiles")},
                   "baselines": {"shipped": {"exclude": ["container-hardened.yaml"]}}})
    cm = one(docs, "ConfigMap")
    assert "files.motd" in cm["data"] and "container-hardened.yaml" not in cm["data"]
    bset, problems = load_set(mount_configmap(docs, tmp_path / "m"))
    assert bset is not None, problems
    assert bset.sources[("extra-motd", "files/motd")] == b"Authorized use only.\n"
    assert "hardened-container" not in {b.metadata.name for b in bset.baselines}
    docs = render({"baselines": {"shipped": {"enabled": False}}, "extraBaselines": ALL_ON["extraBaselines"],
                   "extraBaselineFiles": ALL_ON["extraBaselineFiles"]})
    bset, problems = load_set(mount_configmap(docs, tmp_path / "only-extra"))
    assert bset is not None, problems
    assert [b.metadata.name for b in bset.baselines] == ["extra-motd"]


def _host_baseline(name: str, spec: str) -> str:
    return f"apiVersion: driftd.io/v1alpha1\nkind: HostBaseline\nmetadata: {{name: {name}}}\nspec:\n{spec}"


def test_host_mounts_are_derived_from_the_baselines_read_only_where_only_observed() -> None:
    """Least host access: the directories the shipped and configured baselines manage, nothing else."""
    enforcing = {"settings": {"dryRun": False}}
    assert host_paths(render(enforcing)) == {  # the shipped set enforcing: /etc and /root (cis-sshd's /root/.rhosts)
        "/etc": ("Directory", "/host/etc", False),
        "/root": ("Directory", "/host/root", False),
        "/var/lib/dpkg": ("Directory", "/host/var/lib/dpkg", True),  # debian12-packages reads the package database
        "/var/lib/driftd": ("DirectoryOrCreate", "/var/lib/driftd", False),
    }
    extra = {
        "app.yaml": _host_baseline("app", "  enforcement: warn\n  files:\n    - {path: /opt/app/conf/app.conf, mode: \"0644\"}\n"
                                   "  directories:\n    - {path: /opt/app, mode: \"0755\"}\n"),
        "srv.yaml": _host_baseline("srv", "  files:\n    - {path: /srv/www/index.html, content: hi}\n"),
        "kern.yaml": _host_baseline("kern", "  kernel: {minimumRelease: \"6.1\"}\n"),
        "pkg.yaml": _host_baseline("pkg", "  packages:\n    - {name: openssl-libs, minimum: \"1:3.0.7-27.el9\"}\n"),
    }
    docs = render({**enforcing, "baselines": {"shipped": {"enabled": False}}, "extraBaselines": extra,
                   "hostPaths": {"packageDatabases": ["/var/lib/rpm"]}})
    assert host_paths(docs) == {
        "/opt/app": ("Directory", "/host/opt/app", True),  # warn: observed only (and /opt/app/conf collapses into it)
        "/srv/www": ("Directory", "/host/srv/www", False),  # enforced: reverted in place
        "/etc/passwd": ("File", "/host/etc/passwd", True),  # owner names, read only
        "/etc/group": ("File", "/host/etc/group", True),
        "/proc/sys/kernel/osrelease": ("File", "/host/proc/sys/kernel/osrelease", True),  # the kernel rule reads it
        "/var/lib/rpm": ("Directory", "/host/var/lib/rpm", True),  # an RPM node pool's database, read only
        "/var/lib/driftd": ("DirectoryOrCreate", "/var/lib/driftd", False),
    }
    none = render({"baselines": {"shipped": {"exclude": ["sshd.yaml", "system-files.yaml", "debian12-packages.yaml"]}}})
    assert host_paths(none) == {"/var/lib/driftd": ("DirectoryOrCreate", "/var/lib/driftd", False)}


def test_control_plane_nodes_are_left_out_unless_enabled() -> None:
    spec = one(render(), "DaemonSet")["spec"]["template"]["spec"]
    terms = spec["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]
    assert terms == [{"matchExpressions": [
        {"key": "node-role.kubernetes.io/control-plane", "operator": "DoesNotExist"},
        {"key": "node-role.kubernetes.io/master", "operator": "DoesNotExist"}]}]
    assert "affinity" not in one(render({"controlPlane": {"enabled": True}}), "DaemonSet")["spec"]["template"]["spec"]
    own = {"nodeAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": []}}
    r = helm("template", "driftd", str(CHART), values={"affinity": own}, check=False)
    assert r.returncode != 0 and "control-plane DoesNotExist" in r.stderr
    r = helm("template", "driftd", str(CHART), values={"affinity": own, "controlPlane": {"enabled": True}})
    assert "preferredDuringSchedulingIgnoredDuringExecution" in r.stdout


def test_guardrail_values_reach_the_agent() -> None:
    env = env_of(render({"guardrails": {"extraPaths": ["/opt/vendor/**"], "extraSysctls": ["vm.*"]}}))
    assert json.loads(env["DRIFTD_GUARDRAILS__EXTRA_PATHS"]) == ["/opt/vendor/**"]
    assert json.loads(env["DRIFTD_GUARDRAILS__EXTRA_SYSCTLS"]) == ["vm.*"]
    assert "DRIFTD_GUARDRAILS__EXTRA_PATHS" not in env_of(render())


# ---------------------------------------------------------------------------- Prometheus rules
def test_prometheus_rules_check_and_unit_tests(tmp_path: Path) -> None:
    promtool = tool("PROMTOOL")
    rule = one(render({"prometheusRule": {"enabled": True}}), "PrometheusRule")
    rules = tmp_path / "driftd-rules.yaml"
    rules.write_text(yaml.safe_dump({"groups": rule["spec"]["groups"]}, sort_keys=False, width=10_000))
    r = run(promtool, "check", "rules", str(rules))
    assert "SUCCESS: 15 rules found" in r.stdout, r.stdout
    shutil.copy(ALERT_TESTS, tmp_path / ALERT_TESTS.name)
    r = run(promtool, "test", "rules", str(tmp_path / ALERT_TESTS.name), check=False)
    assert r.returncode == 0 and "SUCCESS" in r.stdout, r.stdout + r.stderr
    tested = {t["alertname"] for case in yaml.safe_load(ALERT_TESTS.read_text())["tests"] for t in case["alert_rule_test"]}
    assert tested == {r["alert"] for g in rule["spec"]["groups"] for r in g["rules"]}, "every alert needs unit tests"


def test_prometheus_rules_follow_values() -> None:
    rule = one(render({"prometheusRule": {"enabled": True, "nearDeadlineSeconds": 900, "selector": 'job="agents"',
                                          "additionalAlertLabels": {"team": "platform"}}}), "PrometheusRule")
    by_name = {r["alert"]: r for g in rule["spec"]["groups"] for r in g["rules"]}
    assert by_name["DriftdDriftNearDeadline"]["expr"] == 'driftd_oldest_unremediated_drift_age_seconds{job="agents"} > 900'
    assert all(r["labels"]["team"] == "platform" for r in by_name.values())
    assert by_name["DriftdAgentDown"]["expr"] == 'up{job="agents"} == 0 or absent(up{job="agents"})'
    assert by_name["DriftdCircuitBreakerOpen"]["expr"] == 'driftd_breaker_open{job="agents"} > 0'
    rule = one(render({"prometheusRule": {"enabled": True, "breakGlassActiveFor": "90m", "windowBreachedWindow": "2h",
                                          "inotifyDegradedWindow": "30m"}}), "PrometheusRule")
    by_name = {r["alert"]: r for g in rule["spec"]["groups"] for r in g["rules"]}
    assert by_name["DriftdBreakGlassActive"]["for"] == "90m" and "more than 90m" in by_name["DriftdBreakGlassActive"]["annotations"]["summary"]
    sel = 'job="driftd",namespace="driftd"'
    assert by_name["DriftdWindowBreached"]["expr"] == (
        f"increase(driftd_window_breaches_total{{{sel}}}[2h]) > 0"
        f" or (driftd_window_breaches_total{{{sel}}} > 0 unless driftd_window_breaches_total{{{sel}}} offset 2h)")
    assert "[30m]" in by_name["DriftdInotifyDegraded"]["expr"] and "offset 30m" in by_name["DriftdInotifyDegraded"]["expr"]
    r = helm("template", "driftd", str(CHART), values={"prometheusRule": {"enabled": True, "breakGlassActiveFor": "4 hours"}},
             check=False)
    assert r.returncode != 0 and "breakGlassActiveFor" in r.stderr


def test_every_alert_says_what_where_and_links_its_runbook() -> None:
    """Summary, description naming the node, a severity, and a runbook_url whose page exists in docs/runbooks/."""
    rule = one(render({"prometheusRule": {"enabled": True}}), "PrometheusRule")
    alerts = [r for g in rule["spec"]["groups"] for r in g["rules"]]
    expected = {
        "DriftdDriftPastDeadline", "DriftdDriftNearDeadline", "DriftdRemediationFailing", "DriftdHeldPastDeadline",
        "DriftdScansStale", "DriftdTargetDown", "DriftdCircuitBreakerOpen", "DriftdBreakGlassActive",
        "DriftdResourceFlapping", "DriftdRetirementsAboveNormal", "DriftdBaselineRejected", "DriftdAgentDown",
        "DriftdWindowBreached", "DriftdAuditWriteFailing", "DriftdInotifyDegraded",
    }
    assert {a["alert"] for a in alerts} == expected
    runbooks = REPO / "docs" / "runbooks"
    for a in alerts:
        ann = a["annotations"]
        assert a["labels"]["severity"] in ("warning", "critical"), a["alert"]
        assert ann["summary"] and ann["description"], a["alert"]
        if a["alert"] != "DriftdRetirementsAboveNormal":  # a fleet-wide count: no single node to name
            assert "node" in ann["summary"] + ann["description"], a["alert"]
        assert ann["runbook_url"] == f"https://github.com/driftd/driftd/blob/main/docs/runbooks/{a['alert']}.md"
        page = runbooks / f"{a['alert']}.md"
        assert page.is_file(), f"runbook {page} is missing"
        text = page.read_text()
        assert text.startswith(f"# {a['alert']}\n"), page
        assert f"Severity: **{a['labels']['severity']}**" in text, page
        for section in ("## Meaning", "## Impact", "## Diagnosis", "## Mitigation"):
            assert section in text, (page, section)
    assert {p.stem for p in runbooks.glob("*.md")} - {"README"} == expected, "a runbook for an alert that does not exist"
    rule = one(render({"prometheusRule": {"enabled": True, "runbookBaseUrl": "https://wiki.example/driftd/"}}),
               "PrometheusRule")
    assert {r["annotations"]["runbook_url"] for g in rule["spec"]["groups"] for r in g["rules"]} == {
        f"https://wiki.example/driftd/{name}.md" for name in expected}


def test_scans_stale_and_retirement_alerts_follow_values() -> None:
    rule = one(render({"prometheusRule": {"enabled": True, "scansStaleSeconds": 3600, "scansStaleFor": "15m",
                                          "retirementsPerHour": 10, "retirementsAboveNormalFactor": 2}}), "PrometheusRule")
    by_name = {r["alert"]: r for g in rule["spec"]["groups"] for r in g["rules"]}
    stale = by_name["DriftdScansStale"]
    assert stale["expr"] == 'time() - driftd_last_scan_timestamp_seconds{job="driftd",namespace="driftd"} > 3600'
    assert stale["for"] == "15m"
    retire = by_name["DriftdRetirementsAboveNormal"]["expr"]
    assert retire.endswith("/ 168, 10)") and "clamp_min(2 *" in retire and 'action=~"retire|retire_node"' in retire
    r = helm("template", "driftd", str(CHART), values={"prometheusRule": {"enabled": True, "scansStaleFor": "soon"}},
             check=False)
    assert r.returncode != 0 and "scansStaleFor" in r.stderr


# ============================================================================ against the real API server
@pytest.fixture(scope="session")
def monitoring_crds(kubectl: Callable[..., Any], policyreport_crd: Path) -> Path:
    kubectl("apply", "--server-side", "-f", str(MONITORING_CRDS))
    kubectl("wait", "--for", "condition=Established", "--timeout=60s",
            "crd/servicemonitors.monitoring.coreos.com", "crd/prometheusrules.monitoring.coreos.com")
    for _ in range(50):
        if kubectl("get", "servicemonitors,prometheusrules", "-A", check=False).returncode == 0:
            break
        time.sleep(0.2)
    return MONITORING_CRDS


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_api_server_accepts_the_manifests(variant: str, kubectl: Callable[..., Any], monitoring_crds: Path,
                                          k8s_namespace: str) -> None:
    manifest = template(VARIANTS[variant], release=k8s_namespace, namespace=k8s_namespace)
    r = kubectl("apply", "--dry-run=server", "--validate=strict", "-f", "-", input=manifest)
    assert r.stdout.count("(server dry run)") == len(docs_of(manifest)), r.stdout


def test_server_side_strict_validation_is_effective(kubectl: Callable[..., Any], monitoring_crds: Path,
                                                   k8s_namespace: str) -> None:
    """The acceptance above means something: a misspelt field in any object kind is refused."""
    docs = render(ALL_ON, release=k8s_namespace, namespace=k8s_namespace)
    for kind in ("DaemonSet", "ServiceMonitor", "PrometheusRule", "ValidatingAdmissionPolicy", "ClusterRole"):
        bad = copy.deepcopy(next(d for d in docs if d["kind"] == kind))
        target = bad.get("spec") if "spec" in bad else bad["rules"][0]
        target["misspeltField"] = True
        r = kubectl("apply", "--dry-run=server", "--validate=strict", "-f", "-", input=yaml.safe_dump(bad), check=False)
        assert r.returncode != 0 and "misspeltField" in r.stderr, (kind, r.stdout, r.stderr)


def test_helm_install_and_uninstall(k8s_env: KubeEnv, kubectl: Callable[..., Any], monitoring_crds: Path,
                                   k8s_namespace: str) -> None:
    """A real `helm install` (CRDs from crds/, NOTES, every object created) and a clean uninstall."""
    kc = ["--kubeconfig", k8s_env.kubeconfig, "--namespace", k8s_namespace]
    release = k8s_namespace
    r = helm("install", release, str(CHART), *kc, values=ALL_ON)
    assert "STATUS: deployed" in r.stdout and "one agent per node" in r.stdout, r.stdout
    got = kubectl("get", "daemonset,configmap,service,servicemonitor,prometheusrule,role,rolebinding", "-n", k8s_namespace,
                  "-o", "name").stdout.split()
    assert len(got) >= 7, got
    policies = kubectl("get", "validatingadmissionpolicies", "-o", "name").stdout.split()
    assert f"validatingadmissionpolicy.admissionregistration.k8s.io/{release}-driftd-own-node" in policies
    helm("uninstall", release, *kc)
    policies = kubectl("get", "validatingadmissionpolicies,clusterroles", "-o", "name").stdout
    assert f"{release}-driftd" not in policies


# ---------------------------------------------------------------------------- kubeconform
def _strict_schema(node: Any) -> Any:
    """openapi v2 schema → JSON schema as openapi2jsonschema --strict makes it: closed objects, int-or-string as oneOf."""
    if not isinstance(node, dict):
        return node
    out: dict[str, Any] = {}
    for k, v in node.items():
        if k == "$ref":
            out[k] = "#/definitions/" + v.rsplit("/", 1)[-1]
        elif k in ("properties", "patternProperties"):
            out[k] = {name: _strict_schema(sub) for name, sub in v.items()}
        elif k in ("items", "additionalProperties", "not"):
            out[k] = _strict_schema(v)
        elif k in ("allOf", "anyOf", "oneOf"):
            out[k] = [_strict_schema(sub) for sub in v]
        else:
            out[k] = v
    if node.get("format") == "int-or-string" or node.get("x-kubernetes-int-or-string"):
        for k in ("type", "format", "anyOf"):
            out.pop(k, None)
        out["oneOf"] = [{"type": "string"}, {"type": "integer"}]
    if "properties" in node and "additionalProperties" not in node and not node.get("x-kubernetes-preserve-unknown-fields"):
        out["additionalProperties"] = False
    return out


def kubeconform_schemas(openapi: dict[str, Any], docs: list[dict[str, Any]], out: Path) -> None:
    """One standalone strict schema per (apiVersion, kind) in ``docs``, named as the -schema-location template below."""
    defs = openapi["definitions"]
    quantity = "io.k8s.apimachinery.pkg.api.resource.Quantity"
    by_gvk: dict[tuple[str, str], str] = {}
    for name, d in defs.items():
        for gvk in d.get("x-kubernetes-group-version-kind") or []:
            api = f"{gvk['group']}/{gvk['version']}" if gvk["group"] else gvk["version"]
            by_gvk[(api, gvk["kind"])] = name
    converted = {name: _strict_schema(d) for name, d in defs.items()}
    if quantity in converted:
        converted[quantity] = {"oneOf": [{"type": "string"}, {"type": "number"}]}
    out.mkdir(parents=True, exist_ok=True)
    for api, kind in {(d["apiVersion"], d["kind"]) for d in docs}:
        name = by_gvk[(api, kind)]
        needed: set[str] = set()
        todo = [name]
        while todo:
            n = todo.pop()
            if n in needed:
                continue
            needed.add(n)
            text = json.dumps(converted[n])
            todo.extend(part.split('"', 1)[0] for part in text.split('"#/definitions/')[1:])
        schema = {"$schema": "http://json-schema.org/draft-04/schema#", **converted[name],
                  "definitions": {n: converted[n] for n in sorted(needed)}}
        group, _, version = api.rpartition("/")
        (out / f"{kind.lower()}_{group or version}_{version}-strict.json").write_text(json.dumps(schema))


def test_kubeconform_strict(tmp_path: Path, k8s_rest: KubeRest, monitoring_crds: Path) -> None:
    kubeconform = tool("KUBECONFORM")
    openapi = k8s_rest.get("/openapi/v2")
    location = str(tmp_path / "schemas") + "/{{ .ResourceKind }}_{{ .Group }}_{{ .ResourceAPIVersion }}{{ .StrictSuffix }}.json"
    for variant in sorted(VARIANTS):
        manifest = template(VARIANTS[variant])
        kubeconform_schemas(openapi, docs_of(manifest), tmp_path / "schemas")
        f = tmp_path / f"{variant}.yaml"
        f.write_text(manifest)
        r = run(kubeconform, "-strict", "-summary", "-schema-location", location, str(f), check=False)
        assert r.returncode == 0, r.stdout + r.stderr
        assert f"Valid: {len(docs_of(manifest))}, Invalid: 0, Errors: 0, Skipped: 0" in r.stdout, r.stdout
    # and the generated schemas are strict: an unknown field is invalid
    bad = docs_of(template())
    ds = next(d for d in bad if d["kind"] == "DaemonSet")
    ds["spec"]["template"]["spec"]["containers"][0]["securityContext"]["privilegd"] = True
    f = tmp_path / "bad.yaml"
    f.write_text(yaml.safe_dump_all(bad))
    r = run(kubeconform, "-strict", "-schema-location", location, str(f), check=False)
    assert r.returncode != 0 and "privilegd" in r.stdout, r.stdout


# ---------------------------------------------------------------------------- the chart installed, tokens minted
@dataclass
class Installed:
    ns: str
    fullname: str
    docs: list[dict[str, Any]]
    node_a: str
    node_b: str
    other_ns: str
    other: KubeCluster
    agent_pod: dict[str, Any]
    token_kubeconfig: str
    token: KubeRest
    admin: KubeRest
    cluster: KubeCluster
    env: KubeEnv


def token_kubeconfig(env: KubeEnv, token: str, path: Path) -> str:
    path.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "driftd",
        "clusters": [{"name": "test", "cluster": {"server": env.url, "certificate-authority": str(env.dir / "pki" / "ca.crt")}}],
        "users": [{"name": "driftd", "user": {"token": token}}],
        "contexts": [{"name": "driftd", "context": {"cluster": "test", "user": "driftd"}}],
    }))
    path.chmod(0o600)
    return str(path)


def mint_token(admin: KubeRest, ns: str, sa: str, pod: dict[str, Any] | None) -> str:
    """TokenRequest for the chart's ServiceAccount; bound to ``pod`` as the kubelet's projected token is."""
    spec: dict[str, Any] = {"expirationSeconds": 3600}
    if pod is not None:
        spec["boundObjectRef"] = {"apiVersion": "v1", "kind": "Pod", "name": pod["metadata"]["name"],
                                  "uid": pod["metadata"]["uid"]}
    tr = admin.post(f"/api/v1/namespaces/{ns}/serviceaccounts/{sa}/token",
                    {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": spec})
    return str(tr["status"]["token"])


@pytest.fixture
def installed(k8s_env: KubeEnv, k8s_rest: KubeRest, k8s_cluster: KubeCluster, kubectl: Callable[..., Any],
              monitoring_crds: Path, tmp_path: Path) -> Iterator[Installed]:
    ns = k8s_cluster.ns
    release = ns  # cluster-scoped names (ClusterRole, policies) must not collide between tests
    manifest = template(release=release, namespace=ns)
    docs = docs_of(manifest)
    fullname = one(docs, "DaemonSet")["metadata"]["name"]
    kubectl("apply", "-f", "-", input=manifest)
    node_a, node_b = k8s_cluster.make_node("node-a"), k8s_cluster.make_node("node-b")
    other_ns = f"{ns}-other"[:63]
    k8s_rest.post("/api/v1/namespaces", {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": other_ns}})
    # the agent pod the DaemonSet would run on node-a (no controller-manager here: the test creates it)
    # (owned by a DaemonSet, as the real one is, so a drain leaves it alone)
    agent = k8s_cluster.make_pod(f"{fullname}-agent", node_a, owner="DaemonSet", owner_name="agent",
                                 spec={"serviceAccountName": fullname})
    token = mint_token(k8s_rest, ns, fullname, agent)
    kc = token_kubeconfig(k8s_env, token, tmp_path / "driftd-token.kubeconfig")
    api = new_api_client(kc, "driftd-chart-test")
    try:
        yield Installed(ns=ns, fullname=fullname, docs=docs, node_a=node_a, node_b=node_b, other_ns=other_ns,
                        other=KubeCluster(k8s_rest, k8s_env, other_ns), agent_pod=agent, token_kubeconfig=kc, token=KubeRest(api), admin=k8s_rest, cluster=k8s_cluster,
                        env=k8s_env)
    finally:
        api.close()
        cluster_scoped = [d for d in docs if "namespace" not in d["metadata"]]
        kubectl("delete", "--ignore-not-found", "--wait=false", "-f", "-", input=yaml.safe_dump_all(cluster_scoped),
                check=False)


def whoami(rest: KubeRest) -> dict[str, Any]:
    r = rest.post("/apis/authentication.k8s.io/v1/selfsubjectreviews",
                  {"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"})
    return dict(r["status"]["userInfo"])


def can_i(rest: KubeRest, verb: str, resource: str, *, ns: str = "", name: str = "", sub: str = "", group: str = "",
          field_selector: str = "") -> bool:
    attrs: dict[str, Any] = {"verb": verb, "resource": resource, "namespace": ns, "name": name, "subresource": sub,
                             "group": group}
    if field_selector:
        attrs["fieldSelector"] = {"rawSelector": field_selector}
    r = rest.post("/apis/authorization.k8s.io/v1/selfsubjectaccessreviews",
                  {"apiVersion": "authorization.k8s.io/v1", "kind": "SelfSubjectAccessReview",
                   "spec": {"resourceAttributes": attrs}})
    return bool(r["status"].get("allowed"))


def status_of(call: Callable[[], Any]) -> int:
    try:
        call()
    except KubeApiError as e:
        return e.status
    return 200


def test_token_is_the_agents_pod_bound_identity(installed: Installed) -> None:
    me = whoami(installed.token)
    assert me["username"] == f"system:serviceaccount:{installed.ns}:{installed.fullname}"
    assert me["extra"][NODE_NAME_EXTRA] == [installed.node_a]
    assert me["extra"]["authentication.kubernetes.io/pod-name"] == [installed.agent_pod["metadata"]["name"]]


def test_rbac_grants_what_driftd_needs_and_nothing_else(installed: Installed, kubectl: Callable[..., Any]) -> None:
    t, ns, other = installed.token, installed.ns, installed.other_ns
    node_sel = f"spec.nodeName={installed.node_a}"
    allowed = [
        ("list", "pods", "", "", "", "", node_sel),
        ("watch", "pods", "", "", "", "", node_sel),
        ("get", "pods", other, "web", "", "", ""),
        ("create", "pods", other, "web", "eviction", "", ""),
        ("create", "events", other, "", "", "", ""),
        ("create", "events", "default", "", "", "", ""),
        ("get", "nodes", "", installed.node_a, "", "", ""),
        ("patch", "nodes", "", installed.node_a, "", "", ""),
        ("get", "daemonsets", other, "agent", "", "apps", ""),
        ("get", "replicasets", other, "web-5d8f7", "", "apps", ""),
        ("get", "deployments", other, "web", "", "apps", ""),
        ("get", "statefulsets", other, "db", "", "apps", ""),
        ("get", "policyreports", ns, f"driftd-{installed.node_a}", "", "wgpolicyk8s.io", ""),
        ("create", "policyreports", ns, "", "", "wgpolicyk8s.io", ""),
        ("update", "policyreports", ns, f"driftd-{installed.node_a}", "", "wgpolicyk8s.io", ""),
        ("create", "leases", ns, "", "", "coordination.k8s.io", ""),
        ("get", "leases", ns, LEASE, "", "coordination.k8s.io", ""),
        ("update", "leases", ns, LEASE, "", "coordination.k8s.io", ""),
        ("create", "tokenreviews", "", "", "", "authentication.k8s.io", ""),  # http.apiAuth kubernetes
        ("create", "subjectaccessreviews", "", "", "", "authorization.k8s.io", ""),
    ]
    forbidden = [
        ("get", "secrets", ns, "x", "", "", ""),
        ("list", "secrets", "", "", "", "", ""),
        ("list", "secrets", ns, "", "", "", ""),
        ("get", "configmaps", other, "x", "", "", ""),
        ("list", "configmaps", "", "", "", "", ""),
        ("list", "configmaps", ns, "", "", "", ""),
        ("delete", "pods", other, "web", "", "", ""),
        ("deletecollection", "pods", other, "", "", "", ""),
        ("create", "pods", other, "", "", "", ""),
        ("update", "pods", other, "web", "", "", ""),
        ("patch", "pods", other, "web", "", "", ""),
        ("patch", "pods", other, "web", "status", "", ""),
        ("create", "pods", other, "web", "exec", "", ""),
        ("get", "pods", other, "web", "log", "", ""),
        ("list", "nodes", "", "", "", "", ""),
        ("watch", "nodes", "", "", "", "", ""),
        ("update", "nodes", "", installed.node_a, "", "", ""),
        ("delete", "nodes", "", installed.node_a, "", "", ""),
        ("patch", "nodes", "", installed.node_a, "status", "", ""),
        ("get", "nodes", "", installed.node_a, "proxy", "", ""),
        ("create", "deployments", other, "", "", "apps", ""),
        ("patch", "daemonsets", ns, installed.fullname, "", "apps", ""),
        ("list", "daemonsets", "", "", "", "apps", ""),
        ("watch", "replicasets", other, "", "", "apps", ""),
        ("list", "deployments", other, "", "", "apps", ""),
        ("update", "statefulsets", other, "db", "", "apps", ""),
        ("patch", "deployments", other, "web", "", "apps", ""),
        ("delete", "daemonsets", other, "agent", "", "apps", ""),
        ("update", "deployments", other, "web", "scale", "apps", ""),
        ("get", "controllerrevisions", other, "x", "", "apps", ""),
        ("get", "jobs", other, "x", "", "batch", ""),
        ("update", "leases", other, LEASE, "", "coordination.k8s.io", ""),
        ("patch", "leases", other, LEASE, "", "coordination.k8s.io", ""),
        ("get", "leases", other, LEASE, "", "coordination.k8s.io", ""),
        ("update", "leases", ns, "some-other-lease", "", "coordination.k8s.io", ""),
        ("delete", "leases", ns, LEASE, "", "coordination.k8s.io", ""),
        ("list", "leases", ns, "", "", "coordination.k8s.io", ""),
        ("update", "policyreports", other, f"driftd-{installed.node_a}", "", "wgpolicyk8s.io", ""),
        ("create", "policyreports", other, "", "", "wgpolicyk8s.io", ""),
        ("delete", "policyreports", ns, f"driftd-{installed.node_a}", "", "wgpolicyk8s.io", ""),
        ("create", "clusterpolicyreports", "", "", "", "wgpolicyk8s.io", ""),
        ("patch", "events", other, "x", "", "", ""),
        ("delete", "events", other, "x", "", "", ""),
        ("list", "events", other, "", "", "", ""),
        ("create", "events", other, "", "", "events.k8s.io", ""),
        ("create", "serviceaccounts", ns, installed.fullname, "token", "", ""),
        ("create", "rolebindings", ns, "", "", "rbac.authorization.k8s.io", ""),
        ("bind", "clusterroles", "", "cluster-admin", "", "rbac.authorization.k8s.io", ""),
        ("escalate", "clusterroles", "", installed.fullname, "", "rbac.authorization.k8s.io", ""),
        ("delete", "validatingadmissionpolicies", "", f"{installed.fullname}-own-node", "", "admissionregistration.k8s.io", ""),
        ("impersonate", "users", "", "admin", "", "", ""),
        ("create", "certificatesigningrequests", "", "", "", "certificates.k8s.io", ""),
    ]
    wrong_yes = [a for a in forbidden if can_i(t, *a[:2], ns=a[2], name=a[3], sub=a[4], group=a[5], field_selector=a[6])]
    wrong_no = [a for a in allowed if not can_i(t, *a[:2], ns=a[2], name=a[3], sub=a[4], group=a[5], field_selector=a[6])]
    assert not wrong_no, f"driftd needs these and RBAC refuses them: {wrong_no}"
    assert not wrong_yes, f"RBAC allows calls driftd must not make: {wrong_yes}"
    # the same through kubectl auth can-i with the token, and real requests
    kc = installed.token_kubeconfig
    binary = tool("KUBECTL")
    for args, want in ((["get", "secrets", "-n", installed.ns], "no"), (["list", "configmaps", "-A"], "no"),
                       (["delete", "pods", "-n", other], "no"), (["create", "pods", "--subresource=eviction", "-n", other], "yes"),
                       (["patch", "nodes"], "yes"), (["list", "nodes"], "no")):
        r = run(binary, "--kubeconfig", kc, "auth", "can-i", *args, check=False)
        assert r.stdout.strip() == want, (args, r.stdout, r.stderr)
    assert status_of(lambda: t.get(f"/api/v1/namespaces/{ns}/secrets")) == 403
    assert status_of(lambda: t.get("/api/v1/configmaps")) == 403
    assert status_of(lambda: t.get("/api/v1/nodes")) == 403
    # workloads: get one by name (the pod template), never list, watch or change them
    installed.other.make_owner("DaemonSet", "agent")
    ds = f"/apis/apps/v1/namespaces/{other}/daemonsets"
    assert t.get(f"{ds}/agent")["spec"]["template"]["spec"]["containers"]
    assert status_of(lambda: t.get(ds)) == 403
    assert status_of(lambda: t.get("/apis/apps/v1/deployments")) == 403
    assert status_of(lambda: t.patch(f"{ds}/agent", {"metadata": {"labels": {"x": "y"}}})) == 403
    assert status_of(lambda: t.delete(f"{ds}/agent")) == 403
    assert status_of(lambda: t.delete(f"/api/v1/namespaces/{ns}/pods/{installed.agent_pod['metadata']['name']}")) == 403
    assert status_of(lambda: t.post(f"/apis/apps/v1/namespaces/{other}/deployments", {
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "x"},
        "spec": {"selector": {"matchLabels": {"a": "b"}}, "template": {"metadata": {"labels": {"a": "b"}},
                                                                      "spec": {"containers": [{"name": "c", "image": "x"}]}}}})) == 403


def test_rbac_verbs_are_exactly_these(installed: Installed) -> None:
    """The grant, spelled out (the README's security model lists the same)."""
    def rules(kind: str) -> list[tuple[str, str, str, str]]:
        return sorted((",".join(r["apiGroups"]), ",".join(r["resources"]), ",".join(r.get("resourceNames", [])),
                       ",".join(sorted(r["verbs"]))) for r in one(installed.docs, kind, installed.fullname)["rules"])

    assert rules("ClusterRole") == sorted([
        ("", "pods", "", "get,list,watch"),
        ("", "pods/eviction", "", "create"),
        ("", "nodes", "", "get,patch"),
        ("", "events", "", "create"),
        ("apps", "daemonsets,replicasets,deployments,statefulsets", "", "get"),
        ("authentication.k8s.io", "tokenreviews", "", "create"),  # http.apiAuth kubernetes (the default)
        ("authorization.k8s.io", "subjectaccessreviews", "", "create"),
    ])
    assert rules("Role") == sorted([
        ("wgpolicyk8s.io", "policyreports", "", "create,get,update"),
        ("coordination.k8s.io", "leases", "", "create"),
        ("coordination.k8s.io", "leases", f"{LEASE},{LEASE}-ledger", "get,update"),
    ])
    assert one(installed.docs, "Role")["metadata"]["namespace"] == installed.ns


def test_drifts_api_auth_under_the_chart_identity(installed: Installed) -> None:
    """driftd's API server, reviewing tokens as the chart's ServiceAccount: a reader bound to the chart's
    drift-reader ClusterRole gets the drifts, another ServiceAccount of the cluster does not."""
    import contextlib
    import http.client

    from prometheus_client import CollectorRegistry

    from driftd.runtime import build_api_server
    from driftd.settings import load_settings

    admin, ns, reader_role = installed.admin, installed.ns, f"{installed.fullname}-drift-reader"
    assert one(installed.docs, "ClusterRole", reader_role)
    tokens = {}
    for sa in ("reader", "other"):
        admin.post(f"/api/v1/namespaces/{ns}/serviceaccounts", {"apiVersion": "v1", "kind": "ServiceAccount",
                                                                "metadata": {"name": sa}})
        tokens[sa] = mint_token(admin, ns, sa, None)
    binding = f"{installed.fullname}-test-reader"
    admin.post("/apis/rbac.authorization.k8s.io/v1/clusterrolebindings", {
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding", "metadata": {"name": binding},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": reader_role},
        "subjects": [{"kind": "ServiceAccount", "name": "reader", "namespace": ns}]})
    settings = load_settings(node_name=installed.node_a, kubernetes={"kubeconfig": installed.token_kubeconfig},
                             http={"address": "127.0.0.1:0", "api_address": "127.0.0.1:0", "api_auth": "kubernetes"})
    srv = build_api_server(settings, registry=CollectorRegistry(), healthy=lambda: (True, "ok"),
                           ready=lambda: (True, "ok"), drifts=lambda: [{"key": "host:file:/etc/motd"}])
    srv.start()

    def status(token: str | None) -> int:
        conn = http.client.HTTPConnection("127.0.0.1", srv.api_address[1], timeout=15)
        try:
            conn.request("GET", "/api/v1/drifts", headers={"Authorization": f"Bearer {token}"} if token else {})
            return conn.getresponse().status
        finally:
            conn.close()

    try:
        assert status(None) == 401
        assert status(tokens["other"]) == 403
        assert status(tokens["reader"]) == 200
    finally:
        srv.stop()
        with contextlib.suppress(Exception):
            admin.delete(f"/apis/rbac.authorization.k8s.io/v1/clusterrolebindings/{binding}")


def test_driftd_adapter_works_under_the_chart_identity(installed: Installed, tmp_path: Path,
                                                       fake_kubelet: Callable[..., Any]) -> None:
    """driftd's own Kubernetes adapter, authenticated as the agent pod: every call it makes is allowed."""
    from driftd.baselines.loader import load_set
    from driftd.core.diff import diff
    from driftd.core.plan import plan as make_plan
    from driftd.models.resources import DesiredResource, ReportResult, ResourceResult
    from driftd.safety.snapshots import SnapshotStore
    from driftd.targets.base import NodeInfo, TargetError
    from driftd.targets.kubernetes import RETIRED_LABEL, TAINT_KEY, KubernetesTarget

    # workloads live in another namespace: the chart keeps PodBaselines out of driftd's own
    c, ns, node, apps = installed.other, installed.ns, installed.node_a, installed.other_ns
    c.make_pod("app-a", node, owner="ReplicaSet", owner_name="web", compliant=False)
    c.make_pod("app-b", installed.node_b, owner="ReplicaSet", owner_name="web", compliant=False)
    bset, problems = load_set(mount_configmap(installed.docs, tmp_path / "baselines"))
    assert bset is not None, problems
    api = new_api_client(installed.token_kubeconfig, "driftd")
    target = KubernetesTarget(SnapshotStore(tmp_path / "snapshots"), node_name=node, namespace=ns, api_client=api,
                              eviction_retry_seconds=0.2, drain_timeout=30)
    try:
        target.desired(bset, NodeInfo(name=node))
        # list with the field selector: this node's governed pods only (the agent's own namespace is excluded)
        found = {d.key for d in target.discover()}
        assert found == {f"pod:{apps}/app-a"}, found
        assert target.resolve(f"pod:{apps}/app-a") is not None
        # the watch (list + watch with the field selector) sees a new pod on this node
        seen: list[str] = []
        stop = threading.Event()
        w = threading.Thread(target=target.watch, args=(seen.append, stop), daemon=True)
        w.start()
        deadline = time.monotonic() + 20
        while f"pod:{apps}/app-a" not in seen and time.monotonic() < deadline:
            time.sleep(0.05)
        c.make_pod("app-c", node, owner="ReplicaSet", owner_name="web")
        while f"pod:{apps}/app-c" not in seen and time.monotonic() < deadline:
            time.sleep(0.05)
        stop.set()
        target.close()
        w.join(timeout=10)
        assert f"pod:{apps}/app-c" in seen and not any("app-b" in k for k in seen), seen
        # Events: on a pod (its namespace) and on the node (namespace "default")
        pod_d = next(d for d in target.discover() if d.key == f"pod:{apps}/app-a")
        target.notify("DriftDetected", pod_d, "pod-restricted: security drift")
        host_d = DesiredResource(key="host:file:/etc/issue.net", target="host", kind="file", address="/etc/issue.net",
                                 baseline="cis-system-files", expected={"mode": "0644"})
        target.notify("DriftReverted", host_d, "file restored")
        assert [e["reason"] for e in c.events("app-a")] == ["DriftDetected"]
        node_events = [e for e in installed.admin.get("/api/v1/namespaces/default/events").get("items") or []
                       if e["involvedObject"]["name"] == node]
        assert [e["reason"] for e in node_events] == ["DriftReverted"]
        # a pod whose DaemonSet template breaks the profile: the template is read (get) and the pod not evicted
        c.make_owner("DaemonSet", "agent", privileged=True)
        c.make_pod("agent-a", node, owner="DaemonSet", owner_name="agent", privileged=True)
        agent_d = target.resolve(f"pod:{apps}/agent-a")
        assert agent_d is not None
        observed = target.observe(agent_d)
        with pytest.raises(TargetError, match=f"template at fault: the pod template of DaemonSet {apps}/agent"):
            target.apply(agent_d, observed, make_plan(agent_d, observed, diff(agent_d, observed)))
        assert not target._owner_reads_refused
        assert not (c.pod("agent-a") or {}).get("metadata", {}).get("deletionTimestamp")
        owner_events = [e for e in c.events("agent") if e["involvedObject"]["kind"] == "DaemonSet"]
        assert [e["reason"] for e in owner_events] == ["TemplateAtFault"]
        # the node's PolicyReport: create, then update
        result = ResourceResult(key="host:file:/etc/issue.net", baseline="cis-system-files", target="host", kind="file",
                                address="/etc/issue.net", result=ReportResult.FAIL, message="mode drifted", at=0.0)
        target.publish_report([result])
        target.publish_report([result.model_copy(update={"result": ReportResult.PASS})])
        report = installed.admin.get(f"/apis/wgpolicyk8s.io/v1alpha2/namespaces/{ns}/policyreports/driftd-{node}")
        assert report["summary"]["pass"] == 1
        # retirement: Lease, cordon + taint + label, drain by eviction, Lease released
        fake_kubelet(node)
        plan = target.would_evict()
        assert sorted(plan) == [f"{apps}/app-a", f"{apps}/app-c"], plan
        out = target.retire_node("cis-sshd drift")
        assert out["evicted"] == [f"{apps}/app-a", f"{apps}/app-c"]
        assert installed.cluster.pod(installed.agent_pod["metadata"]["name"]) is not None, "the agent evicted itself"
        n = c.node(node)
        assert n["spec"]["unschedulable"] is True and n["metadata"]["labels"][RETIRED_LABEL] == "true"
        assert any(tt["key"] == TAINT_KEY for tt in n["spec"]["taints"])
        lease = installed.admin.get(f"/apis/coordination.k8s.io/v1/namespaces/{ns}/leases/{LEASE}")
        # the slot stays the retired node's through the cooldown (cluster-wide cap), and the ledger records the start
        assert lease["spec"].get("holderIdentity") == node and lease["spec"]["leaseDurationSeconds"] >= 3600
        assert c.pod("app-b") is not None, "a pod on another node was touched"
        assert target.up is True
    finally:
        api.close()
    # every write the agent made was allowed: the audit log has no refused request from it
    user = f"system:serviceaccount:{ns}:{installed.fullname}"
    mine = [e for e in installed.env.audit() if e.get("user", {}).get("username") == user]
    made = {(e["verb"], e["objectRef"].get("resource", "") + ("/" + e["objectRef"]["subresource"]
                                                             if e["objectRef"].get("subresource") else ""))
            for e in mine}
    assert made >= {("create", "events"), ("create", "policyreports"), ("update", "policyreports"),
                    ("create", "leases"), ("update", "leases"), ("patch", "nodes"), ("create", "pods/eviction")}, made
    refused = [(e["verb"], e["objectRef"].get("resource"), e["responseStatus"].get("code")) for e in mine
               if e.get("responseStatus", {}).get("code", 200) >= 400]
    assert not refused, refused


# ---------------------------------------------------------------------------- admission policies
def eviction(name: str, ns: str, dry_run: bool = True) -> dict[str, Any]:
    body: dict[str, Any] = {"apiVersion": "policy/v1", "kind": "Eviction", "metadata": {"name": name, "namespace": ns}}
    if dry_run:
        body["deleteOptions"] = {"dryRun": ["All"]}
    return body


def refusal(call: Callable[[], Any]) -> str:
    """The API server's message when ``call`` is refused (403 from RBAC or a policy), '' when it is allowed."""
    try:
        call()
    except KubeApiError as e:
        assert e.status in (403, 422), e
        return str(e.body.get("message", ""))
    return ""


def wait_policy(probe: Callable[[], str], policy: str, timeout: float = 30.0) -> None:
    """Policies and their parameter caches become active a moment after they are created."""
    deadline = time.monotonic() + timeout
    msg = ""
    while time.monotonic() < deadline:
        msg = refusal(probe)
        if policy in msg:
            return
        time.sleep(0.2)
    raise AssertionError(f"policy {policy} never refused the probe; last answer: {msg!r}")


def test_admission_policy_confines_node_writes_to_the_agents_node(installed: Installed) -> None:
    t, a, b = installed.token, installed.node_a, installed.node_b
    policy = f"{installed.fullname}-own-node"

    def patch_node(name: str, body: dict[str, Any], dry_run: bool = False) -> Callable[[], Any]:
        return lambda: t.request("PATCH", f"/api/v1/nodes/{name}", body=body, query={"dryRun": "All" if dry_run else None},
                                 content_type="application/merge-patch+json")

    label = {"metadata": {"labels": {"driftd.io/retired": "true"}}}
    wait_policy(patch_node(b, label, dry_run=True), policy)
    # another node: refused, whatever the change
    assert "may not UPDATE node " + b in refusal(patch_node(b, label))
    assert "may not UPDATE node " + b in refusal(patch_node(b, {"spec": {"unschedulable": True}}))
    assert "driftd.io/retired" not in (installed.cluster.node(b)["metadata"].get("labels") or {})
    # its own node: what retirement does is allowed...
    assert refusal(patch_node(a, label)) == ""
    assert refusal(patch_node(a, {"metadata": {"annotations": {"driftd.io/retired-reason": "drift"}}})) == ""
    taints = installed.cluster.node(a)["spec"].get("taints") or []
    retire = {"spec": {"unschedulable": True,
                       "taints": [*taints, {"key": "driftd.io/non-compliant", "value": "x", "effect": "NoSchedule"}]}}
    assert refusal(patch_node(a, retire)) == ""
    # ...and nothing else: foreign labels/annotations/taints, uncordon, removing others' taints
    assert "labels and annotations" in refusal(patch_node(a, {"metadata": {"labels": {"node-role.kubernetes.io/control-plane": ""}}}))
    assert "labels and annotations" in refusal(patch_node(a, {"metadata": {"labels": {"kubernetes.io/hostname": None}}}))
    assert "labels and annotations" in refusal(patch_node(a, {"metadata": {"annotations": {"example.com/x": "y"}}}))
    assert "cordon" in refusal(patch_node(a, {"spec": {"unschedulable": False}}))
    assert "cordon" in refusal(patch_node(a, {"spec": {"taints": [{"key": "evil", "effect": "NoExecute"}]}}))
    node = installed.cluster.node(a)
    assert node["spec"]["unschedulable"] is True and "node-role.kubernetes.io/control-plane" not in node["metadata"]["labels"]
    # a token of the same ServiceAccount that is not bound to a pod on a node cannot patch any node
    unbound = mint_token(installed.admin, installed.ns, installed.fullname, None)
    kc = token_kubeconfig(installed.env, unbound, Path(installed.token_kubeconfig).with_name("unbound.kubeconfig"))
    api = new_api_client(kc)
    try:
        assert "not bound to a pod on a node" in refusal(lambda: KubeRest(api).patch(f"/api/v1/nodes/{a}", label))
    finally:
        api.close()


def test_admission_policy_confines_evictions_to_pods_on_the_agents_node(installed: Installed) -> None:
    t, c, ns, other = installed.token, installed.cluster, installed.ns, installed.other_ns
    policy = f"{installed.fullname}-own-node-evictions"
    c.make_pod("mine", installed.node_a)
    c.make_pod("theirs", installed.node_b)
    # and in another namespace (a pod object of the test's own, made with the admin client)
    for name, node in (("mine", installed.node_a), ("theirs", installed.node_b)):
        m = c.pod_manifest(name, node, owner=None)
        m["metadata"]["namespace"] = other
        installed.admin.post(f"/api/v1/namespaces/{other}/pods", m)

    def evict(name: str, in_ns: str, dry_run: bool = True) -> Callable[[], Any]:
        return lambda: t.post(f"/api/v1/namespaces/{in_ns}/pods/{name}/eviction", eviction(name, in_ns, dry_run))

    wait_policy(evict("theirs", ns), policy)
    for in_ns in (ns, other):
        msg = refusal(evict("theirs", in_ns, dry_run=False))
        assert f"may not evict pod {in_ns}/theirs, which runs on node {installed.node_b}" in msg, msg
        assert c.pod("theirs", in_ns) is not None
        assert refusal(evict("mine", in_ns, dry_run=False)) == ""
        pod = c.pod("mine", in_ns)
        assert pod is None or pod["metadata"].get("deletionTimestamp")
    # A pod the policy's parameter cache does not know is not checked (parameterNotFoundAction Allow,
    # because parameters are resolved for every user's evictions): the API answers 404, nothing to evict.
    assert status_of(evict("ghost", other)) == 404
    empty = f"{ns}-empty"[:63]
    installed.admin.post("/api/v1/namespaces", {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": empty}})
    assert status_of(evict("ghost", empty)) == 404
    assert status_of(lambda: installed.admin.post(f"/api/v1/namespaces/{empty}/pods/ghost/eviction",
                                                  eviction("ghost", empty))) == 404


def test_admission_policy_confines_reports_leases_and_events(installed: Installed, policyreport_crd: Path) -> None:
    t, ns, a, b = installed.token, installed.ns, installed.node_a, installed.node_b
    policy = f"{installed.fullname}-own-node"
    reports = f"/apis/wgpolicyk8s.io/v1alpha2/namespaces/{ns}/policyreports"

    def report(node: str) -> dict[str, Any]:
        return {"apiVersion": "wgpolicyk8s.io/v1alpha2", "kind": "PolicyReport",
                "metadata": {"name": f"driftd-{node}", "namespace": ns}, "summary": {"pass": 0}}

    wait_policy(lambda: t.post(reports, report(b), dryRun="All"), policy)
    assert "may only write PolicyReport driftd-" + a in refusal(lambda: t.post(reports, report(b)))
    assert refusal(lambda: t.post(reports, report(a))) == ""
    leases = f"/apis/coordination.k8s.io/v1/namespaces/{ns}/leases"

    def lease(holder: str | None) -> dict[str, Any]:
        return {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": {"name": LEASE, "namespace": ns},
                "spec": {"holderIdentity": holder, "leaseDurationSeconds": 900}}

    assert "retirement Lease" in refusal(lambda: t.post(leases, lease(b)))
    created = t.post(leases, lease(a))
    created["spec"]["holderIdentity"] = b
    assert "retirement Lease" in refusal(lambda: t.put(f"{leases}/{LEASE}", created))
    created["spec"]["holderIdentity"] = None
    assert refusal(lambda: t.put(f"{leases}/{LEASE}", created)) == ""

    def event(kind: str, name: str, instance: str) -> dict[str, Any]:
        return {"apiVersion": "v1", "kind": "Event", "metadata": {"generateName": "driftd-", "namespace": "default"},
                "involvedObject": {"apiVersion": "v1", "kind": kind, "name": name}, "reason": "Test", "message": "x",
                "type": "Normal", "source": {"component": "driftd"}, "reportingComponent": "driftd.io/agent",
                "reportingInstance": instance}

    events = "/api/v1/namespaces/default/events"
    assert "about its own node" in refusal(lambda: t.post(events, event("Node", b, a)))
    assert "about its own node" in refusal(lambda: t.post(events, event("Node", a, b)))
    assert refusal(lambda: t.post(events, event("Node", a, a))) == ""


def test_admission_policies_leave_other_users_alone(installed: Installed) -> None:
    """The policies match only the agent's ServiceAccount: an administrator (or the kubelet) is unaffected."""
    wait_policy(lambda: installed.token.request("PATCH", f"/api/v1/nodes/{installed.node_b}",
                                                body={"metadata": {"labels": {"x": "y"}}}, query={"dryRun": "All"},
                                                content_type="application/merge-patch+json"),
                f"{installed.fullname}-own-node")
    installed.admin.patch(f"/api/v1/nodes/{installed.node_b}", {"metadata": {"labels": {"example.com/role": "x"}}})
    installed.cluster.make_pod("victim", installed.node_b)
    installed.admin.post(f"/api/v1/namespaces/{installed.ns}/pods/victim/eviction", eviction("victim", installed.ns))


def test_the_default_image_is_the_one_the_dockerfile_build_tags() -> None:
    """driftd:<version> everywhere: pyproject, Chart.yaml appVersion, scripts/image-build.sh and the DaemonSet;
    the registry is the first image setting and prefixes the repository."""
    import tomllib

    version = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
    assert yaml.safe_load((CHART / "Chart.yaml").read_text())["appVersion"] == version
    assert 'IMAGE=${IMAGE:-driftd:$version}' in (REPO / "scripts/image-build.sh").read_text()

    def image(values: dict[str, Any] | None = None) -> str:
        return str(one(render(values), "DaemonSet")["spec"]["template"]["spec"]["containers"][0]["image"])

    assert image() == f"driftd:{version}"
    assert image({"image": {"registry": "registry.example.com/platform"}}) == f"registry.example.com/platform/driftd:{version}"
    digest = "sha256:" + "ab" * 32
    assert image({"image": {"registry": "r.example.com:5000/", "digest": digest}}) == f"r.example.com:5000/driftd@{digest}"
    assert next(iter(yaml.safe_load((CHART / "values.yaml").read_text())["image"])) == "registry"
    r = helm("template", "driftd", str(CHART), values={"image": {"registry": "bad registry"}}, check=False)
    assert r.returncode != 0 and "registry" in r.stderr
