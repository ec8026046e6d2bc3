"""Drift state in embedded SQLite (effectful edge of the engine).

Pipeline position: the reconciler records here what it saw and did.  For every drift:
first-seen wall-clock time, deadline (first seen + window), attempts, last action and
result, and the ids of snapshots taken before overwriting.  Because first-seen is
persisted, a restart does not reset the 30-minute clock.  An ``actions`` table keeps
every action taken, for ``driftd status`` and the drifts API.

Safety: the directory is 0700 and every file 0600 whatever the umask (modes are fixed
on every open, also of a directory that already exists looser), nothing inside it may be
a symlink, read-only commands open it read-only and never create it, and every SQLite
failure (``database or disk is full``) surfaces as :class:`StateError` with the real
cause — a failed ROLLBACK never masks it.
"""

from __future__ import annotations

import bisect
import contextlib
import errno
import json
import os
import sqlite3
import stat
import threading
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SCHEMA_VERSION = 4
DB_NAME = "state.db"

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
  updated_at REAL NOT NULL,
  held TEXT,
  changed_at REAL
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
  snapshots TEXT NOT NULL DEFAULT '[]',
  kind TEXT NOT NULL DEFAULT '',
  baseline TEXT NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS actions_at ON actions(at);
CREATE INDEX IF NOT EXISTS drift_held ON drift(last_result, first_seen) WHERE resolved_at IS NULL;
CREATE TABLE IF NOT EXISTS guards (
  scope TEXT PRIMARY KEY,
  until REAL NOT NULL,
  data TEXT NOT NULL DEFAULT '{}',
  updated_at REAL NOT NULL
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
    held: dict[str, Any] | None = None  # terminal failure: not acted on again while this fingerprint holds
    changed_at: float | None = None  # when the drift happened, where known (else first_seen stands for it)
    created: bool = field(default=False, compare=False, repr=False)  # opened by this call (not persisted)

    def as_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__ if k != "created"}


class StateError(Exception):
    """The state directory cannot be opened, read or written; the message carries the real cause."""


_COLS = (
    "id, key, target, baseline, address, first_seen, deadline, attempts, consecutive_failures, "
    "last_action, last_result, last_error, fields, snapshots, breached, resolved_at, resolution, updated_at, held, "
    "changed_at"
)


# open_drift: a new row unless an open one exists (the partial unique index drift_active_key), else update that one
_OPEN_INSERT = (
    "INSERT INTO drift (key, target, baseline, address, first_seen, deadline, fields, updated_at, changed_at) "  # noqa: S608
    f"VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING RETURNING {_COLS}"
)
_OPEN_UPDATE = f"UPDATE drift SET fields=?, baseline=?, updated_at=? WHERE key=? AND resolved_at IS NULL RETURNING {_COLS}"  # noqa: S608


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
        held=json.loads(r[18]) if r[18] else None,
        changed_at=r[19],
    )


class _ActionWindow:
    """The recent action history the gates count, in memory: O(log n) per count instead of a table scan.

    The budget and flap gates ask, for every plan, how many actions of a kind (per node, per baseline) and
    how many successful remediations of one key happened since a time; as SQL that is a scan of the window's
    rows, so a pass of n reverts cost O(n²).  The window is seeded from the ``actions`` table on the first
    count and then fed by every insert of this store (the only writer in the process); a count reaching
    further back than the seed (``HORIZON``) goes to SQL.  Another process writing the same state directory
    at the same time (a ``run --once`` beside the daemon) is not seen until a restart.  An insert is counted
    inside its transaction, under the store's lock (so a seed never misses or doubles it); a commit that then
    fails leaves one count too many, which only makes a budget stricter.
    """

    HORIZON = 2 * 86400.0

    def __init__(self) -> None:
        self.seeded_from: float | None = None
        self.by_kind: dict[str, list[float]] = {}
        self.by_kind_baseline: dict[tuple[str, str], list[float]] = {}
        self.by_key: dict[str, list[float]] = {}
        self._inserts = 0
        self._pruned_at = -float("inf")

    def add(self, at: float, key: str, action: str, result: str, kind: str, baseline: str) -> None:
        if self.seeded_from is None:
            return  # not seeded yet: the seed reads this row from the table
        if result in ("succeeded", "failed"):
            bisect.insort(self.by_kind.setdefault(kind, []), at)
            bisect.insort(self.by_kind_baseline.setdefault((kind, baseline), []), at)
        if result == "succeeded" and action != "none":
            bisect.insort(self.by_key.setdefault(key, []), at)
        self._inserts += 1
        if self._inserts % 4096 == 0 or at - self._pruned_at > 3600:  # by count and by time: keys come and go
            self._pruned_at = at
            self._prune(at - self.HORIZON)

    def _prune(self, cutoff: float) -> None:
        self.seeded_from = max(self.seeded_from or cutoff, cutoff)
        for times in [*self.by_kind.values(), *self.by_kind_baseline.values(), *self.by_key.values()]:
            del times[:bisect.bisect_right(times, cutoff)]
        self.by_key = {k: v for k, v in self.by_key.items() if v}  # keys come and go; kinds and baselines are few

    @staticmethod
    def count(times: list[float] | None, since: float) -> int:
        return len(times) - bisect.bisect_right(times, since) if times else 0


def _secure_file(dirfd: int, name: str, *, create: bool) -> None:
    """``name`` in the state directory: never a symlink, a regular file, mode 0600."""
    flags = os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK | (os.O_CREAT if create else 0)
    try:
        fd = os.open(name, flags, 0o600, dir_fd=dirfd)
    except FileNotFoundError:
        if create:
            raise
        return
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise StateError(f"{name} in the state directory is a symlink; refusing to follow it") from None
        raise
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise StateError(f"{name} in the state directory is not a regular file")
        if stat.S_IMODE(st.st_mode) != 0o600:
            os.fchmod(fd, 0o600)
    finally:
        os.close(fd)


class StateStore:
    """Thread-safe access to ``<state-dir>/state.db``.

    ``readonly`` (status, snapshot and other read-only commands): nothing is created or
    changed; a directory without a state database is an error ("no state at PATH").
    """

    def __init__(self, state_dir: str | os.PathLike[str], *, readonly: bool = False) -> None:
        self.dir = Path(state_dir)
        self.readonly = readonly
        db = self.dir / DB_NAME
        self._jconn: sqlite3.Connection | None = None
        try:
            if readonly:
                if not db.is_file() or db.is_symlink():
                    raise StateError(f"no state at {self.dir} (no {DB_NAME}; is --state-dir right?)")
                # no WAL beside it: every byte is in state.db, and `immutable` keeps SQLite from creating
                # -wal/-shm files; with a WAL (a daemon is running) read through it, read-only
                live = (self.dir / (DB_NAME + "-wal")).exists()
                path = urllib.parse.quote(str(db.absolute()))
                uri = f"file:{path}?mode=ro" if live else f"file:{path}?mode=ro&immutable=1"
                self._conn = sqlite3.connect(uri, uri=True, check_same_thread=False, isolation_level=None, timeout=30)
                self._conn.execute("SELECT 1 FROM drift LIMIT 1").fetchall()
            else:
                self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
                dfd = os.open(self.dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
                try:
                    if stat.S_IMODE(os.fstat(dfd).st_mode) != 0o700:
                        os.fchmod(dfd, 0o700)  # e.g. a hostPath DirectoryOrCreate made it 0755
                    _secure_file(dfd, DB_NAME, create=True)
                    for side in ("-wal", "-shm", "-journal"):  # SQLite gives them the database's mode
                        _secure_file(dfd, DB_NAME + side, create=False)
                finally:
                    os.close(dfd)
                self._conn = sqlite3.connect(db, check_same_thread=False, isolation_level=None, timeout=30)
                self._conn.execute("PRAGMA journal_mode=WAL")
                self._conn.execute("PRAGMA synchronous=NORMAL")
                self._conn.execute("PRAGMA journal_size_limit=4194304")
                self._conn.executescript(_SCHEMA)
                self._migrate()
                # the journal of snapshot ids before an overwrite commits with synchronous=FULL (the WAL is fsynced
                # at its commit, and with it every frame the NORMAL connection wrote before): a connection of its
                # own, set once, instead of toggling the pragma around every journal write
                self._jconn = sqlite3.connect(db, check_same_thread=False, isolation_level=None, timeout=30)
                self._jconn.execute("PRAGMA synchronous=FULL")
                self._jconn.execute("PRAGMA journal_size_limit=4194304")
            row = self._conn.execute("SELECT v FROM meta WHERE k='schema'").fetchone()
            if row is None and not readonly:
                self._conn.execute("INSERT INTO meta VALUES ('schema', ?)", (str(SCHEMA_VERSION),))
            elif row is not None and int(row[0]) > SCHEMA_VERSION:
                raise StateError(f"state schema {row[0]} is newer than this driftd ({SCHEMA_VERSION})")
        except (OSError, sqlite3.Error) as e:
            raise StateError(f"cannot open state in {self.dir}: {getattr(e, 'strerror', None) or e}") from e
        self._lock = threading.Lock()
        self._window = _ActionWindow()
        # drift id -> snapshot ids journaled by key (no record in hand) since its last record_action
        self._journaled: dict[int, list[str]] = {}

    def _migrate(self) -> None:
        cols = {r[1] for r in self._conn.execute("PRAGMA table_info(drift)").fetchall()}
        if "held" not in cols:  # schema 1 -> 2
            self._conn.execute("ALTER TABLE drift ADD COLUMN held TEXT")
        if "changed_at" not in cols:  # schema 3 -> 4: the change's own time, where known
            self._conn.execute("ALTER TABLE drift ADD COLUMN changed_at REAL")
        acols = {r[1] for r in self._conn.execute("PRAGMA table_info(actions)").fetchall()}
        for col in ("kind", "baseline"):  # schema 2 -> 3: budgets count actions by class and baseline
            if col not in acols:
                self._conn.execute(f"ALTER TABLE actions ADD COLUMN {col} TEXT NOT NULL DEFAULT ''")
        self._conn.execute("CREATE INDEX IF NOT EXISTS actions_at ON actions(at)")
        self._conn.execute("INSERT OR REPLACE INTO meta VALUES ('schema', ?)", (str(SCHEMA_VERSION),))

    def close(self) -> None:
        with self._lock:
            if self._jconn is not None:
                self._jconn.close()
            self._conn.close()

    @contextlib.contextmanager
    def _tx(self, what: str, conn: sqlite3.Connection | None = None) -> Iterator[sqlite3.Connection]:
        """One write transaction under the lock; the real SQLite error, never a ROLLBACK's, is raised."""
        c = self._conn if conn is None else conn
        with self._lock:
            try:
                c.execute("BEGIN IMMEDIATE")
                try:
                    yield c
                    c.execute("COMMIT")
                except BaseException:
                    if c.in_transaction:
                        with contextlib.suppress(sqlite3.Error):
                            c.execute("ROLLBACK")
                    raise
            except sqlite3.Error as e:
                raise StateError(f"cannot {what} in {self.dir / DB_NAME}: {e}") from e

    @contextlib.contextmanager
    def _one(self, what: str, conn: sqlite3.Connection | None = None) -> Iterator[sqlite3.Connection]:
        """Single statements under the lock, each its own (autocommit) transaction: no BEGIN/COMMIT round trips."""
        with self._lock:
            try:
                yield self._conn if conn is None else conn
            except sqlite3.Error as e:
                raise StateError(f"cannot {what} in {self.dir / DB_NAME}: {e}") from e

    def _read(self, sql: str, args: tuple[Any, ...] = ()) -> list[Any]:
        with self._lock:
            try:
                return self._conn.execute(sql, args).fetchall()
            except sqlite3.Error as e:
                raise StateError(f"cannot read {self.dir / DB_NAME}: {e}") from e

    # ------------------------------------------------------------------ reads
    def active(self) -> dict[str, DriftRecord]:
        rows = self._read(f"SELECT {_COLS} FROM drift WHERE resolved_at IS NULL")  # noqa: S608
        return {r[1]: _row(r) for r in rows}

    def get_active(self, key: str) -> DriftRecord | None:
        rows = self._read(f"SELECT {_COLS} FROM drift WHERE key=? AND resolved_at IS NULL", (key,))  # noqa: S608
        return _row(rows[0]) if rows else None

    def recent(self, limit: int = 50) -> list[DriftRecord]:
        rows = self._read(f"SELECT {_COLS} FROM drift ORDER BY updated_at DESC LIMIT ?", (limit,))  # noqa: S608
        return [_row(r) for r in rows]

    def actions(self, drift_id: int) -> list[dict[str, Any]]:
        rows = self._read("SELECT at, action, result, error, snapshots FROM actions WHERE drift_id=? ORDER BY id", (drift_id,))
        return [{"at": r[0], "action": r[1], "result": r[2], "error": r[3], "snapshots": json.loads(r[4])} for r in rows]

    def summary(self, now: float, escalate_after: int, margin: float = 300.0) -> dict[str, Any]:
        """Aggregates for the metrics collector (``margin``: how close to its deadline a drift is "near")."""
        rows = self._read(
            "SELECT target, baseline, COUNT(*), MIN(COALESCE(changed_at, first_seen)), "
            "SUM(consecutive_failures >= ? OR held IS NOT NULL), SUM(deadline < ?), SUM(deadline >= ? AND deadline < ?) "
            "FROM drift WHERE resolved_at IS NULL GROUP BY target, baseline",
            (escalate_after, now, now, now + margin),
        )
        out: dict[str, Any] = {"active": {}, "oldest_age": {}, "failing": {}, "past_deadline": {}, "near_deadline": {}}
        for target, baseline, n, oldest, failing, past, near in rows:
            out["near_deadline"][target] = out["near_deadline"].get(target, 0) + (near or 0)
            out["active"][(target, baseline)] = n
            out["oldest_age"][target] = max(out["oldest_age"].get(target, 0.0), now - oldest)
            out["failing"][target] = out["failing"].get(target, 0) + (failing or 0)
            out["past_deadline"][target] = out["past_deadline"].get(target, 0) + (past or 0)
        out["held"], out["held_past_deadline"] = {}, {}
        for target, result, n, past in self._read(
            "SELECT target, last_result, COUNT(*), SUM(deadline < ?) FROM drift "
            "WHERE resolved_at IS NULL AND last_result LIKE 'held:%' GROUP BY target, last_result", (now,)):
            gate = str(result).split(":", 1)[1]
            out["held"][(target, gate)] = n
            out["held_past_deadline"][(target, gate)] = past or 0
        out["breakers"] = sorted(tuple(sc.split(":", 2)[1:]) for sc in self.guards("breaker:", now))
        out["flapping"] = dict(self._read(
            "SELECT d.target, COUNT(*) FROM guards g JOIN drift d ON g.scope = 'flap:' || d.key "
            "WHERE d.resolved_at IS NULL AND g.until > ? GROUP BY d.target", (now,)))
        return out

    # ------------------------------------------------------------------ safety gates (safety.gates.SafetyView)
    def count_actions(self, kind: str, since: float, *, baseline: str | None = None) -> int:
        """Actions of class ``kind`` attempted (succeeded or failed) since ``since``."""
        w = self._seeded(since)
        if w is not None:
            with self._lock:
                return w.count(w.by_kind.get(kind) if baseline is None else w.by_kind_baseline.get((kind, baseline)), since)
        sql = "SELECT COUNT(*) FROM actions WHERE kind=? AND at>? AND result IN ('succeeded', 'failed')"
        args: tuple[Any, ...] = (kind, since)
        if baseline is not None:
            sql, args = sql + " AND baseline=?", (*args, baseline)
        return int(self._read(sql, args)[0][0])

    def count_key_actions(self, key: str, since: float) -> int:
        """Successful remediations of ``key`` since ``since`` (across its drift records)."""
        w = self._seeded(since)
        if w is not None:
            with self._lock:
                return w.count(w.by_key.get(key), since)
        rows = self._read("SELECT COUNT(*) FROM actions WHERE key=? AND at>? AND result='succeeded' AND action!='none'",
                          (key, since))
        return int(rows[0][0])

    def _seeded(self, since: float) -> _ActionWindow | None:
        """The in-memory window when it covers ``since`` (seeding it on first use), else None (ask SQL)."""
        w = self._window
        if w.seeded_from is None:
            start = since - w.HORIZON
            with self._lock:  # the seed and every insert serialise on the store's lock: none is missed or doubled
                if w.seeded_from is None:
                    try:
                        rows = self._conn.execute("SELECT at, key, action, result, kind, baseline FROM actions "
                                                  "WHERE at > ? ORDER BY at", (start,)).fetchall()
                    except sqlite3.Error as e:
                        raise StateError(f"cannot read {self.dir / DB_NAME}: {e}") from e
                    w.seeded_from = start
                    for at, key, action, result, kind, baseline in rows:
                        w.add(float(at), key, action, result, kind or "", baseline or "")
        return w if w.seeded_from is not None and since >= w.seeded_from else None

    def oldest_held(self, gate: str, *, baseline: str | None = None) -> tuple[float, str] | None:
        sql = "SELECT first_seen, key FROM drift WHERE resolved_at IS NULL AND last_result=?"
        args: tuple[Any, ...] = (f"held:{gate}",)
        if baseline is not None:
            sql, args = sql + " AND baseline=?", (*args, baseline)
        rows = self._read(sql + " ORDER BY first_seen, key LIMIT 1", args)
        return (float(rows[0][0]), str(rows[0][1])) if rows else None

    def guards(self, prefix: str, now: float) -> dict[str, dict[str, Any]]:
        """Every unexpired guard whose scope starts with ``prefix`` (open breakers, quarantines)."""
        rows = self._read("SELECT scope, data FROM guards WHERE scope LIKE ? AND until > ?", (prefix.replace("%", "") + "%", now))
        return {r[0]: json.loads(r[1]) for r in rows}

    def gate_inputs(self, scopes: tuple[str, ...], held: tuple[str, str], now: float
                    ) -> tuple[dict[str, dict[str, Any]], tuple[float, str] | None]:
        """What the gates read for one plan, in one statement: the unexpired guards among ``scopes`` and
        :meth:`oldest_held` of ``held`` = (gate, baseline)."""
        marks = ", ".join("?" * len(scopes))
        rows = self._read(
            f"SELECT scope, until, data FROM guards WHERE scope IN ({marks}) AND until > ? UNION ALL "  # noqa: S608
            "SELECT NULL, first_seen, key FROM (SELECT first_seen, key FROM drift WHERE resolved_at IS NULL "
            "AND last_result=? AND baseline=? ORDER BY first_seen, key LIMIT 1)",
            (*scopes, now, f"held:{held[0]}", held[1]),
        )
        guards = {r[0]: json.loads(r[2]) for r in rows if r[0] is not None}
        oldest = next(((float(r[1]), str(r[2])) for r in rows if r[0] is None), None)
        return guards, oldest

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
        changed_at: float | None = None,
    ) -> DriftRecord:
        """The active record for ``key``, created with first_seen=now if there is none (``created`` says which).

        The deadline counts from the change when its time is known (``changed_at``), else from first seen; a
        record that already exists keeps both.  One statement either way, each its own transaction: an INSERT
        that returns the new row unless an open one exists, else the UPDATE of that one, returning it (another
        process opening or closing the record in between only sends this round once more).
        """
        text = json.dumps(fields)
        deadline = (changed_at if changed_at is not None else now) + window_seconds
        with self._one("record the drift") as c:
            for _ in range(3):
                rows = c.execute(_OPEN_INSERT, (key, target, baseline, address, now, deadline, text, now, changed_at)).fetchall()
                if rows:
                    rec = _row(rows[0])
                    rec.created = True
                    return rec
                rows = c.execute(_OPEN_UPDATE, (text, baseline, now, key)).fetchall()
                if rows:
                    return _row(rows[0])
        raise StateError(f"cannot record the drift in {self.dir / DB_NAME}: the open record of {key} keeps changing")

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
        held: dict[str, Any] | None = None,
        kind: str = "",
        resolution: str | None = None,
    ) -> DriftRecord:
        """Log one action against a drift and update its counters (``held``: a terminal failure's fingerprint).

        ``resolution`` also closes the record in the same transaction (a verified remediation).  The snapshot
        ids journaled before an overwrite are already in ``rec`` (:meth:`journal_snapshots` updates it) or,
        journaled by key alone, remembered by this store: the row is not read back.
        """
        failed = result == "failed"
        attempts = rec.attempts + (1 if attempt else 0)
        consecutive = rec.consecutive_failures + 1 if failed else 0
        with self._tx("record the action") as c:
            merged = list(dict.fromkeys([*rec.snapshots, *self._journaled.get(rec.id, ()), *snapshots]))
            held_text = json.dumps(held, sort_keys=True) if held else None
            if resolution is None:
                c.execute(
                    "UPDATE drift SET attempts=?, consecutive_failures=?, last_action=?, last_result=?, "
                    "last_error=?, snapshots=?, updated_at=?, held=? WHERE id=?",
                    (attempts, consecutive, action, result, error, json.dumps(merged), now, held_text, rec.id),
                )
            else:
                c.execute(
                    "UPDATE drift SET attempts=?, consecutive_failures=?, last_action=?, last_result=?, "
                    "last_error=?, snapshots=?, updated_at=?, held=?, resolved_at=?, resolution=? WHERE id=?",
                    (attempts, consecutive, action, result, error, json.dumps(merged), now, held_text, now, resolution,
                     rec.id),
                )
            c.execute(
                "INSERT INTO actions (at, drift_id, key, action, result, error, snapshots, kind, baseline) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (now, rec.id, rec.key, action, result, error, json.dumps(list(snapshots)), kind, rec.baseline),
            )
            self._window.add(now, rec.key, action, result, kind, rec.baseline)  # under the lock, with the insert
        self._journaled.pop(rec.id, None)
        rec.attempts, rec.consecutive_failures, rec.snapshots, rec.updated_at = attempts, consecutive, merged, now
        rec.last_action, rec.last_result, rec.last_error, rec.held = action, result, error, held
        if resolution is not None:
            rec.resolved_at, rec.resolution = now, resolution
        return rec

    def note_action(self, rec: DriftRecord, *, now: float, action: str, result: str, kind: str) -> None:
        """Log an action in the history only (budgets count it); the drift's own counters are left alone."""
        with self._one("record the action") as c:
            c.execute(
                "INSERT INTO actions (at, drift_id, key, action, result, error, snapshots, kind, baseline) "
                "VALUES (?, ?, ?, ?, ?, NULL, '[]', ?, ?)",
                (now, rec.id, rec.key, action, result, kind, rec.baseline),
            )
            self._window.add(now, rec.key, action, result, kind, rec.baseline)  # under the lock, with the insert

    def journal_snapshots(self, key: str, snapshots: tuple[str, ...], now: float, *, rec: DriftRecord | None = None) -> None:
        """Durably (synchronous=FULL) add snapshot ids to the active drift of ``key`` before an overwrite.

        With the open record in hand (``rec``, the engine's), one UPDATE on the FULL connection; ``rec`` then
        holds the ids.  Without it, the record is found by key in the same FULL transaction.
        """
        if self._jconn is None:
            raise StateError(f"cannot record the snapshots in {self.dir / DB_NAME}: the state is open read-only")
        if rec is not None and rec.key == key:
            merged = list(dict.fromkeys([*rec.snapshots, *self._journaled.get(rec.id, ()), *snapshots]))
            with self._one("record the snapshots", self._jconn) as c:
                n = c.execute("UPDATE drift SET snapshots=?, updated_at=? WHERE id=? AND resolved_at IS NULL",
                              (json.dumps(merged), now, rec.id)).rowcount
            if n != 1:
                raise StateError(f"no open drift record for {key}; not overwriting without one")
            rec.snapshots = merged
            return
        with self._tx("record the snapshots", self._jconn) as c:
            r = c.execute("SELECT id, snapshots FROM drift WHERE key=? AND resolved_at IS NULL", (key,)).fetchone()
            if r is None:
                raise StateError(f"no open drift record for {key}; not overwriting without one")
            merged = list(dict.fromkeys([*json.loads(r[1]), *snapshots]))
            c.execute("UPDATE drift SET snapshots=?, updated_at=? WHERE id=?", (json.dumps(merged), now, r[0]))
            self._journaled[int(r[0])] = merged

    def mark_breached(self, rec: DriftRecord, now: float) -> None:
        with self._one("mark the window breach") as c:
            c.execute("UPDATE drift SET breached=1, updated_at=? WHERE id=?", (now, rec.id))
        rec.breached = True

    def resolve(self, rec: DriftRecord, *, now: float, resolution: str) -> DriftRecord:
        with self._one("resolve the drift") as c:
            c.execute("UPDATE drift SET resolved_at=?, resolution=?, updated_at=? WHERE id=?", (now, resolution, now, rec.id))
        rec.resolved_at, rec.resolution, rec.updated_at = now, resolution, now
        return rec

    # ------------------------------------------------------------------ guards (targets.base.GuardStore)
    def get_guard(self, scope: str, now: float) -> dict[str, Any] | None:
        """The payload of the unexpired guard ``scope``, or None."""
        rows = self._read("SELECT until, data FROM guards WHERE scope=?", (scope,))
        if not rows or rows[0][0] <= now:
            return None
        data: dict[str, Any] = json.loads(rows[0][1])
        return data

    def set_guard(self, scope: str, *, until: float, data: dict[str, Any], now: float) -> None:
        """Create or replace a guard that holds until ``until`` (wall clock); expired ones are pruned."""
        with self._tx("record a guard") as c:
            c.execute(
                "INSERT INTO guards (scope, until, data, updated_at) VALUES (?, ?, ?, ?) "
                "ON CONFLICT(scope) DO UPDATE SET until=excluded.until, data=excluded.data, updated_at=excluded.updated_at",
                (scope, until, json.dumps(data, sort_keys=True), now),
            )
            c.execute("DELETE FROM guards WHERE until <= ?", (now,))

    def clear_guard(self, scope: str) -> None:
        with self._one("clear a guard") as c:
            c.execute("DELETE FROM guards WHERE scope=?", (scope,))

    def set_meta(self, key: str, value: dict[str, Any]) -> None:
        """Record a fact about the agent (``baseline_set``: the set in force) for read-only readers (``status``)."""
        with self._one("record agent metadata") as c:
            c.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, json.dumps(value, sort_keys=True)))

    def meta(self, key: str) -> dict[str, Any] | None:
        with self._lock:
            try:
                row = self._conn.execute("SELECT v FROM meta WHERE k=?", (key,)).fetchone()
            except sqlite3.Error as e:
                raise StateError(f"cannot read agent metadata: {e}") from e
        try:
            value = json.loads(row[0]) if row is not None else None
        except ValueError:
            return None
        return value if isinstance(value, dict) else None

    # ------------------------------------------------------------------ retention (Engine.prune)
    def prune(self, *, resolved_before: float, actions_before: float) -> dict[str, int]:
        """Delete resolved drift records resolved before ``resolved_before`` and action rows older than
        ``actions_before`` (never those of an open drift: its history is its evidence); counts per kind."""
        with self._tx("prune old records") as c:
            drifts = c.execute("DELETE FROM drift WHERE resolved_at IS NOT NULL AND resolved_at < ?",
                               (resolved_before,)).rowcount
            actions = c.execute("DELETE FROM actions WHERE at < ? AND drift_id NOT IN "
                                "(SELECT id FROM drift WHERE resolved_at IS NULL)", (actions_before,)).rowcount
            if self._window.seeded_from is not None:  # the in-memory counts forget what the table forgot
                self._window._prune(actions_before)
        return {"drift": max(0, drifts), "action": max(0, actions)}

    def protected_snapshots(self) -> set[str]:
        """Snapshot ids retention must keep: those of open drifts (and their actions) and of each key's latest action."""
        keep: set[str] = set()
        rows = self._read(
            "SELECT snapshots FROM drift WHERE resolved_at IS NULL AND snapshots != '[]' "
            "UNION ALL SELECT a.snapshots FROM actions a JOIN drift d ON a.drift_id = d.id "
            "WHERE d.resolved_at IS NULL AND a.snapshots != '[]' "
            "UNION ALL SELECT snapshots FROM actions WHERE id IN (SELECT MAX(id) FROM actions GROUP BY key) "
            "AND snapshots != '[]'")
        for (raw,) in rows:
            with contextlib.suppress(ValueError, TypeError):
                keep.update(str(s) for s in json.loads(raw))
        return keep

    def counts(self) -> dict[str, int]:
        """Rows per table (the retention soak test and `driftd state` checks)."""
        return {t: int(self._read(f"SELECT COUNT(*) FROM {t}")[0][0]) for t in ("drift", "actions", "guards")}  # noqa: S608
