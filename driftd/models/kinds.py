"""Registry of baseline kinds (pure data): ``kind:`` → model class."""

from __future__ import annotations

from typing import Any

from driftd.models.baseline import HostBaseline
from driftd.models.container import ContainerBaseline
from driftd.models.pod import PodBaseline

AnyBaseline = HostBaseline | ContainerBaseline | PodBaseline

BASELINE_KINDS: dict[str, Any] = {
    "HostBaseline": HostBaseline,
    "ContainerBaseline": ContainerBaseline,
    "PodBaseline": PodBaseline,
}
