"""Detector outputs and incident grouping (torch-free)."""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field

import numpy as np


@dataclass
class AnomalyPrediction:
    node_id: Hashable
    is_anomaly: bool
    anomaly_score: float
    """Calibrated probability that the node is anomalous (rules: 0 / 0.5 / 1)."""
    confidence: float
    """Calibrated probability of the returned decision (score or 1 - score)."""
    fault_type: str
    """One of the twin's FAULT_TYPES, or "normal"."""
    root_cause: Hashable | None
    """Root-cause node of the incident this node belongs to (None if normal)."""
    top_features: list[tuple[str, float]] = field(default_factory=list)
    """Top-3 contributing features (name, contribution)."""
    detector: str = "graphsage"


@dataclass
class Incident:
    root_cause: Hashable
    fault_type: str
    members: list[Hashable]
    score: float
    """Max anomaly score in the incident."""
    root_score: float
    confidence: float
    top_features: list[tuple[str, float]] = field(default_factory=list)
    detector: str = "graphsage"


def connected_groups(n: int, edge_index: np.ndarray, mask: np.ndarray) -> list[np.ndarray]:
    """Connected components of the subgraph induced by ``mask`` (sorted, deterministic)."""
    idx = np.flatnonzero(mask)
    if idx.size == 0:
        return []
    parent = {int(i): int(i) for i in idx}

    def find(a: int) -> int:
        while parent[a] != a:
            parent[a] = parent[parent[a]]
            a = parent[a]
        return a

    if edge_index.size:
        src, dst = edge_index
        keep = mask[src] & mask[dst]
        for a, b in zip(src[keep].tolist(), dst[keep].tolist(), strict=True):
            ra, rb = find(a), find(b)
            if ra != rb:
                parent[max(ra, rb)] = min(ra, rb)
    groups: dict[int, list[int]] = {}
    for i in idx.tolist():
        groups.setdefault(find(i), []).append(i)
    return [np.array(sorted(g), dtype=np.int64) for _, g in sorted(groups.items())]


def group_incidents(
    node_ids: Sequence[Hashable],
    edge_index: np.ndarray,
    is_anomaly: np.ndarray,
    score: np.ndarray,
    root_score: np.ndarray,
    fault_types: Sequence[str],
    confidence: np.ndarray,
    detector: str,
    top_features: dict[int, list[tuple[str, float]]] | None = None,
) -> tuple[list[Incident], np.ndarray]:
    """Incidents = connected anomalous subgraphs; root = highest ``root_score``.

    Returns the incidents and, per node, the index of its incident (-1 if none).
    """
    n = len(node_ids)
    member_of = np.full(n, -1, dtype=np.int64)
    out = []
    for k, g in enumerate(connected_groups(n, edge_index, is_anomaly)):
        r = int(g[np.argmax(root_score[g])])
        member_of[g] = k
        out.append(
            Incident(
                root_cause=node_ids[r],
                fault_type=fault_types[r],
                members=[node_ids[i] for i in g],
                score=float(score[g].max()),
                root_score=float(root_score[r]),
                confidence=float(confidence[r]),
                top_features=(top_features or {}).get(r, []),
                detector=detector,
            )
        )
    return out, member_of
