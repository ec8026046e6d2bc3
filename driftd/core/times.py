"""Timestamps in the documents adapters read (pure): when a change happened, where it can be known.

Pipeline position: observe.  Engine API documents (``Created``, ``State.StartedAt``) and
Kubernetes objects (``creationTimestamp``, ``startedAt``, ``lastTransitionTime``) give times as
RFC 3339, with up to nanoseconds; a drift's change time is the latest of those that can
carry it (the engine trusts it only after driftd began watching the resource).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from datetime import datetime

_FRACTION = re.compile(r"\.(\d+)")


def rfc3339(text: object) -> float | None:
    """Seconds since the epoch, or None for a missing, zero (``0001-01-01...``) or unreadable time."""
    if not isinstance(text, str) or not text or text.startswith("0001-"):
        return None
    s = _FRACTION.sub(lambda m: "." + m.group(1)[:6].ljust(6, "0"), text.strip(), count=1)
    if s.endswith(("Z", "z")):
        s = s[:-1] + "+00:00"
    try:
        dt = datetime.fromisoformat(s)
    except ValueError:
        return None
    return dt.timestamp() if dt.tzinfo is not None else None


def latest(times: Iterable[float | None]) -> float | None:
    """The latest known time of ``times`` (None when none is known)."""
    known = [t for t in times if t is not None]
    return max(known) if known else None
