"""Baseline detector: the spec's threshold rules.

| metric          | ok    | warning  | critical |
|-----------------|-------|----------|----------|
| p99 latency ms  | < 40  | 40-100   | > 100    |
| loss %          | < 1   | 1-5      | > 5      |
| CPU %           | < 70  | 70-90    | > 90     |
| memory %        | < 80  | 80-95    | > 95     |

Loss, CPU and memory use the window mean; latency uses the window p99.
Score per node = max level (0 ok, 0.5 warning, 1 critical); a node is
anomalous at ``critical`` by default (``alert_on="warning"`` to alert on
warnings too).  Root cause of an incident = the node with the largest summed
normalised exceedance.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .features import COL

RULES: dict[str, tuple[str, float, float]] = {
    # name: (feature column, warning threshold, critical threshold)
    "latency_p99": ("latency_ms_p99", 40.0, 100.0),
    "loss": ("loss_rate_mean", 1.0, 5.0),
    "cpu": ("cpu_mean", 70.0, 90.0),
    "memory": ("memory_mean", 80.0, 95.0),
}
RULE_FAULT = {
    "latency_p99": "congestion",
    "loss": "degrading_link",
    "cpu": "cpu_overload",
    "memory": "memory_leak",
}


@dataclass
class RuleResult:
    score: np.ndarray  # (N,) 0 / 0.5 / 1
    severity: np.ndarray  # (N,) summed exceedance over warning thresholds (for ranking)
    fault_type: list[str]
    top_rule: list[str | None]


class RuleDetector:
    def __init__(self, alert_on: str = "critical") -> None:
        if alert_on not in ("critical", "warning"):
            raise ValueError("alert_on must be 'critical' or 'warning'")
        self.alert_on = alert_on

    def evaluate(self, x: np.ndarray) -> RuleResult:
        n = x.shape[0]
        level = np.zeros((n, len(RULES)))
        exceed = np.zeros((n, len(RULES)))
        for j, (col, warn, crit) in enumerate(RULES.values()):
            v = x[:, COL[col]]
            level[:, j] = np.where(v > crit, 1.0, np.where(v >= warn, 0.5, 0.0))
            exceed[:, j] = np.maximum(v - warn, 0) / (crit - warn)
        score = level.max(axis=1)
        names = list(RULES)
        top = (level * 10 + exceed).argmax(axis=1)
        has = level.max(axis=1) > 0
        return RuleResult(
            score=score,
            severity=exceed.sum(axis=1),
            fault_type=[RULE_FAULT[names[t]] if h else "normal" for t, h in zip(top, has)],
            top_rule=[names[t] if h else None for t, h in zip(top, has)],
        )

    def is_anomaly(self, x: np.ndarray) -> np.ndarray:
        s = self.evaluate(x).score
        return s >= (1.0 if self.alert_on == "critical" else 0.5)


class RuleBasedDetector:
    """Same interface as the GraphSAGE detector, backed by :class:`RuleDetector`.

    Used as the fallback when torch or the shipped weights cannot be loaded.
    """

    name = "rules"

    def __init__(self, alert_on: str = "critical") -> None:
        self.rules = RuleDetector(alert_on)

    def analyse(self, graph_snapshot):
        from .features import NodeFeatures, extract
        from .types import group_incidents

        nf = graph_snapshot if isinstance(graph_snapshot, NodeFeatures) else extract(graph_snapshot)
        res = self.rules.evaluate(nf.x)
        anom = self.rules.is_anomaly(nf.x)
        conf = np.where(anom, res.score, 1 - res.score)
        top = {
            i: ([(RULES[r][0], float(nf.x[i, COL[RULES[r][0]]]))] if r else [])
            for i, r in enumerate(res.top_rule)
        }
        incidents, member_of = group_incidents(
            nf.node_ids, nf.edge_index, anom, res.score, res.severity, res.fault_type, conf,
            self.name, top,
        )
        return nf, res, anom, incidents, member_of

    def detect(self, graph_snapshot):
        return self.analyse(graph_snapshot)[3]

    def predict(self, node_id, features, neighbours=None):
        from .features import single_node_features
        from .types import AnomalyPrediction

        x = single_node_features(node_id, features)[None]
        res = self.rules.evaluate(x)
        anom = bool(self.rules.is_anomaly(x)[0])
        s = float(res.score[0])
        top = [(RULES[res.top_rule[0]][0], float(x[0, COL[RULES[res.top_rule[0]][0]]]))] if res.top_rule[0] else []
        return AnomalyPrediction(
            node_id=node_id,
            is_anomaly=anom,
            anomaly_score=s,
            confidence=s if anom else 1 - s,
            fault_type=res.fault_type[0] if anom else "normal",
            root_cause=node_id if anom else None,
            top_features=top,
            detector=self.name,
        )
