"""driftd: holds hosts, containers and pods to hardened baselines, and proves it."""

__version__ = "0.1.0"
