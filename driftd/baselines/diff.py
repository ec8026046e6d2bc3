"""What changed between two baseline sets, field by field (pure; ``driftd baseline diff``).

Pipeline position: beside **load**, before anything runs: review of a change to the
baselines (old set vs new set, both complete :class:`~driftd.baselines.loader.BaselineSet`s
from ``load_set``); live values are not involved.  No I/O: reading a directory or a git
revision into a set, and printing, live in ``driftd.cli``.

Baselines are matched by ``metadata.name`` (a name whose kind changed is one removed and
one added baseline).  Inside a HostBaseline every rule is identified by what it governs,
its kind handler's claim (``path /etc/ssh/sshd_config``, ``sysctl net.ipv4.ip_forward``,
``kernel rule``), and compared field by field under the YAML spelling; a file's
``content`` is its effective bytes (inline ``content`` or the ``source:`` file's sha256 from
``BaselineSet.source_digests``), so new bytes behind the same ``source:`` path are a change.
A ``sensitive: true`` file never shows its content or a digest of it (``<sensitive>``).
Everything else (``metadata`` labels and annotations, spec-level settings such as
``enforcement``, ``window``, ``grace``, ``selector``, and every field of a ContainerBaseline or
PodBaseline spec) is compared by dotted path (``spec.runtime.privileged``); lists are
compared whole.

The result is typed (:class:`SetDiff`); :meth:`SetDiff.to_dict` is the documented JSON of
``driftd baseline diff -o json`` and :func:`render_text` its text.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import timedelta
from enum import Enum
from typing import Any, Literal, get_args

from pydantic import BaseModel

from driftd.baselines.loader import BaselineSet
from driftd.core import kinds
from driftd.core.kinds.base import Handler
from driftd.models.baseline import HostBaseline, ManagedFile, Rule
from driftd.models.kinds import AnyBaseline

Change = Literal["added", "removed", "changed"]
SENSITIVE = "<sensitive>"
_CHANGES: tuple[Change, ...] = ("added", "removed", "changed")
_MARK = {"added": "+", "removed": "-", "changed": "~"}


@dataclass(frozen=True)
class FieldChange:
    """One field: its dotted YAML path and its old and new value (JSON values; None = unset).

    ``sensitive``: the value is a secret's content; ``old``/``new`` then hold ``<sensitive>``, never the value.
    """

    field: str
    old: Any
    new: Any
    sensitive: bool = False

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"field": self.field, "old": self.old, "new": self.new}
        if self.sensitive:
            out["sensitive"] = True
        return out


@dataclass(frozen=True)
class RuleChange:
    """A host rule added, removed or changed, named by its claim; ``kind`` is its handler's (file, sysctl, ...)."""

    rule: str
    kind: str
    change: Change
    fields: tuple[FieldChange, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"rule": self.rule, "kind": self.kind, "change": self.change,
                "fields": [f.to_dict() for f in self.fields]}


@dataclass(frozen=True)
class BaselineChange:
    """A baseline added, removed or changed: its rules (host baselines) and its other fields by dotted path."""

    name: str
    kind: str
    change: Change
    rules: tuple[RuleChange, ...]
    fields: tuple[FieldChange, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "kind": self.kind, "change": self.change,
                "rules": [r.to_dict() for r in self.rules], "fields": [f.to_dict() for f in self.fields]}


@dataclass(frozen=True)
class SetDiff:
    """Old set vs new set: the baselines that differ, sorted by name (empty: no differences)."""

    old_version: str
    new_version: str
    baselines: tuple[BaselineChange, ...]

    @property
    def changed(self) -> bool:
        return bool(self.baselines)

    def summary(self) -> dict[str, Any]:
        """Counts, every one present: baselines and rules (those of added/removed baselines too) by change, and
        ``fields``: the other fields (settings, metadata) that changed in changed baselines."""
        bl = dict.fromkeys(_CHANGES, 0)
        rules = dict.fromkeys(_CHANGES, 0)
        fields = 0
        for b in self.baselines:
            bl[b.change] += 1
            for r in b.rules:
                rules[r.change] += 1
            if b.change == "changed":  # an added or removed baseline's settings are listed, not counted
                fields += len(b.fields)
        return {"baselines": bl, "rules": rules, "fields": fields}

    def to_dict(self, old_ref: str | None = None, new_ref: str | None = None) -> dict[str, Any]:
        """The JSON document of ``baseline diff -o json`` (``ref``: the set as spelled on the command line)."""
        old: dict[str, Any] = {"version": self.old_version}
        new: dict[str, Any] = {"version": self.new_version}
        if old_ref is not None:
            old["ref"] = old_ref
        if new_ref is not None:
            new["ref"] = new_ref
        return {"old": old, "new": new, "baselines": [b.to_dict() for b in self.baselines],
                "summary": self.summary()}


# --------------------------------------------------------------------------- values


def _duration(td: timedelta) -> str:
    """A timedelta in the baselines' spelling: ``30m``, ``1h30m``, ``90s`` -> ``1m30s``, ``0s``."""
    total = int(td.total_seconds())
    h, rest = divmod(total, 3600)
    m, s = divmod(rest, 60)
    out = (f"{h}h" if h else "") + (f"{m}m" if m else "") + (f"{s}s" if s else "")
    return out or "0s"


def _plain(value: Any) -> Any:
    """A dumped model value as plain JSON data (durations as ``30m``, enums as their value)."""
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, timedelta):
        return _duration(value)
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [_plain(v) for v in value]
    return value


def _flatten(prefix: str, value: Any, out: dict[str, Any]) -> None:
    """Mappings by dotted path down to their leaves (lists and scalars); an empty mapping has no leaves."""
    if isinstance(value, dict):
        for k, v in value.items():
            _flatten(f"{prefix}.{k}" if prefix else str(k), v, out)
    else:
        out[prefix] = value


def _dump(model: BaseModel, *, exclude: set[str] | None = None, exclude_defaults: bool = False) -> dict[str, Any]:
    data = model.model_dump(mode="python", by_alias=True, exclude_defaults=exclude_defaults)
    return {k: _plain(v) for k, v in data.items() if not exclude or k not in exclude}


@dataclass(frozen=True)
class _Val:
    """A field's value as compared (``cmp``) and as shown (``shown``); they differ only for file content."""

    cmp: Any
    shown: Any
    sensitive: bool = False


def _compare(old: dict[str, _Val], new: dict[str, _Val]) -> tuple[FieldChange, ...]:
    """The fields whose values differ (a missing field is unset), in the new order (old-only ones where they were)."""
    out: list[FieldChange] = []
    unset = _Val(None, None)
    for key in _merged(list(old), list(new)):
        a, b = old.get(key, unset), new.get(key, unset)
        if a.cmp == b.cmp:
            continue
        if a.sensitive or b.sensitive:
            out.append(FieldChange(key, None if a.cmp is None else SENSITIVE, None if b.cmp is None else SENSITIVE, True))
        else:
            out.append(FieldChange(key, a.shown, b.shown))
    return tuple(out)


def _merged(old: list[str], new: list[str]) -> list[str]:
    """``new``'s keys in order, each key only in ``old`` right after the key it followed there."""
    keys = list(new)
    seen = set(new)
    for i, key in enumerate(old):
        if key not in seen:
            at = keys.index(old[i - 1]) + 1 if i else 0
            keys.insert(at, key)
            seen.add(key)
    return keys


def _vals(flat: dict[str, Any]) -> dict[str, _Val]:
    return {k: _Val(v, v) for k, v in flat.items()}


# --------------------------------------------------------------------------- rules


def _mentions_rule(annotation: Any) -> bool:
    if isinstance(annotation, type) and issubclass(annotation, Rule):
        return True
    return any(_mentions_rule(a) for a in get_args(annotation))


def _rule_fields(model: type[BaseModel]) -> set[str]:
    """The YAML names of a spec's rule fields (``files``, ``sysctls``, ``kernel``, ...), found from the model."""
    return {info.alias or name for name, info in model.model_fields.items() if _mentions_rule(info.annotation)}


def _rule_values(bset: BaselineSet, baseline: str, rule: Rule, *, listing: str | None = None) -> dict[str, _Val]:
    """A rule's fields by YAML name; a file's ``content`` is its effective bytes (inline or ``source:``).

    ``listing`` (a rule only on one side, named by its claim): the fields written, less the claimed one.
    """
    data = _dump(rule, exclude=None if listing is None else {listing}, exclude_defaults=listing is not None)
    vals = _vals(data)
    if isinstance(rule, ManagedFile):
        digest: str | None = None
        shown: Any = None
        if rule.content is not None:
            digest, shown = hashlib.sha256(rule.content.encode("utf-8")).hexdigest(), rule.content
        elif rule.source is not None:
            digest = bset.source_digests.get((baseline, rule.source))
            shown = None if digest is None else f"sha256:{digest[:16]}"
        vals["content"] = _Val(digest, shown, rule.sensitive)
    return vals


def _rules(bset: BaselineSet, b: HostBaseline) -> dict[str, tuple[Handler[Any], Rule]]:
    """Claim -> (kind handler, rule) of every rule of a host baseline (claims are unique in a valid set)."""
    out: dict[str, tuple[Handler[Any], Rule]] = {}
    for _alias, _i, rule in b.spec.rules():
        handler = kinds.rule_handler(rule)
        claim = handler.claim(rule)
        n, key = 2, claim
        while key in out:  # the loader refuses this; never lose a rule if it did not
            key, n = f"{claim} #{n}", n + 1
        out[key] = (handler, rule)
    return out


def _only(values: dict[str, _Val], *, added: bool) -> tuple[FieldChange, ...]:
    """The fields of a rule or baseline that is only on one side (unset fields left out)."""
    present = {k: v for k, v in values.items() if v.cmp is not None}
    empty: dict[str, _Val] = {}
    return _compare(empty, present) if added else _compare(present, empty)


def _rule_changes(name: str, old_set: BaselineSet, old: HostBaseline | None, new_set: BaselineSet,
                  new: HostBaseline | None) -> tuple[RuleChange, ...]:
    a = _rules(old_set, old) if old is not None else {}
    b = _rules(new_set, new) if new is not None else {}
    out: list[RuleChange] = []
    for claim in sorted(a.keys() | b.keys()):
        if claim not in b:
            h, rule = a[claim]
            listed = _rule_values(old_set, name, rule, listing=h.claim_field or "")
            out.append(RuleChange(claim, h.kind, "removed", _only(listed, added=False)))
        elif claim not in a:
            h, rule = b[claim]
            listed = _rule_values(new_set, name, rule, listing=h.claim_field or "")
            out.append(RuleChange(claim, h.kind, "added", _only(listed, added=True)))
        else:
            (oh, orule), (nh, nrule) = a[claim], b[claim]
            okind, nkind = oh.kind, nh.kind
            fields = _compare(_rule_values(old_set, name, orule), _rule_values(new_set, name, nrule))
            if okind != nkind:
                fields = (FieldChange("kind", okind, nkind), *fields)
            if fields:
                out.append(RuleChange(claim, nkind, "changed", fields))
    return tuple(out)


# --------------------------------------------------------------------------- baselines


def _settings(b: AnyBaseline, *, exclude_defaults: bool = False) -> dict[str, Any]:
    """Everything but the rules, by dotted path: ``metadata.labels.*``, ``metadata.annotations.*``, ``spec.*``."""
    flat: dict[str, Any] = {}
    _flatten("metadata", _dump(b.metadata, exclude={"name"}, exclude_defaults=exclude_defaults), flat)
    rule_fields = _rule_fields(type(b.spec)) if isinstance(b, HostBaseline) else set()
    _flatten("spec", _dump(b.spec, exclude=rule_fields, exclude_defaults=exclude_defaults), flat)
    return flat


def _one_sided(bset: BaselineSet, b: AnyBaseline, change: Change) -> BaselineChange:
    host = b if isinstance(b, HostBaseline) else None
    empty = BaselineSet.empty()
    name = b.metadata.name
    rules = (_rule_changes(name, empty, None, bset, host) if change == "added"
             else _rule_changes(name, bset, host, empty, None))
    fields = _only(_vals(_settings(b, exclude_defaults=True)), added=change == "added")
    return BaselineChange(name, b.kind, change, rules, fields)


def diff_sets(old: BaselineSet, new: BaselineSet) -> SetDiff:
    """Every baseline added, removed or changed from ``old`` to ``new``, sorted by name (then removed before added)."""
    a = {b.metadata.name: b for b in old.baselines}
    b = {x.metadata.name: x for x in new.baselines}
    out: list[BaselineChange] = []
    for name in sorted(a.keys() | b.keys()):
        ob, nb = a.get(name), b.get(name)
        if ob is None or nb is None or ob.kind != nb.kind:
            if ob is not None:
                out.append(_one_sided(old, ob, "removed"))
            if nb is not None:
                out.append(_one_sided(new, nb, "added"))
            continue
        fields = _compare(_vals(_settings(ob)), _vals(_settings(nb)))
        rules = _rule_changes(name, old, ob if isinstance(ob, HostBaseline) else None,
                              new, nb if isinstance(nb, HostBaseline) else None)
        if fields or rules:
            out.append(BaselineChange(name, nb.kind, "changed", rules, fields))
    return SetDiff(old.version, new.version, tuple(out))


# --------------------------------------------------------------------------- text


def _show(value: Any, limit: int = 72) -> str:
    """A value for a reader: bare words and numbers as they are, other strings quoted, unset as ``(unset)``."""
    if value is None:
        return "(unset)"
    if value is True or value is False:
        return "true" if value else "false"
    if value == SENSITIVE:
        return SENSITIVE
    if isinstance(value, str) and value and not any(c.isspace() or c in "\"'{}[],#" for c in value):
        text = value
    else:
        text = json.dumps(value, ensure_ascii=False, separators=(", ", ": "))
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _field_lines(fields: tuple[FieldChange, ...], indent: str, *, both: bool) -> list[str]:
    """``field: old -> new`` (``both``) or ``field: value`` lines, field names right-aligned on the colon."""
    width = max((len(f.field) for f in fields), default=0)
    lines = []
    for f in fields:
        name = f"{' ' * (width - len(f.field))}{f.field}:"
        if f.sensitive and both and f.old is not None and f.new is not None:
            lines.append(f"{indent}{name} <changed, sensitive>")
        elif both:
            lines.append(f"{indent}{name} {_show(f.old)} -> {_show(f.new)}")
        else:
            lines.append(f"{indent}{name} {_show(f.new if f.old is None else f.old)}")
    return lines


def summary_line(d: SetDiff) -> str:
    s = d.summary()
    bl, rules = s["baselines"], s["rules"]
    n = sum(bl.values())
    return (f"{n} baseline{'' if n == 1 else 's'} changed: {bl['added']} added, {bl['removed']} removed, "
            f"{bl['changed']} changed; rules: {rules['added']} added, {rules['removed']} removed, "
            f"{rules['changed']} changed; settings: {s['fields']} changed")


def render_text(d: SetDiff, old_ref: str, new_ref: str) -> str:
    """The text of ``baseline diff``: a header per side, ``+``/``-``/``~`` per baseline, rule and field, a summary."""
    lines = [f"--- {old_ref} (version {d.old_version})", f"+++ {new_ref} (version {d.new_version})"]
    for b in d.baselines:
        lines.append(f"{_MARK[b.change]} {b.kind} {b.name}")
        both = b.change == "changed"
        if b.fields:
            if both:
                lines.extend(_field_lines(b.fields, "    ~ ", both=True))
            else:
                lines.extend(_field_lines(b.fields, "      ", both=False))
        for r in b.rules:
            kind = "" if r.rule.split(" ", 1)[0] == r.kind else f" ({r.kind})"  # path: file or directory
            lines.append(f"    {_MARK[r.change]} {r.rule}{kind}")
            lines.extend(_field_lines(r.fields, "        ", both=r.change == "changed"))
    lines.append(summary_line(d))
    return "\n".join(lines) + "\n"


__all__ = ["BaselineChange", "FieldChange", "RuleChange", "SetDiff", "diff_sets", "render_text", "summary_line"]
