"""Node monitoring: eBPF/proc collectors, health thresholds, Prometheus helpers.

Heavy parts (bcc) are imported lazily by EbpfCollector; importing this
package needs only psutil and prometheus-client.
"""

from .collectors import (
    ALL_SIGNALS,
    DEFAULT_WATCH_PREFIXES,
    Collector,
    CollectorInfo,
    EbpfCollector,
    EbpfUnavailable,
    InterfaceStats,
    KernelEvent,
    ProcCollector,
    ProcessStats,
    Snapshot,
    select_collector,
)
from .thresholds import (
    Band,
    Health,
    HealthChange,
    HealthTracker,
    NodeHealth,
    NodeMetrics,
    ThresholdConfigError,
    Thresholds,
    evaluate_node,
    mesh_state,
)

__all__ = [
    "ALL_SIGNALS", "DEFAULT_WATCH_PREFIXES", "Band", "Collector", "CollectorInfo", "EbpfCollector",
    "EbpfUnavailable", "Health", "HealthChange", "HealthTracker", "InterfaceStats", "KernelEvent",
    "NodeHealth", "NodeMetrics", "ProcCollector", "ProcessStats", "Snapshot", "ThresholdConfigError",
    "Thresholds", "evaluate_node", "mesh_state", "select_collector",
]
