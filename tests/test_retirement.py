"""Host-triggered node retirement on plain servers: the kernel rule, retireOnFailure and the hook.

The Kubernetes retirer (cordon, taint, drain) is tested against a real API server in
test_kubernetes_target.py; here the retirer is the real HookRetirer running a real script.
"""

from __future__ import annotations

import json
import stat
from pathlib import Path

from conftest import host_baseline

from driftd.engine.once import run_once
from driftd.exitcodes import ExitCode


def hook_script(tmp_path: Path) -> tuple[list[str], Path]:
    """A retire hook that records its environment, as a real server's decommission script would."""
    out = tmp_path / "retired.json"
    script = tmp_path / "retire.sh"
    script.write_text(f'#!/bin/sh\nprintf \'{{"node": "%s", "reason": "%s"}}\' "$DRIFTD_NODE" "$DRIFTD_REASON" > {out}\n')
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return [str(script)], out


class TestKernelRule:
    def test_out_of_patch_kernel_runs_the_retire_hook_once(self, host_root, baselines_dir, make_runtime, tmp_path):
        """A kernel below minimumRelease retires the machine through the hook; the next pass does not repeat it."""
        (host_root / "proc/sys/kernel").mkdir(parents=True)
        (host_root / "proc/sys/kernel/osrelease").write_text("5.10.0-8-amd64\n")
        argv, out = hook_script(tmp_path)
        bdir = baselines_dir({"k.yaml": host_baseline(spec="kernel: {minimumRelease: '6.1'}")})
        rt = make_runtime(bdir, retire_hook=argv)
        first = run_once(rt.engine, rt.queue, attempts=1)
        assert [o.status for o in first.outcomes] == ["retired"] and first.exit_code == ExitCode.DRIFT_REMAINED
        record = json.loads(out.read_text())
        assert record["node"] == "node-a" and "5.10.0-8-amd64 is out of patch" in record["reason"]
        out.unlink()
        second = run_once(rt.engine, rt.queue, attempts=1)
        assert [o.status for o in second.outcomes] == ["retired"] and not out.exists()

    def test_current_kernel_is_clean(self, host_root, baselines_dir, make_runtime, tmp_path):
        """A kernel at or above the minimum is compliant and retires nothing."""
        (host_root / "proc/sys/kernel").mkdir(parents=True)
        (host_root / "proc/sys/kernel/osrelease").write_text("6.1.0-13-amd64\n")
        argv, out = hook_script(tmp_path)
        rt = make_runtime(baselines_dir({"k.yaml": host_baseline(spec="kernel: {minimumRelease: '6.1.0'}")}),
                          retire_hook=argv)
        assert run_once(rt.engine, rt.queue, attempts=1).exit_code == ExitCode.CLEAN and not out.exists()

    def test_report_action_and_dry_run_never_retire(self, host_root, baselines_dir, make_runtime, tmp_path):
        """action: report only reports; a retire rule under --dry-run only plans."""
        (host_root / "proc/sys/kernel").mkdir(parents=True)
        (host_root / "proc/sys/kernel/osrelease").write_text("4.19.0\n")
        argv, out = hook_script(tmp_path)
        rt = make_runtime(baselines_dir({"k.yaml": host_baseline(spec="kernel: {minimumRelease: '6.1', action: report}")}),
                          retire_hook=argv)
        assert run_once(rt.engine, rt.queue, attempts=1).exit_code == ExitCode.DRIFT_REMAINED
        rt2 = make_runtime(baselines_dir({"k.yaml": host_baseline(spec="kernel: {minimumRelease: '6.1'}")}),
                           retire_hook=argv, dry_run=True, state_dir=tmp_path / "state2")
        summary = run_once(rt2.engine, rt2.queue, attempts=1)
        assert summary.outcomes[0].actions == ["retire_node"] and summary.outcomes[0].status == "reported"
        assert not out.exists()

    def test_no_retirer_is_a_clear_failure(self, host_root, baselines_dir, make_runtime):
        """Without the Kubernetes target or a hook, retirement fails loudly instead of pretending."""
        (host_root / "proc/sys/kernel").mkdir(parents=True)
        (host_root / "proc/sys/kernel/osrelease").write_text("4.19.0\n")
        rt = make_runtime(baselines_dir({"k.yaml": host_baseline(spec="kernel: {minimumRelease: '6.1'}")}))
        summary = run_once(rt.engine, rt.queue, attempts=1)
        assert summary.exit_code == ExitCode.REMEDIATION_FAILED
        assert "no retirer is configured" in (summary.outcomes[0].error or "")


class TestRetireOnFailure:
    def test_file_that_cannot_be_restored_retires_after_escalation(self, host_root, baselines_dir, make_runtime, tmp_path):
        """A remediation that fails escalate_after times in a row retires the machine when retireOnFailure is set."""
        argv, out = hook_script(tmp_path)
        # /etc/app does not exist and is not declared: every write fails (transient), so it escalates
        bdir = baselines_dir({"r.yaml": host_baseline(spec="""
            retireOnFailure: true
            files:
              - {path: /etc/app/app.conf, content: "x\\n"}
        """)})
        rt = make_runtime(bdir, retire_hook=argv, retry={"escalate_after": 2, "base_seconds": 0.01})
        summary = run_once(rt.engine, rt.queue, attempts=3)
        assert summary.exit_code == ExitCode.REMEDIATION_FAILED
        record = json.loads(out.read_text())
        assert "cannot be restored" in record["reason"] and "/etc/app/app.conf" in record["reason"]
        assert rt.state.recent()[0].consecutive_failures >= 2

    def test_without_the_flag_failures_only_escalate(self, host_root, baselines_dir, make_runtime, tmp_path):
        """Without retireOnFailure a persistent failure escalates but never retires."""
        argv, out = hook_script(tmp_path)
        bdir = baselines_dir({"r.yaml": host_baseline(spec="""
            files:
              - {path: /etc/app/app.conf, content: "x\\n"}
        """)})
        rt = make_runtime(bdir, retire_hook=argv, retry={"escalate_after": 2, "base_seconds": 0.01})
        assert run_once(rt.engine, rt.queue, attempts=3).exit_code == ExitCode.REMEDIATION_FAILED
        assert not out.exists()
