"""In-memory view of the mesh built from the telemetry bucket (a cache, never the source of truth)."""
from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from x0tta6bl4.v1 import events_pb2


@dataclass
class MeshView:
    nodes: dict[str, events_pb2.NodeTelemetry] = field(default_factory=dict)
    # who names a node as its neighbour (node -> reporters): neighbours() without a scan of the mesh
    _named_by: dict[str, set[str]] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        for n, t in self.nodes.items():
            self._link(n, t.neighbours)

    def _link(self, node: str, neighbours: Iterable[str]) -> None:
        for p in neighbours:
            self._named_by.setdefault(p, set()).add(node)

    def _unlink(self, node: str) -> None:
        old = self.nodes.get(node)
        if old is None:
            return
        for p in old.neighbours:
            named = self._named_by.get(p)
            if named is not None:
                named.discard(node)
                if not named:
                    del self._named_by[p]

    def update(self, tel: events_pb2.NodeTelemetry) -> None:
        old = self.nodes.get(tel.node_id)
        if old is None or list(old.neighbours) != list(tel.neighbours):
            self._unlink(tel.node_id)
            self._link(tel.node_id, tel.neighbours)
        self.nodes[tel.node_id] = tel

    def remove(self, node_id: str) -> None:
        self._unlink(node_id)
        self.nodes.pop(node_id, None)

    def neighbours(self, node_id: str) -> list[str]:
        """Neighbours of a node as reported by the node itself or by its peers."""
        out = set(self.nodes[node_id].neighbours) if node_id in self.nodes else set()
        out |= self._named_by.get(node_id, set())
        out.discard(node_id)
        return sorted(out)

    def adjacency(self, exclude: set[str] | None = None) -> dict[str, list[str]]:
        exclude = exclude or set()
        return {n: [p for p in self.neighbours(n) if p not in exclude]
                for n in self.nodes if n not in exclude}

    def snapshot(self) -> list[events_pb2.NodeTelemetry]:
        return [self.nodes[k] for k in sorted(self.nodes)]

    def neighbourhood(self, focus: Iterable[str], max_bytes: int, exclude: set[str] | None = None
                      ) -> list[events_pb2.NodeTelemetry]:
        """The nodes around ``focus`` (the focus first, then their neighbours hop by hop, breadth first)
        whose serialized telemetry fits in ``max_bytes``; the whole mesh when it fits. A focus node is
        always included (even alone over the budget). Sorted by node id, like :meth:`snapshot`."""
        exclude = exclude or set()

        def size(n: str) -> int:
            return self.nodes[n].ByteSize() + 6           # + the field's tag and length

        total = 0
        for n in self.nodes:                              # stops as soon as the mesh does not fit
            if n not in exclude:
                total += size(n)
                if total > max_bytes:
                    break
        else:
            return [self.nodes[k] for k in sorted(self.nodes) if k not in exclude]
        chosen: dict[str, None] = {}
        used = 0
        frontier = [n for n in dict.fromkeys(focus) if n in self.nodes and n not in exclude]
        for n in frontier:
            chosen[n] = None
            used += size(n)
        while frontier and used < max_bytes:
            nxt: list[str] = []
            for n in frontier:
                for p in self.neighbours(n):
                    if p in self.nodes and p not in exclude and p not in chosen:
                        sz = size(p)
                        if used + sz > max_bytes:
                            return [self.nodes[k] for k in sorted(chosen)]
                        chosen[p] = None
                        used += sz
                        nxt.append(p)
            frontier = nxt
        return [self.nodes[k] for k in sorted(chosen)]
