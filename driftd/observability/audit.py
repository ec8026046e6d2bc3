"""Tamper-evident audit log: one hash-chained JSON line per action or deliberate non-action (observability edge).

Pipeline position: the reconciler's *record* stage calls :meth:`AuditLog.record` once per outcome
that acted or chose not to act (succeeded, failed, held by a gate, skipped by dry-run/warn/report-only,
blocked, node retirement, terminal holds); clean scans write nothing.  Each record goes to
``<audit-dir>/audit.jsonl`` (0600 files in a 0700 directory, no symlinks followed) and, once durable,
to the structured log as event ``audit`` with the same fields plus its ``hash`` — the copy the node's
log collector ships off the node.

**Record** (one line, compact JSON, keys sorted, ASCII only): ``seq`` (1, 2, ... across every file and
restart), ``time`` (RFC 3339 UTC), ``node``, ``key``, ``target``, ``baseline``, ``set_version`` (the
baseline set's version), ``action`` (the planned or attempted actions, ``write_file+chmod``; ``none``
when there is no plan), ``result`` (``succeeded``, ``failed``, ``held``, ``skipped``, ``blocked``),
``reason`` (``<gate>: <why>`` for holds, ``dry-run: ...``, the error of a failure), ``before``/``after``
(the drifted fields' values as the engine reports them — ``sensitive`` fields are ``<redacted>``,
structured or long values are ``sha256:<hex>`` of their canonical JSON; ``after`` is what a successful
action restored, ``null`` when nothing changed or the action failed), ``snapshots`` (ids, shown as
``DesiredResource.shown_snapshots`` shows them: a sensitive file's ids are redacted) and ``prev``.
The log's own records use ``action: "audit"``: ``started`` (the first line of a new chain),
``rotated`` (the first line of each new file), ``recovered`` (a torn tail was found at start; it
carries ``torn: {bytes, sha256}`` of the bytes it does not chain onto), ``lost`` (records dropped
from a full in-memory backlog while the log could not be written).

**Chain**: ``prev`` is the lowercase hex SHA-256 of the previous record's line exactly as written,
without its terminating ``\\n``; the first line of a chain has ``prev`` = 64 zeros
(:data:`GENESIS`).  There is no separate ``hash`` field in the file: a line's hash is that of its
bytes, so changing any byte of a line breaks the next line's ``prev``.  The chain runs across
rotated files: the ``rotated`` record opening a new file has ``prev`` = the hash of the last line of
the previous file.  The head (last ``seq`` and line hash) is in every shipped ``audit`` log line
(``seq``, ``hash``); ``driftd audit verify --expect-head SEQ:HASH`` checks a log against one, which
also catches a truncated tail or an edited last line that the chain alone cannot.

**Durability and rotation**: each record is written whole (short writes looped, a write making no
progress is ENOSPC) and fsynced before :meth:`record` returns; a failed write is truncated back
so no partial line stays behind.  Before a record would take ``audit.jsonl`` past ``max_bytes`` the
file is renamed to ``audit.jsonl.1`` (``.1`` to ``.2`` ..., ``keep`` files kept, the oldest
dropped), the directory fsynced and a new file opened with a ``rotated`` record.  At start the chain
resumes from the last record on disk (the last MiB of the newest non-empty file; the rest is
``verify``'s job); a tail that is not a record — a line torn by a crash — is never chained onto: it
is terminated and a ``recovered`` record names its length and digest, so ``verify`` reports it (as
recovered, not as an edit) instead of an unexplained break.  Opening checks the directory and reads
the tail at once; the log's own records (``started``, ``recovered``, ``rotated``) are written with
the first record after a start, so a pass that records nothing writes nothing.  The shipped copy is
logged whatever ``log.level`` says: it is the audit trail, not a diagnostic.

**A write that fails** (disk full, I/O error, a planted symlink): the action it records has already
happened, so the record is kept in memory (up to ``backlog`` records, in order) and logged at once
as ``audit.failed`` with its content (it still reaches the collector), the failure is counted
(``driftd_audit_write_errors_total``), and :meth:`writable` answers why — the engine then holds every
further *action* (``held: audit: ...``; observing, diffing and reporting go on) until a write
succeeds again, which flushes the backlog first.  An operator promising a complete, unaltered record
of what the agent did cannot have the agent go on changing machines while that record is not being
kept; only alerting would let an unbounded number of changes go unrecorded, whereas holding costs
at most the one action in flight when the disk filled.  A backlog overflow drops the oldest records
and writes a ``lost`` record saying how many, so even that gap is on the chain.

Verification (:func:`verify`): files in seq order (a directory: ``audit.jsonl*`` inside it); each
line must parse as a record whose ``prev`` is the previous line's hash and whose ``seq`` is the
previous one's plus one.  The first break is named ``FILE:LINE`` with its kind: an edited line (its
bytes no longer hash to the next line's ``prev``; an edit that also rewrites following ``prev``
values moves the break to the last rewritten line, and past the head only an anchor sees it), a
missing line (a ``seq`` gap), an inserted line (the line after it chains onto the line before it),
reordered lines (it chains onto a line after it, or a later line has a smaller ``seq``) or a torn line (bytes that are no record, not
acknowledged by a ``recovered`` record).  A log whose oldest retained line is neither the chain's
start nor a ``rotated`` record has lost lines at its start.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import re
import stat
import threading
import time as _time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import structlog

from driftd.observability.logging import Event

GENESIS = "0" * 64
FILE = "audit.jsonl"
AUDIT_ACTION = "audit"  # the action of the log's own records (started, rotated, recovered, lost)
REDACTED = "<redacted>"  # as driftd.models.resources.REDACTED
_TAIL = 1 << 20  # how much of the newest file a restart reads to find the last record
_MAX_REASON = 2048
_MAX_OUTPUT = 8192
_MAX_VERBATIM = 128
_HEX64 = re.compile(r"[0-9a-f]{64}")
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_FILE_FLAGS = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC


class AuditError(OSError):
    """The audit directory or a file in it is not what it must be (a symlink, not a regular file)."""


def line_hash(line: bytes) -> str:
    """The chain hash of one line: SHA-256 of its bytes as written, without the newline."""
    return hashlib.sha256(line).hexdigest()


def encode(record: dict[str, Any]) -> bytes:
    """A record's line (without the newline): compact JSON, keys sorted, ASCII only (no raw newline can appear)."""
    return json.dumps(record, sort_keys=True, separators=(",", ":"), ensure_ascii=True, default=str).encode("ascii")


def value_digest(value: Any) -> Any:
    """A drifted value as the audit log shows it: short scalars as they are, anything larger as its digest."""
    if value is None or isinstance(value, bool | int | float):
        return value
    if isinstance(value, str):
        if len(value) <= _MAX_VERBATIM:
            return value  # modes, owners, sysctl values, content digests ("sha256:..."), "<redacted>"
        return "sha256:" + hashlib.sha256(value.encode("utf-8", "surrogatepass")).hexdigest()
    blob = json.dumps(value, sort_keys=True, separators=(",", ":"), default=str).encode()
    return "sha256:" + hashlib.sha256(blob).hexdigest()


def drift_digests(fields: Iterable[dict[str, Any]], *, restored: bool) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """``before``/``after`` of a record from the engine's reportable drift (sensitive values already redacted)."""
    fields = list(fields)
    before = {f["field"]: value_digest(f.get("actual")) for f in fields}
    after = {f["field"]: value_digest(f.get("expected")) for f in fields} if restored else None
    return before, after


def _iso(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _parse(line: bytes) -> dict[str, Any] | None:
    """A record if ``line`` is one (a JSON object with an integer seq and a 64-hex prev), else None."""
    try:
        rec = json.loads(line)
    except ValueError:
        return None
    if not isinstance(rec, dict):
        return None
    seq, prev = rec.get("seq"), rec.get("prev")
    if isinstance(seq, bool) or not isinstance(seq, int) or not isinstance(prev, str) or not _HEX64.fullmatch(prev):
        return None
    return rec


def _write_all(fd: int, data: bytes) -> None:
    """Every byte or an error (as ``driftd.safety.durable.write_all``; a sibling layer, so not imported)."""
    view = memoryview(data)
    off = 0
    while off < len(view):
        n = os.write(fd, view[off:])
        if n <= 0:
            raise OSError(errno.ENOSPC, "no progress writing (device full?)")
        off += n


@dataclass
class _Tail:
    seq: int = 0
    prev: str = GENESIS
    found: bool = False  # a record was found on disk
    garbage: bytes | None = None  # bytes after the last record that are no record (a torn line)
    needs_newline: bool = False  # the file does not end with a newline


class AuditLog:
    """Appends hash-chained records to ``<directory>/audit.jsonl``; thread-safe."""

    def __init__(
        self,
        directory: Path | str,
        *,
        node: str,
        max_bytes: int = 16 << 20,
        keep: int = 10,
        backlog: int = 10_000,
        on_write_error: Callable[[], None] | None = None,
    ) -> None:
        self.dir = Path(directory)
        self.node = node
        self.max_bytes = max_bytes
        self.keep = max(1, keep)
        self.backlog_max = max(1, backlog)
        self.on_write_error = on_write_error
        # every level: the shipped copy must not depend on log.level (a plain BoundLogger filters nothing)
        self.log = structlog.wrap_logger(None, wrapper_class=structlog.BoundLogger)
        self._lock = threading.Lock()
        self._dfd: int | None = None
        self._fd: int | None = None
        self._size = 0
        self._seq = 0
        self._prev = GENESIS
        self._backlog: deque[dict[str, Any]] = deque()
        self._unterminated = False
        self._opening: tuple[str, str, dict[str, Any]] | None = None
        self._lost = 0
        self.error: str | None = None
        with self._lock:
            try:
                self._open()
            except OSError as e:
                self._failed(e)

    # ------------------------------------------------------------------ public
    @property
    def head(self) -> tuple[int, str]:
        """(seq, hash) of the last durable record: the value to anchor elsewhere."""
        with self._lock:
            return self._seq, self._prev

    @property
    def pending(self) -> int:
        """Records waiting in memory for the log to become writable."""
        with self._lock:
            return len(self._backlog)

    def record(self, *, time: float, key: str, target: str, baseline: str, set_version: str, action: str, result: str,
               reason: str = "", before: dict[str, Any] | None = None, after: dict[str, Any] | None = None,
               snapshots: Sequence[str] = (), output: str | None = None) -> bool:
        """Append one record (fsynced); False when it could not be written (kept in memory, logged, counted).

        ``output`` is what an operator's command printed (the patch hook), kept only in its record.
        """
        rec: dict[str, Any] = {
            "time": _iso(time), "node": self.node, "key": key, "target": target, "baseline": baseline,
            "set_version": set_version, "action": action, "result": result, "reason": reason[:_MAX_REASON],
            "before": before, "after": after, "snapshots": list(snapshots),
        }
        if output is not None:
            rec["output"] = output[:_MAX_OUTPUT]
        with self._lock:
            if len(self._backlog) >= self.backlog_max:
                self._backlog.popleft()
                self._lost += 1
            self._backlog.append(rec)
            ok = self._flush()
            if not ok:
                self.log.error(Event.AUDIT_FAILED, error=self.error, pending=len(self._backlog), **rec)
            return ok

    def writable(self) -> str | None:
        """None when the log is being written; else why not (a write of the backlog is tried first)."""
        with self._lock:
            if self.error is None and not self._backlog:
                return None
            self._flush()
            return self.error

    def close(self) -> None:
        with self._lock:
            self._close()

    # ------------------------------------------------------------------ writing
    def _flush(self) -> bool:
        try:
            if self._fd is None:
                self._open()
            self._resume()
            if self._lost:
                self._append_record(self._meta("lost", f"{self._lost} records could not be written while the log was "
                                                       "unwritable (backlog full); their content was logged as audit.failed"))
                self._lost = 0
            while self._backlog:
                self._append_record(self._backlog[0])
                self._backlog.popleft()
        except OSError as e:
            self._failed(e)
            return False
        self.error = None
        return True

    def _failed(self, e: OSError) -> None:
        self.error = f"{self.dir / FILE}: {e.strerror or e}" if not isinstance(e, AuditError) else str(e)
        self._close()  # the next attempt re-reads the tail from disk, whatever this failure left there
        if self.on_write_error is not None:
            self.on_write_error()

    def _meta(self, result: str, reason: str) -> dict[str, Any]:
        return {"time": _iso(_time.time()), "node": self.node, "key": "", "target": "", "baseline": "", "set_version": "",
                "action": AUDIT_ACTION, "result": result, "reason": reason, "before": None, "after": None, "snapshots": []}

    def _append_record(self, rec: dict[str, Any]) -> None:
        """Chain ``rec`` onto the head and write it, rotating first when it would take the file past max_bytes."""
        line = encode({**rec, "seq": self._seq + 1, "prev": self._prev})
        if self._size > 0 and self._size + len(line) + 1 > self.max_bytes:
            self._rotate()
        self._chain(rec)

    def _chain(self, rec: dict[str, Any]) -> None:
        """Write ``rec`` with the next seq and prev = the head's hash; then it is the head, and it is logged."""
        seq, prev = self._seq + 1, self._prev
        line = encode({**rec, "seq": seq, "prev": prev})
        self._append_line(line)
        self._seq, self._prev = seq, line_hash(line)
        self.log.info(Event.AUDIT, **rec, seq=seq, prev=prev, hash=self._prev)

    def _append_line(self, line: bytes) -> None:
        """``line`` + newline, whole and fsynced, or nothing (truncated back) and an error."""
        assert self._fd is not None
        start = self._size
        try:
            _write_all(self._fd, line + b"\n")
            os.fsync(self._fd)
        except OSError:
            with contextlib.suppress(OSError):  # if even this fails, the next open finds and reports the torn tail
                os.ftruncate(self._fd, start)
                os.fsync(self._fd)
            raise
        self._size = start + len(line) + 1

    def _rotate(self) -> None:
        assert self._fd is not None and self._dfd is not None
        os.close(self._fd)
        self._fd = None
        d = self._dfd
        for k in range(self.keep, 0, -1):
            src = FILE if k == 1 else f"{FILE}.{k - 1}"
            with contextlib.suppress(FileNotFoundError):
                os.replace(src, f"{FILE}.{k}", src_dir_fd=d, dst_dir_fd=d)
        os.fsync(d)
        self._fd, self._size = self._open_file(FILE)
        os.fsync(d)
        self._append_chain_record("rotated", f"continues {FILE}.1")

    def _append_chain_record(self, result: str, reason: str, **extra: Any) -> None:
        rec = self._meta(result, reason)
        rec.update(extra)
        self._chain(rec)

    # ------------------------------------------------------------------ opening and resuming
    def _open_dir(self) -> int:
        parent = self.dir.parent
        parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        with contextlib.suppress(FileExistsError):
            os.mkdir(self.dir, 0o700)
        try:
            dfd = os.open(self.dir, _DIR_FLAGS)
        except OSError as e:
            if e.errno in (errno.ELOOP, errno.ENOTDIR):
                raise AuditError(e.errno, f"{self.dir} is a symlink or not a directory; refusing to write the audit log "
                                          "through it") from None
            raise
        if stat.S_IMODE(os.fstat(dfd).st_mode) != 0o700:
            os.fchmod(dfd, 0o700)
        return dfd

    def _open_file(self, name: str) -> tuple[int, int]:
        assert self._dfd is not None
        try:
            fd = os.open(name, _FILE_FLAGS, 0o600, dir_fd=self._dfd)
        except OSError as e:
            if e.errno == errno.ELOOP:
                raise AuditError(e.errno, f"{self.dir / name} is a symlink; refusing to follow it") from None
            raise
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            os.close(fd)
            raise AuditError(errno.EINVAL, f"{self.dir / name} is not a regular file")
        if stat.S_IMODE(st.st_mode) != 0o600:
            os.fchmod(fd, 0o600)
        return fd, st.st_size

    def _open(self) -> None:
        """Open the directory and ``audit.jsonl`` and resume the chain from the last record on disk."""
        self._close()
        self._dfd = self._open_dir()
        tail, tail_file = _Tail(), None
        for name in [FILE] + [f"{FILE}.{k}" for k in range(1, self.keep + 1)]:
            t = self._read_tail(name)
            if t is not None:
                tail, tail_file = t, name
                break
        self._fd, self._size = self._open_file(FILE)
        os.fsync(self._dfd)
        self._seq, self._prev = tail.seq, tail.prev
        # written with the first record (a pass that records nothing writes nothing), after the newline a line
        # torn between its record and its newline lacks: nothing is ever appended onto an unterminated line
        self._unterminated = tail.needs_newline and tail_file == FILE
        self._opening = None
        if tail.garbage is not None:
            what = "the log ends in" if tail.found else "no record was found in the last"
            self._opening = ("recovered", f"{what} {len(tail.garbage)} bytes of {tail_file} that are no record (a write "
                             "torn by a crash?); not chained onto them",
                             {"torn": {"bytes": len(tail.garbage), "sha256": hashlib.sha256(tail.garbage).hexdigest()}})
        elif not tail.found:
            self._opening = ("started", "a new audit chain", {})
        elif tail_file != FILE:  # audit.jsonl missing or empty: a rotation was interrupted before its first line
            self._opening = ("rotated", f"continues {tail_file}", {})

    def _resume(self) -> None:
        """What reopening the log needs written before the next record."""
        if self._unterminated:
            self._terminate()
            self._unterminated = False
        if self._opening is not None:
            result, reason, extra = self._opening
            self._append_chain_record(result, reason, **extra)
            self._opening = None

    def _terminate(self) -> None:
        """The last record lacks its newline (the crash came between the two): add only the newline."""
        assert self._fd is not None
        _write_all(self._fd, b"\n")
        os.fsync(self._fd)
        self._size += 1

    def _read_tail(self, name: str) -> _Tail | None:
        """The chain head from the end of ``name``; None when the file is missing or empty."""
        assert self._dfd is not None
        try:
            fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=self._dfd)
        except FileNotFoundError:
            return None
        except OSError as e:
            if e.errno == errno.ELOOP:
                raise AuditError(e.errno, f"{self.dir / name} is a symlink; refusing to follow it") from None
            raise
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise AuditError(errno.EINVAL, f"{self.dir / name} is not a regular file")
            if st.st_size == 0:
                return None
            start = max(0, st.st_size - _TAIL)
            data = os.pread(fd, st.st_size - start, start)
        finally:
            os.close(fd)
        return _tail_of(data, whole=start == 0)

    def _close(self) -> None:
        for attr in ("_fd", "_dfd"):
            fd = getattr(self, attr)
            if fd is not None:
                with contextlib.suppress(OSError):
                    os.close(fd)
                setattr(self, attr, None)


def _tail_of(data: bytes, *, whole: bool) -> _Tail:
    """Where the chain stands at the end of ``data`` (the end of a file; ``whole``: from its first byte)."""
    needs_newline = not data.endswith(b"\n")
    lines = data.split(b"\n")
    if not needs_newline:
        lines.pop()  # the empty piece after the final newline
    first = 0 if whole else 1  # a tail read from the middle of a file starts inside a line
    for i in range(len(lines) - 1, first - 1, -1):
        rec = _parse(lines[i])
        if rec is None:
            continue
        after = lines[i + 1:]
        garbage = b"\n".join(after) if after else None
        return _Tail(seq=int(rec["seq"]), prev=line_hash(lines[i]), found=True, garbage=garbage,
                     needs_newline=needs_newline)
    return _Tail(garbage=b"\n".join(lines[first:]), needs_newline=needs_newline)


# ---------------------------------------------------------------------- verification
@dataclass
class _Line:
    file: str
    no: int
    raw: bytes
    rec: dict[str, Any] | None

    @property
    def pos(self) -> str:
        return f"{self.file}:{self.no}"

    @property
    def seq(self) -> int:
        assert self.rec is not None
        return int(self.rec["seq"])


@dataclass
class Verified:
    """What :func:`verify` found: ``problem`` is None for an intact chain."""

    records: int = 0
    first_seq: int = 0
    last_seq: int = 0
    head: str = GENESIS
    problem: str | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def intact(self) -> bool:
        return self.problem is None

    def summary(self) -> str:
        if self.problem is not None:
            return f"broken: {self.problem}"
        return f"intact: {self.records} records, seq {self.first_seq}..{self.last_seq}, head {self.head}"


def audit_files(paths: Sequence[Path | str]) -> list[Path]:
    """The files to verify: each file given, and ``audit.jsonl``/``audit.jsonl.N`` inside each directory given."""
    out: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            out.extend(sorted(c for c in p.iterdir() if c.name == FILE or re.fullmatch(re.escape(FILE) + r"\.\d+", c.name)))
        else:
            out.append(p)
    return out


def _lines(path: Path) -> list[_Line]:
    data = path.read_bytes()
    if not data:
        return []
    pieces = data.split(b"\n")
    if data.endswith(b"\n"):
        pieces.pop()
    return [_Line(str(path), i + 1, raw, _parse(raw)) for i, raw in enumerate(pieces)]


def verify(paths: Sequence[Path | str], *, expect_head: tuple[int, str] | None = None) -> Verified:
    """Check the chain over ``paths`` (files in any order, or directories); raises OSError for an unreadable one."""
    files = [ls for ls in (_lines(p) for p in audit_files(paths)) if ls]

    def first_seq(ls: list[_Line]) -> int:
        return next((ln.seq for ln in ls if ln.rec is not None), 1 << 62)

    stream = [ln for ls in sorted(files, key=first_seq) for ln in ls]
    out = Verified()
    if not stream:
        out.problem = "no audit records found"
        return out
    out.problem = _check(stream, out)
    if out.problem is None and expect_head is not None:
        out.problem = _check_anchor(stream, out, *expect_head)
    return out


def _check(stream: list[_Line], out: Verified) -> str | None:
    good: list[_Line] = []  # the records checked so far, in order
    i, n = 0, len(stream)
    while i < n:
        ln = stream[i]
        if ln.rec is None:
            j = i
            while j < n and stream[j].rec is None:
                j += 1
            garbage = b"\n".join(x.raw for x in stream[i:j])
            ack = stream[j].rec if j < n else None
            torn = ack.get("torn") if ack is not None and ack.get("action") == AUDIT_ACTION else None
            if (isinstance(torn, dict) and ack is not None and ack.get("result") == "recovered"
                    and torn.get("sha256") == hashlib.sha256(garbage).hexdigest()
                    and _links(good[-1] if good else None, stream[j])):
                out.notes.append(f"{ln.pos}: {j - i} torn line(s) from an interrupted write, acknowledged by the "
                                 f"recovered record at {stream[j].pos} (seq {stream[j].seq}); not chained onto")
                i = j
                continue
            if j == n:
                return f"{ln.pos}: torn line: {len(ln.raw)} bytes that are no audit record" + (
                    f" (and {j - i - 1} more line(s) after it)" if j - i > 1 else "")
            return f"{ln.pos}: edited line: not an audit record (the chain breaks here)"
        problem = _check_link(stream, i, good, out)
        if problem is not None:
            return problem
        good.append(ln)
        i += 1
    out.records = len(good)
    out.first_seq, out.last_seq = good[0].seq, good[-1].seq
    out.head = line_hash(good[-1].raw)
    return None


def _links(p: _Line | None, ln: _Line) -> bool:
    """``ln`` chains directly onto ``p`` (onto nothing: it is a chain's first record)."""
    assert ln.rec is not None
    if p is None:
        return ln.rec["prev"] == GENESIS and ln.seq == 1
    return ln.rec["prev"] == line_hash(p.raw) and ln.seq == p.seq + 1


def _check_link(stream: list[_Line], i: int, good: list[_Line], out: Verified) -> str | None:
    ln = stream[i]
    assert ln.rec is not None
    seq = ln.seq
    if not good:
        if seq == 1:
            return None if ln.rec["prev"] == GENESIS else f"{ln.pos}: seq 1: edited line: the chain's first record " \
                                                          "must have the genesis prev"
        if ln.rec.get("action") == AUDIT_ACTION and ln.rec.get("result") in ("rotated", "recovered"):
            out.notes.append(f"the chain starts at seq {seq} ({ln.pos}): older records were rotated away")
            return None
        return (f"{ln.pos}: seq {seq}: missing line(s) at the start: the oldest line is neither the chain's first "
                "record nor the first line after a rotation")
    p = good[-1]
    if _links(p, ln):
        return None
    nxt = stream[i + 1] if i + 1 < len(stream) and stream[i + 1].rec is not None else None
    if ln.rec["prev"] == line_hash(p.raw):
        return f"{ln.pos}: seq {seq}: edited line: it chains onto seq {p.seq} but its seq should be {p.seq + 1}"
    later = [x for x in stream[i + 1:] if x.rec is not None]
    after = next((x for x in later if ln.rec["prev"] == line_hash(x.raw)), None)
    if after is not None:  # chained to a line that comes after it: written in another order than it stands
        return f"{ln.pos}: seq {seq}: reordered lines: seq {seq} is chained to seq {after.seq} at {after.pos}, after it"
    if nxt is not None and _links(p, nxt):
        return f"{ln.pos}: seq {seq}: inserted line: the line after it chains onto seq {p.seq} at {p.pos}"
    if len(good) >= 2 and _links(good[-2], ln):
        return f"{p.pos}: seq {p.seq}: inserted line: the line after it chains onto seq {good[-2].seq} at {good[-2].pos}"
    smaller = next((x for x in later if p.seq < x.seq < seq), None)
    if smaller is not None or seq <= p.seq:
        other = f"seq {smaller.seq} at {smaller.pos}" if smaller is not None else f"seq {p.seq} at {p.pos}"
        return f"{ln.pos}: seq {seq}: reordered lines: seq {seq} comes {'before' if smaller else 'after'} {other}"
    if seq > p.seq + 1:
        missing = f"seq {p.seq + 1}" if seq == p.seq + 2 else f"seq {p.seq + 1}..{seq - 1}"
        return f"{ln.pos}: seq {seq}: missing line(s) before it: {missing} (deleted)"
    # the seq follows but prev does not match: the previous line was edited, unless this one's prev was
    if nxt is not None and nxt.rec is not None and nxt.rec["prev"] != line_hash(ln.raw):
        return f"{ln.pos}: seq {seq}: edited line: neither its prev nor its own hash match its neighbours"
    return f"{p.pos}: seq {p.seq}: edited line: its bytes no longer hash to the prev of the next line ({ln.pos})"


def _check_anchor(stream: list[_Line], out: Verified, seq: int, digest: str) -> str | None:
    if seq > out.last_seq:
        return (f"truncated: the log ends at seq {out.last_seq} ({stream[-1].pos}) but the anchor names seq {seq}: "
                "records at its end were removed")
    if seq < out.first_seq:
        out.notes.append(f"the anchor (seq {seq}) is older than the oldest retained record (seq {out.first_seq})")
        return None
    ln = next(x for x in stream if x.rec is not None and x.seq == seq)
    if line_hash(ln.raw) != digest.lower():
        return f"{ln.pos}: seq {seq}: edited line: its hash {line_hash(ln.raw)} differs from the anchor {digest}"
    return None


def parse_head(text: str) -> tuple[int, str]:
    """``SEQ:HASH`` (as an ``audit`` log line's ``seq`` and ``hash``) → (seq, hash); ValueError otherwise."""
    seq, sep, digest = text.partition(":")
    if not sep or not seq.isdigit() or not _HEX64.fullmatch(digest.lower()):
        raise ValueError(f"--expect-head must be SEQ:HASH (a 64-hex sha256), not {text!r}")
    return int(seq), digest.lower()
