"""The shipped baselines (baselines/): they load clean, say where they come from, and do what their comments say."""

from __future__ import annotations

import copy
import re
import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml

from driftd.baselines.loader import load_set
from driftd.cli import main
from driftd.core.pod_policy import evaluate, governing, selects
from driftd.models.baseline import HostBaseline
from driftd.models.pod import PodBaseline

REPO = Path(__file__).resolve().parent.parent
SHIPPED = REPO / "baselines"
# node-agents is part of the shipped set (node-agents.yaml); a copy that disables it (.disabled) is accepted too.
NODE_AGENTS_NAMES = ("node-agents.yaml", "node-agents.yaml.disabled")
CIS_FILES = ("sshd.yaml", "sysctl.yaml", "system-files.yaml", "debian12-packages.yaml")
RULE_LISTS = ("files", "directories", "sysctls", "packages")
RULE_ID = re.compile(r"#\s*(CIS Debian 12 \d+(\.\d+)*\b|Beyond CIS \()")
DIGEST = "sha256:" + "e" * 64


def node_agents_file() -> Path:
    found = [SHIPPED / n for n in NODE_AGENTS_NAMES if (SHIPPED / n).exists()]
    assert len(found) == 1, f"exactly one of {NODE_AGENTS_NAMES} in baselines/: {found}"
    return found[0]


@pytest.fixture(scope="module")
def full_set(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """baselines/ with the node-agents profile enabled: the set an operator who turns it on loads."""
    root = tmp_path_factory.mktemp("shipped") / "baselines"
    shutil.copytree(SHIPPED, root)
    for n in NODE_AGENTS_NAMES[1:]:
        (root / n).unlink(missing_ok=True)
    shutil.copyfile(node_agents_file(), root / "node-agents.yaml")
    bset, problems = load_set(root)
    assert bset is not None, problems
    return {"dir": root, "set": bset, "problems": problems,
            "by_name": {b.metadata.name: b for b in bset.baselines}}


def pod_profile(full_set: dict[str, Any], name: str) -> PodBaseline:
    b = full_set["by_name"][name]
    assert isinstance(b, PodBaseline)
    return b


def pod_profiles(full_set: dict[str, Any]) -> list[PodBaseline]:
    return [b for b in full_set["set"].baselines if isinstance(b, PodBaseline)]


# ---------------------------------------------------------------------------- the directory
class TestTheDirectory:
    def test_loads_with_no_error_and_no_warning(self):
        """The shipped set loads whole, with no problem of any severity (no warning is documented as expected)."""
        bset, problems = load_set(SHIPPED)
        assert bset is not None, problems
        assert list(problems) == [] and list(bset.warnings) == []
        assert {b.metadata.name for b in bset.baselines} == {
            "cis-sshd", "cis-sysctl", "cis-system-files", "hardened-container", "pod-restricted", "node-agents",
            "debian12-packages"}

    def test_readme_and_the_disabled_profile_are_not_read(self):
        """Markdown (and a .disabled copy, if an operator keeps one) sit in baselines/ without the loader reading them."""
        assert (SHIPPED / "README.md").is_file()
        bset, _ = load_set(SHIPPED)
        assert bset is not None
        read = set(bset.file_digests)
        assert not {r for r in read if r.endswith((".md", ".disabled"))}, read
        assert {"sshd.yaml", "files/sshd_config"} <= read

    def test_lint_accepts_the_whole_set_with_node_agents_enabled(self, full_set, capsys):
        """Both pod profiles together: lint exits 0 and reports nothing (no conflict, no warning)."""
        assert full_set["problems"] == []
        assert main(["baseline", "lint", str(full_set["dir"])]) == 0
        assert "7 baselines valid" in capsys.readouterr().err

    @pytest.mark.parametrize("name", sorted(p.name for p in SHIPPED.iterdir() if p.is_file() and p.suffix != ".md"))
    def test_every_file_opens_with_its_source(self, name):
        """Each baseline file starts with a comment naming its source: a benchmark and its version, or 'not a benchmark'."""
        lines = (SHIPPED / name).read_text().splitlines()
        assert lines[0].startswith("# Source: "), f"{name}: first line must be '# Source: ...'"
        header = " ".join(line for line in lines[:4])
        assert re.search(r"Benchmark v\d+\.\d+\.\d+|Pod Security Standards|not a benchmark", header), header

    @pytest.mark.parametrize(("name", "source"), [
        ("sshd.yaml", "CIS Debian Linux 12 Benchmark v1.1.0"),
        ("sysctl.yaml", "CIS Debian Linux 12 Benchmark v1.1.0"),
        ("system-files.yaml", "CIS Debian Linux 12 Benchmark v1.1.0"),
        ("debian12-packages.yaml", "Debian security advisories"),
        ("container-hardened.yaml", "CIS Docker Benchmark v1.3.1"),
        ("pod-restricted.yaml", "Pod Security Standards"),
    ])
    def test_each_file_names_its_benchmark(self, name, source):
        assert source in " ".join((SHIPPED / name).read_text().splitlines()[:2])

    def test_the_source_file_opens_with_its_benchmark(self):
        text = (SHIPPED / "files/sshd_config").read_text()
        assert "CIS Debian Linux 12 Benchmark v1.1.0" in "".join(text.splitlines(keepends=True)[:3])


# ---------------------------------------------------------------------------- rule ids on host rules
def rules_without_id(text: str) -> tuple[int, list[str]]:
    """(rules seen, the rules with no CIS id comment) of a HostBaseline's YAML text.

    A rule is a list item under spec.files/directories/sysctls; its id comment is on the item's
    first line or in the comment lines directly above it.
    """
    lines = text.splitlines()
    root = yaml.compose(text)
    spec = next(v for k, v in root.value if k.value == "spec")
    seen, missing = 0, []
    for key, value in spec.value:
        if key.value not in RULE_LISTS:
            continue
        for item in value.value:
            seen += 1
            first = item.start_mark.line
            above = []
            i = first - 1
            while i >= 0 and lines[i].lstrip().startswith("#"):
                above.append(lines[i])
                i -= 1
            if not any(RULE_ID.search(line) for line in [lines[first], *above]):
                missing.append(f"line {first + 1}: {lines[first].strip()}")
    return seen, missing


class TestRuleIds:
    @pytest.mark.parametrize("name", CIS_FILES)
    def test_every_host_rule_names_its_cis_recommendation(self, name):
        text = (SHIPPED / name).read_text()
        seen, missing = rules_without_id(text)
        bset, _ = load_set(SHIPPED)
        assert bset is not None
        (b,) = [b for b in bset.baselines if isinstance(b, HostBaseline) and b.metadata.name == yaml.safe_load(text)["metadata"]["name"]]
        assert seen == len(list(b.spec.rules())) > 0, "every rule of the loaded baseline was looked at"
        assert missing == [], f"{name}: rules without a '# CIS Debian 12 <id>' or '# Beyond CIS (...)' comment: {missing}"

    def test_the_checker_finds_a_rule_without_an_id(self):
        text = ("apiVersion: driftd.io/v1alpha1\nkind: HostBaseline\nmetadata: {name: x}\nspec:\n  files:\n"
                "    # CIS Debian 12 7.1.1 Ensure permissions on /etc/passwd are configured\n"
                "    - {path: /etc/passwd, mode: '0644'}\n"
                "    # a comment without an id\n"
                "    - path: /etc/group\n      mode: '0644'\n"
                "  sysctls:\n    - {key: fs.suid_dumpable, value: '0'}   # CIS Debian 12 1.5.3\n"
                "    - {key: kernel.dmesg_restrict, value: '1'}\n")
        assert rules_without_id(text) == (4, ["line 9: - path: /etc/group", "line 13: - {key: kernel.dmesg_restrict, value: '1'}"])

    def test_every_sshd_directive_carries_its_id_or_says_it_is_not_cis(self):
        """files/sshd_config: each directive (or group of them) sits under a comment naming its 5.1.x id."""
        lines = (SHIPPED / "files/sshd_config").read_text().splitlines()
        bare = []
        for i, line in enumerate(lines):
            if not line or line.startswith("#"):
                continue
            j = i - 1
            while j >= 0 and not lines[j].startswith("#"):
                j -= 1  # a group of directives under one comment
            block = []
            while j >= 0 and lines[j].startswith("#"):
                block.append(lines[j])
                j -= 1
            if not any(re.match(r"# (5\.1\.\d+ |not a CIS rule|Drop-ins last)", c) for c in block):
                bare.append(line)
        assert bare == []
        ids = set(re.findall(r"^# (5\.1\.\d+) ", "\n".join(lines), re.M))
        assert {f"5.1.{n}" for n in (5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22)} <= ids

    def test_sshd_drop_ins_cannot_override_the_managed_settings(self):
        """sshd keeps the first value of a keyword: the Include of sshd_config.d must come after every directive."""
        directives = [line.split()[0] for line in (SHIPPED / "files/sshd_config").read_text().splitlines()
                      if line and not line.startswith("#")]
        assert directives[-1] == "Include" and directives.count("Include") == 1
        assert len(directives) == len(set(directives)), "a keyword set twice: only the first counts"
        assert "Protocol" not in directives  # deprecated since OpenSSH 7.4


# ---------------------------------------------------------------------------- Pod Security Standards "restricted"
def compliant_pod(ns: str = "apps") -> dict[str, Any]:
    container = {"name": "app", "image": "app:1", "resources": {"limits": {"memory": "64Mi"}},
                 "securityContext": {"allowPrivilegeEscalation": False,
                                     "capabilities": {"drop": ["ALL"], "add": ["NET_BIND_SERVICE"]}}}
    return {
        "metadata": {"name": "web-1", "namespace": ns, "uid": "u1",
                     "ownerReferences": [{"kind": "ReplicaSet", "name": "web-abc", "controller": True}]},
        "spec": {"securityContext": {"runAsNonRoot": True, "runAsUser": 10001, "seccompProfile": {"type": "RuntimeDefault"}},
                 "initContainers": [{**copy.deepcopy(container), "name": "init"}],
                 "containers": [container],
                 "volumes": [{"name": "cfg", "configMap": {"name": "web"}}, {"name": "tmp", "emptyDir": {}}]},
        "status": {"containerStatuses": [{"name": "app", "imageID": f"docker-pullable://app@{DIGEST}"}]},
    }


def offenders(b: PodBaseline, pod: dict[str, Any]) -> dict[str, list[str]]:
    return {k: v for k, v in evaluate(b, pod).items() if v}


def app_sc(p: dict[str, Any]) -> dict[str, Any]:
    return p["spec"]["containers"][0]["securityContext"]


# (PSS control, how a pod breaks it, the rule that must name it)
PSS_VIOLATIONS = [
    ("Host Namespaces: hostNetwork", lambda p: p["spec"].update(hostNetwork=True), "hostNamespaces", ["hostNetwork"]),
    ("Host Namespaces: hostPID", lambda p: p["spec"].update(hostPID=True), "hostNamespaces", ["hostPID"]),
    ("Host Namespaces: hostIPC", lambda p: p["spec"].update(hostIPC=True), "hostNamespaces", ["hostIPC"]),
    ("Privileged Containers", lambda p: app_sc(p).update(privileged=True), "privileged", ["app"]),
    ("Privileged Containers (init)", lambda p: p["spec"]["initContainers"][0]["securityContext"].update(privileged=True),
     "privileged", ["init"]),
    ("Capabilities: added beyond NET_BIND_SERVICE", lambda p: app_sc(p)["capabilities"].update(add=["NET_BIND_SERVICE", "NET_RAW"]),
     "capabilitiesAdded", ["app=NET_RAW"]),
    ("Capabilities: ALL not dropped", lambda p: app_sc(p)["capabilities"].update(drop=["NET_RAW"]), "capabilitiesNotDropped", ["app"]),
    ("HostPath Volumes", lambda p: p["spec"]["volumes"].append({"name": "logs", "hostPath": {"path": "/var/log"}}),
     "hostPathVolumes", ["logs=/var/log"]),
    ("Seccomp: Unconfined", lambda p: app_sc(p).update(seccompProfile={"type": "Unconfined"}), "seccompProfile", ["app"]),
    ("Seccomp: not set", lambda p: p["spec"]["securityContext"].pop("seccompProfile"), "seccompProfile", ["app", "init"]),
    ("Privilege Escalation: true", lambda p: app_sc(p).update(allowPrivilegeEscalation=True), "allowPrivilegeEscalation", ["app"]),
    ("Privilege Escalation: not set", lambda p: app_sc(p).pop("allowPrivilegeEscalation"), "allowPrivilegeEscalation", ["app"]),
    ("Running as Non-root: false on the container", lambda p: app_sc(p).update(runAsNonRoot=False), "runAsNonRoot", ["app"]),
    ("Running as Non-root: not set", lambda p: p["spec"]["securityContext"].pop("runAsNonRoot"), "runAsNonRoot", ["app", "init"]),
    ("Running as Non-root user: runAsUser 0", lambda p: p["spec"]["securityContext"].update(runAsUser=0), "runAsNonRoot", ["app", "init"]),
]


class TestRestrictedProfile:
    def test_a_compliant_pod_is_governed_and_accepted(self, full_set):
        """A pod meeting every PSS restricted control (Localhost seccomp too) has no offender."""
        restricted = pod_profile(full_set, "pod-restricted")
        pod = compliant_pod()
        assert governing(pod_profiles(full_set), pod) is restricted
        assert offenders(restricted, pod) == {}
        app_sc(pod)["seccompProfile"] = {"type": "Localhost", "localhostProfile": "profiles/app.json"}
        assert offenders(restricted, pod) == {}

    @pytest.mark.parametrize(("control", "mutate", "field", "who"), PSS_VIOLATIONS, ids=[v[0] for v in PSS_VIOLATIONS])
    def test_each_pss_restricted_control_is_enforced(self, full_set, control, mutate, field, who):
        """Breaking one control makes exactly that rule name the offender, and the group acts (evicts), not just reports."""
        restricted = pod_profile(full_set, "pod-restricted")
        pod = compliant_pod()
        mutate(pod)
        assert offenders(restricted, pod) == {field: who}, control
        group = "host" if field in ("hostNamespaces", "hostPathVolumes") else "security"
        assert getattr(restricted.spec.actions, group).value == "revert"

    def test_each_control_is_documented_with_its_pss_name(self):
        """Every check in pod-restricted.yaml names its PSS control (or says it goes beyond PSS) on its line."""
        text = (SHIPPED / "pod-restricted.yaml").read_text()
        for key in ("runAsNonRoot", "allowPrivilegeEscalation", "privileged", "requiredDropCapabilities",
                    "allowedCapabilities", "seccompProfiles", "forbidHostNamespaces", "allowedHostPaths",
                    "forbidEphemeralContainers", "requireLimits"):
            (line,) = [line for line in text.splitlines() if line.strip().startswith(f"{key}:")]
            assert re.search(r"# PSS (Baseline|Restricted) \"[^\"]+\"|# Beyond PSS", line), line


# ---------------------------------------------------------------------------- node agents
def cni_pod() -> dict[str, Any]:
    """A calico-node-like DaemonSet pod: root, privileged, hostNetwork, CNI host paths; "restricted" flags most of it."""
    return {
        "metadata": {"name": "calico-node-x7k2p", "namespace": "kube-system", "uid": "u2",
                     "labels": {"k8s-app": "calico-node"},
                     "ownerReferences": [{"kind": "DaemonSet", "name": "calico-node", "controller": True}]},
        "spec": {
            "hostNetwork": True,
            "initContainers": [{"name": "install-cni", "image": "calico/cni:v3.27.0", "securityContext": {"privileged": True}}],
            "containers": [{"name": "calico-node", "image": "calico/node:v3.27.0",
                            "securityContext": {"privileged": True, "capabilities": {"add": ["NET_ADMIN", "SYS_ADMIN"]}}}],
            "volumes": [{"name": n, "hostPath": {"path": p}} for n, p in (
                ("lib-modules", "/lib/modules"), ("xtables-lock", "/run/xtables.lock"), ("var-run-calico", "/var/run/calico"),
                ("var-lib-calico", "/var/lib/calico"), ("cni-bin-dir", "/opt/cni/bin"), ("cni-net-dir", "/etc/cni/net.d"),
                ("cni-log-dir", "/var/log/calico/cni"), ("policysync", "/var/run/nodeagent"), ("bpffs", "/sys/fs/bpf"),
                ("nodeproc", "/proc"))] + [{"name": "kube-api-access", "projected": {"sources": []}}],
        },
        "status": {"containerStatuses": [{"name": "calico-node", "imageID": f"docker-pullable://calico/node@{DIGEST}"}]},
    }


class TestNodeAgentsProfile:
    def test_a_typical_cni_daemonset_pod_is_accepted(self, full_set):
        """The node-agents profile governs the CNI pod and finds nothing; "restricted" would flag it on many rules."""
        agents, restricted = pod_profile(full_set, "node-agents"), pod_profile(full_set, "pod-restricted")
        pod = cni_pod()
        assert governing(pod_profiles(full_set), pod) is agents
        assert offenders(agents, pod) == {}
        flagged = offenders(restricted, pod)
        assert {"privileged", "hostNamespaces", "hostPathVolumes", "runAsNonRoot", "seccompProfile"} <= set(flagged)

    def test_a_host_path_outside_the_agent_paths_is_reported_not_evicted(self, full_set):
        agents = pod_profile(full_set, "node-agents")
        pod = cni_pod()
        pod["spec"]["volumes"] += [{"name": "pki", "hostPath": {"path": "/etc/kubernetes/pki"}},
                                   {"name": "rootfs", "hostPath": {"path": "/"}},
                                   {"name": "sock", "hostPath": {"path": "/run/containerd/containerd.sock"}}]
        assert offenders(agents, pod) == {"hostPathVolumes": sorted(
            ["pki=/etc/kubernetes/pki", "rootfs=/", "sock=/run/containerd/containerd.sock"])}
        assert agents.spec.actions.host.value == "report"

    def test_a_debug_container_in_an_agent_is_evicted(self, full_set):
        agents = pod_profile(full_set, "node-agents")
        pod = cni_pod()
        pod["spec"]["ephemeralContainers"] = [{"name": "debugger-abc", "image": "busybox"}]
        assert offenders(agents, pod) == {"ephemeralContainers": ["debugger-abc"]}
        assert agents.spec.actions.ephemeral.value == "revert"

    def test_the_two_pod_profiles_never_govern_the_same_pod(self, full_set):
        """node-agents selects only namespaces pod-restricted excludes; an application pod stays with restricted."""
        agents, restricted = pod_profile(full_set, "node-agents"), pod_profile(full_set, "pod-restricted")
        assert agents.spec.selector.namespaces, "node-agents must name its namespaces"
        for ns in [*agents.spec.selector.namespaces, "kube-public", "kube-node-lease", "apps", "default", "monitoring"]:
            pod = compliant_pod(ns)
            assert not (selects(agents, pod) and selects(restricted, pod)), ns
        assert selects(agents, cni_pod()) and not selects(restricted, cni_pod())
        assert not selects(agents, compliant_pod("apps")) and selects(restricted, compliant_pod("apps"))

    def test_the_chart_copy_carries_the_profile(self):
        """The node-agents profile is copied with the rest into the chart."""
        src = node_agents_file()
        assert (REPO / "charts/driftd/baselines" / src.name).read_bytes() == src.read_bytes()


# ---------------------------------------------------------------------------- debian12-packages
class TestDebianPackages:
    def _run(self, tmp_path: Path, status: bytes) -> Any:
        from prometheus_client import CollectorRegistry

        from driftd.engine.once import run_once
        from driftd.runtime import build_runtime
        from driftd.settings import load_settings

        bdir = tmp_path / "b"
        bdir.mkdir()
        shutil.copy(SHIPPED / "debian12-packages.yaml", bdir)
        root = tmp_path / "host"
        (root / "var/lib/dpkg").mkdir(parents=True)
        (root / "var/lib/dpkg/status").write_bytes(status)
        s = load_settings(host_root=root, baselines=bdir, state_dir=tmp_path / "state", node_name="n", dry_run=True)
        rt = build_runtime(s, registry=CollectorRegistry())
        bset, problems = load_set(bdir)
        assert bset is not None and problems == []
        rt.engine.set_baselines(bset)
        return run_once(rt.engine, rt.queue, attempts=1)

    def test_a_patched_debian_12_host_passes(self, tmp_path):
        """The real Debian 12 status file in tests/fixtures (patched later than every advisory named) is clean."""
        import gzip

        status = gzip.decompress((REPO / "tests/fixtures/packages/dpkg-status.gz").read_bytes())
        s = self._run(tmp_path, status)
        assert s.outcomes == [] and s.counts == {"clean": 11}

    def test_a_host_before_the_advisories_reports_each_with_its_reason(self, tmp_path):
        from packages_support import dpkg_stanza

        status = (dpkg_stanza("openssh-server", "1:9.2p1-2+deb12u2") + dpkg_stanza("libc6", "2.36-9+deb12u1")
                  + dpkg_stanza("libssl3", "3.0.15-1~deb12u1") + dpkg_stanza("telnetd", "0.17+2.4-2")).encode()
        s = self._run(tmp_path, status)
        got = {o.address: o for o in s.outcomes}
        assert sorted(got) == ["libc6", "openssh-server", "telnetd"]  # libssl3 is past its floor
        assert "DSA-5724-1 (CVE-2024-6387)" in str(got["openssh-server"].drift)
