"""Resource keys (pure data): the one place keys are formatted and parsed.

Pipeline position: every stage names a resource by its key — the queue de-duplicates
on it, state rows are keyed by it, logs and reports carry it.  A key is
``<prefix>:<locator>``: the prefix names the target (``host``, ``docker``, ``pod``),
and for host resources the locator starts with the resource kind::

    host:file:/etc/ssh/sshd_config   host:dir:/etc/ssh   host:sysctl:net.ipv4.ip_forward
    host:kernel                      docker:<container name>   pod:<namespace>/<name>
"""

from __future__ import annotations

from dataclasses import dataclass

_HOST_KINDS = {"file": "file", "directory": "dir", "sysctl": "sysctl"}


@dataclass(frozen=True)
class ResourceKey:
    """A parsed key: ``prefix`` (the target's key prefix) and ``locator`` (the rest)."""

    prefix: str
    locator: str

    def __str__(self) -> str:
        return f"{self.prefix}:{self.locator}" if self.locator else self.prefix

    @classmethod
    def parse(cls, key: str) -> ResourceKey:
        prefix, _, locator = key.partition(":")
        return cls(prefix, locator)

    # ------------------------------------------------------------------ constructors
    @staticmethod
    def host(kind: str, address: str) -> str:
        """``host:file:/path``, ``host:dir:/path``, ``host:sysctl:key``."""
        return f"host:{_HOST_KINDS.get(kind, kind)}:{address}"

    @staticmethod
    def container(name: str, runtime: str = "docker") -> str:
        """``docker:<name>``; another container runtime's target uses its own name as the prefix."""
        return f"{runtime}:{name}"

    @staticmethod
    def pod(namespace: str, name: str) -> str:
        return f"pod:{namespace}/{name}"

    # ------------------------------------------------------------------ accessors
    def pod_ref(self) -> tuple[str, str]:
        """``(namespace, name)`` of a ``pod:`` key."""
        ns, _, name = self.locator.partition("/")
        return ns, name


def sysctl_path(key: str) -> str:
    """``/proc/sys/...`` path of a sysctl key (sysctl(8): '.' separates levels, '/' stands for a literal '.')."""
    return "/proc/sys/" + key.translate(str.maketrans("./", "/."))
