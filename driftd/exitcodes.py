"""Exit codes of the ``driftd`` command (documented in the README)."""

from __future__ import annotations

from enum import IntEnum


class ExitCode(IntEnum):
    CLEAN = 0  # every governed resource matches its baseline at the end of the pass
    ERROR = 1  # driftd could not do its job: invalid baselines or state, or a resource it could not observe
    USAGE = 2  # bad command line or settings
    DRIFT_REMAINED = 3  # drift found and left in place: dry-run, warn/dryrun baselines, or blocked plans
    REMEDIATION_FAILED = 4  # an enforce action failed; the drift remains
