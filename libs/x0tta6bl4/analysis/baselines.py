"""Tree-ensemble baseline: HistGradientBoosting on node + neighbour-aggregated features."""

from __future__ import annotations

import numpy as np

from x0tta6bl4.twin.telemetry import FAULT_TYPES

from .features import NodeFeatures, extract
from .types import group_incidents


def symlog(x: np.ndarray) -> np.ndarray:
    return np.sign(x) * np.log1p(np.abs(x))


def neighbour_features(x: np.ndarray, edge_index: np.ndarray) -> np.ndarray:
    """[own, mean over neighbours, max over neighbours, own - mean] on symlog features."""
    z = symlog(x.astype(np.float64))
    n = z.shape[0]
    src, dst = edge_index if edge_index.size else (np.zeros(0, int), np.zeros(0, int))
    cnt = np.bincount(dst, minlength=n)[:, None].astype(np.float64)
    s = np.zeros_like(z)
    np.add.at(s, dst, z[src])
    mean = np.where(cnt > 0, s / np.maximum(cnt, 1), z)
    mx = np.full_like(z, -np.inf)
    np.maximum.at(mx, dst, z[src])
    mx = np.where(np.isfinite(mx), mx, z)
    return np.concatenate([z, mean, mx, z - mean], axis=1).astype(np.float32)


class TreeBaseline:
    name = "tree"

    def __init__(self, anomaly_threshold: float = 0.6, seed: int = 0, max_iter: int = 80):
        from sklearn.ensemble import HistGradientBoostingClassifier

        kw = dict(max_iter=max_iter, learning_rate=0.1, max_leaf_nodes=31, random_state=seed,
                  early_stopping=False)
        self.anomaly_threshold = anomaly_threshold
        self.training_data: dict = {}       # what it was fitted on (set by analysis.train)
        self.anom = HistGradientBoostingClassifier(**kw)
        self.root = HistGradientBoostingClassifier(**kw)
        self.ftype = HistGradientBoostingClassifier(**kw)

    def fit(self, samples) -> TreeBaseline:
        X = np.concatenate([neighbour_features(s.x, s.edge_index) for s in samples])
        ya = np.concatenate([s.y_anom for s in samples]).astype(int)
        yr = np.concatenate([s.y_root for s in samples]).astype(int)
        yt = np.concatenate([s.y_type for s in samples])
        self.anom.fit(X, ya)
        self.root.fit(X, yr)
        m = yt >= 0
        self.ftype.fit(X[m], yt[m])
        return self

    def analyse(self, graph_snapshot):
        return self.analyse_many([graph_snapshot])[0]

    def analyse_many(self, snapshots) -> list[tuple]:
        """:meth:`analyse` of several windows with one prediction per model (the trees' per-call
        overhead dominates on small meshes)."""
        nfs = [s if isinstance(s, NodeFeatures) else extract(s) for s in snapshots]
        if not nfs:
            return []
        X = np.concatenate([neighbour_features(nf.x, nf.edge_index) for nf in nfs])
        prob_all = self.anom.predict_proba(X)[:, 1]
        root_all = self.root.predict_proba(X)[:, 1]
        anom_all = prob_all >= self.anomaly_threshold
        types_all = ["normal"] * len(prob_all)
        if anom_all.any():
            pred = self.ftype.predict(X[anom_all])
            for i, t in zip(np.flatnonzero(anom_all), pred, strict=True):
                types_all[i] = FAULT_TYPES[int(t)]
        out, off = [], 0
        for nf in nfs:
            n = len(nf.node_ids)
            prob, anom, root = prob_all[off:off + n], anom_all[off:off + n], root_all[off:off + n]
            types = types_all[off:off + n]
            off += n
            conf = np.where(anom, prob, 1 - prob)
            incidents, member_of = group_incidents(
                nf.node_ids, nf.edge_index, anom, prob, root, types, conf, self.name
            )
            out.append((nf, prob, anom, root, types, incidents, member_of))
        return out

    def detect(self, graph_snapshot):
        return self.analyse(graph_snapshot)[5]
