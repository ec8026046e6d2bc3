"""The README's first command: `driftd demo` on the embedded default."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path


def driftd(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DRIFTD_")}
    return subprocess.run([sys.executable, "-m", "driftd", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=60, check=False)


class TestDemo:
    def test_demo_reverts_injected_drift_then_finds_nothing(self, tmp_path):
        """The demo injects drift, one pass fixes all of it, a second pass is clean, and it exits 0."""
        r = driftd("demo", "--dir", "demo", cwd=tmp_path)
        assert r.returncode == 0, r.stderr
        first, second = r.stdout.split("second pass")
        assert re.search(r"result: \d+ clean, [1-9]\d* reverted, 0 retired, 0 reported, 0 held, 0 blocked, 0 failed, 0 error;", first)
        assert re.search(r"result: \d+ clean, 0 reverted, 0 retired, 0 reported, 0 held, 0 blocked, 0 failed, 0 error; exit 0", second)
        assert "PermitRootLogin yes" not in (tmp_path / "demo/host/etc/ssh/sshd_config").read_text()
        assert not (tmp_path / "demo/host/etc/hosts.equiv").exists()

    def test_printed_snapshot_command_gives_back_the_drifted_bytes(self, tmp_path):
        """The snapshot command the demo prints returns the drifted sshd_config, injected line included."""
        r = driftd("demo", "--dir", "demo", cwd=tmp_path)
        cmd = re.search(r"driftd (snapshot sha256:[0-9a-f]{64} --state-dir \S+)", r.stdout)
        assert cmd, r.stdout
        snap = driftd(*cmd.group(1).split(), cwd=tmp_path)
        assert snap.returncode == 0, snap.stderr
        assert snap.stdout.endswith("PermitRootLogin yes\n") and "PermitRootLogin no" in snap.stdout

    def test_demo_refuses_a_folder_it_did_not_make(self, tmp_path):
        """An existing folder without the demo marker is never deleted."""
        (tmp_path / "precious").mkdir()
        (tmp_path / "precious/data").write_text("keep")
        r = driftd("demo", "--dir", "precious", cwd=tmp_path)
        assert r.returncode == 2 and (tmp_path / "precious/data").read_text() == "keep"
