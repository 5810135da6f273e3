"""Prometheus exposition of node metrics, health and collector snapshots."""
from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from x0tta6bl4.monitoring.collectors import InterfaceStats, KernelEvent, ProcessStats, Snapshot
from x0tta6bl4.monitoring.prometheus import (
    build_registry,
    remove_node,
    render,
    update,
    update_mesh,
    update_snapshot,
)
from x0tta6bl4.monitoring.thresholds import Health, NodeMetrics, evaluate_node


def _samples(m) -> dict[tuple[str, tuple], float]:
    out = {}
    for fam in text_string_to_metric_families(render(m).decode()):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def test_node_metrics_and_health() -> None:
    m = build_registry()
    nm = NodeMetrics(latency_p99_ms=40, loss_percent=0.5, cpu_percent=95)
    update(m, "n1", nm, evaluate_node("n1", nm))
    update_mesh(m, Health.CRITICAL)
    s = _samples(m)
    assert s[("x0_node_latency_p99_ms", (("node", "n1"),))] == 40
    assert s[("x0_node_cpu_percent", (("node", "n1"),))] == 95
    assert s[("x0_node_metric_health", (("metric", "latency_p99_ms"), ("node", "n1")))] == 1
    assert s[("x0_node_metric_health", (("metric", "loss_percent"), ("node", "n1")))] == 0
    assert s[("x0_node_health", (("node", "n1"),))] == 2
    assert s[("x0_mesh_health", ())] == 2
    assert ("x0_node_memory_percent", (("node", "n1"),)) not in s  # not measured
    remove_node(m, "n1")
    assert not [k for k in _samples(m) if ("node", "n1") in k[1]]


def test_snapshot_counters_accumulate_deltas() -> None:
    m = build_registry()
    snap = Snapshot(
        "ebpf", 0.0, 1.0,
        processes={10: ProcessStats(10, "a", ctx_switches=7, involuntary_ctx_switches=2, cpu_percent=3.0,
                                    rss_bytes=100, syscalls=50),
                   11: ProcessStats(11, "b", ctx_switches=1, involuntary_ctx_switches=0, cpu_percent=1.0,
                                    rss_bytes=50, syscalls=5),
                   99: ProcessStats(99, "other", ctx_switches=1000)},
        interfaces={"lo": InterfaceStats("lo", rx_packets=3, rx_bytes=300, tx_packets=3, tx_bytes=300,
                                         rx_dropped=1, tx_dropped=0)},
        drops={"NETFILTER_DROP": 5}, udp={"NoPorts": 2, "InErrors": 0},
        events=(KernelEvent("sensitive_open", 10, 10, 0, 0, "a", 1, 2, path="/etc/shadow"),),
        lost_events=1)
    nodes = {10: "n1", 11: "n1"}
    update_snapshot(m, snap, nodes)
    update_snapshot(m, snap, nodes)
    s = _samples(m)
    assert s[("x0_node_context_switches_total", (("kind", "involuntary"), ("node", "n1")))] == 4
    assert s[("x0_node_context_switches_total", (("kind", "voluntary"), ("node", "n1")))] == 12
    assert s[("x0_node_syscalls_total", (("node", "n1"),))] == 110
    assert s[("x0_node_process_cpu_percent", (("node", "n1"),))] == 4.0
    assert s[("x0_node_process_rss_bytes", (("node", "n1"),))] == 150
    assert s[("x0_iface_packets_total", (("direction", "rx"), ("iface", "lo")))] == 6
    assert s[("x0_iface_drops_total", (("direction", "rx"), ("iface", "lo")))] == 2
    assert s[("x0_kernel_packet_drops_total", (("reason", "NETFILTER_DROP"),))] == 10
    assert s[("x0_udp_errors_total", (("kind", "NoPorts"),))] == 4
    assert s[("x0_kernel_events_total", (("kind", "sensitive_open"),))] == 2
    assert s[("x0_kernel_events_lost_total", ())] == 2
    assert not [k for k in s if ("node", "99") in k[1]]  # pid not mapped to a node
