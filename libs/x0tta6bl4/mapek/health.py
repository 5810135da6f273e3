"""Node health from telemetry: an adapter from NodeTelemetry messages to the one
threshold table, :class:`x0tta6bl4.monitoring.thresholds.Thresholds`.

Boundary semantics are the table's (value < warning healthy; warning <= value
<= critical warning; value > critical critical). On top of the table: an
unreachable node is critical; failed authentications (bad signatures) and
kernel security signals (``security.*`` keys of ``NodeTelemetry.kernel``, from
the monitor's eBPF collector) make a node at least a warning.

Every function takes the threshold table explicitly: a service loads it once from its settings
(``CommonSettings.threshold_table()``) and passes it to its stage; ``None`` means the spec's defaults
(tools that have no settings).
"""
from __future__ import annotations

import functools
from collections.abc import Iterable, Mapping

from x0tta6bl4.monitoring.thresholds import Thresholds
from x0tta6bl4.v1 import common_pb2, events_pb2

# NodeTelemetry field -> metric of the threshold table
FIELD_METRIC: dict[str, str] = {
    "p99_latency_ms": "latency_p99_ms",
    "loss_pct": "loss_percent",
    "cpu_pct": "cpu_percent",
    "mem_pct": "memory_percent",
}
SECURITY_KERNEL_KEYS: tuple[str, ...] = ("security.sensitive_open", "security.privilege_change")
SPEC = Thresholds()   # the spec's table



@functools.lru_cache(maxsize=32)
def _field_table(th: Thresholds) -> tuple[tuple[str, tuple[float, float]], ...]:
    return tuple((f, (getattr(th, m).warning, getattr(th, m).critical)) for f, m in FIELD_METRIC.items())


def as_field_table(th: Thresholds | None = None) -> dict[str, tuple[float, float]]:
    """NodeTelemetry field -> (warning_from, critical_above), a view of the threshold table
    (None: the spec's)."""
    return dict(_field_table(th or SPEC))


# A read-only view of the spec's defaults, by NodeTelemetry field name (kept for
# callers such as the analyzer's rules); the table itself lives in monitoring.thresholds.
SPEC_THRESHOLDS: Mapping[str, tuple[float, float]] = as_field_table(SPEC)


def classify_value(value: float, warning_from: float, critical_above: float) -> int:
    if value > critical_above:
        return common_pb2.HEALTH_CRITICAL
    if value >= warning_from:
        return common_pb2.HEALTH_WARNING
    return common_pb2.HEALTH_HEALTHY


def _table(thresholds: Thresholds | Mapping[str, tuple[float, float]] | None
           ) -> Iterable[tuple[str, tuple[float, float]]]:
    if thresholds is None or isinstance(thresholds, Thresholds):
        return _field_table(thresholds or SPEC)
    return thresholds.items()


def classify_node(t: events_pb2.NodeTelemetry,
                  thresholds: Thresholds | Mapping[str, tuple[float, float]] | None = None) -> tuple[int, list[str]]:
    """Worst health over the metrics (Health proto enum), with one reason per metric out of range."""
    if not t.reachable:
        return common_pb2.HEALTH_CRITICAL, ["unreachable"]
    worst: int = common_pb2.HEALTH_HEALTHY
    reasons: list[str] = []
    for metric, (warn, crit) in _table(thresholds):
        value = getattr(t, metric)
        h = classify_value(value, warn, crit)
        if h != common_pb2.HEALTH_HEALTHY:
            level = "critical" if h == common_pb2.HEALTH_CRITICAL else "warning"
            bound = f"> {crit:g}" if h == common_pb2.HEALTH_CRITICAL else f">= {warn:g}"
            reasons.append(f"{metric}={value:g} {bound} ({level})")
        worst = max(worst, h)
    slow = links_degraded(t, thresholds)
    if slow:
        worst = max(worst, common_pb2.HEALTH_WARNING)
        reasons.append(slow)
    if t.failed_auth:
        worst = max(worst, common_pb2.HEALTH_WARNING)
        reasons.append(f"failed_auth={t.failed_auth}")
    for key in SECURITY_KERNEL_KEYS:
        v = t.kernel.get(key, 0.0)
        if v > 0:
            worst = max(worst, common_pb2.HEALTH_WARNING)
            reasons.append(f"{key}={v:g}")
    return worst, reasons


def link_clearly_bad(q: events_pb2.LinkQuality,
                     thresholds: Thresholds | Mapping[str, tuple[float, float]] | None = None) -> bool:
    """A link clearly degraded, as evidence against a node: slow (latency at the warning line) or lossy above the
    critical line (one HELLO lost in a window of 64 is 1.6 %, over the warning line, and a node whose fault has
    ended keeps such a trace on its links for a while)."""
    table = dict(_table(thresholds))
    return 100.0 * q.loss_rate > table["loss_pct"][1] or q.latency_ms >= table["p99_latency_ms"][0]


def links_degraded(t: events_pb2.NodeTelemetry,
                   thresholds: Thresholds | Mapping[str, tuple[float, float]] | None = None) -> str:
    """Why every one of the node's links (two at least, as it measures them from HELLO beacons) is clearly
    degraded - slow (latency at the warning line) or lossy above the critical line - or "". A node that is
    slow on every link carries no DATA once routing avoids it, so its own percentiles say nothing: its links
    do (a node made 150 ms slower was never noticed). Makes the node a warning, never critical by itself."""
    if len(t.links) < 2:
        return ""
    if not all(link_clearly_bad(q, thresholds) for q in t.links):
        return ""
    lat = min(q.latency_ms for q in t.links)
    loss = min(100.0 * q.loss_rate for q in t.links)
    return f"links_degraded={len(t.links)}: latency >= {lat:.1f} ms or loss >= {loss:.1f}% on every link (warning)"


def link_clean(q: events_pb2.LinkQuality, thresholds: Thresholds | None = None) -> bool:
    """A link, as measured from HELLO beacons, within the healthy range of the table (loss and latency
    below their warning thresholds)."""
    table = as_field_table(thresholds)
    return 100.0 * q.loss_rate < table["loss_pct"][0] and q.latency_ms < table["p99_latency_ms"][0]


def links_healthy(node: str, telemetry: Mapping[str, events_pb2.NodeTelemetry],
                  thresholds: Thresholds | None = None) -> tuple[bool, list[str]]:
    """Whether ``node``'s links are back to normal: it has at least one, and every link measured by it
    or by a reachable neighbour towards it is clean (:func:`link_clean`); the reasons when not. A node
    that is merely routed around carries no DATA, so its own p99 and loss say nothing: the HELLO
    beacons still cross its links and do. ``telemetry``: latest report per node (keyed by anything)."""
    by_node = {t.node_id: t for t in telemetry.values()}
    own = by_node.get(node)
    if own is None or not own.links:
        return False, [f"{node} reports no link"]
    def verdict(who: str, q: events_pb2.LinkQuality) -> str | None:
        if q.latency_ms == 0.0:
            # a link whose HELLO round trip is not measured yet (new, or back after an outage) reports 0:
            # no evidence that it is clean (a slow link re-established for a moment must not end a probation)
            return f"{who}->{q.peer} latency not measured yet"
        if not link_clean(q, thresholds):
            return f"{who}->{q.peer} loss {100 * q.loss_rate:.1f}% latency {q.latency_ms:.1f} ms"
        return None

    bad = [r for q in own.links if (r := verdict(node, q))]
    for other in by_node.values():
        if other.node_id == node or not other.reachable:
            continue
        bad += [r for q in other.links if q.peer == node and (r := verdict(other.node_id, q))]
    return not bad, bad


def node_metrics(t: events_pb2.NodeTelemetry):
    """The table's metrics of one node (for Prometheus), as a NodeMetrics."""
    from x0tta6bl4.monitoring.thresholds import NodeMetrics
    return NodeMetrics(**{m: max(0.0, float(getattr(t, f))) for f, m in FIELD_METRIC.items()})


def mesh_health(states: Mapping[str, int]) -> tuple[int, list[str]]:
    """Mesh health = the worst node health; reasons name the nodes at that level."""
    known = {n: s for n, s in states.items() if s != common_pb2.HEALTH_UNSPECIFIED}
    worst = max(known.values(), default=common_pb2.HEALTH_HEALTHY)
    if worst == common_pb2.HEALTH_HEALTHY:
        return worst, []
    level = common_pb2.Health.Name(worst).removeprefix("HEALTH_").lower()
    return worst, [f"{level}: {', '.join(sorted(n for n, s in known.items() if s == worst))}"]
