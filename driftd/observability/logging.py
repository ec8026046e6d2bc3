"""Structured logs with a fixed vocabulary (observability edge).

Pipeline position: every stage logs through ``get_logger`` with an :class:`Event`
name; nothing else is a valid event.  Lines are JSON when stderr is not a terminal,
readable key=value on one, and each carries the active baseline set's version.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import MutableMapping
from enum import StrEnum
from typing import Any, TextIO

import structlog


class Event(StrEnum):
    """The complete vocabulary of log event names (documented in docs/operations.md)."""

    SCAN_STARTED = "scan.started"
    SCAN_FINISHED = "scan.finished"
    SCAN_FAILED = "scan.failed"
    OBSERVE_FAILED = "observe.failed"
    DRIFT_DETECTED = "drift.detected"
    DRIFT_RESOLVED = "drift.resolved"
    DRIFT_WINDOW_BREACHED = "drift.window_breached"
    REMEDIATION_SKIPPED = "remediation.skipped"
    REMEDIATION_BLOCKED = "remediation.blocked"
    REMEDIATION_SUCCEEDED = "remediation.succeeded"
    REMEDIATION_FAILED = "remediation.failed"
    REMEDIATION_ESCALATED = "remediation.escalated"
    REMEDIATION_HELD = "remediation.held"
    BREAKER_OPENED = "breaker.opened"
    BREAKER_CLOSED = "breaker.closed"
    OVERRIDE_ACTIVE = "override.active"
    OVERRIDE_ENDED = "override.ended"
    OVERRIDE_REFUSED = "override.refused"
    STATE_FAILED = "state.failed"
    STATE_PRUNED = "state.pruned"
    SNAPSHOT_SAVED = "snapshot.saved"
    BASELINE_LOADED = "baseline.loaded"
    BASELINE_REJECTED = "baseline.rejected"
    BASELINE_DANGEROUS_ALLOWED = "baseline.dangerous_allowed"
    BASELINE_WARNING = "baseline.warning"
    DAEMON_STARTED = "daemon.started"
    DAEMON_STOPPING = "daemon.stopping"
    DAEMON_STOPPED = "daemon.stopped"
    HTTP_LISTENING = "http.listening"
    HTTP_AUTH_UNAVAILABLE = "http.auth_unavailable"
    TARGET_DOWN = "target.down"
    TARGET_UP = "target.up"
    WATCH_EVENT = "watch.event"
    INOTIFY_DEGRADED = "inotify.degraded"
    AUDIT = "audit"
    AUDIT_FAILED = "audit.failed"


_context: dict[str, str] = {"baseline_version": "none"}
_json = {"on": False}


def logs_json() -> bool:
    """Whether the configured log stream is JSON lines (then every line on it must be one)."""
    return _json["on"]


def set_baseline_version(version: str) -> None:
    """Stamp every following line with this baseline set version."""
    _context["baseline_version"] = version


def _add_context(_: Any, __: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    event_dict.setdefault("baseline_version", _context["baseline_version"])
    ev = event_dict.get("event")
    if isinstance(ev, Event):
        event_dict["event"] = ev.value
    return event_dict


def configure_logging(fmt: str = "auto", level: str = "info", stream: TextIO | None = None) -> None:
    """Configure structlog once, in the composition root."""
    out = stream or sys.stderr
    as_json = fmt == "json" or (fmt == "auto" and not out.isatty())
    _json["on"] = as_json
    renderer: Any = structlog.processors.JSONRenderer() if as_json else structlog.dev.ConsoleRenderer(colors=False)
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            _add_context,
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelNamesMapping()[level.upper()]),
        logger_factory=structlog.PrintLoggerFactory(out),
        cache_logger_on_first_use=False,
    )


def get_logger(**initial: Any) -> Any:
    return structlog.get_logger(**initial)
