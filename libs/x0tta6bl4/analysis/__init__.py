"""Anomaly analyzer: feature extraction, threshold rules, GraphSAGE detector
with root-cause localisation, tree baseline, training and evaluation.

``load_detector()`` returns the shipped GraphSAGE detector, or the rule
detector (with one logged warning saying why) if torch / torch-geometric or
the weights cannot be loaded.
"""

from __future__ import annotations

import logging
from pathlib import Path

from .features import FEATURE_NAMES, TelemetryError, extract
from .rules import RuleBasedDetector, RuleDetector
from .types import AnomalyPrediction, Incident

log = logging.getLogger(__name__)

WEIGHTS_PATH = Path(__file__).with_name("weights") / "graphsage.pt"


def load_detector(path: str | Path | None = None, anomaly_threshold: float = 0.6):
    """GraphSAGE detector from shipped (or given) weights; rules fallback."""
    p = Path(path) if path is not None else WEIGHTS_PATH
    try:
        from .model import GraphSAGEAnomalyDetector
    except Exception as exc:  # noqa: BLE001 - ImportError, or a broken torch install: rules fallback
        log.warning("analysis: GraphSAGE unavailable (%s: %s); falling back to threshold rules",
                    type(exc).__name__, exc)
        return RuleBasedDetector()
    try:
        return GraphSAGEAnomalyDetector.load(p, anomaly_threshold)
    except Exception as exc:  # noqa: BLE001 - unreadable weights: rules fallback, logged
        log.warning("analysis: cannot load GraphSAGE weights from %s (%s: %s); falling back to "
                    "threshold rules", p, type(exc).__name__, exc)
        return RuleBasedDetector()


def __getattr__(name: str):
    # torch is imported only when the learned detector is actually requested
    if name in ("GraphSAGEAnomalyDetector", "SageNet"):
        from . import model

        return getattr(model, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "FEATURE_NAMES",
    "AnomalyPrediction",
    "GraphSAGEAnomalyDetector",
    "Incident",
    "RuleBasedDetector",
    "RuleDetector",
    "TelemetryError",
    "extract",
    "load_detector",
]
