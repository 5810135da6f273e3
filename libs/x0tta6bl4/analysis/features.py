"""Window -> per-node feature vectors, with strict telemetry validation.

A window is either a :class:`x0tta6bl4.twin.telemetry.TelemetryWindow` or the
plain form ``{"neighbours": {id: [ids]}, "nodes": {id: {feature: [samples]}}}``
(scalars are accepted as a single sample).  Bad input raises
:class:`TelemetryError` naming the node and field; it never crashes with an
unrelated exception.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping
from dataclasses import dataclass

import numpy as np

from x0tta6bl4.twin.telemetry import FEATURES, TelemetryWindow

STATS: tuple[str, ...] = ("mean", "max", "min", "std", "slope")
FEATURE_NAMES: tuple[str, ...] = (*(f"{f}_{s}" for f in FEATURES for s in STATS), "latency_ms_p99", "degree")
NUM_FEATURES = len(FEATURE_NAMES)
COL = {name: i for i, name in enumerate(FEATURE_NAMES)}

NON_NEGATIVE = frozenset(
    {"loss_rate", "link_age", "latency_ms", "throughput", "cpu", "memory", "failed_auth", "snr"}
)
PERCENT = frozenset({"loss_rate", "cpu", "memory"})


class TelemetryError(ValueError):
    """Telemetry that cannot be analysed; the message names the node and field."""

    def __init__(self, message: str, node: Hashable | None = None, field: str | None = None):
        super().__init__(message)
        self.node = node
        self.field = field


@dataclass
class NodeFeatures:
    node_ids: list[Hashable]
    x: np.ndarray  # (N, NUM_FEATURES) float32
    edge_index: np.ndarray  # (2, E) int64, both directions
    neighbours: dict[Hashable, list[Hashable]]


def _validate_values(node: Hashable, field: str, values) -> np.ndarray:
    if isinstance(values, (int, float, np.integer, np.floating)) and not isinstance(values, bool):
        values = [values]
    try:
        arr = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError):
        raise TelemetryError(
            f"node {node!r}: field {field!r} is not numeric", node, field
        ) from None
    if arr.ndim != 1 or arr.size == 0:
        raise TelemetryError(
            f"node {node!r}: field {field!r} must be a non-empty 1-D series", node, field
        )
    if not np.isfinite(arr).all():
        raise TelemetryError(f"node {node!r}: field {field!r} contains NaN/inf", node, field)
    if field in NON_NEGATIVE and (arr < 0).any():
        raise TelemetryError(
            f"node {node!r}: field {field!r} is negative ({arr.min():g}), impossible", node, field
        )
    if field in PERCENT and (arr > 100).any():
        raise TelemetryError(
            f"node {node!r}: field {field!r} exceeds 100 % ({arr.max():g})", node, field
        )
    return arr


def node_series(node: Hashable, fields: Mapping) -> np.ndarray:
    """Validate one node's mapping of feature -> samples; returns (T, F)."""
    if not isinstance(fields, Mapping):
        raise TelemetryError(f"node {node!r}: telemetry must be a mapping of fields", node)
    cols = []
    length = None
    for f in FEATURES:
        if f not in fields:
            raise TelemetryError(f"node {node!r}: missing field {f!r}", node, f)
        arr = _validate_values(node, f, fields[f])
        if length is None:
            length = arr.size
        elif arr.size != length and arr.size != 1:
            raise TelemetryError(
                f"node {node!r}: field {f!r} has {arr.size} samples, expected {length}", node, f
            )
        cols.append(arr)
    length = max(c.size for c in cols)
    return np.stack([np.broadcast_to(c, (length,)) if c.size == 1 else c for c in cols], axis=1)


def window_arrays(window) -> tuple[list[Hashable], np.ndarray, dict[Hashable, list[Hashable]]]:
    """Validated (node_ids, series (N, T, F), neighbours) from either window form."""
    if isinstance(window, TelemetryWindow):
        series = np.asarray(window.series, dtype=np.float64)
        if series.ndim != 3 or series.shape[2] != len(FEATURES) or series.shape[0] != len(window.node_ids):
            raise TelemetryError("window series must have shape (nodes, steps, features)")
        bad = ~np.isfinite(series)
        if bad.any():
            i, _, j = np.argwhere(bad)[0]
            nid, f = window.node_ids[i], FEATURES[j]
            raise TelemetryError(f"node {nid!r}: field {f!r} contains NaN/inf", nid, f)
        for j, f in enumerate(FEATURES):
            col = series[:, :, j]
            if f in NON_NEGATIVE and (col < 0).any():
                i = int(np.argwhere(col < 0)[0][0])
                raise TelemetryError(
                    f"node {window.node_ids[i]!r}: field {f!r} is negative, impossible",
                    window.node_ids[i],
                    f,
                )
            if f in PERCENT and (col > 100).any():
                i = int(np.argwhere(col > 100)[0][0])
                raise TelemetryError(
                    f"node {window.node_ids[i]!r}: field {f!r} exceeds 100 %", window.node_ids[i], f
                )
        node_ids, neighbours = list(window.node_ids), window.neighbours
    elif isinstance(window, Mapping):
        nodes = window.get("nodes")
        if not isinstance(nodes, Mapping) or not nodes:
            raise TelemetryError("window has no 'nodes' mapping")
        node_ids = list(nodes)
        per_node = [node_series(nid, nodes[nid]) for nid in node_ids]
        lengths = {p.shape[0] for p in per_node}
        if len(lengths) > 1:
            t = per_node[0].shape[0]
            for nid, p in zip(node_ids, per_node, strict=True):
                if p.shape[0] != t:
                    raise TelemetryError(
                        f"node {nid!r}: {p.shape[0]} samples, other nodes have {t}", nid
                    )
        series = np.stack(per_node)
        neighbours = window.get("neighbours", {}) or {}
        if not isinstance(neighbours, Mapping):
            raise TelemetryError("window 'neighbours' must be a mapping node -> list of nodes")
    else:
        raise TelemetryError(f"unsupported window type {type(window).__name__}")
    known = set(node_ids)
    for nid, neigh in neighbours.items():
        if isinstance(neigh, (str, bytes)) or not isinstance(neigh, (list, tuple, set, frozenset)):
            raise TelemetryError(f"node {nid!r}: neighbours must be a list of node ids", nid)
        if nid not in known:
            raise TelemetryError(f"neighbour list for unknown node {nid!r} (no telemetry)", nid)
        for other in neigh:
            if other not in known:
                raise TelemetryError(
                    f"node {nid!r} lists unknown neighbour {other!r} (no telemetry)", other
                )
    return node_ids, series, {k: list(v) for k, v in neighbours.items()}


def series_features(series: np.ndarray, degree: np.ndarray) -> np.ndarray:
    """(N, T, F) validated samples -> (N, NUM_FEATURES) float32."""
    n, t, nf = series.shape
    mean = series.mean(axis=1)
    mx = series.max(axis=1)
    mn = series.min(axis=1)
    std = series.std(axis=1)
    if t > 1:
        tc = np.arange(t) - (t - 1) / 2.0
        slope = np.einsum("ntf,t->nf", series, tc) / float((tc * tc).sum())
    else:
        slope = np.zeros((n, nf))
    stats = np.stack([mean, mx, mn, std, slope], axis=2).reshape(n, nf * len(STATS))
    p99 = np.quantile(series[:, :, FEATURES.index("latency_ms")], 0.99, axis=1)
    return np.concatenate([stats, p99[:, None], degree[:, None]], axis=1).astype(np.float32)


def extract(window) -> NodeFeatures:
    """Validate a window and build per-node features plus the graph's edge_index."""
    node_ids, series, neighbours = window_arrays(window)
    index = {v: i for i, v in enumerate(node_ids)}
    edges = set()
    for a, neigh in neighbours.items():
        for b in neigh:
            if a != b:
                i, j = index[a], index[b]
                edges.add((i, j))
                edges.add((j, i))
    edge_index = (
        np.array(sorted(edges), dtype=np.int64).T if edges else np.zeros((2, 0), dtype=np.int64)
    )
    degree = np.bincount(edge_index[0], minlength=len(node_ids)).astype(np.float64)
    x = series_features(series, degree)
    return NodeFeatures(node_ids, x, edge_index, neighbours)


def single_node_features(node_id: Hashable, fields: Mapping, degree: float = 0.0) -> np.ndarray:
    """Feature vector (NUM_FEATURES,) for one node's fields (scalars or series)."""
    s = node_series(node_id, fields)
    if not math.isfinite(degree) or degree < 0:
        raise TelemetryError(f"node {node_id!r}: degree must be a non-negative number", node_id)
    return series_features(s[None], np.array([degree], dtype=np.float64))[0]
