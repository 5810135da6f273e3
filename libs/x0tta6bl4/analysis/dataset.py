"""Labelled graph samples generated with the digital twin.

Splits use disjoint seed namespaces (``SeedSequence([split_id, seed, i])``)
so held-out topologies and telemetry seeds never occur in training; the
held-out split also uses larger graphs and a different degree range.
"""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass, field

import numpy as np

from x0tta6bl4.twin import MeshDigitalTwin
from x0tta6bl4.twin.telemetry import FAULT_TYPES, TelemetrySimulator, TelemetryWindow

from .features import extract

SPLITS = {
    # name: (split id, node count range, mean degree range)
    "train": (1, (20, 80), (3.0, 6.0)),
    "val": (2, (20, 80), (3.0, 6.0)),
    "test": (3, (40, 160), (3.5, 7.0)),
}
TYPE_INDEX = {t: i for i, t in enumerate(FAULT_TYPES)}


@dataclass
class GraphSample:
    x: np.ndarray
    edge_index: np.ndarray
    y_anom: np.ndarray  # (N,) float32
    y_type: np.ndarray  # (N,) int64, -1 for normal
    y_root: np.ndarray  # (N,) float32
    node_ids: list[Hashable]
    incidents: list[dict]  # {"root", "fault_type", "members", "first_window"}
    scenario: int
    window: int
    meta: dict = field(default_factory=dict)


def sample_from_window(w: TelemetryWindow, scenario: int = 0) -> GraphSample:
    nf = extract(w)
    lab = w.labels
    n = len(nf.node_ids)
    index = {v: i for i, v in enumerate(nf.node_ids)}
    y_type = np.full(n, -1, dtype=np.int64)
    y_root = np.zeros(n, dtype=np.float32)
    if lab is not None:
        for i, ft in enumerate(lab.fault_type):
            if ft != "normal":
                y_type[i] = TYPE_INDEX[ft]
        for inc in lab.incidents:
            y_root[index[inc["root"]]] = 1.0
    y_anom = (
        lab.is_anomaly.astype(np.float32) if lab is not None else np.zeros(n, dtype=np.float32)
    )
    return GraphSample(
        nf.x, nf.edge_index, y_anom, y_type, y_root, nf.node_ids,
        list(lab.incidents) if lab is not None else [], scenario, w.index,
    )


def generate_split(
    split: str, seed: int, num_scenarios: int, num_windows: int = 6
) -> list[GraphSample]:
    split_id, (n_lo, n_hi), (d_lo, d_hi) = SPLITS[split]
    out: list[GraphSample] = []
    for i in range(num_scenarios):
        ss = np.random.SeedSequence([split_id, seed, i])
        rng = np.random.default_rng(ss)
        topo_seed, sim_seed = (int(v) for v in rng.integers(0, 2**31 - 1, size=2))
        n = int(rng.integers(n_lo, n_hi + 1))
        deg = float(rng.uniform(d_lo, d_hi))
        g = MeshDigitalTwin(f"{split}-{i}").create_test_topology(n, deg, topo_seed)
        windows = TelemetrySimulator(g, seed=sim_seed).run(num_windows)
        first_window: dict = {}
        for w in windows:
            assert w.labels is not None, "the simulator labels every window"
            for inc in w.labels.incidents:
                first_window.setdefault(inc["root"], w.index)
        for w in windows:
            s = sample_from_window(w, scenario=i)
            for inc in s.incidents:
                inc["first_window"] = first_window[inc["root"]]
            s.meta = {"topo_seed": topo_seed, "sim_seed": sim_seed, "nodes": n, "degree": deg}
            out.append(s)
    return out
