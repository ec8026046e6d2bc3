"""The registry of kind handlers (pure): ``(target, kind)`` → the one handler of that kind.

Pipeline position: looked up by compile (rule kinds of a HostBaseline), lint (claims), the
adapters (observe, apply) and plan.  Every module of this package except ``base`` and
``ports`` is a kind: it lists its handlers in ``HANDLERS`` and is found here, so adding a
kind is one new module plus its model.  An unknown kind is an error, never a silent default.
"""

from __future__ import annotations

import importlib
import pkgutil
from typing import Any

from driftd.core.kinds.base import Handler, PlanOnly
from driftd.models.baseline import Rule
from driftd.models.errors import TargetError
from driftd.models.resources import Action

REGISTRY: dict[tuple[str, str], Handler[Any]] = {}
_BY_RULE: dict[type[Rule], Handler[Any]] = {}
_NOT_KINDS = frozenset({"base", "ports"})
# steps the engine carries out itself, not a handler: a host resource that cannot be restored (or a
# kernel or package out of patch) retires the node through the configured retirer; a package out of
# patch with action ``hook`` runs the operator's patch command (``patch_hook``)
ENGINE_STEPS: dict[str, frozenset[Action]] = {"host": frozenset({Action.RETIRE_NODE, Action.PATCH_HOOK})}


def register(handler: Handler[Any], *, target: str | None = None, kind: str | None = None) -> None:
    """Add a handler under its own (target, kind), or under another target (a second container runtime)."""
    key = (target or handler.target, kind or handler.kind)
    existing = REGISTRY.get(key)
    if existing is not None and existing is not handler:
        raise ValueError(f"a handler for {key[0]}/{key[1]} is already registered")
    REGISTRY[key] = handler
    if handler.rule is not None:
        _BY_RULE.setdefault(handler.rule, handler)


def register_planner(target: str, kind: str, planner: Any) -> None:
    """A kind known only by its plan function (an adapter outside this package observes and acts itself)."""
    existing = REGISTRY.get((target, kind))
    if isinstance(existing, PlanOnly) and existing.planner is planner:
        return
    register(PlanOnly(planner), target=target, kind=kind)


def find(target: str, kind: str) -> Handler[Any] | None:
    return REGISTRY.get((target, kind))


def handler_for(target: str, kind: str) -> Handler[Any]:
    """The handler of a kind; a kind nobody registered is a bug to report (non-transient TargetError)."""
    h = REGISTRY.get((target, kind))
    if h is None:
        raise TargetError(f"no handler for a {kind!r} resource of the {target} target", transient=False)
    return h


def actions_of(target: str) -> frozenset[Action]:
    """Every action driftd can take on a target: its handlers' steps plus the engine's (metric label values)."""
    steps = {a for (t, _), h in REGISTRY.items() if t == target for a in h.steps}
    return frozenset(steps | ENGINE_STEPS.get(target, frozenset()))


def rule_handler(rule: Rule) -> Handler[Any]:
    """The handler that compiles and claims a HostSpec rule."""
    h = _BY_RULE.get(type(rule))
    if h is None:
        raise LookupError(f"no kind handler compiles {type(rule).__name__} rules")
    return h


def _load_builtin() -> None:
    for info in pkgutil.iter_modules(__path__):
        if info.name in _NOT_KINDS or info.name.startswith("_"):
            continue
        module = importlib.import_module(f"{__name__}.{info.name}")
        for h in getattr(module, "HANDLERS", ()):
            register(h)


_load_builtin()
