"""Node retirement on a plain server: run a configured hook (effectful edge).

Pipeline position: the retirer the engine calls when a host rule with action ``retire``
fails and no Kubernetes target is enabled.  The hook is an argv list (never a shell
string); it receives ``DRIFTD_NODE`` and ``DRIFTD_REASON`` in its environment.
"""

from __future__ import annotations

import os
import subprocess
from typing import Any

from driftd.targets.base import TargetError


class HookRetirer:
    def __init__(self, argv: list[str], node_name: str, *, timeout: float = 300.0) -> None:
        self.argv = argv
        self.node_name = node_name
        self.timeout = timeout

    def retire_node(self, reason: str) -> dict[str, Any]:
        env = {**os.environ, "DRIFTD_NODE": self.node_name, "DRIFTD_REASON": reason}
        try:
            done = subprocess.run(self.argv, env=env, capture_output=True, text=True, timeout=self.timeout, check=False)
        except (OSError, subprocess.TimeoutExpired) as e:
            raise TargetError(f"retire hook failed: {e}", transient=True) from None
        if done.returncode != 0:
            raise TargetError(f"retire hook exited {done.returncode}: {done.stderr.strip()[:500]}", transient=True)
        return {"node": self.node_name, "hook": self.argv, "output": done.stdout.strip()[:500]}
