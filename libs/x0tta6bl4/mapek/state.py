"""In-memory view of the mesh built from the telemetry bucket (a cache, never the source of truth)."""
from __future__ import annotations

from dataclasses import dataclass, field

from x0tta6bl4.v1 import events_pb2


@dataclass
class MeshView:
    nodes: dict[str, events_pb2.NodeTelemetry] = field(default_factory=dict)

    def update(self, tel: events_pb2.NodeTelemetry) -> None:
        self.nodes[tel.node_id] = tel

    def remove(self, node_id: str) -> None:
        self.nodes.pop(node_id, None)

    def neighbours(self, node_id: str) -> list[str]:
        """Neighbours of a node as reported by the node itself or by its peers."""
        out = set(self.nodes[node_id].neighbours) if node_id in self.nodes else set()
        out |= {n for n, t in self.nodes.items() if node_id in t.neighbours}
        out.discard(node_id)
        return sorted(out)

    def adjacency(self, exclude: set[str] | None = None) -> dict[str, list[str]]:
        exclude = exclude or set()
        return {n: [p for p in self.neighbours(n) if p not in exclude]
                for n in self.nodes if n not in exclude}

    def snapshot(self) -> list[events_pb2.NodeTelemetry]:
        return [self.nodes[k] for k in sorted(self.nodes)]
