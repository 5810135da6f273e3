"""Baseline detector: the threshold rules of the one threshold table
(:class:`x0tta6bl4.monitoring.thresholds.Thresholds`; the spec's by default) on feature columns.

Loss, CPU and memory use the window mean; latency uses the window p99.
Score per node = max level (0 ok, 0.5 warning, 1 critical); a node is
anomalous at ``critical`` by default (``alert_on="warning"`` to alert on
warnings too).  Root cause of an incident = the node with the largest summed
normalised exceedance.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..monitoring.thresholds import Thresholds
from .features import COL

# rule name: (feature column, metric of the threshold table)
RULE_COLUMNS: dict[str, tuple[str, str]] = {
    "latency_p99": ("latency_ms_p99", "latency_p99_ms"),
    "loss": ("loss_rate_mean", "loss_percent"),
    "cpu": ("cpu_mean", "cpu_percent"),
    "memory": ("memory_mean", "memory_percent"),
}


def rules_table(thresholds: Thresholds | None = None) -> dict[str, tuple[str, float, float]]:
    """rule name -> (feature column, warning threshold, critical threshold), from the threshold table."""
    th = thresholds or Thresholds()
    return {name: (col, getattr(th, metric).warning, getattr(th, metric).critical)
            for name, (col, metric) in RULE_COLUMNS.items()}


RULES: dict[str, tuple[str, float, float]] = rules_table()   # the spec's
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
    def __init__(self, alert_on: str = "critical", thresholds: Thresholds | None = None) -> None:
        if alert_on not in ("critical", "warning"):
            raise ValueError("alert_on must be 'critical' or 'warning'")
        self.alert_on = alert_on
        self.table = rules_table(thresholds)

    def evaluate(self, x: np.ndarray) -> RuleResult:
        n = x.shape[0]
        level = np.zeros((n, len(self.table)))
        exceed = np.zeros((n, len(self.table)))
        for j, (col, warn, crit) in enumerate(self.table.values()):
            v = x[:, COL[col]]
            level[:, j] = np.where(v > crit, 1.0, np.where(v >= warn, 0.5, 0.0))
            exceed[:, j] = np.maximum(v - warn, 0) / (crit - warn)
        score = level.max(axis=1)
        names = list(self.table)
        top = (level * 10 + exceed).argmax(axis=1)
        has = level.max(axis=1) > 0
        return RuleResult(
            score=score,
            severity=exceed.sum(axis=1),
            fault_type=[RULE_FAULT[names[t]] if h else "normal" for t, h in zip(top, has, strict=True)],
            top_rule=[names[t] if h else None for t, h in zip(top, has, strict=True)],
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
