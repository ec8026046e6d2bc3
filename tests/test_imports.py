"""Import hygiene of the host-only paths: heavy client libraries stay out of them.

Each check runs in a fresh interpreter, so what it sees in ``sys.modules`` is exactly
what that path imported (the test process itself has imported everything).
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

from conftest import host_baseline

CLIENTS = ("docker", "kubernetes")


def _loaded(code: str, *args: str) -> dict[str, bool]:
    """Run ``code`` in a fresh interpreter; it prints a JSON map module -> loaded."""
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(code), *args], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.splitlines()[-1])


def test_run_once_imports_no_client_library_and_no_scheduler(host_root: Path, baselines_dir, tmp_path: Path) -> None:
    """``driftd run --once`` on host baselines never imports docker, kubernetes or apscheduler."""
    (host_root / "etc/motd").write_text("drifted\n")
    bdir = baselines_dir({"b.yaml": host_baseline(spec="""
        files:
          - path: /etc/motd
            content: "hello\\n"
            mode: "0644"
    """)})
    loaded = _loaded(
        """
        import contextlib, io, json, sys
        from driftd.cli import main
        with contextlib.redirect_stdout(io.StringIO()):
            rc = main(sys.argv[1:])
        assert rc == 0, rc
        mods = ("docker", "kubernetes", "apscheduler", "prometheus_client")
        print(json.dumps({m: m in sys.modules for m in mods}))
        """,
        "run", "--once", "--log-level", "error",
        "--host-root", str(host_root), "--baselines", str(bdir), "--state-dir", str(tmp_path / "state"),
    )
    assert (host_root / "etc/motd").read_text() == "hello\n"  # the pass really ran
    assert not any(loaded[m] for m in CLIENTS), loaded
    assert not loaded["apscheduler"], "run --once must not import the daemon's scheduler"
    assert not loaded["prometheus_client"], "run --once records no metrics: prometheus_client stays unimported"


def test_host_only_daemon_modules_import_no_client_library(host_root: Path, tmp_path: Path) -> None:
    """The daemon's own modules and a host-only runtime (docker disabled) import neither SDK."""
    loaded = _loaded(
        """
        import json, sys
        import driftd.api.http, driftd.engine.daemon, driftd.engine.once
        from driftd.runtime import build_runtime
        from driftd.settings import load_settings
        settings = load_settings(host_root=sys.argv[1], baselines=sys.argv[1], state_dir=sys.argv[2], node_name="n")
        rt = build_runtime(settings)
        assert list(rt.engine.targets) == ["host"], list(rt.engine.targets)
        rt.state.close()
        print(json.dumps({m: m in sys.modules for m in ("docker", "kubernetes")}))
        """,
        str(host_root), str(tmp_path / "state"),
    )
    assert not any(loaded.values()), loaded


def test_demo_and_runtime_do_not_import_the_cli() -> None:
    """The composition root sits below the CLI and the demo: neither it nor the demo pulls in ``driftd.cli``."""
    loaded = _loaded(
        """
        import json, sys
        import driftd.demo, driftd.runtime
        mods = ("driftd.cli", "docker", "kubernetes", "apscheduler", "prometheus_client")
        print(json.dumps({m: m in sys.modules for m in mods}))
        """
    )
    assert not any(loaded.values()), loaded
