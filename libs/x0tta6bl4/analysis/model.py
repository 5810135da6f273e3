"""GraphSAGE anomaly detector (torch-geometric SAGEConv, 2 layers).

Per node it outputs an anomaly logit, fault-type logits and a "source" logit
(is this node the root cause).  Incidents are connected anomalous subgraphs;
each incident's root cause is its node with the highest source score.  The
anomaly probability is temperature-scaled (fitted on a validation split).
Contributing features are gradient x input on the normalised inputs.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch_geometric.nn import SAGEConv

from x0tta6bl4.twin.telemetry import FAULT_TYPES

from .features import FEATURE_NAMES, NUM_FEATURES, NodeFeatures, TelemetryError, extract, single_node_features
from .types import AnomalyPrediction, Incident, group_incidents

WEIGHTS_DIR = Path(__file__).with_name("weights")
WEIGHTS_FILE = "graphsage.pt"


def symlog(x: torch.Tensor) -> torch.Tensor:
    return torch.sign(x) * torch.log1p(torch.abs(x))


class SageNet(nn.Module):
    mu: torch.Tensor            # buffers (register_buffer), saved with the weights
    sigma: torch.Tensor
    temperature: torch.Tensor

    def __init__(self, in_dim: int = NUM_FEATURES, hidden: int = 48, num_types: int = len(FAULT_TYPES)):
        super().__init__()
        self.in_dim, self.hidden, self.num_types = in_dim, hidden, num_types
        self.register_buffer("mu", torch.zeros(in_dim))
        self.register_buffer("sigma", torch.ones(in_dim))
        self.register_buffer("temperature", torch.ones(1))
        self.conv1 = SAGEConv(in_dim, hidden)
        self.conv2 = SAGEConv(hidden, hidden)
        self.head_anom = nn.Linear(2 * hidden, 1)
        self.head_type = nn.Linear(2 * hidden, num_types)
        self.head_root = nn.Linear(2 * hidden, 1)

    def normalise(self, x: torch.Tensor) -> torch.Tensor:
        return (symlog(x) - self.mu) / self.sigma

    def forward_normalised(self, z: torch.Tensor, edge_index: torch.Tensor):
        h1 = torch.relu(self.conv1(z, edge_index))
        h2 = torch.relu(self.conv2(h1, edge_index))
        h = torch.cat([h1, h2], dim=1)
        return self.head_anom(h).squeeze(-1), self.head_type(h), self.head_root(h).squeeze(-1)

    def forward(self, x: torch.Tensor, edge_index: torch.Tensor):
        return self.forward_normalised(self.normalise(x), edge_index)


def _to_tensors(x: np.ndarray, edge_index: np.ndarray):
    return torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)), torch.from_numpy(
        np.ascontiguousarray(edge_index, dtype=np.int64)
    )


class GraphSAGEAnomalyDetector:
    name = "graphsage"

    def __init__(self, anomaly_threshold: float = 0.6, net: SageNet | None = None, hidden: int = 48):
        if not 0 < anomaly_threshold < 1:
            raise ValueError("anomaly_threshold must be in (0, 1)")
        self.anomaly_threshold = anomaly_threshold
        self.net = net if net is not None else SageNet(hidden=hidden)
        self.net.eval()
        self.meta: dict = {}

    # ----------------------------------------------------------- persistence
    def save(self, path: str | Path) -> None:
        torch.save(
            {"state_dict": self.net.state_dict(), "hidden": self.net.hidden,
             "in_dim": self.net.in_dim, "feature_names": list(FEATURE_NAMES),
             "fault_types": list(FAULT_TYPES), "meta": self.meta},
            path,
        )

    @classmethod
    def load(cls, path: str | Path, anomaly_threshold: float = 0.6) -> GraphSAGEAnomalyDetector:
        blob = torch.load(path, map_location="cpu", weights_only=True)
        if blob.get("feature_names") != list(FEATURE_NAMES) or blob.get("fault_types") != list(FAULT_TYPES):
            raise ValueError("weights were trained for a different feature set / fault types")
        net = SageNet(in_dim=blob["in_dim"], hidden=blob["hidden"])
        net.load_state_dict(blob["state_dict"])
        det = cls(anomaly_threshold, net)
        det.meta = blob.get("meta", {})
        return det

    # -------------------------------------------------------------- scoring
    @torch.no_grad()
    def raw_scores(self, x: np.ndarray, edge_index: np.ndarray) -> dict[str, np.ndarray]:
        """Uncalibrated logits as numpy (for training/evaluation code)."""
        xt, et = _to_tensors(x, edge_index)
        a, t, r = self.net(xt, et)
        return {"anom_logit": a.numpy(), "type_logits": t.numpy(), "root_logit": r.numpy()}

    def scores(self, x: np.ndarray, edge_index: np.ndarray, explain: np.ndarray | None = None):
        """Calibrated probability, fault type index, root score and (optionally)
        gradient x input attributions for the nodes in ``explain``."""
        xt, et = _to_tensors(x, edge_index)
        with torch.set_grad_enabled(explain is not None and explain.size > 0):
            z = self.net.normalise(xt)
            if explain is not None and explain.size:
                z = z.detach().requires_grad_(True)
            a, t, r = self.net.forward_normalised(z, et)
            prob = torch.sigmoid(a / self.net.temperature)
            attrib = None
            if explain is not None and explain.size:
                a[torch.from_numpy(explain)].sum().backward()
                assert z.grad is not None, "z requires grad"
                attrib = (z.grad * z).detach().numpy()
        return (
            prob.detach().numpy(),
            t.detach().argmax(dim=1).numpy(),
            torch.sigmoid(r).detach().numpy(),
            attrib,
        )

    @staticmethod
    def _top3(attrib_row: np.ndarray) -> list[tuple[str, float]]:
        order = np.argsort(-attrib_row)[:3]
        return [(FEATURE_NAMES[j], float(attrib_row[j])) for j in order]

    # ------------------------------------------------------------------- API
    def analyse(self, graph_snapshot, explain: bool = True):
        nf = graph_snapshot if isinstance(graph_snapshot, NodeFeatures) else extract(graph_snapshot)
        prob, _, _, _ = self.scores(nf.x, nf.edge_index)
        anom = prob >= self.anomaly_threshold
        idx = np.flatnonzero(anom) if explain else None
        prob, ftype, root, attrib = self.scores(nf.x, nf.edge_index, idx)
        conf = np.where(anom, prob, 1 - prob)
        types = [FAULT_TYPES[k] for k in ftype]
        top = {int(i): self._top3(attrib[i]) for i in idx} if attrib is not None and idx is not None else {}
        incidents, member_of = group_incidents(
            nf.node_ids, nf.edge_index, anom, prob, root, types, conf, self.name, top
        )
        return nf, prob, anom, root, types, incidents, member_of

    def detect(self, graph_snapshot) -> list[Incident]:
        """Incidents in a window (TelemetryWindow or plain dict form)."""
        return self.analyse(graph_snapshot)[5]

    def predict(
        self,
        node_id: Hashable,
        features: Mapping,
        neighbours: Mapping[Hashable, Mapping] | None = None,
    ) -> AnomalyPrediction:
        """Score one node from its fields (scalars or sample series).

        With ``neighbours`` (id -> fields) the node is scored inside that star
        graph; without, the node is its own neighbourhood (self-loop), i.e.
        judged on its own telemetry.
        """
        if neighbours:
            ids = [node_id] + [k for k in neighbours if k != node_id]
            rows = [single_node_features(node_id, features, degree=len(ids) - 1)]
            rows += [single_node_features(k, neighbours[k], degree=1) for k in ids[1:]]
            x = np.stack(rows)
            m = len(ids) - 1
            ei = np.array([[0] * m + list(range(1, m + 1)), list(range(1, m + 1)) + [0] * m])
        else:
            ids = [node_id]
            x = single_node_features(node_id, features)[None]
            ei = np.zeros((2, 1), dtype=np.int64)
        prob, ftype, root, attrib = self.scores(x, ei, np.array([0]))
        p = float(prob[0])
        anom = p >= self.anomaly_threshold
        root_cause = None
        if anom:
            cand = [i for i in range(len(ids)) if prob[i] >= self.anomaly_threshold]
            root_cause = ids[max(cand, key=lambda i: root[i])]
        return AnomalyPrediction(
            node_id=node_id,
            is_anomaly=bool(anom),
            anomaly_score=p,
            confidence=p if anom else 1 - p,
            fault_type=FAULT_TYPES[int(ftype[0])] if anom else "normal",
            root_cause=root_cause,
            top_features=self._top3(attrib[0]),
            detector=self.name,
        )


__all__ = ["WEIGHTS_DIR", "WEIGHTS_FILE", "GraphSAGEAnomalyDetector", "SageNet", "TelemetryError"]
