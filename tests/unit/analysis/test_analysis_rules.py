import numpy as np
import pytest

from x0tta6bl4.analysis.features import COL, NUM_FEATURES
from x0tta6bl4.analysis.rules import RuleBasedDetector, RuleDetector
from x0tta6bl4.twin.telemetry import FEATURES


def row(latency=10.0, loss=0.1, cpu=20.0, mem=30.0):
    x = np.zeros(NUM_FEATURES, dtype=np.float32)
    x[COL["latency_ms_p99"]] = latency
    x[COL["loss_rate_mean"]] = loss
    x[COL["cpu_mean"]] = cpu
    x[COL["memory_mean"]] = mem
    return x


@pytest.mark.parametrize(
    "kw, level, fault",
    [
        ({}, 0.0, "normal"),
        ({"latency": 39.9}, 0.0, "normal"),
        ({"latency": 40.0}, 0.5, "congestion"),
        ({"latency": 100.0}, 0.5, "congestion"),
        ({"latency": 100.1}, 1.0, "congestion"),
        ({"loss": 1.0}, 0.5, "degrading_link"),
        ({"loss": 5.5}, 1.0, "degrading_link"),
        ({"cpu": 75}, 0.5, "cpu_overload"),
        ({"cpu": 91}, 1.0, "cpu_overload"),
        ({"mem": 85}, 0.5, "memory_leak"),
        ({"mem": 96}, 1.0, "memory_leak"),
    ],
)
def test_threshold_bands(kw, level, fault):
    res = RuleDetector().evaluate(row(**kw)[None])
    assert res.score[0] == level
    assert res.fault_type[0] == fault


def test_alert_level():
    x = np.stack([row(cpu=80), row(cpu=95)])
    assert RuleDetector().is_anomaly(x).tolist() == [False, True]
    assert RuleDetector("warning").is_anomaly(x).tolist() == [True, True]


def test_rule_detector_interface():
    d = RuleBasedDetector()
    base = {f: 1.0 for f in FEATURES}
    p = d.predict("n1", {**base, "cpu": 97.0})
    assert p.is_anomaly and p.fault_type == "cpu_overload" and p.root_cause == "n1"
    assert p.detector == "rules"
    assert not d.predict("n1", base).is_anomaly
    win = {"neighbours": {"a": ["b"], "b": ["c"]},
           "nodes": {"a": {**base, "cpu": 95.0}, "b": {**base, "cpu": 99.0}, "c": base}}
    (inc,) = d.detect(win)
    assert inc.members == ["a", "b"] and inc.root_cause == "b"
