"""Node monitoring: eBPF/proc collectors, health thresholds, Prometheus helpers.

Importing this package loads nothing heavy: the names below are loaded on first use (the collectors
need psutil and, for eBPF, bcc; the threshold table is pure).
"""
from __future__ import annotations

import importlib
from typing import Any

_WHERE = {
    **dict.fromkeys((
        "ALL_SIGNALS", "DEFAULT_WATCH_PREFIXES", "Collector", "CollectorInfo", "EbpfCollector", "EbpfUnavailable",
        "InterfaceStats", "KernelEvent", "ProcCollector", "ProcessStats", "Snapshot", "select_collector"),
        "collectors"),
    **dict.fromkeys((
        "Band", "Health", "HealthChange", "HealthTracker", "NodeHealth", "NodeMetrics", "ThresholdConfigError",
        "Thresholds", "evaluate_node", "load_thresholds", "mesh_state"), "thresholds"),
}

__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value
