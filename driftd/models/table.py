"""The desired set as the daemon holds it (pure data): compact rows, a DesiredResource on demand.

Pipeline position: built by ``Engine.set_baselines`` from each target's ``desired()`` stream
and read by every scan and reconcile.  A :class:`DesiredResource` is a pydantic model of a
dozen fields (its ``__dict__``, its fields-set, an ``expected`` dict, a payload model:
~1.4 KiB each, 14 MiB for 10,000 files), and nearly all of it repeats from one resource to
the next.  A row keeps the values in a tuple, with every repeated value (target, kind,
baseline, enforcement, window, grace, the expected field names and equal values such as
modes, sensitive set, payload) shared through one intern table: ~0.4 KiB per file.  A lookup
rebuilds the model with ``model_construct`` (no validation: every value was validated when
the resource was made), so readers keep the one vocabulary; a scan builds one at a time.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from driftd.models.resources import DesiredResource

_Row = tuple[Any, ...]


class DesiredTable(Mapping[str, DesiredResource]):
    """``key -> DesiredResource`` over compact rows; immutable once built (a new set builds a new table)."""

    __slots__ = ("_rows", "_shared")

    def __init__(self, resources: Iterable[DesiredResource] = ()) -> None:
        self._rows: dict[str, _Row] = {}
        self._shared: dict[tuple[type, Any], Any] = {}
        for r in resources:
            self._rows[sys.intern(r.key)] = self._row(r)
        self._shared = {}  # only building needs it

    def _share(self, v: Any) -> Any:
        """One object for equal values (keyed by type too: True, 1 and 1.0 stay apart)."""
        try:
            return self._shared.setdefault((type(v), v), v)
        except TypeError:  # unhashable (a dict, a list): kept as it is
            return v

    def _row(self, r: DesiredResource) -> _Row:
        d = r.__dict__
        exp: dict[str, Any] = d["expected"]
        s = self._share
        return (
            s(d["target"]), s(d["kind"]), d["address"], s(d["baseline"]), s(d["enforcement"]), s(d["window"]),
            s(d["grace"]), s(tuple(exp)), tuple(s(v) for v in exp.values()), s(d["sensitive"]), d["content"],
            s(d["payload"]), s(frozenset(r.model_fields_set)),
        )

    def __getitem__(self, key: str) -> DesiredResource:
        return self._make(key, self._rows[key])

    @staticmethod
    def _make(key: str, row: _Row) -> DesiredResource:
        target, kind, address, baseline, enforcement, window, grace, names, values, sensitive, content, payload, fs = row
        return DesiredResource.model_construct(
            set(fs), key=key, target=target, kind=kind, address=address, baseline=baseline, enforcement=enforcement,
            window=window, grace=grace, expected=dict(zip(names, values, strict=True)), sensitive=sensitive,
            content=content, payload=payload,
        )

    def __iter__(self) -> Iterator[str]:
        return iter(self._rows)

    def __len__(self) -> int:
        return len(self._rows)

    def __contains__(self, key: object) -> bool:
        return key in self._rows

    def items(self) -> Iterator[tuple[str, DesiredResource]]:  # type: ignore[override]
        """Each resource built as it is reached: a pass over the table holds one at a time."""
        for key, row in self._rows.items():
            yield key, self._make(key, row)

    def values(self) -> Iterator[DesiredResource]:  # type: ignore[override]
        for key, row in self._rows.items():
            yield self._make(key, row)

    def baseline_of(self, key: str) -> str | None:
        """The baseline governing ``key`` without building its resource."""
        row = self._rows.get(key)
        return None if row is None else str(row[3])

    def target_of(self, key: str) -> str | None:
        row = self._rows.get(key)
        return None if row is None else str(row[0])


__all__ = ["DesiredTable"]
