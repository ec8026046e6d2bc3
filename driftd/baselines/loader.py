"""Load and lint a baselines directory (filesystem edge of the baseline set).

Pipeline position: **load** → compile → scan.  Reads every ``*.yaml``/``*.yml`` below the
directory in one go (dot-entries such as a ConfigMap's ``..data`` are skipped; the
symlinks pointing into them are followed), validates each document against the pydantic
schema, checks the set as a whole (duplicate names, duplicate or conflicting claims), and
returns either a complete :class:`BaselineSet` or the problems, each as
``FILE:LINE: field: reason``.  Never a partial set.

It also records the sha256 of every file it read (``BaselineSet.file_digests``, what a set's
manifest lists), each computed once (:func:`_sha256`) and reused: a ``source:`` file's digest
(``BaselineSet.source_digests``) is its manifest line, its part of its baseline's hash and, through
:class:`~driftd.core.kinds.file.SourceBytes`, the desired digest compile gives the file; given ``allowed_signers`` (setting ``require_signature``), a set is only
complete when :func:`driftd.baselines.signing.verify_set` accepts its signature over exactly
those bytes, so an unsigned, wrongly signed or altered set is rejected like an invalid one.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import posixpath
import stat
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from driftd.baselines import cache
from driftd.baselines.guardrails import DEFAULT as DEFAULT_GUARDRAILS
from driftd.baselines.guardrails import Guardrails, findings
from driftd.baselines.manifest import SIGNATURE_FILE, check_path
from driftd.core import kinds
from driftd.core.kinds.file import SourceBytes
from driftd.core.selectors import may_overlap
from driftd.models.baseline import HostBaseline, Rule
from driftd.models.container import ContainerBaseline
from driftd.models.kinds import BASELINE_KINDS, AnyBaseline

DEFAULT_MAX_FILE_BYTES = 8 * 1024 * 1024
_Loader: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


@dataclass(frozen=True, order=True)
class Problem:
    """One lint finding, printed as ``FILE:LINE: field: reason``."""

    file: str
    line: int
    field: str
    reason: str
    severity: str = "error"

    def __str__(self) -> str:
        prefix = "" if self.severity == "error" else f"{self.severity}: "
        return f"{self.file}:{self.line}: {self.field}: {prefix}{self.reason}"


@dataclass(frozen=True)
class BaselineSet:
    """A complete, valid set of baselines with the bytes of every ``source`` file."""

    directory: str
    baselines: tuple[AnyBaseline, ...]
    sources: dict[tuple[str, str], bytes]
    files: dict[str, str]
    hashes: dict[str, str]
    version: str
    warnings: tuple[Problem, ...] = ()
    file_digests: dict[str, str] = field(default_factory=dict)  # every file read: relative path -> sha256
    signed_by: str | None = None  # who signed it, when the signature was verified
    source_digests: dict[tuple[str, str], str] = field(default_factory=dict)  # key of ``sources`` -> sha256 hex
    # a set from the start-up cache: each HostBaseline's rules as JSON lines (its model holds none), compiled one
    # at a time (``core.compile.iter_host``); empty for a full load, whose models hold their rules
    rule_lines: dict[str, tuple[tuple[str, tuple[int, int], bytes], ...]] = field(default_factory=dict)

    @classmethod
    def empty(cls, directory: str = "") -> BaselineSet:
        return cls(directory=directory, baselines=(), sources={}, files={}, hashes={}, version="none")


# --------------------------------------------------------------------------- YAML


class _Text:
    """A YAML file's text and, composed only when a line is first asked for, its documents' node trees.

    A valid set never composes them: its data is built from parser events (:func:`_lean_documents`),
    so no tree of nodes with their Marks is held for a whole document, let alone a whole set.
    """

    def __init__(self, text: str, roots: list[yaml.Node] | None = None) -> None:
        self.text = text
        self._roots = roots

    def roots(self) -> list[yaml.Node]:
        if self._roots is None:
            roots: list[yaml.Node] = []
            with contextlib.suppress(yaml.YAMLError):  # the documents before an error are the ones the loader kept
                roots.extend(r for r in yaml.compose_all(self.text, Loader=_Loader) if r is not None)
            self._roots = roots
        return self._roots


@dataclass
class _Doc:
    file: str
    text: _Text
    index: int  # of the document in its file
    data: Any
    model: AnyBaseline | None = None
    base_dir: str = ""

    @property
    def root(self) -> yaml.Node:
        return self.text.roots()[self.index]

    def line_of(self, loc: tuple[str | int, ...]) -> int:
        """1-based line of the deepest node reachable along ``loc`` (composes the file on first use)."""
        node = self.root
        line = node.start_mark.line
        for part in loc:
            if isinstance(node, yaml.MappingNode):
                for k, v in node.value:
                    if k.value == part:
                        line, node = k.start_mark.line, v
                        break
                else:
                    break
            elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
                node = node.value[part]
                line = node.start_mark.line
            else:
                break
        return line + 1


def _dup_keys(node: yaml.Node, path: str = "") -> Iterator[tuple[int, str, str]]:
    if isinstance(node, yaml.MappingNode):
        seen: set[object] = set()
        for k, v in node.value:
            key = k.value
            sub = f"{path}.{key}" if path else str(key)
            if key in seen:
                yield k.start_mark.line + 1, sub, "duplicate key (YAML would silently keep the last one)"
            seen.add(key)
            yield from _dup_keys(v, sub)
    elif isinstance(node, yaml.SequenceNode):
        for i, v in enumerate(node.value):
            yield from _dup_keys(v, f"{path}[{i}]")


_STR_TAG = "tag:yaml.org,2002:str"
_MAP_TAG = "tag:yaml.org,2002:map"
_SEQ_TAG = "tag:yaml.org,2002:seq"
_SCALAR_TAGS = frozenset(f"tag:yaml.org,2002:{t}" for t in ("str", "null", "bool", "int", "float", "binary", "timestamp"))
_DUP_REASON = "duplicate key (YAML would silently keep the last one)"
_RESOLVER = yaml.resolver.Resolver()


class _SlowPath(Exception):
    """The document uses a YAML feature left to PyYAML's constructor."""


MAX_DEPTH = 64  # nesting of collections; real baselines stay below 10
MAX_NODES = 1_000_000  # YAML nodes a document may expand to once aliases are followed


class _Hostile(Exception):
    """A document no baseline needs: nested too deep, or expanding (through aliases) past MAX_NODES."""

    def __init__(self, line: int, reason: str) -> None:
        super().__init__(reason)
        self.line = line


def _check_bounds(root: yaml.Node) -> None:
    """Refuse alias bombs ("billion laughs"), recursive aliases and deep nesting, in time linear in the text.

    An iterative post-order walk over the node graph: each node's expanded size and depth
    are computed once (aliases share node objects), so a document of a few hundred bytes
    that would expand to 10^9 nodes is refused after visiting its few dozen real nodes.
    """
    size: dict[int, int] = {}
    depth: dict[int, int] = {}
    on_path: set[int] = set()
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, done = stack.pop()
        nid = id(node)
        children: list[yaml.Node] = []
        if isinstance(node, yaml.SequenceNode):
            children = list(node.value)
        elif isinstance(node, yaml.MappingNode):
            children = [n for kv in node.value for n in kv]
        if done:
            on_path.discard(nid)
            size[nid] = 1 + sum(size[id(c)] for c in children)
            depth[nid] = 1 + max((depth[id(c)] for c in children), default=0)
            if size[nid] > MAX_NODES:
                raise _Hostile(node.start_mark.line + 1, f"document expands to more than {MAX_NODES} YAML nodes through aliases (an alias bomb?); refused")
            if depth[nid] > MAX_DEPTH:
                raise _Hostile(node.start_mark.line + 1, f"collections nested deeper than {MAX_DEPTH} levels; refused")
            continue
        if nid in size:
            continue
        if nid in on_path:
            raise _Hostile(node.start_mark.line + 1, "recursive alias (a node contains itself); refused")
        on_path.add(nid)
        stack.append((node, True))
        stack.extend((c, False) for c in children if id(c) not in size)


def _fast_construct(root: yaml.Node) -> tuple[Any, list[tuple[int, str, str]]]:
    """Plain data of a composed document and its duplicate keys, in one walk.

    Gives what ``_dup_keys`` + ``SafeConstructor.construct_document`` give, for documents
    of plain mappings, sequences and scalars (what baselines are) at a fraction of the
    cost; aliases, merge keys, explicit collection tags or complex keys raise _SlowPath.
    """
    builder = _Builder()
    return builder.build(root, ""), builder.dups


class _Builder:
    """State of one ``_fast_construct`` walk (a class, not a closure: no reference cycle to outlive it)."""

    def __init__(self) -> None:
        self.ctor = yaml.constructor.SafeConstructor()
        self.dups: list[tuple[int, str, str]] = []
        self.visited: set[int] = set()

    def build(self, node: yaml.Node, path: str, depth: int = 0) -> Any:
        if id(node) in self.visited:  # an alias: shared (maybe recursive) objects
            raise _SlowPath
        if depth > MAX_DEPTH:
            raise _Hostile(node.start_mark.line + 1, f"collections nested deeper than {MAX_DEPTH} levels; refused")
        self.visited.add(id(node))
        tag = node.tag
        if isinstance(node, yaml.ScalarNode):
            if tag == _STR_TAG:
                return node.value
            if tag in _SCALAR_TAGS:
                return self.ctor.yaml_constructors[tag](self.ctor, node)
            raise _SlowPath
        if isinstance(node, yaml.MappingNode) and tag == _MAP_TAG:
            out: dict[Any, Any] = {}
            seen: set[str] = set()
            for k, v in node.value:
                if not isinstance(k, yaml.ScalarNode) or k.tag not in _SCALAR_TAGS:
                    raise _SlowPath  # merge keys ('<<'), '=' keys, complex keys
                key = k.value
                sub = f"{path}.{key}" if path else key
                if key in seen:
                    self.dups.append((k.start_mark.line + 1, sub, _DUP_REASON))
                seen.add(key)
                out[self.build(k, "", depth + 1)] = self.build(v, sub, depth + 1)
            return out
        if isinstance(node, yaml.SequenceNode) and tag == _SEQ_TAG:
            return [self.build(v, f"{path}[{i}]", depth + 1) for i, v in enumerate(node.value)]
        raise _SlowPath


def _fmt_loc(loc: tuple[str | int, ...]) -> str:
    out = ""
    for p in loc:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out or "(document)"


def _read(path: str | os.PathLike[str], rel: str, max_bytes: int, problems: list[Problem]) -> bytes | None:
    try:
        # O_NONBLOCK: opening a FIFO must not hang the loader (and with it the daemon's reload)
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        try:
            st = os.fstat(fd)
            if stat.S_ISDIR(st.st_mode):
                raise IsADirectoryError(path)
            if not stat.S_ISREG(st.st_mode):
                problems.append(Problem(rel, 1, "(file)", "not a regular file"))
                return None
            size = st.st_size
            if size > max_bytes:
                problems.append(Problem(rel, 1, "(file)", f"file is {size} bytes, over the {max_bytes}-byte limit"))
                return None
            return _read_fd(fd, size, max_bytes)
        finally:
            os.close(fd)
    except PermissionError:
        problems.append(Problem(rel, 1, "(file)", "permission denied"))
    except IsADirectoryError:
        problems.append(Problem(rel, 1, "(file)", "is a directory"))
    except OSError as e:
        problems.append(Problem(rel, 1, "(file)", f"cannot read: {e.strerror or e}"))
    return None


def _read_fd(fd: int, size: int, max_bytes: int) -> bytes:
    """Up to ``max_bytes + 1`` bytes to end of file (a file grown past the limit shows as too long), in
    one ``read`` of ``size + 1`` for a file that did not change: no max-size buffer per small file."""
    first = os.read(fd, size + 1)
    if not first:
        return first
    parts, total = [first], len(first)
    while total <= max_bytes:
        chunk = os.read(fd, min(max(size + 1, 65536), max_bytes + 1 - total))
        if not chunk:
            break
        parts.append(chunk)
        total += len(chunk)
    return first if len(parts) == 1 else b"".join(parts)


_NO_KEY: Any = object()


class _Frame:
    """An open mapping or sequence of :func:`_lean_documents`: its object, path and (mapping) keys seen."""

    __slots__ = ("key", "obj", "path", "seen", "sub")

    def __init__(self, obj: dict[Any, Any] | list[Any], path: str) -> None:
        self.obj = obj
        self.path = path
        self.seen: set[str] = set()
        self.key: Any = _NO_KEY  # a mapping's key waiting for its value
        self.sub = ""  # that key's dotted path


def _lean_documents(text: str) -> Iterator[tuple[Any, list[tuple[int, str, str]]]]:
    """Plain data and duplicate keys of each document, built from the parser's events (no node tree).

    Gives what :func:`_fast_construct` gives over ``compose_all`` (same tags, same duplicate keys
    and lines), and raises _SlowPath where it would (aliases and anchors, merge keys, explicit
    collection tags, complex keys, a constructor's error) and past MAX_DEPTH: the caller then
    loads the file through the composer as ever (which refuses bombs with their lines).  Parser
    errors (yaml.YAMLError) propagate after the documents before them were yielded.
    """
    loader = _Loader(text)
    ctor = yaml.constructor.SafeConstructor()
    resolve: Callable[[type[yaml.Node], str, tuple[bool, bool]], str] = _RESOLVER.resolve
    scalar_event, map_start, seq_start = yaml.ScalarEvent, yaml.MappingStartEvent, yaml.SequenceStartEvent
    try:
        stack: list[_Frame] = []
        dups: list[tuple[int, str, str]] = []
        root: Any = None
        while True:
            ev = loader.get_event()
            cls = type(ev)
            if cls is scalar_event or cls is map_start or cls is seq_start:
                if ev.anchor is not None or len(stack) > MAX_DEPTH:
                    raise _SlowPath
                tag = ev.tag
                top = stack[-1] if stack else None
                if cls is scalar_event:
                    value = ev.value
                    if tag is None or tag == "!":
                        tag = resolve(yaml.ScalarNode, value, ev.implicit)
                    if tag == _STR_TAG:
                        obj: Any = value
                    elif tag in _SCALAR_TAGS:
                        try:
                            obj = ctor.yaml_constructors[tag](ctor, yaml.ScalarNode(tag, value, ev.start_mark, ev.end_mark))
                        except Exception as e:
                            raise _SlowPath from e  # PyYAML's constructor decides (and raises)
                    else:
                        raise _SlowPath
                    if top is not None and top.key is _NO_KEY and isinstance(top.obj, dict):
                        sub = f"{top.path}.{value}" if top.path else value
                        if value in top.seen:
                            dups.append((ev.start_mark.line + 1, sub, _DUP_REASON))
                        top.seen.add(value)
                        top.key, top.sub = obj, sub
                        continue
                    frame = None
                else:
                    default = _MAP_TAG if cls is map_start else _SEQ_TAG
                    if tag is not None and tag != "!" and tag != default:
                        raise _SlowPath
                    obj = {} if cls is map_start else []
                    frame = _Frame(obj, "")
                if top is None:
                    root = obj
                elif isinstance(top.obj, dict):
                    if top.key is _NO_KEY:
                        raise _SlowPath  # a collection as a key
                    top.obj[top.key] = obj
                    if frame is not None:
                        frame.path = top.sub
                    top.key = _NO_KEY
                else:
                    if frame is not None:
                        frame.path = f"{top.path}[{len(top.obj)}]"
                    top.obj.append(obj)
                if frame is not None:
                    stack.append(frame)
            elif cls is yaml.MappingEndEvent or cls is yaml.SequenceEndEvent:
                stack.pop()
            elif cls is yaml.DocumentEndEvent:
                yield root, dups
                root, dups = None, []
            elif cls is yaml.StreamEndEvent or ev is None:
                return
            elif cls is yaml.AliasEvent:
                raise _SlowPath
    finally:
        loader.dispose()


def _parse(rel: str, raw: bytes, problems: list[Problem]) -> list[_Doc]:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        problems.append(Problem(rel, line, "(file)", f"not valid UTF-8 (byte {e.start})"))
        return []
    try:
        return _parse_lean(rel, text, problems)
    except _SlowPath:
        return _parse_composed(rel, text, problems)


def _parse_lean(rel: str, text: str, problems: list[Problem]) -> list[_Doc]:
    """The documents of a plain file from parser events; _SlowPath (nothing reported) for anything else."""
    found: list[Problem] = []
    docs: list[_Doc] = []
    src = _Text(text)
    try:
        for data, dups in _lean_documents(text):
            found.extend(Problem(rel, line, fld, reason) for line, fld, reason in dups)
            docs.append(_Doc(file=rel, text=src, index=len(docs), data=data))
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = mark.line + 1 if mark is not None else 1
        found.append(Problem(rel, line, "(yaml)", str(getattr(e, "problem", None) or e)))
        problems.extend(found)
        return docs
    except _SlowPath:
        raise
    except Exception as e:  # anything unexpected: the composer's path decides, as it always did
        raise _SlowPath from e
    if not docs:
        found.append(
            Problem(rel, 1, "(file)", "holds no YAML document (empty, or truncated?): its rules would silently stop being enforced")
        )
    problems.extend(found)
    return docs


def _parse_composed(rel: str, text: str, problems: list[Problem]) -> list[_Doc]:
    """The documents of a file through ``compose_all`` (aliases, tags, bombs): node trees kept for lines."""
    docs: list[_Doc] = []
    roots: list[yaml.Node] = []
    src = _Text(text, roots)
    seen_any = False
    try:
        for root in yaml.compose_all(text, Loader=_Loader):
            if root is None:
                continue
            seen_any = True
            try:
                data, dups = _fast_construct(root)
            except _Hostile:
                raise
            except Exception:  # anything unusual: PyYAML's own constructor decides (and raises)
                _check_bounds(root)  # aliases: refuse a bomb before anything expands it
                dups = list(_dup_keys(root))
                for line, fld, reason in dups:
                    problems.append(Problem(rel, line, fld, reason))
                data = yaml.SafeLoader("").construct_document(root)
            else:
                for line, fld, reason in dups:
                    problems.append(Problem(rel, line, fld, reason))
            roots.append(root)
            docs.append(_Doc(file=rel, text=src, index=len(docs), data=data))
    except _Hostile as e:
        problems.append(Problem(rel, e.line, "(yaml)", str(e)))
        return []
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = mark.line + 1 if mark is not None else 1
        problems.append(Problem(rel, line, "(yaml)", str(getattr(e, "problem", None) or e)))
        return docs
    except RecursionError:  # the pure-Python composer on deep nesting
        problems.append(Problem(rel, 1, "(yaml)", f"collections nested deeper than {MAX_DEPTH} levels; refused"))
        return []
    if not seen_any:
        problems.append(
            Problem(rel, 1, "(file)", "holds no YAML document (empty, or truncated?): its rules would silently stop being enforced")
        )
    return docs


def _validate(doc: _Doc, problems: list[Problem]) -> None:
    data, doc.data = doc.data, None  # the model is what stays; its plain data can go now
    if not isinstance(data, dict):
        problems.append(
            Problem(doc.file, doc.line_of(()), "(document)", "expected a mapping with apiVersion, kind, metadata, spec")
        )
        return
    kind = data.get("kind")
    model_cls = BASELINE_KINDS.get(kind) if isinstance(kind, str) else None
    if model_cls is None:
        known = ", ".join(sorted(BASELINE_KINDS))
        problems.append(Problem(doc.file, doc.line_of(("kind",)), "kind", f"unknown kind {kind!r} (known: {known})"))
        return
    try:
        doc.model = model_cls.model_validate(data)
    except ValidationError as e:
        for err in e.errors():
            loc = tuple(err["loc"])
            msg = err["msg"].removeprefix("Value error, ")
            if err["type"] == "extra_forbidden":
                msg = "unknown field"
            problems.append(Problem(doc.file, doc.line_of(loc), _fmt_loc(loc), msg))


# --------------------------------------------------------------------------- set checks


def _claims(doc: _Doc) -> Iterator[tuple[str, tuple[str | int, ...], Rule]]:
    """Every rule of a HostBaseline with what its kind handler says it claims."""
    if not isinstance(doc.model, HostBaseline):
        return
    for alias, i, rule in doc.model.spec.rules():
        handler = kinds.rule_handler(rule)
        loc: tuple[str | int, ...] = ("spec", alias) if i is None else ("spec", alias, i)
        if handler.claim_field is not None:
            loc += (handler.claim_field,)
        yield handler.claim(rule), loc, rule


def _claim_value(rule: Rule) -> tuple[str, dict[str, Any]]:
    """What a claim asks for, dumped only when two claims collide (rare; dumps are not free)."""
    return type(rule).__name__, rule.model_dump()


def _check_set(docs: list[_Doc], problems: list[Problem], guardrails: Guardrails) -> None:
    names: dict[str, _Doc] = {}
    claims: dict[str, list[tuple[_Doc, tuple[str | int, ...], Rule]]] = {}
    for doc in docs:
        assert doc.model is not None
        name = doc.model.metadata.name
        if name in names:
            other = names[name]
            problems.append(
                Problem(
                    doc.file,
                    doc.line_of(("metadata", "name")),
                    "metadata.name",
                    f"duplicate baseline name {name!r} (also in {other.file}:{other.line_of(('metadata', 'name'))})",
                )
            )
        names.setdefault(name, doc)
        for what, loc, value in _claims(doc):
            for other, oloc, ovalue in claims.get(what, []):
                assert other.model is not None
                if other is doc:
                    problems.append(
                        Problem(
                            doc.file,
                            doc.line_of(loc),
                            _fmt_loc(loc),
                            f"{what} is listed twice in this baseline (first at line {doc.line_of(oloc)})",
                        )
                    )
                elif (
                    isinstance(doc.model, HostBaseline)
                    and isinstance(other.model, HostBaseline)
                    and may_overlap(doc.model.spec.selector, other.model.spec.selector)
                ):
                    kind = "duplicate" if _claim_value(value) == _claim_value(ovalue) else "conflicting"
                    problems.append(
                        Problem(
                            doc.file,
                            doc.line_of(loc),
                            _fmt_loc(loc),
                            f"{kind} claim on {what}: also governed by baseline "
                            f"{other.model.metadata.name!r} ({other.file}:{other.line_of(oloc)})",
                        )
                    )
            claims.setdefault(what, []).append((doc, loc, value))
        if isinstance(doc.model, ContainerBaseline):
            _check_container(doc, doc.model, problems)
        if isinstance(doc.model, HostBaseline):
            _check_host(doc, doc.model, problems, guardrails)


def _check_host(doc: _Doc, b: HostBaseline, problems: list[Problem], guardrails: Guardrails) -> None:
    """The guardrails: a dangerous rule is refused unless it says why (``allowDangerous``); then it is reported."""
    for g in findings(b, guardrails):
        line, where = doc.line_of(g.loc), _fmt_loc(g.loc)
        if g.allowed is None:
            problems.append(Problem(doc.file, line, where, f"{g.reason} (guardrail; a rule that must do this says why "
                                    "with allowDangerous: \"<reason>\")"))
        else:
            problems.append(Problem(doc.file, line, where, f"{g.reason}; allowed: {g.allowed}", "allowed-dangerous"))
    for i, f in enumerate(b.spec.files):
        if f.mode is not None and int(f.mode, 8) & 0o1000:
            loc = ("spec", "files", i, "mode")
            problems.append(Problem(doc.file, doc.line_of(loc), _fmt_loc(loc),
                                    f"mode {f.mode} sets the sticky bit on a file ({f.path}): it has no effect", "warning"))


def _check_container(doc: _Doc, b: ContainerBaseline, problems: list[Problem]) -> None:
    """Warnings a release engineer should see in review (they do not block loading)."""
    for i, ref in enumerate(b.spec.images.approved):
        if ref in b.spec.images.unpinned():
            loc = ("spec", "images", "approved", i)
            problems.append(
                Problem(doc.file, doc.line_of(loc), _fmt_loc(loc),
                        f"image {ref!r} is not pinned by digest; it is resolved to the image id the tag names "
                        "when the baseline loads (pin it: repo@sha256:... or sha256:<image id>)", "warning")
            )


def _sha256(data: bytes) -> str:
    """The one place a file's bytes are hashed (hex sha256): manifest, baseline hash and compile reuse it."""
    return hashlib.sha256(data).hexdigest()


class _SourceReader:
    """Resolves and reads ``source:`` files below one baselines directory (each source directory resolved once)."""

    def __init__(self, root: Path, max_bytes: int) -> None:
        self.root = os.fspath(root)
        self.root_real = os.path.realpath(self.root)
        self.inside = self.root_real.rstrip("/") + "/"
        self.max_bytes = max_bytes
        self.real_dirs: dict[str, str] = {}  # 10,000 sources in one directory: one realpath, not 10,000

    def path(self, base_dir: str, source: str) -> str:
        """``root / base_dir / source`` as pathlib spells it (empty and ``.`` parts dropped), without pathlib's cost."""
        parts = [p for part in (base_dir, source) for p in part.split("/") if p and p != "."]
        if not parts or self.root == ".":
            return "/".join(parts) or self.root
        return (self.root if self.root.endswith("/") else self.root + "/") + "/".join(parts)

    def read(self, base_dir: str, source: str, shown: str) -> bytes | str:
        """The bytes of a source, or why it cannot be one (inside the directory, a regular file, within the limit)."""
        p = self.path(base_dir, source)
        parent, name = os.path.split(p)
        try:
            real_dir = self.real_dirs.get(parent)
            if real_dir is None:
                real_dir = self.real_dirs[parent] = os.path.realpath(parent)
            real = os.path.join(real_dir, name)
            leaf = os.lstat(real)
            if stat.S_ISLNK(leaf.st_mode):  # a symlinked source: follow it all the way
                real = os.path.realpath(real)
        except FileNotFoundError:
            return f"source file {source!r} not found"
        except OSError as e:
            return f"cannot resolve: {e}"
        if real != self.root_real and not real.startswith(self.inside):
            return "source resolves outside the baselines directory"
        if not os.path.exists(real):
            return f"source file {source!r} not found"
        sub: list[Problem] = []
        data = _read(p, shown, self.max_bytes, sub)
        if data is None:
            return "; ".join(f"source {source!r}: {s.reason}" for s in sub)
        return data


def _manifest_rel(base_dir: str, source: str) -> str:
    """A source's manifest path: relative to the directory, as written, ``..`` folded."""
    rel = posixpath.normpath(posixpath.join(Path(base_dir).as_posix(), source))
    return source if rel == source else rel  # the one string when they are equal (10,000 sources: 0.6 MiB)


def _load_sources(
    doc: _Doc, reader: _SourceReader, problems: list[Problem], sources: SourceBytes, digest: Any,
    digests: dict[str, str], root: Path, read: list[cache.Source],
) -> None:
    """Read the ``source:`` files of ``doc``: bytes and sha256 into ``sources``, one manifest line each."""
    if not isinstance(doc.model, HostBaseline):
        return
    for i, f in enumerate(doc.model.spec.files):
        if f.source is None:
            continue
        data = reader.read(doc.base_dir, f.source, doc.file)
        if isinstance(data, str):
            loc = ("spec", "files", i, "source")
            problems.append(Problem(doc.file, doc.line_of(loc), _fmt_loc(loc), data))
            continue
        key = (doc.model.metadata.name, f.source)
        sources[key] = data
        sources.digests[key] = hexdigest = _sha256(data)
        digest.update(f.source.encode() + b"\0" + data)  # the set's version: as ever (signed sets keep theirs)
        _record(digests, _manifest_rel(doc.base_dir, f.source), hexdigest, root, problems)
        read.append((key[0], doc.base_dir, f.source, hexdigest))


def _yaml_files(directory: Path) -> list[Path]:
    out: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(directory, followlinks=True):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        out.extend(Path(dirpath) / n for n in sorted(filenames) if not n.startswith(".") and n.endswith((".yaml", ".yml")))
    return out


def load_set(
    directory: str | os.PathLike[str], *, max_file_bytes: int = DEFAULT_MAX_FILE_BYTES,
    guardrails: Guardrails = DEFAULT_GUARDRAILS, allowed_signers: str | os.PathLike[str] | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
) -> tuple[BaselineSet | None, list[Problem]]:
    """Load every baseline below ``directory``: a complete set, or None and the problems.

    With ``allowed_signers`` the set must also carry a valid signature by one of them over
    what was read (``field`` ``(signature)`` in the problems otherwise).  With ``cache_dir`` a
    set whose every byte (and driftd's code and the options) is unchanged since a full load
    stored it there is rebuilt from that entry (:mod:`driftd.baselines.cache`) instead of parsed,
    validated and linted again; the result is the same.
    Never raises: a crash anywhere in loading is a rejected set with the error as a problem,
    so the daemon counts it and keeps its last good set.
    """
    try:
        return _load_set(directory, max_file_bytes, guardrails, allowed_signers, cache_dir)
    except Exception as e:  # a bug here must reject the set, not take the agent down
        return None, [Problem(str(directory), 1, "(loader)", f"internal error while loading: {type(e).__name__}: {e}")]


def _load_set(directory: str | os.PathLike[str], max_file_bytes: int, guardrails: Guardrails,
              allowed_signers: str | os.PathLike[str] | None = None,
              cache_dir: str | os.PathLike[str] | None = None) -> tuple[BaselineSet | None, list[Problem]]:
    shown_root = Path(directory)
    problems: list[Problem] = []
    if not shown_root.is_dir():
        return None, [Problem(str(shown_root), 1, "(directory)", "baselines directory not found or not a directory")]
    root = one_version(shown_root)  # every byte below comes from this one directory
    try:
        paths = _yaml_files(root)
    except OSError as e:
        return None, [Problem(str(root), 1, "(directory)", f"cannot list: {e}")]
    set_digest = hashlib.sha256()
    digests: dict[str, str] = {}
    texts: list[tuple[str, str, bytes]] = []  # (relative path, shown path, bytes) of every YAML file read
    for path in paths:
        rel = str(path.relative_to(root))
        shown = str(shown_root / rel)
        raw = _read(path, shown, max_file_bytes, problems)
        if raw is None:
            continue
        set_digest.update(rel.encode() + b"\0" + raw)
        _record(digests, path.relative_to(root).as_posix(), _sha256(raw), root, problems)
        texts.append((rel, shown, raw))
    entry_key = None
    if cache_dir is not None and not problems:
        entry_key = _cache_key(shown_root, texts, digests, max_file_bytes, guardrails, allowed_signers)
        hit = None if entry_key is None else _from_cache(root, cache_dir, entry_key, set_digest, digests,
                                                          max_file_bytes, allowed_signers, shown_root)
        if hit is not None:
            return hit
    docs: list[_Doc] = []
    for rel, shown, raw in texts:
        for doc in _parse(shown, raw, problems):
            doc.base_dir = str(Path(rel).parent)
            docs.append(doc)
    for doc in docs:
        _validate(doc, problems)
    valid = [d for d in docs if d.model is not None]
    _check_set(valid, problems, guardrails)
    sources = SourceBytes()
    reader = _SourceReader(root, max_file_bytes)
    read: list[cache.Source] = []
    for doc in valid:
        _load_sources(doc, reader, problems, sources, set_digest, digests, root, read)
    signed_by = None
    if allowed_signers is not None and not any(p.severity == "error" for p in problems):
        signed_by = _check_signature(root, digests, set_digest.hexdigest()[:12], allowed_signers, problems, shown_root)
    errors = sorted(p for p in problems if p.severity == "error")
    if errors:
        return None, sorted(problems)
    hashes = _baseline_hashes(valid, sources.digests)
    files = {d.model.metadata.name: d.file for d in valid if d.model is not None}
    bset = BaselineSet(
        directory=str(shown_root),
        baselines=tuple(d.model for d in valid if d.model is not None),
        sources=sources,
        files=files,
        hashes=hashes,
        version=set_digest.hexdigest()[:12],
        warnings=tuple(sorted(problems)),
        file_digests=digests,
        signed_by=signed_by,
        source_digests=sources.digests,
    )
    if entry_key is not None and cache_dir is not None:
        cache.store(cache_dir, entry_key, version=bset.version, baselines=bset.baselines, sources=read,
                    hashes=hashes, files=files,
                    warnings=[(p.file, p.line, p.field, p.reason, p.severity) for p in bset.warnings])
    return bset, sorted(problems)


def one_version(directory: Path) -> Path:
    """The directory to read a whole set from: for a ConfigMap volume, the version ``..data`` names right now.

    The kubelet updates a ConfigMap volume by writing a new ``..<timestamp>/`` directory and swapping the
    ``..data`` symlink to it in one rename; the top-level names are symlinks through ``..data``.  Reading
    through them while a swap happens can mix files of two versions, so the loader resolves ``..data``
    once and reads every YAML, ``source:`` and signature file below that one target.  A directory
    without ``..data`` (a git checkout, a hostPath) is read as it is.
    """
    data = directory / "..data"
    try:
        target = os.readlink(data)
    except OSError:
        return directory
    resolved = Path(os.path.normpath(directory / target))
    # the kubelet writes a sibling: anything else (absolute, above the volume) is not this layout
    if resolved.parent != Path(os.path.normpath(directory)) or not resolved.is_dir():
        return directory
    return resolved


def _cache_key(root: Path, texts: list[tuple[str, str, bytes]], digests: dict[str, str], max_file_bytes: int,
               guardrails: Guardrails, allowed_signers: str | os.PathLike[str] | None) -> str | None:
    """The cache key of this load: the YAML files read (names, digests, order), the options and the signature's inputs."""
    yaml_files = [(rel, digests[Path(rel).as_posix()]) for rel, _, _ in texts]
    signature = signers = None
    if allowed_signers is not None:
        signature = _read(root / SIGNATURE_FILE, "", max_file_bytes, [])
        signers = _read(allowed_signers, "", max_file_bytes, [])
    return cache.key(directory=str(root), yaml_files=yaml_files, max_file_bytes=max_file_bytes, guardrails=guardrails,
                     allowed_signers=None if allowed_signers is None else os.fspath(allowed_signers),
                     signature=signature, signers=signers)


def _from_cache(root: Path, cache_dir: str | os.PathLike[str], entry_key: str, yaml_digest: Any,
                yaml_digests: dict[str, str], max_file_bytes: int,
                allowed_signers: str | os.PathLike[str] | None, shown_root: Path) -> tuple[BaselineSet, list[Problem]] | None:
    """The set of a cache entry, if every ``source:`` it lists reads (same checks) to the same sha256; else None (miss).

    The YAML files were read and are in the key; the sources are read here again exactly as a full
    load reads them, the version and manifest are computed again from those bytes, and a required
    signature is verified again (an allowed signer may have expired since).
    """
    entry = cache.load(cache_dir, entry_key)
    if entry is None:
        return None
    reader = _SourceReader(root, max_file_bytes)
    sources = SourceBytes()
    set_digest = yaml_digest.copy()
    digests = dict(yaml_digests)
    problems: list[Problem] = []
    for baseline, base_dir, source, sha in entry.sources():
        data = reader.read(base_dir, source, "")
        if isinstance(data, str) or _sha256(data) != sha:
            return None
        key = (baseline, source)
        sources[key] = data
        sources.digests[key] = sha
        set_digest.update(source.encode() + b"\0" + data)
        _record(digests, _manifest_rel(base_dir, source), sha, root, problems)
    version = set_digest.hexdigest()[:12]
    if problems or version != entry.version:
        return None
    signed_by = None
    if allowed_signers is not None:
        signed_by = _check_signature(root, digests, version, allowed_signers, problems, shown_root)
        if problems:
            return None  # the full load says why
    baselines = entry.baselines()
    if baselines is None:
        return None
    warnings = tuple(Problem(*w) for w in entry.warnings)
    rule_lines = {b.metadata.name: rules for b, rules in zip(baselines, entry.rules, strict=True) if rules}
    bset = BaselineSet(directory=str(shown_root), baselines=baselines, sources=sources, files=entry.files,
                       hashes=entry.hashes, version=version, warnings=warnings, file_digests=digests,
                       signed_by=signed_by, source_digests=sources.digests, rule_lines=rule_lines)
    return bset, list(warnings)


def _baseline_hashes(docs: list[_Doc], source_digests: dict[tuple[str, str], str]) -> dict[str, str]:
    """Each baseline's hash: its model, then its sources' names and digests (one pass over the sources)."""
    by_name: dict[str, list[tuple[str, str]]] = {}
    for (bname, src), hexdigest in source_digests.items():
        by_name.setdefault(bname, []).append((src, hexdigest))
    hashes: dict[str, str] = {}
    for doc in docs:
        assert doc.model is not None
        name = doc.model.metadata.name
        h = hashlib.sha256(json.dumps(doc.model.model_dump(mode="json", by_alias=True), sort_keys=True).encode())
        for src, hexdigest in sorted(by_name.get(name, ())):
            h.update(src.encode() + b"\0" + hexdigest.encode() + b"\n")
        hashes[name] = h.hexdigest()[:12]
    return hashes


def _record(digests: dict[str, str], rel: str, hexdigest: str, root: Path, problems: list[Problem]) -> None:
    """One file of the set's manifest (what a signature covers), by the sha256 already computed."""
    why = check_path(rel)
    if why is not None:
        problems.append(Problem(str(root / rel), 1, "(file)", f"cannot be listed in the set's manifest: {why}"))
        return
    if digests.setdefault(rel, hexdigest) != hexdigest:
        problems.append(Problem(str(root / rel), 1, "(file)", "changed while the set was being loaded; try again"))


def _check_signature(root: Path, digests: dict[str, str], version: str, allowed_signers: str | os.PathLike[str],
                     problems: list[Problem], shown_root: Path | None = None) -> str | None:
    from driftd.baselines import signing  # cryptography is imported only when signatures are checked

    try:
        return str(signing.verify_set(root, digests, version, allowed_signers))
    except signing.SignatureError as e:
        def shown(file: str) -> str:  # named below the directory the user gave, not the version read
            if shown_root is not None and (file == str(root) or file.startswith(str(root) + "/")):
                return str(shown_root) + file[len(str(root)):]
            return file
        problems.extend(Problem(shown(file), 1, "(signature)", reason) for file, reason in e.problems)
        return None


def fingerprint(directory: str | os.PathLike[str]) -> str:
    """Cheap change detector for hot reload: names, sizes and mtimes of the tree (links followed)."""
    h = hashlib.sha256()
    root = Path(directory)
    try:
        for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            for n in sorted(filenames):
                if n.startswith("."):
                    continue
                p = Path(dirpath) / n
                try:
                    st = p.stat()
                except OSError:
                    h.update(f"{p}:gone".encode())
                    continue
                h.update(f"{p}:{st.st_size}:{st.st_mtime_ns}:{st.st_ino}".encode())
        sig = root / SIGNATURE_FILE  # a dot-file, but (re-)signing a set must reload it
        st = sig.stat()
        h.update(f"{sig}:{st.st_size}:{st.st_mtime_ns}:{st.st_ino}".encode())
    except FileNotFoundError:
        h.update(f"{root / SIGNATURE_FILE}:none".encode())
    except OSError as e:
        h.update(f"error:{e}".encode())
    return h.hexdigest()


def json_schema() -> dict[str, Any]:
    """JSON Schema of every baseline kind, for editors and CI."""
    from pydantic.json_schema import models_json_schema

    _, top = models_json_schema(
        [(m, "validation") for m in BASELINE_KINDS.values()], title="driftd baselines (driftd.io/v1alpha1)", by_alias=True
    )
    kinds = [{"$ref": f"#/$defs/{m.__name__}"} for m in BASELINE_KINDS.values()]
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", **top, "oneOf": kinds}


__all__ = ["BaselineSet", "Problem", "fingerprint", "json_schema", "load_set"]
