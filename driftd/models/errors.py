"""Errors of observe and act (pure data): raised by adapters and kind handlers, read by the engine."""

from __future__ import annotations


class TargetError(Exception):
    """An observe or act failure.  ``transient`` failures are retried with backoff.

    ``escalate`` asks for an alert at the first failure rather than after several: the
    cause (a full disk, an I/O error) needs a person, and retrying will not fix it alone.
    """

    def __init__(self, message: str, *, transient: bool = True, escalate: bool = False) -> None:
        super().__init__(message)
        self.transient = transient
        self.escalate = escalate


class ResourceGoneError(TargetError):
    """The resource vanished between listing and acting (not an error: nothing left to fix)."""

    def __init__(self, message: str) -> None:
        super().__init__(message, transient=False)


class HeldError(TargetError):
    """The adapter may not act *yet* because of a limit shared beyond this node (the cluster's retirement
    cap): not a failure.  The engine reports it as ``held: <gate>: <reason>`` and comes back after ``retry_in``."""

    def __init__(self, message: str, *, gate: str, retry_in: float) -> None:
        super().__init__(message, transient=True)
        self.gate = gate
        self.retry_in = retry_in
