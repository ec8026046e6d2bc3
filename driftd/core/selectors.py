"""Host selectors (pure): which baselines apply to this node, and which could collide.

Pipeline position: before compile.  ``matches`` decides applicability at run time;
``may_overlap`` is the conservative check lint uses for conflicting claims.
"""

from __future__ import annotations

from fnmatch import fnmatchcase

from driftd.models.baseline import HostSelector

_GLOB = set("*?[")


def matches(selector: HostSelector, node_name: str, node_labels: dict[str, str]) -> bool:
    """True when every part of the selector accepts this node (an empty selector accepts all)."""
    if selector.hostnames and not any(fnmatchcase(node_name, p) for p in selector.hostnames):
        return False
    return all(node_labels.get(k) == v for k, v in selector.match_labels.items())


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
