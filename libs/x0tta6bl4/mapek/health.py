"""Node health from telemetry, by the spec's threshold table.

Adapter between NodeTelemetry messages and the threshold domain in
``x0tta6bl4.monitoring.thresholds``.
"""
from __future__ import annotations

from x0tta6bl4.v1 import common_pb2, events_pb2

# metric -> (warning_from, critical_above); value < warning_from is healthy,
# warning_from <= value <= critical_above is warning, above is critical.
SPEC_THRESHOLDS: dict[str, tuple[float, float]] = {
    "p99_latency_ms": (40.0, 100.0),
    "loss_pct": (1.0, 5.0),
    "cpu_pct": (70.0, 90.0),
    "mem_pct": (80.0, 95.0),
}


def classify_value(value: float, warning_from: float, critical_above: float) -> int:
    if value > critical_above:
        return common_pb2.HEALTH_CRITICAL
    if value >= warning_from:
        return common_pb2.HEALTH_WARNING
    return common_pb2.HEALTH_HEALTHY


def classify_node(t: events_pb2.NodeTelemetry,
                  thresholds: dict[str, tuple[float, float]] = SPEC_THRESHOLDS) -> tuple[int, list[str]]:
    """Worst health over the metrics, with one reason per metric out of the normal range."""
    if not t.reachable:
        return common_pb2.HEALTH_CRITICAL, ["unreachable"]
    worst = common_pb2.HEALTH_HEALTHY
    reasons: list[str] = []
    for metric, (warn, crit) in thresholds.items():
        value = getattr(t, metric)
        h = classify_value(value, warn, crit)
        if h != common_pb2.HEALTH_HEALTHY:
            level = "critical" if h == common_pb2.HEALTH_CRITICAL else "warning"
            bound = f"> {crit:g}" if h == common_pb2.HEALTH_CRITICAL else f">= {warn:g}"
            reasons.append(f"{metric}={value:g} {bound} ({level})")
        worst = max(worst, h)
    if t.failed_auth:
        worst = max(worst, common_pb2.HEALTH_WARNING)
        reasons.append(f"failed_auth={t.failed_auth}")
    return worst, reasons
