"""Guardrails (issue 10 item 3): what a baseline may not manage without saying why.

Each deny-list entry is refused by ``baseline lint`` (FILE:LINE: field: reason) and by the
daemon (start-up and hot reload keep the last good set) unless the rule carries
``allowDangerous: "<reason>"``; then it loads and is reported at every load.  The operator
extends the lists through settings; a baseline cannot.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from conftest import host_baseline, tree_digest
from prometheus_client import CollectorRegistry

from driftd.baselines.guardrails import DENIED_PATHS, DENIED_SYSCTLS, Guardrails
from driftd.baselines.loader import load_set
from driftd.cli import main
from driftd.engine.daemon import BaselineManager
from driftd.testing import capture_logs

REPO = Path(__file__).resolve().parent.parent
WHY = 'allowDangerous: "CHG-1234: the vendor agent needs it"'


def sample_path(pattern: str) -> str:
    """A concrete path a deny-list pattern matches."""
    p = pattern.replace("/**", "/sample.conf").replace("*", "x")
    return "/root" + p[1:] if p.startswith("x/") else p


def sample_sysctl(pattern: str) -> str:
    return pattern.replace("*", "status")


# the examples: each is a backdoor through a merged pull request
BACKDOORS = {
    "empty root password": ('files:\n  - {path: /etc/shadow, content: "root::19000:0:99999:7:::\\n", sensitive: true%s}',
                            "spec.files[0].content", "the password database"),
    "sudo for everyone": ('files:\n  - {path: /etc/sudoers.d/99-all, content: "ALL ALL=(ALL) NOPASSWD: ALL\\n"%s}',
                          "spec.files[0].content", "sudo rules"),
    "preload a library": ('files:\n  - {path: /etc/ld.so.preload, content: "/tmp/x.so\\n"%s}',
                          "spec.files[0].content", "a library loaded into every process"),
    "root's authorized_keys": ('files:\n  - {path: /root/.ssh/authorized_keys, content: "ssh-ed25519 AAAA x\\n"%s}',
                               "spec.files[0].content", "SSH keys"),
    "setuid ELF": ('files:\n  - {path: /usr/local/bin/rootsh, source: files/sh, mode: "4755"%s}',
                   "spec.files[0].mode", "set-uid"),
    "core_pattern pipe": ('sysctls:\n  - {key: kernel.core_pattern, value: "|/opt/x %%p"%s}',
                          "spec.sysctls[0].value", "runs that program as root on every crash"),
    "kubelet credentials": ('files:\n  - {path: /etc/kubernetes/admin.conf, content: "x\\n"%s}',
                            "spec.files[0].content", "the cluster's credentials"),
    "a cron job": ('files:\n  - {path: /etc/cron.d/job, content: "* * * * * root /tmp/x\\n"%s}',
                   "spec.files[0].content", "cron jobs"),
    "a systemd unit": ('files:\n  - {path: /etc/systemd/system/evil.service, content: "[Service]\\nExecStart=/x\\n"%s}',
                       "spec.files[0].content", "systemd units"),
    "a world-writable unit directory": ('directories:\n  - {path: /etc/systemd/system, mode: "0777"%s}',
                                        "spec.directories[0].mode", "lets group or others write"),
    "loosened shadow": ('files:\n  - {path: /etc/shadow, mode: "0666"%s}', "spec.files[0].mode", "lets group or others write"),
    "shadow given away": ('files:\n  - {path: /etc/shadow, owner: nobody%s}', "spec.files[0].owner", "other than root"),
}


def bset_dir(baselines_dir, spec: str, *, with_source: bool = False) -> Path:
    d = baselines_dir({"b.yaml": host_baseline("b", spec)})
    if with_source:
        (d / "files").mkdir(exist_ok=True)
        (d / "files/sh").write_bytes(b"\x7fELF\x02\x01\x01" + b"\0" * 57)
    return d


class TestLint:
    @pytest.mark.parametrize("name", sorted(BACKDOORS))
    def test_each_backdoor_is_refused_with_file_line_and_field_and_loads_with_a_reason(self, baselines_dir, name,
                                                                                       capsys):
        spec, field, why = BACKDOORS[name]
        bdir = bset_dir(baselines_dir, spec % "", with_source="source:" in spec)
        assert main(["baseline", "lint", str(bdir)]) == 1
        out = capsys.readouterr().out
        line = re.search(rf"b\.yaml:(\d+): {re.escape(field)}: (.*)", out)
        assert line, out
        assert why in line.group(2) and "allowDangerous" in line.group(2)
        assert int(line.group(1)) == 8  # the rule's line (the header of host_baseline is 7 lines)
        bdir2 = bset_dir(baselines_dir, spec % f", {WHY}", with_source="source:" in spec)
        assert main(["baseline", "lint", str(bdir2)]) == 0
        out2 = capsys.readouterr().out
        assert f"{field}: allowed-dangerous: " in out2 and "allowed: CHG-1234: the vendor agent needs it" in out2

    @pytest.mark.parametrize(("pattern", "what"), DENIED_PATHS)
    def test_every_denied_path_is_refused_without_a_reason(self, baselines_dir, pattern, what):
        path = sample_path(pattern)
        bset, problems = load_set(bset_dir(baselines_dir, f'files:\n  - {{path: {path}, content: "x\\n"}}'))
        assert bset is None
        assert [(p.field, what in p.reason) for p in problems] == [("spec.files[0].content", True)], problems
        bset, problems = load_set(bset_dir(baselines_dir, f'files:\n  - {{path: {path}, content: "x\\n", {WHY}}}'))
        assert bset is not None, problems

    @pytest.mark.parametrize(("pattern", "what"), DENIED_SYSCTLS)
    def test_every_denied_sysctl_is_refused_without_a_reason(self, baselines_dir, pattern, what):
        key = sample_sysctl(pattern)
        bset, problems = load_set(bset_dir(baselines_dir, f'sysctls:\n  - {{key: {key}, value: "0"}}'))
        assert bset is None and what in problems[0].reason and problems[0].field == "spec.sysctls[0].value", problems

    def test_hardening_the_account_databases_needs_no_reason(self, baselines_dir):
        """Tightening modes and root ownership (CIS), a core_pattern without a pipe: not dangerous."""
        spec = textwrap.dedent("""\
            files:
              - {path: /etc/shadow, mode: "0640", owner: root, group: shadow, sensitive: true}
              - {path: /etc/passwd, mode: "0644", owner: root, group: root}
              - {path: /etc/sudoers, mode: "0440", owner: 0, group: 0}
            sysctls:
              - {key: kernel.core_pattern, value: core}
        """)
        bset, problems = load_set(bset_dir(baselines_dir, spec))
        assert bset is not None and problems == [], problems

    def test_the_shipped_baselines_pass_the_guardrails(self):
        for d in (REPO / "baselines", REPO / "charts/driftd/baselines"):
            bset, problems = load_set(d)
            assert bset is not None, problems
            assert not [p for p in problems if p.severity == "allowed-dangerous"]

    def test_a_blank_reason_is_no_reason(self, baselines_dir):
        bset, problems = load_set(bset_dir(baselines_dir, 'files:\n  - {path: /etc/sudoers, content: "x", allowDangerous: " ok "}'))
        assert bset is None and "allowDangerous needs a reason" in str(problems)

    def test_the_operator_extends_the_list_and_a_baseline_cannot(self, baselines_dir, tmp_path, capsys):
        spec = 'files:\n  - {path: /opt/app/agent.conf, content: "x\\n"}'
        bdir = bset_dir(baselines_dir, spec)
        assert load_set(bdir)[0] is not None  # not denied by the built-in list
        rails = Guardrails().extended(["/opt/app/**"], ["vm.overcommit_memory"])
        bset, problems = load_set(bdir, guardrails=rails)
        assert bset is None and "denied by the operator" in problems[0].reason
        cfg = tmp_path / "driftd.yaml"
        cfg.write_text("guardrails:\n  extra_paths: ['/opt/app/**']\n")
        assert main(["baseline", "lint", str(bdir), "--config", str(cfg)]) == 1  # lint applies the operator's list
        assert "denied by the operator" in capsys.readouterr().out
        own = baselines_dir({"b.yaml": host_baseline("b", "guardrails: {extraPaths: []}\n" + spec)})
        bset, problems = load_set(own)
        assert bset is None and [(p.field, p.reason) for p in problems] == [("spec.guardrails", "unknown field")]


class TestDaemon:
    def test_run_refuses_a_dangerous_set_at_start_and_writes_nothing(self, baselines_dir, host_root, tmp_path):
        spec, _, _ = BACKDOORS["sudo for everyone"]
        bdir = bset_dir(baselines_dir, spec % "")
        before = tree_digest(host_root)
        r = subprocess.run([sys.executable, "-m", "driftd", "run", "--once", "--baselines", str(bdir), "--host-root",
                            str(host_root), "--state-dir", str(tmp_path / "st"), "--node-name", "n1"],
                           capture_output=True, text=True, timeout=120, env={**os.environ, "DRIFTD_LOG__FORMAT": "json"})
        assert r.returncode == 1, r.stderr
        assert "spec.files[0].content" in r.stderr and "sudo rules" in r.stderr
        assert tree_digest(host_root) == before and not (host_root / "etc/sudoers.d").exists()

    def test_hot_reload_rejects_a_dangerous_set_and_keeps_the_old_one_then_logs_an_allowed_one(
            self, baselines_dir, make_runtime):
        reg = CollectorRegistry()
        bdir = baselines_dir({"b.yaml": host_baseline("b", 'files:\n  - {path: /etc/motd, content: "hello\\n"}')})
        rt = make_runtime(bdir, registry=reg)
        manager = BaselineManager(rt.settings, rt.engine, rt.metrics, rt.engine.clock)
        manager.prime()
        old = rt.engine.baselines
        spec, _, _ = BACKDOORS["preload a library"]
        baselines_dir({"b.yaml": host_baseline("b", spec % "")})
        with capture_logs() as logs:
            assert manager.check() is False
        assert rt.engine.baselines is old and "host:file:/etc/ld.so.preload" not in rt.engine.desired
        (ev,) = [e for e in logs if e["event"] == "baseline.rejected"]
        assert any("spec.files[0].content" in p and "loaded into every process" in p for p in ev["problems"])
        assert reg.get_sample_value("driftd_baseline_load_errors_total") == 1
        baselines_dir({"b.yaml": host_baseline("b", spec % f", {WHY}")})
        with capture_logs() as logs:
            assert manager.check() is True
        assert "host:file:/etc/ld.so.preload" in rt.engine.desired
        (allowed,) = [e for e in logs if e["event"] == "baseline.dangerous_allowed"]
        assert allowed["field"] == "spec.files[0].content" and "CHG-1234" in allowed["reason"]
