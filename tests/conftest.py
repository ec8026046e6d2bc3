"""Shared fixtures: real directory trees as host roots, baseline dirs, a wired runtime.

Tests that need a real component (root for chown, later Docker and kube-apiserver) call
``need(...)``: locally they skip with the reason, under ``CI=true`` they fail.
"""

from __future__ import annotations

import hashlib
import os
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from driftd.baselines.loader import load_set
from driftd.engine.clock import FakeClock
from driftd.observability.logging import configure_logging
from driftd.runtime import Runtime, build_runtime
from driftd.settings import load_settings

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")

pytest_plugins = ("docker_support", "k8s_support")


def need(condition: bool, reason: str) -> None:
    """Skip locally, fail in CI, when a real component is missing."""
    if condition:
        return
    if IN_CI:
        pytest.fail(f"required component missing in CI: {reason}")
    pytest.skip(reason)


def need_root() -> None:
    need(os.geteuid() == 0, "needs root to change file ownership")


PASSWD = "root:x:0:0:root:/root:/bin/sh\ndaemon:x:1:1::/usr/sbin:/usr/sbin/nologin\nsshd:x:105:65534::/run/sshd:/usr/sbin/nologin\nnobody:x:65534:65534::/nonexistent:/usr/sbin/nologin\n"
GROUP = "root:x:0:\ndaemon:x:1:\nshadow:x:42:\nnogroup:x:65534:\n"


@pytest.fixture(autouse=True)
def _quiet_logs() -> None:
    configure_logging("json", "warning")


@pytest.fixture
def host_root(tmp_path: Path) -> Path:
    """An empty host tree with its own passwd/group databases and a /proc/sys."""
    root = tmp_path / "host"
    (root / "etc").mkdir(parents=True)
    (root / "etc/passwd").write_text(PASSWD)
    (root / "etc/group").write_text(GROUP)
    (root / "etc/hostname").write_text("node-a\n")
    (root / "proc/sys").mkdir(parents=True)
    return root


@pytest.fixture
def baselines_dir(tmp_path: Path) -> Callable[..., Path]:
    """Write ``{filename: yaml text}`` into a fresh baselines directory."""
    root = tmp_path / "baselines"

    def write(files: dict[str, str | bytes]) -> Path:
        root.mkdir(exist_ok=True)
        for name, text in files.items():
            p = root / name
            p.parent.mkdir(parents=True, exist_ok=True)
            if isinstance(text, bytes):
                p.write_bytes(text)
            else:
                p.write_text(textwrap.dedent(text))
        return root

    return write


def host_baseline(name: str = "test", spec: str = "", enforcement: str = "enforce") -> str:
    body = textwrap.indent(textwrap.dedent(spec).strip("\n"), "  ")
    return f"apiVersion: driftd.io/v1alpha1\nkind: HostBaseline\nmetadata:\n  name: {name}\nspec:\n  enforcement: {enforcement}\n{body}\n"


# Tests of the adapters' mechanics retire at once; the gates' own defaults (a finding persists
# 10 min before a retirement) are tested in tests/test_safety_gates.py, which passes safety=... itself.
MECHANICS_SAFETY: dict[str, Any] = {"retire": {"after_seconds": 0}}


@pytest.fixture
def make_runtime(tmp_path: Path, host_root: Path) -> Callable[..., Runtime]:
    """A fully wired runtime over ``host_root`` with a fresh registry and a fake clock."""

    def make(baselines: Path, *, dry_run: bool = False, clock: FakeClock | None = None,
             state_dir: Path | None = None, registry: CollectorRegistry | None = None, **settings: Any) -> Runtime:
        settings.setdefault("safety", MECHANICS_SAFETY)
        s = load_settings(host_root=host_root, baselines=baselines, state_dir=state_dir or tmp_path / "state",
                          node_name="node-a", dry_run=dry_run, **settings)
        rt = build_runtime(s, registry=registry or CollectorRegistry(), clock=clock or FakeClock())
        bset, problems = load_set(baselines)
        assert bset is not None, problems
        rt.engine.set_baselines(bset)
        return rt

    return make


def tree_digest(root: Path) -> str:
    """Hash of every path, type, mode, owner, size and content below ``root``."""
    h = hashlib.sha256()
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(dirnames + filenames):
            p = Path(dirpath) / name
            st = p.lstat()
            h.update(f"{p.relative_to(root)}|{st.st_mode}|{st.st_uid}|{st.st_gid}|{st.st_mtime_ns}".encode())
            if p.is_symlink():
                h.update(os.readlink(p).encode())
            elif p.is_file():
                h.update(p.read_bytes())
    return h.hexdigest()


def poll(pred: Callable[[], Any], what: str, timeout: float, interval: float = 0.05) -> Any:
    """``pred()``'s first truthy value, polled every ``interval`` s; fails after ``timeout`` s naming ``what``."""
    import time

    deadline = time.monotonic() + timeout
    while True:
        value = pred()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)
