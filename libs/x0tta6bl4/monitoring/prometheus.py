"""Prometheus exposition helpers (prometheus-client, private registry).

The HTTP endpoint is wired by the monitor service; this module only owns the
registry and how node metrics / collector snapshots map onto it::

    m = build_registry()
    update(m, "node-1", NodeMetrics(cpu_percent=12.5), evaluate_node(...))
    update_mesh(m, tracker.mesh)
    update_snapshot(m, snapshot, node_of_pid={1234: "node-1"})
    body = render(m)          # text exposition format (bytes)

Health states are exported as their integer value (-1 unknown, 0 healthy,
1 warning, 2 critical) so alert rules can use ``>= 1``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from .collectors import Snapshot
from .thresholds import METRICS, Health, NodeHealth, NodeMetrics

CONTENT_TYPE = CONTENT_TYPE_LATEST

_METRIC_HELP = {
    "latency_p99_ms": ("x0_node_latency_p99_ms", "p99 latency to mesh peers in milliseconds"),
    "loss_percent": ("x0_node_loss_percent", "packet loss in percent"),
    "cpu_percent": ("x0_node_cpu_percent", "CPU usage in percent of one core"),
    "memory_percent": ("x0_node_memory_percent", "memory usage in percent of host memory"),
    "mttr_minutes": ("x0_node_mttr_minutes", "mean time to recovery in minutes"),
}


@dataclass
class MonitorMetrics:
    registry: CollectorRegistry
    node_value: dict[str, Gauge]
    node_metric_health: Gauge
    node_health: Gauge
    mesh_health: Gauge
    ctx_switches: Counter
    syscalls: Counter
    proc_cpu: Gauge
    proc_rss: Gauge
    iface_packets: Counter
    iface_bytes: Counter
    iface_drops: Counter
    drops: Counter
    udp_errors: Counter
    events: Counter
    lost_events: Counter


def build_registry(registry: CollectorRegistry | None = None) -> MonitorMetrics:
    """Metrics in ``registry`` (default: a new private one; the monitor service passes
    prometheus_client's default REGISTRY so its /metrics serves them)."""
    r = registry if registry is not None else CollectorRegistry(auto_describe=True)
    node_value = {m: Gauge(n, h, ["node"], registry=r) for m, (n, h) in _METRIC_HELP.items()}
    return MonitorMetrics(
        registry=r,
        node_value=node_value,
        node_metric_health=Gauge("x0_node_metric_health", "per-metric health (-1..2)", ["node", "metric"], registry=r),
        node_health=Gauge("x0_node_health", "node health: worst metric (-1..2)", ["node"], registry=r),
        mesh_health=Gauge("x0_mesh_health", "mesh health: worst node (-1..2)", registry=r),
        ctx_switches=Counter("x0_node_context_switches", "context switches", ["node", "kind"], registry=r),
        syscalls=Counter("x0_node_syscalls", "syscalls (eBPF only)", ["node"], registry=r),
        proc_cpu=Gauge("x0_node_process_cpu_percent", "CPU of the node's processes, percent of one core",
                       ["node"], registry=r),
        proc_rss=Gauge("x0_node_process_rss_bytes", "RSS of the node's processes", ["node"], registry=r),
        iface_packets=Counter("x0_iface_packets", "packets per interface", ["iface", "direction"], registry=r),
        iface_bytes=Counter("x0_iface_bytes", "bytes per interface", ["iface", "direction"], registry=r),
        iface_drops=Counter("x0_iface_drops", "interface drop counters", ["iface", "direction"], registry=r),
        drops=Counter("x0_kernel_packet_drops", "kernel packet drops by reason (eBPF)", ["reason"], registry=r),
        udp_errors=Counter("x0_udp_errors", "UDP error counters", ["kind"], registry=r),
        events=Counter("x0_kernel_events", "security/drop events", ["kind"], registry=r),
        lost_events=Counter("x0_kernel_events_lost", "events lost (ring buffer full or queue overflow)",
                            registry=r),
    )


def update(m: MonitorMetrics, node_id: str, metrics: NodeMetrics, health: NodeHealth | None = None) -> None:
    """Set the node's metric gauges (and its health if given)."""
    for name, value in metrics.items():
        m.node_value[name].labels(node_id).set(value)
    if health is not None:
        for name in METRICS:
            st = health.metrics.get(name)
            if st is not None:
                m.node_metric_health.labels(node_id, name).set(int(st))
        m.node_health.labels(node_id).set(int(health.state))


def update_mesh(m: MonitorMetrics, state: Health) -> None:
    m.mesh_health.set(int(state))


def remove_node(m: MonitorMetrics, node_id: str) -> None:
    for value in m.node_value.values():
        _try_remove(value, node_id)
    for name in METRICS:
        _try_remove(m.node_metric_health, node_id, name)
    for g in (m.node_health, m.syscalls, m.proc_cpu, m.proc_rss):
        _try_remove(g, node_id)
    for kind in ("voluntary", "involuntary"):
        _try_remove(m.ctx_switches, node_id, kind)


def _try_remove(metric: Gauge | Counter, *labels: str) -> None:
    with contextlib.suppress(KeyError):
        metric.remove(*labels)


def update_snapshot(m: MonitorMetrics, snap: Snapshot, node_of_pid: Mapping[int, str] | None = None) -> None:
    """Add a collector snapshot's deltas; pids map to nodes via node_of_pid
    (pids not in the map are skipped; None maps each pid to its own label)."""
    per_node: dict[str, list[float]] = {}
    for pid, p in snap.processes.items():
        node = str(pid) if node_of_pid is None else node_of_pid.get(pid)
        if node is None:
            continue
        inv = p.involuntary_ctx_switches or 0
        if p.ctx_switches:
            m.ctx_switches.labels(node, "involuntary").inc(inv)
            m.ctx_switches.labels(node, "voluntary").inc(max(p.ctx_switches - inv, 0))
        if p.syscalls:
            m.syscalls.labels(node).inc(p.syscalls)
        acc = per_node.setdefault(node, [0.0, 0.0])
        acc[0] += p.cpu_percent or 0.0
        acc[1] += p.rss_bytes or 0
    for node, (cpu, rss) in per_node.items():
        m.proc_cpu.labels(node).set(cpu)
        m.proc_rss.labels(node).set(rss)
    for name, i in snap.interfaces.items():
        m.iface_packets.labels(name, "rx").inc(i.rx_packets)
        m.iface_packets.labels(name, "tx").inc(i.tx_packets)
        m.iface_bytes.labels(name, "rx").inc(i.rx_bytes)
        m.iface_bytes.labels(name, "tx").inc(i.tx_bytes)
        if i.rx_dropped is not None:
            m.iface_drops.labels(name, "rx").inc(i.rx_dropped)
        if i.tx_dropped is not None:
            m.iface_drops.labels(name, "tx").inc(i.tx_dropped)
    for reason, n in snap.drops.items():
        m.drops.labels(reason).inc(n)
    for kind, n in snap.udp.items():
        if n:
            m.udp_errors.labels(kind).inc(n)
    for e in snap.events:
        m.events.labels(e.kind).inc()
    if snap.lost_events:
        m.lost_events.inc(snap.lost_events)


def render(m: MonitorMetrics) -> bytes:
    return generate_latest(m.registry)
