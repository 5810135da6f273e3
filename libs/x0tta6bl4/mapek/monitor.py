"""Monitor: node telemetry -> health changes -> the TelemetryWindow that starts a cycle (no I/O)."""
from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import cast

from x0tta6bl4.ids import derive_id, new_meta
from x0tta6bl4.mapek.health import classify_node
from x0tta6bl4.mapek.state import MeshView
from x0tta6bl4.monitoring.thresholds import Thresholds
from x0tta6bl4.v1 import common_pb2, events_pb2


@dataclass
class Assessment:
    node_id: str
    previous: int
    current: int
    reasons: list[str]

    @property
    def changed(self) -> bool:
        return self.previous != self.current

    @property
    def starts_cycle(self) -> bool:
        """A cycle starts when a node gets worse than it was (healthy->warning, ->critical)."""
        return self.current > max(self.previous, common_pb2.HEALTH_HEALTHY)


def assess(tel: events_pb2.NodeTelemetry, previous: int, thresholds: Thresholds | None = None) -> Assessment:
    current, reasons = classify_node(tel, thresholds)
    return Assessment(tel.node_id, previous or common_pb2.HEALTH_HEALTHY, current, reasons)


def health_change(a: Assessment, cycle_id: str = "") -> events_pb2.HealthChange:
    return events_pb2.HealthChange(meta=new_meta("monitor", cycle_id), node_id=a.node_id,
                                   previous=_health(a.previous), current=_health(a.current), reasons=a.reasons)


def _health(value: int) -> common_pb2.Health:
    """A Health enum value kept as an int (protobuf enums are ints at run time)."""
    return cast("common_pb2.Health", value)


WINDOW_MAX_BYTES = 56 * 1024
"""The node telemetry a window carries at most (the whole event stays under 64 KB, far below NATS's
1 MiB payload limit, whatever the mesh size)."""


def window(view: MeshView, cause_event_id: str, trigger: str = "", reasons: list[str] | None = None,
           first_symptom_ns: int = 0, exclude: set[str] | None = None, focus: Iterable[str] = (),
           max_bytes: int = WINDOW_MAX_BYTES) -> events_pb2.TelemetryWindow:
    """The window a cycle starts with: every node's latest telemetry but ``exclude`` (nodes in planned
    maintenance: not part of the monitored mesh while it lasts) when that fits in ``max_bytes``; on a
    larger mesh the incident's neighbourhood - the trigger (or, with no trigger, the ``focus`` nodes: the
    unhealthy ones) and its neighbours hop by hop, as many as fit. The analyzer sees the incident and
    what surrounds it; the planner reads the whole mesh from the ``telemetry`` bucket anyway."""
    cycle_id = derive_id("cycle", cause_event_id)
    nodes = view.neighbourhood([trigger] if trigger else focus, max_bytes, exclude)
    return events_pb2.TelemetryWindow(
        meta=new_meta("monitor", cycle_id, event_id=derive_id("window", cause_event_id)), trigger_node=trigger,
        trigger_reasons=reasons or [], nodes=nodes, first_symptom_unix_ns=first_symptom_ns)


@dataclass
class LossReports:
    """Who reported whom lost; a node is declared down when enough of its neighbours agree."""

    reporters: dict[str, dict[str, int]] = field(default_factory=dict)   # lost -> reporter -> ts_ns

    def report(self, lost: str, reporter: str, ts_ns: int) -> None:
        self.reporters.setdefault(lost, {})[reporter] = ts_ns

    def clear(self, node: str) -> None:
        self.reporters.pop(node, None)

    def declared_down(self, lost: str, view: MeshView) -> bool:
        got = self.reporters.get(lost, {})
        live_neighbours = [n for n in view.neighbours(lost) if n in view.nodes and view.nodes[n].reachable]
        needed = min(2, max(1, len(live_neighbours)))
        return len(got) >= needed

    def first_report_ns(self, lost: str) -> int:
        return min(self.reporters.get(lost, {}).values(), default=0)


def mark_unreachable(view: MeshView, node: str, ts_ns: int) -> events_pb2.NodeTelemetry:
    t = events_pb2.NodeTelemetry()
    if node in view.nodes:
        t.CopyFrom(view.nodes[node])
    t.node_id = node
    t.reachable = False
    t.meta.CopyFrom(new_meta("monitor"))
    t.meta.ts_unix_ns = ts_ns
    view.update(t)
    return t
