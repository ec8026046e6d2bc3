"""Drift state in embedded SQLite (effectful edge of the engine).

Pipeline position: the reconciler records here what it saw and did.  For every drift:
first-seen wall-clock time, deadline (first seen + window), attempts, last action and
result, and the ids of snapshots taken before overwriting.  Because first-seen is
persisted, a restart does not reset the 30-minute clock.  An ``actions`` table keeps
every action taken, for ``driftd status`` and the drifts API.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SCHEMA_VERSION = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (k TEXT PRIMARY KEY, v TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS drift (
  id INTEGER PRIMARY KEY AUTOINCREMENT,
  key TEXT NOT NULL,
  target TEXT NOT NULL,
  baseline TEXT NOT NULL,
  address TEXT NOT NULL,
  first_seen REAL NOT NULL,
  deadline REAL NOT NULL,
  attempts INTEGER NOT NULL DEFAULT 0,
  consecutive_failures INTEGER NOT NULL DEFAULT 0,
  last_action TEXT,
  last_result TEXT,
  last_error TEXT,
  fields TEXT NOT NULL DEFAULT '[]',
  snapshots TEXT NOT NULL DEFAULT '[]',
  breached INTEGER NOT NULL DEFAULT 0,
  resolved_at REAL,
  resolution TEXT,
  updated_at REAL NOT NULL
);
CREATE UNIQUE INDEX IF NOT EXISTS drift_active_key ON drift(key) WHERE resolved_at IS NULL;
CREATE INDEX IF NOT EXISTS drift_resolved ON drift(resolved_at);
CREATE TABLE IF NOT EXISTS actions (
  id INTEGER PRIMARY KEY AUTOINCREMENT,
  at REAL NOT NULL,
  drift_id INTEGER NOT NULL REFERENCES drift(id),
  key TEXT NOT NULL,
  action TEXT NOT NULL,
  result TEXT NOT NULL,
  error TEXT,
  snapshots TEXT NOT NULL DEFAULT '[]'
);
"""


@dataclass
class DriftRecord:
    id: int
    key: str
    target: str
    baseline: str
    address: str
    first_seen: float
    deadline: float
    attempts: int = 0
    consecutive_failures: int = 0
    last_action: str | None = None
    last_result: str | None = None
    last_error: str | None = None
    fields: list[dict[str, Any]] = field(default_factory=list)
    snapshots: list[str] = field(default_factory=list)
    breached: bool = False
    resolved_at: float | None = None
    resolution: str | None = None
    updated_at: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


class StateError(Exception):
    pass


_COLS = (
    "id, key, target, baseline, address, first_seen, deadline, attempts, consecutive_failures, "
    "last_action, last_result, last_error, fields, snapshots, breached, resolved_at, resolution, updated_at"
)


def _row(r: tuple[Any, ...]) -> DriftRecord:
    return DriftRecord(
        id=r[0],
        key=r[1],
        target=r[2],
        baseline=r[3],
        address=r[4],
        first_seen=r[5],
        deadline=r[6],
        attempts=r[7],
        consecutive_failures=r[8],
        last_action=r[9],
        last_result=r[10],
        last_error=r[11],
        fields=json.loads(r[12]),
        snapshots=json.loads(r[13]),
        breached=bool(r[14]),
        resolved_at=r[15],
        resolution=r[16],
        updated_at=r[17],
    )


class StateStore:
    """Thread-safe access to ``<state-dir>/state.db``."""

    def __init__(self, state_dir: str | os.PathLike[str]) -> None:
        self.dir = Path(state_dir)
        try:
            self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
            self._conn = sqlite3.connect(self.dir / "state.db", check_same_thread=False, isolation_level=None, timeout=30)
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute("PRAGMA synchronous=NORMAL")
            self._conn.executescript(_SCHEMA)
            row = self._conn.execute("SELECT v FROM meta WHERE k='schema'").fetchone()
            if row is None:
                self._conn.execute("INSERT INTO meta VALUES ('schema', ?)", (str(SCHEMA_VERSION),))
            elif int(row[0]) > SCHEMA_VERSION:
                raise StateError(f"state schema {row[0]} is newer than this driftd ({SCHEMA_VERSION})")
        except (OSError, sqlite3.Error) as e:
            raise StateError(f"cannot open state in {self.dir}: {e}") from e
        self._lock = threading.Lock()

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    # ------------------------------------------------------------------ reads
    def active(self) -> dict[str, DriftRecord]:
        with self._lock:
            rows = self._conn.execute(f"SELECT {_COLS} FROM drift WHERE resolved_at IS NULL").fetchall()  # noqa: S608
        return {r[1]: _row(r) for r in rows}

    def get_active(self, key: str) -> DriftRecord | None:
        with self._lock:
            r = self._conn.execute(f"SELECT {_COLS} FROM drift WHERE key=? AND resolved_at IS NULL", (key,)).fetchone()  # noqa: S608
        return _row(r) if r else None

    def recent(self, limit: int = 50) -> list[DriftRecord]:
        with self._lock:
            rows = self._conn.execute(f"SELECT {_COLS} FROM drift ORDER BY updated_at DESC LIMIT ?", (limit,)).fetchall()  # noqa: S608
        return [_row(r) for r in rows]

    def actions(self, drift_id: int) -> list[dict[str, Any]]:
        with self._lock:
            rows = self._conn.execute(
                "SELECT at, action, result, error, snapshots FROM actions WHERE drift_id=? ORDER BY id", (drift_id,)
            ).fetchall()
        return [{"at": r[0], "action": r[1], "result": r[2], "error": r[3], "snapshots": json.loads(r[4])} for r in rows]

    def summary(self, now: float, escalate_after: int) -> dict[str, Any]:
        """Aggregates for the metrics collector."""
        with self._lock:
            rows = self._conn.execute(
                "SELECT target, baseline, COUNT(*), MIN(first_seen), "
                "SUM(consecutive_failures >= ?), SUM(deadline < ?) "
                "FROM drift WHERE resolved_at IS NULL GROUP BY target, baseline",
                (escalate_after, now),
            ).fetchall()
        out: dict[str, Any] = {"active": {}, "oldest_age": {}, "failing": {}, "past_deadline": {}}
        for target, baseline, n, oldest, failing, past in rows:
            out["active"][(target, baseline)] = n
            out["oldest_age"][target] = max(out["oldest_age"].get(target, 0.0), now - oldest)
            out["failing"][target] = out["failing"].get(target, 0) + (failing or 0)
            out["past_deadline"][target] = out["past_deadline"].get(target, 0) + (past or 0)
        return out

    # ------------------------------------------------------------------ writes
    def open_drift(
        self,
        *,
        key: str,
        target: str,
        baseline: str,
        address: str,
        now: float,
        window_seconds: float,
        fields: list[dict[str, Any]],
    ) -> DriftRecord:
        """The active record for ``key``, created with first_seen=now if there is none."""
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                r = self._conn.execute(f"SELECT {_COLS} FROM drift WHERE key=? AND resolved_at IS NULL", (key,)).fetchone()  # noqa: S608
                if r is None:
                    self._conn.execute(
                        "INSERT INTO drift (key, target, baseline, address, first_seen, deadline, fields, updated_at) "
                        "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                        (key, target, baseline, address, now, now + window_seconds, json.dumps(fields), now),
                    )
                else:
                    self._conn.execute(
                        "UPDATE drift SET fields=?, baseline=?, updated_at=? WHERE id=?",
                        (json.dumps(fields), baseline, now, r[0]),
                    )
                r = self._conn.execute(f"SELECT {_COLS} FROM drift WHERE key=? AND resolved_at IS NULL", (key,)).fetchone()  # noqa: S608
                self._conn.execute("COMMIT")
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
        return _row(r)

    def record_action(
        self,
        rec: DriftRecord,
        *,
        now: float,
        action: str,
        result: str,
        error: str | None = None,
        snapshots: tuple[str, ...] = (),
        attempt: bool = True,
    ) -> DriftRecord:
        """Log one action against a drift and update its counters."""
        failed = result == "failed"
        rec.attempts += 1 if attempt else 0
        rec.consecutive_failures = rec.consecutive_failures + 1 if failed else 0
        rec.last_action, rec.last_result, rec.last_error = action, result, error
        rec.snapshots = list(dict.fromkeys([*rec.snapshots, *snapshots]))
        rec.updated_at = now
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                self._conn.execute(
                    "UPDATE drift SET attempts=?, consecutive_failures=?, last_action=?, last_result=?, "
                    "last_error=?, snapshots=?, updated_at=? WHERE id=?",
                    (rec.attempts, rec.consecutive_failures, action, result, error, json.dumps(rec.snapshots), now, rec.id),
                )
                self._conn.execute(
                    "INSERT INTO actions (at, drift_id, key, action, result, error, snapshots) VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (now, rec.id, rec.key, action, result, error, json.dumps(list(snapshots))),
                )
                self._conn.execute("COMMIT")
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
        return rec

    def mark_breached(self, rec: DriftRecord, now: float) -> None:
        rec.breached = True
        with self._lock:
            self._conn.execute("UPDATE drift SET breached=1, updated_at=? WHERE id=?", (now, rec.id))

    def resolve(self, rec: DriftRecord, *, now: float, resolution: str) -> DriftRecord:
        rec.resolved_at, rec.resolution, rec.updated_at = now, resolution, now
        with self._lock:
            self._conn.execute(
                "UPDATE drift SET resolved_at=?, resolution=?, updated_at=? WHERE id=?", (now, resolution, now, rec.id)
            )
        return rec
