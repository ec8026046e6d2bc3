"""Start-up cache of a validated baseline set: JSON entries under ``<state-dir>/cache`` (never pickle).

Pipeline position: baseline loading.  :func:`driftd.baselines.loader.load_set` given ``cache_dir``
reads and hashes every YAML file as always, then asks for the entry of :func:`key` (every YAML
file's name and sha256 in the order found, the directory, the loader's options, the signature and
``allowed_signers`` bytes, the driftd version and :func:`code_fingerprint`).  An entry holds what
a full load computed (each baseline's dump — a HostBaseline's rules as lines of their own, which a hit keeps
as JSON for compile to validate one at a time, :data:`RuleLine` — the ``source:`` files with their sha256,
hashes, version, warnings); the loader re-reads every listed source through its own checks and
compares digests before it trusts one, so any changed byte is a miss and a full load.  An entry
that is corrupt, truncated, foreign or unreadable is a miss, never an error; writing one is atomic
(temp file, rename) and never fails a load; only the newest :data:`MAX_ENTRIES` are kept.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import secrets
import stat
import sys
import time
import typing
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import timedelta
from enum import Enum
from pathlib import Path
from typing import Any

import pydantic
import yaml

import driftd
from driftd.baselines.guardrails import Guardrails
from driftd.core import kinds
from driftd.models.baseline import HostBaseline, HostSpec, Rule
from driftd.models.kinds import BASELINE_KINDS, AnyBaseline

FORMAT = 2  # 2: a HostBaseline's rules as lines of their own (RuleLine), not inside its model
MAX_ENTRIES = 4  # a daemon and a few one-shot runs over other directories; never grows past this
MAX_ENTRY_BYTES = 1 << 30
_PREFIX, _SUFFIX, _TMP = "baselines-", ".json", ".tmp-"
_STALE_TMP_SECONDS = 600
_CODE = ("models", "baselines", "core")  # the code that decides what a set's files mean (schemas, lint, claims)


@functools.cache
def code_fingerprint() -> str | None:
    """sha256 of driftd's validating code and the libraries under it, once per process (None: unreadable, no cache)."""
    pkg = Path(driftd.__file__).resolve().parent
    h = hashlib.sha256(f"driftd {driftd.__version__}\0python {sys.version}\0pydantic {pydantic.VERSION}\0"
                       f"pyyaml {yaml.__version__}\0".encode())
    try:
        for sub in _CODE:
            for p in sorted((pkg / sub).rglob("*.py")):
                h.update(p.relative_to(pkg).as_posix().encode() + b"\0" + p.read_bytes() + b"\0")
    except OSError:
        return None
    return h.hexdigest()


def key(*, directory: str, yaml_files: Sequence[tuple[str, str]], max_file_bytes: int, guardrails: Guardrails,
        allowed_signers: str | None, signature: bytes | None, signers: bytes | None) -> str | None:
    """The entry a load may reuse: everything the loader's result depends on besides the ``source:`` bytes."""
    code = code_fingerprint()
    if code is None:
        return None
    parts = {
        "format": FORMAT, "code": code, "directory": directory, "yaml": [list(f) for f in yaml_files],
        "max_file_bytes": max_file_bytes, "guardrails": [list(map(list, guardrails.paths)), list(map(list, guardrails.sysctls))],
        "allowed_signers": allowed_signers,
        "signature": None if signature is None else hashlib.sha256(signature).hexdigest(),
        "signers": None if signers is None else hashlib.sha256(signers).hexdigest(),
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()


RuleLine = tuple[str, tuple[int, int], bytes]
"""One rule of a HostBaseline kept as JSON: (its ``spec`` field, its kind handler's sort key, the rule's JSON).

A hit does not build the rules as models (10,000 files: 7.4 MiB of pydantic objects the agent would hold for
its life); compile validates each line as it reaches it (``core.compile.iter_host``), so one rule at a time
exists as a model."""


RULE_FIELDS = HostSpec.rule_fields()


def rule_of(line: RuleLine) -> Rule:
    """The rule model of a cached rule line (validated from its JSON, in pydantic-core)."""
    return RULE_FIELDS[line[0]].model_validate_json(line[2])


Source = tuple[str, str, str, str]
"""One ``source:`` file a set read, in the order read: (baseline, its file's directory, source, sha256 hex)."""


@dataclass(frozen=True)
class Entry:
    """A validated set as a full load gave it (the models still as JSON lines until :meth:`baselines`)."""

    key: str
    version: str
    groups: tuple[tuple[str, str, list[str]], ...]  # (baseline, directory, [source, sha256, source, sha256, ...])
    hashes: dict[str, str]
    files: dict[str, str]
    warnings: tuple[tuple[str, int, str, str, str], ...]  # Problem fields: file, line, field, reason, severity
    kinds: tuple[str, ...]
    lines: tuple[bytes, ...] = ()
    rules: tuple[tuple[RuleLine, ...], ...] = ()  # per baseline (HostBaseline: its rules; others: none)

    def sources(self) -> Iterator[Source]:
        for baseline, base_dir, flat in self.groups:
            for i in range(0, len(flat) - 1, 2):
                yield baseline, base_dir, flat[i], flat[i + 1]

    def baselines(self) -> tuple[AnyBaseline, ...] | None:
        """The models rebuilt from their JSON lines; None if any line no longer validates."""
        try:
            # parsed by pydantic-core straight into the models: no Python dicts of the whole set in between
            return tuple(BASELINE_KINDS[k].model_validate_json(line) for k, line in zip(self.kinds, self.lines, strict=True))
        except (KeyError, ValueError):  # pydantic's ValidationError is a ValueError (and so is a JSON error)
            return None


def _encode(o: object) -> object:
    if isinstance(o, timedelta):  # the schema reads a number as seconds (its JSON dump is ISO 8601, which it does not)
        return o.total_seconds()
    if isinstance(o, Enum):
        return o.value
    raise TypeError(f"{type(o).__name__} is not cached")


def _line(model: Any) -> bytes:
    return json.dumps(model.model_dump(mode="python", by_alias=True, exclude_unset=True), default=_encode,
                      separators=(",", ":"), ensure_ascii=False).encode()


def split(model: AnyBaseline) -> tuple[AnyBaseline, tuple[RuleLine, ...]]:
    """A HostBaseline as its shell (every rule field emptied) and its rules as lines; any other kind as it is."""
    if not isinstance(model, HostBaseline):
        return model, ()
    emptied: dict[str, Any] = {}
    rules: list[RuleLine] = []
    for name in RULE_FIELDS:
        value = getattr(model.spec, name)
        if value:  # only the fields that hold rules: an unset field stays unset
            emptied[name] = [] if isinstance(value, list) else None
            for rule in (value if isinstance(value, list) else [value]):
                rules.append((name, kinds.rule_handler(rule).sort_key(rule), _line(rule)))
    shell = model.model_copy(update={"spec": model.spec.model_copy(update=emptied)}) if emptied else model
    return shell, tuple(rules)


def join(shell: AnyBaseline, rules: Sequence[RuleLine]) -> AnyBaseline:
    """The whole model again (to check a split before it is stored; a hit never builds it)."""
    if not rules or not isinstance(shell, HostBaseline):
        return shell
    by_field: dict[str, list[Rule]] = {}
    for line in rules:
        by_field.setdefault(line[0], []).append(rule_of(line))
    update: dict[str, Any] = {n: (v if typing.get_origin(HostSpec.model_fields[n].annotation) is list else v[0])
                              for n, v in by_field.items()}
    return shell.model_copy(update={"spec": shell.spec.model_copy(update=update)})


def _dump(model: AnyBaseline) -> tuple[bytes, tuple[RuleLine, ...]] | None:
    """One model as the JSON line (and rule lines) it is rebuilt from, if that rebuilds exactly it (else no entry).

    Exactly: equal, and with the same fields set all the way down (the rebuilt model dumps to the same line).
    """
    try:
        shell, rules = split(model)
        line = _line(shell)
        back = join(type(model).model_validate_json(line), rules)  # as a hit rebuilds the shell, and compile the rules
        return (line, rules) if back == model and _line(back) == _line(model) else None
    except (TypeError, ValueError, LookupError):
        return None


def _name(k: str) -> str:
    return f"{_PREFIX}{k}{_SUFFIX}"


def load(cache_dir: str | os.PathLike[str], k: str) -> Entry | None:
    """The entry stored under ``k``, or None (absent, unreadable, corrupt, truncated, another key or format)."""
    try:
        fd = os.open(os.path.join(cache_dir, _name(k)), os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError:
        return None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_size > MAX_ENTRY_BYTES:
            return None
        chunks = []
        while chunk := os.read(fd, max(st.st_size, 1 << 16)):
            chunks.append(chunk)
        raw = b"".join(chunks)
    except OSError:
        return None
    finally:
        os.close(fd)
    try:
        return _decode(raw, k)
    except (ValueError, TypeError, KeyError, IndexError, AttributeError):
        return None


def _decode(raw: bytes, k: str) -> Entry | None:
    head, sep, body = raw.partition(b"\n")
    if not sep:
        return None
    h = json.loads(head)
    if not isinstance(h, dict) or h.get("format") != FORMAT or h.get("key") != k:
        return None
    if h["body"] != hashlib.sha256(body).hexdigest():  # truncated or altered after the header was written
        return None
    *all_lines, last = body.split(b"\n")
    kinds = tuple(_str(x) for x in h["kinds"])
    counts = [_int(n) for n in h["rules"]]
    if last or len(counts) != len(kinds) or len(all_lines) != len(kinds) + sum(counts):
        return None
    lines: list[bytes] = []
    rules: list[tuple[RuleLine, ...]] = []
    i = 0
    for n in counts:
        lines.append(all_lines[i])
        rules.append(tuple(_rule_line(x) for x in all_lines[i + 1:i + 1 + n]))
        i += 1 + n
    groups = []
    for baseline, base_dir, flat in h["sources"]:
        if not isinstance(flat, list) or len(flat) % 2 or not all(isinstance(x, str) for x in flat):
            return None
        groups.append((_str(baseline), _str(base_dir), flat))
    return Entry(
        key=k, version=_str(h["version"]), groups=tuple(groups),
        hashes=_str_dict(h["hashes"]), files=_str_dict(h["files"]),
        warnings=tuple((_str(w[0]), _int(w[1]), _str(w[2]), _str(w[3]), _str(w[4])) for w in h["warnings"]),
        kinds=kinds, lines=tuple(lines), rules=tuple(rules),
    )


_FIELD_OF = {name.encode(): name for name in RULE_FIELDS}
_SORT_KEYS: dict[tuple[int, int], tuple[int, int]] = {}


def _rule_line(raw: bytes) -> RuleLine:
    field, k0, k1, body = raw.split(b"\t", 3)
    name = _FIELD_OF.get(field)
    if name is None:
        raise TypeError("not a rule field")
    key = (int(k0), int(k1))
    return name, _SORT_KEYS.setdefault(key, key), body  # one field name and sort key object for all lines


def _str(v: object) -> str:
    if not isinstance(v, str):
        raise TypeError("not a string")
    return v


def _int(v: object) -> int:
    if not isinstance(v, int) or isinstance(v, bool):
        raise TypeError("not an integer")
    return v


def _str_dict(v: object) -> dict[str, str]:
    if not isinstance(v, dict):
        raise TypeError("not a mapping")
    return {_str(a): _str(b) for a, b in v.items()}


def store(cache_dir: str | os.PathLike[str], k: str, *, version: str, baselines: Sequence[AnyBaseline],
          sources: Iterable[Source], hashes: dict[str, str], files: dict[str, str],
          warnings: Iterable[tuple[str, int, str, str, str]]) -> bool:
    """Write the entry of ``k`` atomically and keep the newest MAX_ENTRIES; False (nothing written) on any failure."""
    lines = []
    counts = []
    for b in baselines:
        dumped = _dump(b)
        if dumped is None:
            return False
        line, rules = dumped
        lines.append(line + b"\n")
        # a rule line: field TAB sort key TAB sort key TAB JSON (JSON has no raw tab or newline)
        lines.extend(b"%s\t%d\t%d\t%s\n" % (f.encode(), k[0], k[1], j) for f, k, j in rules)
        counts.append(len(rules))
    body = b"".join(lines)
    groups: list[list[Any]] = []
    for baseline, base_dir, source, sha in sources:  # consecutive sources of one baseline file share a group
        if not groups or groups[-1][0] != baseline or groups[-1][1] != base_dir:
            groups.append([baseline, base_dir, []])
        groups[-1][2] += (source, sha)
    head = json.dumps({
        "format": FORMAT, "key": k, "version": version, "body": hashlib.sha256(body).hexdigest(),
        "kinds": [b.kind for b in baselines], "rules": counts,
        "sources": groups, "hashes": hashes, "files": files, "warnings": [list(w) for w in warnings],
    }, separators=(",", ":"), ensure_ascii=False).encode()
    try:
        with contextlib.suppress(FileExistsError):
            os.mkdir(cache_dir, 0o700)  # in the state directory, which is not made here (a lint run has none)
        tmp = os.path.join(cache_dir, f"{_TMP}{os.getpid()}-{secrets.token_hex(8)}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(head + b"\n" + body)
            os.replace(tmp, os.path.join(cache_dir, _name(k)))
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
    except OSError:
        return False
    _prune(cache_dir, keep=_name(k))
    return True


def _prune(cache_dir: str | os.PathLike[str], keep: str) -> None:
    """Drop all but the newest MAX_ENTRIES entries (``keep`` is one of them) and temp files left by a crash."""
    now = time.time()
    entries: list[tuple[float, str]] = []
    try:
        with os.scandir(cache_dir) as it:
            for e in it:
                with contextlib.suppress(OSError):
                    st = e.stat(follow_symlinks=False)
                    if e.name.startswith(_TMP) and now - st.st_mtime > _STALE_TMP_SECONDS:
                        os.unlink(e.path)
                    elif e.name.startswith(_PREFIX) and e.name.endswith(_SUFFIX) and e.name != keep:
                        entries.append((st.st_mtime, e.path))
    except OSError:
        return
    for _, path in sorted(entries, reverse=True)[MAX_ENTRIES - 1:]:
        with contextlib.suppress(OSError):
            os.unlink(path)


__all__ = ["FORMAT", "MAX_ENTRIES", "Entry", "Source", "code_fingerprint", "key", "load", "store"]
