"""MeshDigitalTwin: a networkx model of the mesh for what-if analysis.

Used by the analyzer (topology + telemetry simulation), the planner (impact
of a failure, cascade risk) and the executor (MTTR estimate).
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Mapping
from dataclasses import dataclass, field

import networkx as nx
import numpy as np

from .graph_algos import betweenness, component_labels, pair_connectivity, to_csr
from .mttr import MttrModel

EXACT_BETWEENNESS_MAX_NODES = 400
"""Above this many nodes the cascade uses sampled betweenness (k sources)."""
DEFAULT_BETWEENNESS_SAMPLES = 128


@dataclass
class FailureSimulationResult:
    node: Hashable
    duration_seconds: float
    connectivity_maintained: float
    """Share of ordered surviving node pairs still mutually reachable."""
    component_sizes: list[int]
    partitioned: bool
    """True if the failure splits the surviving mesh into >1 component."""
    isolated_neighbours: list[Hashable]
    """Neighbours of the failed node cut off from the largest component."""
    detour_hops: float
    """Longest shortest detour (hops) between reconnectable neighbour pairs."""
    detection_s: float
    repair_s: float
    mttr_seconds: float
    """Estimated time to restore reachability for reconnectable flows; flows of a
    partition stay down for the whole ``duration_seconds`` (not counted here)."""
    mttr_model_calibrated: bool = False
    extra: dict = field(default_factory=dict)


class MeshDigitalTwin:
    def __init__(self, name: str = "twin", mttr_model: MttrModel | None = None) -> None:
        self.name = name
        self.graph: nx.Graph = nx.Graph()
        self.mttr_model = mttr_model or MttrModel.default()
        self._cache: tuple | None = None

    # ------------------------------------------------------------------ build
    def create_test_topology(
        self, num_nodes: int = 20, connectivity: float = 4.0, seed: int | None = 0
    ) -> nx.Graph:
        """Random geometric (wireless-like) mesh in the unit square, made connected.

        ``connectivity`` is the target mean degree when > 1; a value in (0, 1]
        is read as an edge density and converted to mean degree
        ``connectivity * (num_nodes - 1)``.  Disconnected pieces are joined to
        the largest component by their geometrically closest node pair (as a
        deployment would add a relay).  Node ids are ``0..num_nodes-1``; node
        attribute ``pos`` holds coordinates.
        """
        if num_nodes < 1:
            raise ValueError("num_nodes must be >= 1")
        if connectivity <= 0:
            raise ValueError("connectivity must be > 0")
        rng = np.random.default_rng(seed)
        deg = connectivity * (num_nodes - 1) if connectivity <= 1 else connectivity
        deg = min(deg, num_nodes - 1)
        pos = rng.random((num_nodes, 2))
        radius = float(np.sqrt(max(deg, 1e-9) / (np.pi * max(num_nodes, 1))))
        edges = _geometric_edges(pos, radius)
        edges = _connect_components(num_nodes, edges, pos)
        g = nx.Graph()
        g.add_nodes_from((i, {"pos": tuple(pos[i])}) for i in range(num_nodes))
        g.add_edges_from(map(tuple, edges.tolist()))
        self.graph = g
        self._cache = None
        return g

    def from_neighbours(self, mapping: Mapping[Hashable, Iterable[Hashable]]) -> nx.Graph:
        """Build from the live mesh's reported neighbour lists (links made symmetric:
        a link reported by either end is kept, since HELLO asymmetry is transient)."""
        g = nx.Graph()
        for node, neigh in mapping.items():
            g.add_node(node)
            for other in neigh:
                if other != node:
                    g.add_edge(node, other)
        self.graph = g
        self._cache = None
        return g

    # --------------------------------------------------------------- internals
    def _arrays(self):
        if self._cache is None or self._cache[0] is not self.graph or self._cache[1] != (
            self.graph.number_of_nodes(),
            self.graph.number_of_edges(),
        ):
            nodes = list(self.graph.nodes)
            index = {v: i for i, v in enumerate(nodes)}
            edges = np.array(
                [(index[a], index[b]) for a, b in self.graph.edges], dtype=np.int64
            ).reshape(-1, 2)
            indptr, indices = to_csr(len(nodes), edges)
            self._cache = (
                self.graph,
                (self.graph.number_of_nodes(), self.graph.number_of_edges()),
                nodes,
                index,
                edges,
                indptr,
                indices,
            )
        return self._cache[2:]

    def _index(self, node: Hashable) -> int:
        _, index, *_ = self._arrays()
        if node not in index:
            raise KeyError(f"node {node!r} not in twin {self.name!r}")
        return index[node]

    # --------------------------------------------------------------- analysis
    def connectivity_after_failure(self, failed: Iterable[Hashable]) -> float:
        nodes, _index, edges, _, _ = self._arrays()
        alive = np.ones(len(nodes), dtype=bool)
        for v in failed:
            alive[self._index(v)] = False
        share, _ = pair_connectivity(component_labels(len(nodes), edges, alive))
        return share

    def simulate_node_failure(
        self, node: Hashable, duration_seconds: float = 60.0
    ) -> FailureSimulationResult:
        nodes, _index, edges, indptr, indices = self._arrays()
        i = self._index(node)
        n = len(nodes)
        alive = np.ones(n, dtype=bool)
        alive[i] = False
        labels = component_labels(n, edges, alive)
        share, sizes = pair_connectivity(labels)
        neigh = indices[indptr[i] : indptr[i + 1]]
        big_label = np.bincount(labels[alive]).argmax() if sizes.size else -2
        isolated = [nodes[j] for j in neigh if labels[j] != big_label]
        detour = self._detour_hops(i, neigh, labels)
        m = self.mttr_model
        det, rep = m.detect_s(detour), m.repair_s(detour)
        return FailureSimulationResult(
            node=node,
            duration_seconds=float(duration_seconds),
            connectivity_maintained=share,
            component_sizes=[int(s) for s in sizes],
            partitioned=bool(sizes.size > 1),
            isolated_neighbours=isolated,
            detour_hops=float(detour),
            detection_s=det,
            repair_s=rep,
            mttr_seconds=min(det + rep, float(duration_seconds)),
            mttr_model_calibrated=m.calibrated,
        )

    def _detour_hops(self, failed: int, neigh: np.ndarray, labels: np.ndarray) -> float:
        """Longest shortest path between neighbour pairs of the failed node that
        stay in the same component (the reroute the data plane has to find).
        BFS in networkx from each neighbour (degree is small); 2 if no pair."""
        if neigh.size < 2:
            return 2.0
        nodes, *_ = self._arrays()
        g = self.graph
        failed_node = nodes[failed]
        view = nx.restricted_view(g, [failed_node], [])
        best = 2.0
        for j in neigh:
            src = nodes[j]
            same = {nodes[k] for k in neigh if labels[k] == labels[j] and k != j}
            if not same:
                continue
            for _, d in _bfs_until(view, src, same):
                best = max(best, float(d))
        return best

    def predict_cascade_failure(
        self,
        node: Hashable,
        threshold: float = 0.8,
        k: int | None = None,
        seed: int = 0,
        max_rounds: int = 100,
    ) -> list[Hashable]:
        """Motter–Lai cascade: nodes predicted to fail after ``node``, in order.

        Load = betweenness centrality; capacity ``C_i = (1 + alpha) * max(L_i(0), L_mean(0))``
        with ``alpha = 1 / threshold - 1`` — ``threshold`` is the nominal
        utilisation (initial load / capacity), so ``threshold=0.8`` means 25 %
        headroom.  After each round of removals loads are recomputed on the
        surviving graph and every node with ``L_i > C_i`` fails; iterate to a
        fixpoint.  Within a round nodes are ordered by overload ratio.

        Capacity floor: Motter–Lai sizes each node for the load it carries at
        the start, so a node the topology happens to leave idle (a corner of a
        grid, a leaf) would get no capacity at all and "fail" the moment any
        detour crosses it. A mesh node's forwarding capacity is a property of
        the node, not of where it sits: every node can carry at least what the
        average node carries (the mean initial load, and at least one
        pair-path) with the same headroom. Without the floor, a 3x3 grid
        healed around a dead corner predicted a cascade of 5 nodes.

        Betweenness is exact up to ``EXACT_BETWEENNESS_MAX_NODES`` nodes and
        otherwise estimated from ``k`` (default 128) seeded source samples; the
        same sources are reused every round so sampling noise does not trigger
        spurious failures.
        """
        return self.predict_cascade_after([node], threshold, k, seed, max_rounds)

    def predict_cascade_after(
        self,
        failed_nodes: Iterable[Hashable],
        threshold: float = 0.8,
        k: int | None = None,
        seed: int = 0,
        max_rounds: int = 100,
    ) -> list[Hashable]:
        """:meth:`predict_cascade_failure` when several nodes fail at once (the nodes a repair routed
        around, say); the cascade does not list them."""
        if not 0 < threshold <= 1:
            raise ValueError("threshold must be in (0, 1]")
        nodes, _index, _edges, indptr, indices = self._arrays()
        n = len(nodes)
        starts = [self._index(v) for v in failed_nodes]
        alpha = 1.0 / threshold - 1.0
        alive = np.ones(n, dtype=bool)
        sources = None
        if k is not None or n > EXACT_BETWEENNESS_MAX_NODES:
            kk = min(n, k or DEFAULT_BETWEENNESS_SAMPLES)
            if kk < n:
                sources = np.random.default_rng(seed).choice(n, size=kk, replace=False)
        load0 = betweenness(indptr, indices, alive, sources)
        floor = max(float(load0.mean()) if n else 0.0, 1.0)
        capacity = (1.0 + alpha) * np.maximum(load0, floor)
        alive[starts] = False
        failed: list[Hashable] = []
        for _ in range(max_rounds):
            load = betweenness(indptr, indices, alive, sources)
            over = alive & (load > capacity * (1 + 1e-9))
            if not over.any():
                break
            idx = np.flatnonzero(over)
            ratio = load[idx] / capacity[idx]
            for j in idx[np.argsort(-ratio, kind="stable")]:
                failed.append(nodes[j])
            alive[idx] = False
        return failed


def _bfs_until(g: nx.Graph, src, targets: set):
    """Yield (target, distance) for each target reached, stop when all found."""
    seen = {src}
    frontier = [src]
    d = 0
    while frontier and targets:
        d += 1
        nxt = []
        for u in frontier:
            for w in g[u]:
                if w not in seen:
                    seen.add(w)
                    nxt.append(w)
                    if w in targets:
                        targets.discard(w)
                        yield w, d
        frontier = nxt


def _geometric_edges(pos: np.ndarray, radius: float) -> np.ndarray:
    """All pairs closer than ``radius`` via grid bucketing (O(n * degree))."""
    n = len(pos)
    if n < 2 or radius <= 0:
        return np.zeros((0, 2), dtype=np.int64)
    cells = np.floor(pos / radius).astype(np.int64)
    ncell = int(cells.max()) + 1
    key = cells[:, 0] * ncell + cells[:, 1]
    order = np.argsort(key, kind="stable")
    skey = key[order]
    uniq, starts = np.unique(skey, return_index=True)
    ends = np.append(starts[1:], len(skey))
    bucket = {int(u): order[s:e] for u, s, e in zip(uniq, starts, ends, strict=True)}
    out = []
    r2 = radius * radius
    for u, members in bucket.items():
        cx, cy = divmod(u, ncell)
        for dx, dy in ((0, 0), (1, -1), (1, 0), (1, 1), (0, 1)):
            other = bucket.get((cx + dx) * ncell + (cy + dy))
            if other is None or not (0 <= cx + dx < ncell and 0 <= cy + dy < ncell):
                continue
            d = pos[members][:, None, :] - pos[other][None, :, :]
            close = (d * d).sum(-1) < r2
            a, b = np.nonzero(close)
            ia, ib = members[a], other[b]
            if dx == 0 and dy == 0:
                keep = ia < ib
                ia, ib = ia[keep], ib[keep]
            if ia.size:
                out.append(np.stack([ia, ib], axis=1))
    if not out:
        return np.zeros((0, 2), dtype=np.int64)
    return np.concatenate(out).astype(np.int64)


def _connect_components(n: int, edges: np.ndarray, pos: np.ndarray) -> np.ndarray:
    labels = component_labels(n, edges)
    comps, counts = np.unique(labels, return_counts=True)
    if comps.size <= 1:
        return edges
    main = comps[counts.argmax()]
    in_main = labels == main
    extra = []
    for c in comps:
        if c == main:
            continue
        members = np.flatnonzero(labels == c)
        targets = np.flatnonzero(in_main)
        d = ((pos[members][:, None, :] - pos[targets][None, :, :]) ** 2).sum(-1)
        a, b = np.unravel_index(d.argmin(), d.shape)
        extra.append((members[a], targets[b]))
        in_main[members] = True  # later pieces may attach through this one
    return np.concatenate([edges, np.array(extra, dtype=np.int64)])
