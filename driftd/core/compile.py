"""Compile host baselines into desired resources (pure).

Pipeline position: baseline set → **compile** → desired resources, which the scanner
observes and diffs.  Each rule of a HostBaseline's spec is compiled by its kind's handler
(``core.kinds``); names of users and groups stay names here, the host adapter resolves
them against ``<host-root>/etc/passwd`` and ``/etc/group``.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence

from driftd.core import kinds
from driftd.core.selectors import matches
from driftd.models.baseline import HostBaseline, HostSpec, Rule
from driftd.models.resources import DesiredResource

RuleLines = Mapping[str, Sequence[tuple[str, tuple[int, int], bytes]]]


def compile_host(
    baselines: Iterable[object],
    sources: Mapping[tuple[str, str], bytes],
    node_name: str,
    node_labels: Mapping[str, str],
    rule_lines: RuleLines | None = None,
) -> list[DesiredResource]:
    """Desired host resources for this node, directories first (by depth) so parents exist before files.

    ``sources`` maps (baseline name, source file) to the bytes the loader read; when it is the
    loader's :class:`~driftd.core.kinds.file.SourceBytes`, their digests are the loader's (no re-hash).
    """
    return list(iter_host(baselines, sources, node_name, node_labels, rule_lines))


def iter_host(
    baselines: Iterable[object],
    sources: Mapping[tuple[str, str], bytes],
    node_name: str,
    node_labels: Mapping[str, str],
    rule_lines: RuleLines | None = None,
) -> Iterator[DesiredResource]:
    """:func:`compile_host` one resource at a time: the rules are put in order first, then each is compiled
    as the caller reaches it, so a caller that keeps compact rows (``models/table.py``) never holds them all.

    ``rule_lines`` (a set from the start-up cache, ``BaselineSet.rule_lines``): a baseline's rules as
    (spec field, sort key, JSON) lines instead of models; each is validated only when it is compiled.
    """
    order: list[tuple[tuple[int, int], int, HostBaseline, Rule | tuple[str, bytes]]] = []
    labels = dict(node_labels)
    lines = rule_lines or {}
    for b in baselines:
        if not isinstance(b, HostBaseline) or not matches(b.spec.selector, node_name, labels):
            continue
        for fld, key, raw in lines.get(b.metadata.name, ()):
            order.append((key, len(order), b, (fld, raw)))
        for _field, _index, rule in b.spec.rules():
            order.append((kinds.rule_handler(rule).sort_key(rule), len(order), b, rule))
    order.sort(key=lambda o: o[:2])  # stable: baseline order within a kind
    fields = HostSpec.rule_fields()
    for _key, _seq, b, item in order:
        rule = fields[item[0]].model_validate_json(item[1]) if isinstance(item, tuple) else item
        yield kinds.rule_handler(rule).compile(b, rule, sources)


def with_ids(resources: Iterable[DesiredResource], users: Mapping[str, int],
             groups: Mapping[str, int]) -> Iterator[DesiredResource]:
    """Owner and group names resolved to the node's ids (its passwd and group); a name it does not know stays
    a string, which plan reports as blocked."""
    for r in resources:
        exp = r.expected
        owner, group = exp.get("owner"), exp.get("group")
        if isinstance(owner, str) or isinstance(group, str):
            exp = dict(exp)
            if isinstance(owner, str) and owner in users:
                exp["owner"] = users[owner]
            if isinstance(group, str) and group in groups:
                exp["group"] = groups[group]
            r = r.model_copy(update={"expected": exp})
        yield r
