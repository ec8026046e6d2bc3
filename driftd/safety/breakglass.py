"""Gate ``break-glass``: time-boxed, audited overrides that suspend enforcement (gate pure, store effectful).

Pipeline position: a gate of the chain, early (an operator's emergency change must not be
reverted).  An override names what it suspends (a key glob, a baseline, a target — or
everything, said explicitly), carries a reason and an expiry no later than
``safety.break_glass.max_ttl_seconds`` from its creation; when it expires, the drift is
enforced again.  Overrides are JSON files under ``<state-dir>/overrides/``, written by
``driftd pause`` or by hand (``ttl`` then counts from the file's mtime); a file that is not
a valid override is refused with the reason and suspends nothing.  On Kubernetes, a pod's or
the node's annotations (``driftd.io/break-glass-reason`` + ``driftd.io/break-glass-until``)
ask for one too, judged by the same rules (:func:`from_annotations`).
"""

from __future__ import annotations

import contextlib
import fnmatch
import json
import os
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from driftd.core.times import rfc3339
from driftd.models.baseline import parse_duration
from driftd.safety.durable import write_all
from driftd.safety.gates import ALLOWED, GateInput, SafetyView, Verdict

DIR = "overrides"


class OverrideError(ValueError):
    """An override that cannot be accepted (no reason, TTL too long, unreadable file)."""


class Override(BaseModel):
    """One break-glass override."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str = ""
    reason: str = Field(description="Why (an incident, a ticket): required.")
    created: float = 0.0
    expires: float = 0.0
    ttl: str | float | None = Field(default=None, description="Instead of expires: how long from creation (e.g. '2h').")
    by: str = ""
    key: str | None = Field(default=None, description="Glob over resource keys, e.g. 'host:file:/etc/ssh/*'.")
    baseline: str | None = None
    target: str | None = None
    all: bool = Field(default=False, description="Suspend everything on this node (must be said explicitly).")

    @model_validator(mode="after")
    def _check(self) -> Override:
        if not self.reason.strip():
            raise ValueError("an override needs a reason (--reason)")
        if not (self.all or self.key or self.baseline or self.target):
            raise ValueError("an override must name what it suspends (key, baseline, target) or say all")
        return self

    def matches(self, key: str, baseline: str, target: str) -> bool:
        if self.all:
            return True
        return ((self.key is None or fnmatch.fnmatchcase(key, self.key))
                and (self.baseline is None or self.baseline == baseline)
                and (self.target is None or self.target == target))

    def scope_text(self) -> str:
        if self.all:
            return "everything"
        return ", ".join(f"{k}={v}" for k, v in (("key", self.key), ("baseline", self.baseline), ("target", self.target)) if v)


def make_override(*, reason: str, ttl: str | float, now: float, max_ttl: float, by: str = "", key: str | None = None,
                  baseline: str | None = None, target: str | None = None, all: bool = False) -> Override:
    """A validated new override (raises OverrideError with the reason)."""
    try:
        seconds = parse_duration(ttl).total_seconds()
    except ValueError as e:
        raise OverrideError(f"--ttl: {e}") from None
    if seconds > max_ttl:
        raise OverrideError(f"--ttl {ttl} is longer than safety.break_glass.max_ttl_seconds ({max_ttl:.0f}s)")
    try:
        return Override(id=secrets.token_hex(6), reason=reason, created=now, expires=now + seconds, by=by, key=key,
                        baseline=baseline, target=target, all=all)
    except ValidationError as e:
        raise OverrideError("; ".join(str(err["msg"]).removeprefix("Value error, ") for err in e.errors())) from None


# An override asked for by an object's annotations: on a pod it suspends that pod, on the node everything
# driftd governs there (narrowed by the optional baseline/target annotations).  The TTL counts from when
# the until-annotation was last written (the object's managedFields), so a far-off expiry is refused
# however long it has been there.
ANNOTATION_REASON = "driftd.io/break-glass-reason"
ANNOTATION_UNTIL = "driftd.io/break-glass-until"
ANNOTATION_BASELINE = "driftd.io/break-glass-baseline"
ANNOTATION_TARGET = "driftd.io/break-glass-target"


@dataclass(frozen=True)
class AnnotatedOverride:
    """What one object's annotations ask for (read by an adapter, judged by :func:`from_annotations`)."""

    source: str  # "pod default/web-1", "node node-a"
    annotations: Mapping[str, str]
    set_at: float | None  # when the until-annotation was last written (managedFields), where known
    by: str = ""  # the field manager that wrote it (kubectl-annotate, ...)
    key: str | None = None  # a pod's own key; None: the node (everything, or what the annotations narrow to)


def set_time(meta: Mapping[str, Any]) -> tuple[float | None, str]:
    """(time, manager) of the managedFields entry that last wrote the until-annotation."""
    for entry in meta.get("managedFields") or []:
        fields = ((entry.get("fieldsV1") or {}).get("f:metadata") or {}).get("f:annotations") or {}
        if f"f:{ANNOTATION_UNTIL}" in fields:
            return rfc3339(entry.get("time")), str(entry.get("manager") or "")
    return None, ""


def from_annotations(req: AnnotatedOverride, *, now: float, max_ttl: float) -> Override | None:
    """The override ``req`` asks for (None when it asks for none); OverrideError says why it is refused."""
    a = req.annotations
    reason, until = a.get(ANNOTATION_REASON, ""), a.get(ANNOTATION_UNTIL, "")
    if not reason and not until:
        return None
    if not until:
        raise OverrideError(f"{req.source}: {ANNOTATION_REASON} without {ANNOTATION_UNTIL} (an RFC 3339 time)")
    expires = rfc3339(until)
    if expires is None:
        raise OverrideError(f"{req.source}: {ANNOTATION_UNTIL}: {until!r} is not an RFC 3339 time "
                            "(e.g. 2026-12-02T18:00:00Z)")
    created = req.set_at if req.set_at is not None else now
    if expires - created > max_ttl:
        raise OverrideError(f"{req.source}: lasts {expires - created:.0f}s from when it was set, over "
                            f"safety.break_glass.max_ttl_seconds ({max_ttl:.0f}s); refused")
    scope: dict[str, Any] = {"key": req.key} if req.key else {
        "baseline": a.get(ANNOTATION_BASELINE) or None, "target": a.get(ANNOTATION_TARGET) or None}
    if not req.key and scope["baseline"] is None and scope["target"] is None:
        scope = {"all": True}
    try:
        return Override(id=f"annotation:{req.source.replace(' ', ':')}", reason=reason, created=created,
                        expires=expires, by=req.by, **scope)
    except ValidationError as e:
        raise OverrideError(f"{req.source}: " + "; ".join(
            str(err["msg"]).removeprefix("Value error, ") for err in e.errors())) from None


class OverrideStore:
    """The override files under ``<state-dir>/overrides/`` (0700 directory, 0600 files, atomic writes)."""

    def __init__(self, state_dir: str | os.PathLike[str], *, max_ttl: float) -> None:
        self.dir = Path(state_dir) / DIR
        self.max_ttl = max_ttl

    def add(self, o: Override) -> Path:
        self.dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        path = self.dir / f"{o.id}.json"
        tmp = self.dir / f".{o.id}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        try:
            write_all(fd, json.dumps(o.model_dump(exclude={"ttl"}), sort_keys=True).encode() + b"\n")
            os.fsync(fd)
        except BaseException:
            os.close(fd)
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        os.close(fd)
        os.rename(tmp, path)
        return path

    def remove(self, override_id: str) -> bool:
        try:
            (self.dir / f"{override_id}.json").unlink()
        except FileNotFoundError:
            return False
        return True

    def load(self, now: float) -> tuple[list[Override], list[str]]:
        """(active overrides, problems): expired ones are left out; invalid files are refused with the reason."""
        active: list[Override] = []
        problems: list[str] = []
        try:
            entries = sorted(p for p in self.dir.iterdir() if p.suffix == ".json" and not p.name.startswith("."))
        except FileNotFoundError:
            return [], []
        except OSError as e:
            return [], [f"{self.dir}: {e.strerror or e}"]
        for p in entries:
            try:
                o = self._read(p)
            except OverrideError as e:
                problems.append(f"{p}: {e}")
                continue
            if o.expires > now:
                active.append(o)
        return active, problems

    def _read(self, p: Path) -> Override:
        try:
            if p.is_symlink():
                raise OverrideError("is a symlink; refused")
            st = p.stat()
            if st.st_size > 64 * 1024:
                raise OverrideError("is over 64 KiB; refused")
            raw = json.loads(p.read_text(encoding="utf-8"))
            if not isinstance(raw, dict):
                raise OverrideError("is not a JSON object")
            created = float(raw.get("created") or st.st_mtime)
            if raw.get("ttl") is not None and not raw.get("expires"):
                raw["expires"] = created + parse_duration(raw["ttl"]).total_seconds()
            raw.setdefault("id", p.stem)
            raw["created"] = created
            o = Override.model_validate(raw)
        except OverrideError:
            raise
        except (OSError, ValueError, TypeError) as e:  # ValidationError is a ValueError
            msg = "; ".join(str(x["msg"]) for x in e.errors()) if isinstance(e, ValidationError) else str(e)
            raise OverrideError(msg.replace("Value error, ", "")) from None
        if o.expires - o.created > self.max_ttl:
            raise OverrideError(f"lasts {o.expires - o.created:.0f}s, over safety.break_glass.max_ttl_seconds "
                                f"({self.max_ttl:.0f}s); refused")
        return o


class BreakGlassGate:
    name = "break-glass"

    def __init__(self, overrides: Sequence[Override] = ()) -> None:
        self.overrides: Sequence[Override] = overrides  # replaced by the engine when the files change

    def check(self, inp: GateInput, view: SafetyView) -> Verdict:
        d = inp.desired
        for o in self.overrides:
            if o.expires > inp.now and o.matches(d.key, d.baseline, d.target):
                return Verdict(self.name, f"override {o.id} until {o.expires:.0f} ({o.scope_text()}): {o.reason}",
                               until=o.expires)
        return ALLOWED
