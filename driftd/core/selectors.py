"""Selectors (pure): which baselines apply to a node, a container or a pod, and which could collide.

Pipeline position: before compile.  ``globs`` and ``labels`` are the two primitives every
selector is made of (host: hostnames + matchLabels; container: names + matchLabels; pod:
namespaces, excludeNamespaces + matchLabels); ``matches`` decides a host selector at run
time; ``may_overlap`` is the conservative check lint uses for conflicting claims.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from fnmatch import fnmatchcase

from driftd.models.baseline import HostSelector

_GLOB = set("*?[")


def globs(patterns: Iterable[str], value: str, *, empty: bool = True) -> bool:
    """Whether ``value`` matches one of the shell-style ``patterns`` (``empty`` when there are none)."""
    pats = list(patterns)
    return any(fnmatchcase(value, p) for p in pats) if pats else empty


def labels(required: Mapping[str, str], actual: Mapping[str, str]) -> bool:
    """Whether every required label is present with its value (matchLabels)."""
    return all(actual.get(k) == v for k, v in required.items())


def matches(selector: HostSelector, node_name: str, node_labels: dict[str, str]) -> bool:
    """True when every part of the selector accepts this node (an empty selector accepts all)."""
    return globs(selector.hostnames, node_name) and labels(selector.match_labels, node_labels)


def may_overlap(a: HostSelector, b: HostSelector) -> bool:
    """False only when no node can match both selectors; otherwise assume they can."""
    for key, value in a.match_labels.items():
        if key in b.match_labels and b.match_labels[key] != value:
            return False
    if a.hostnames and b.hostnames:
        literal_a = all(not (_GLOB & set(p)) for p in a.hostnames)
        literal_b = all(not (_GLOB & set(p)) for p in b.hostnames)
        if literal_a and literal_b and not set(a.hostnames) & set(b.hostnames):
            return False
        if literal_a and not any(fnmatchcase(n, p) for n in a.hostnames for p in b.hostnames):
            return False
        if literal_b and not any(fnmatchcase(n, p) for n in b.hostnames for p in a.hostnames):
            return False
    return True
