"""Operator commands driftd runs on a plain server (effectful edge): the retire hook and the patch hook.

Pipeline position: the engine's node retirer when no Kubernetes target is enabled
(``retire_hook``: a host rule with action ``retire``, a kernel or package out of patch), and
its patcher (``patch_hook``: a package rule with action ``hook``, e.g. ``unattended-upgrade``).
A hook is an argv list (never a shell string) the operator configured; driftd never makes up
a command of its own.  Its environment carries ``DRIFTD_NODE`` and ``DRIFTD_REASON`` (and, for
the patch hook, ``DRIFTD_PACKAGE``, ``DRIFTD_INSTALLED``, ``DRIFTD_REQUIRED``,
``DRIFTD_HOST_ROOT``); its output is captured, bounded, and handed back for the audit log.
"""

from __future__ import annotations

import os
import subprocess
import threading
from typing import Any

from driftd.targets.base import TargetError

OUTPUT_LIMIT = 4000  # characters of a hook's output kept (its tail: where the errors are)


def _tail(text: str) -> str:
    text = text.strip()
    return text if len(text) <= OUTPUT_LIMIT else "…" + text[-OUTPUT_LIMIT:]


def run_hook(what: str, argv: list[str], env: dict[str, str], timeout: float) -> tuple[int, str]:
    """(exit status, combined stdout+stderr tail) of ``argv``; a hook that cannot start or times out is a TargetError."""
    try:
        done = subprocess.run(argv, env={**os.environ, **env}, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True, errors="replace", timeout=timeout, check=False)
    except subprocess.TimeoutExpired as e:
        out = e.output.decode("utf-8", "replace") if isinstance(e.output, bytes) else (e.output or "")
        raise TargetError(f"{what} timed out after {timeout:.0f} s: {_tail(out)[-500:]}", transient=True) from None
    except OSError as e:
        raise TargetError(f"{what} failed to start: {e}", transient=True) from None
    return done.returncode, _tail(done.stdout or "")


class HookRetirer:
    def __init__(self, argv: list[str], node_name: str, *, timeout: float = 300.0) -> None:
        self.argv = argv
        self.node_name = node_name
        self.timeout = timeout

    def retire_node(self, reason: str) -> dict[str, Any]:
        rc, out = run_hook("retire hook", self.argv, {"DRIFTD_NODE": self.node_name, "DRIFTD_REASON": reason}, self.timeout)
        if rc != 0:
            raise TargetError(f"retire hook exited {rc}: {out[-500:]}", transient=True)
        return {"node": self.node_name, "hook": self.argv, "output": out[-500:]}


class HookPatcher:
    """Runs the operator's patch command for a package out of patch, one run at a time on this machine."""

    def __init__(self, argv: list[str], node_name: str, host_root: str, *, timeout: float = 1800.0) -> None:
        self.argv = argv
        self.node_name = node_name
        self.host_root = host_root
        self.timeout = timeout
        self._lock = threading.Lock()  # two package rules must not run two package managers at once

    def patch(self, reason: str, params: dict[str, Any]) -> str:
        """Run the hook; its output (tail) when it exits 0, else a TargetError carrying the output's tail."""
        env = {"DRIFTD_NODE": self.node_name, "DRIFTD_REASON": reason, "DRIFTD_HOST_ROOT": self.host_root,
               "DRIFTD_PACKAGE": str(params.get("package") or ""), "DRIFTD_INSTALLED": str(params.get("installed") or ""),
               "DRIFTD_REQUIRED": str(params.get("required") or "")}
        with self._lock:
            rc, out = run_hook("patch hook", self.argv, env, self.timeout)
        if rc != 0:
            raise TargetError(f"patch hook exited {rc}: {out[-1500:]}", transient=True)
        return out
