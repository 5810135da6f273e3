"""Threshold table, boundary semantics, config validation, change tracking."""
from __future__ import annotations

import math

import pytest

from x0tta6bl4.monitoring.thresholds import (
    Band,
    Health,
    HealthTracker,
    NodeMetrics,
    ThresholdConfigError,
    Thresholds,
    evaluate_node,
    mesh_state,
)

H, W, C = Health.HEALTHY, Health.WARNING, Health.CRITICAL

# (metric, value, expected) at and around every boundary of the spec table
BOUNDARIES = [
    ("latency_p99_ms", 0, H), ("latency_p99_ms", 39.999, H), ("latency_p99_ms", 40, W),
    ("latency_p99_ms", 70, W), ("latency_p99_ms", 100, W), ("latency_p99_ms", 100.001, C),
    ("latency_p99_ms", math.inf, C),
    ("loss_percent", 0.999, H), ("loss_percent", 1, W), ("loss_percent", 5, W), ("loss_percent", 5.0001, C),
    ("loss_percent", 100, C),
    ("cpu_percent", 69.99, H), ("cpu_percent", 70, W), ("cpu_percent", 90, W), ("cpu_percent", 90.01, C),
    ("memory_percent", 79.9, H), ("memory_percent", 80, W), ("memory_percent", 95, W),
    ("memory_percent", 95.1, C),
    ("mttr_minutes", 2.99, H), ("mttr_minutes", 3, W), ("mttr_minutes", 5, W), ("mttr_minutes", 5.01, C),
]


@pytest.mark.parametrize(("metric", "value", "expected"), BOUNDARIES)
def test_default_table_boundaries(metric: str, value: float, expected: Health) -> None:
    assert Thresholds().classify(metric, value) is expected


@pytest.mark.parametrize("bad", [math.nan, -0.1, "12", None, True])
def test_bad_measurement_is_an_error_naming_the_metric(bad: object) -> None:
    with pytest.raises(ValueError, match="cpu_percent"):
        Thresholds().classify("cpu_percent", bad)  # type: ignore[arg-type]


def test_unknown_metric() -> None:
    with pytest.raises(KeyError):
        Thresholds().classify("disk", 1)


@pytest.mark.parametrize(
    ("cfg", "needle"),
    [
        ({"cpu_percent": {"warning": 90, "critical": 70}},
         r"cpu_percent\.warning \(90\) must be lower than cpu_percent\.critical \(70\)"),
        ({"loss_percent": {"warning": 5, "critical": 5}}, r"loss_percent\.warning \(5\) must be lower"),
        ({"latency_p99_ms": {"warning": -1, "critical": 10}}, r"latency_p99_ms\.warning must be non-negative"),
        ({"mttr_minutes": {"critical": math.inf}}, r"mttr_minutes\.critical must be finite"),
        ({"memory_percent": {"warning": math.nan, "critical": 90}}, r"memory_percent\.warning must be finite"),
        ({"memory_percent": {"warning": 80, "critical": 120}}, r"memory_percent\.critical \(120\) must be <= 100"),
        ({"cpu_percent": {"warning": "high", "critical": 95}}, r"cpu_percent\.warning must be a number"),
        ({"cpu_percent": {"warn": 50}}, r"unknown threshold setting cpu_percent\.warn"),
        ({"disk_percent": {"warning": 1, "critical": 2}}, r"unknown threshold setting 'disk_percent'"),
        ({"cpu_percent": 80}, r"cpu_percent must be a mapping"),
        ({"cpu_percent": {"warning": 95}},
         r"cpu_percent\.warning \(95\) must be lower than cpu_percent\.critical \(90\)"),
    ],
)
def test_bad_config_gives_clear_error(cfg: dict, needle: str) -> None:
    with pytest.raises(ThresholdConfigError, match=needle):
        Thresholds.from_mapping(cfg)


def test_config_overrides_and_defaults() -> None:
    t = Thresholds.from_mapping({"cpu_percent": {"warning": 50, "critical": 60}, "loss_percent": {"critical": 2}})
    assert t.classify("cpu_percent", 50) is W
    assert t.classify("cpu_percent", 60.5) is C
    assert t.as_dict()["loss_percent"] == {"warning": 1.0, "critical": 2.0}
    assert t.as_dict()["latency_p99_ms"] == {"warning": 40.0, "critical": 100.0}
    # a Band passed directly is re-validated under the field's name
    with pytest.raises(ThresholdConfigError, match="cpu_percent"):
        Thresholds(cpu_percent=Band(10, 200))


def test_node_is_worst_metric_and_mesh_is_worst_node() -> None:
    n = evaluate_node("a", NodeMetrics(latency_p99_ms=10, loss_percent=1, cpu_percent=95))
    assert n.state is C
    assert n.metrics == {"latency_p99_ms": H, "loss_percent": W, "cpu_percent": C}
    assert evaluate_node("b", NodeMetrics()).state is Health.UNKNOWN
    assert mesh_state([H, W, Health.UNKNOWN]) is W
    assert mesh_state([Health.UNKNOWN]) is Health.UNKNOWN
    assert mesh_state([]) is Health.UNKNOWN


def test_tracker_emits_changes_only() -> None:
    tr = HealthTracker()
    assert tr.update("a", NodeMetrics(latency_p99_ms=10)) == []
    ch = tr.update("a", NodeMetrics(latency_p99_ms=40))
    assert [(c.scope, c.old, c.new) for c in ch] == [("metric", H, W), ("node", H, W), ("mesh", H, W)]
    assert ch[0].metric == "latency_p99_ms" and ch[0].value == 40
    assert tr.update("a", NodeMetrics(latency_p99_ms=60)) == []  # still WARNING
    assert tr.update("b", NodeMetrics(cpu_percent=10)) == []
    ch = tr.update("b", NodeMetrics(cpu_percent=91))
    assert [(c.scope, c.node_id, c.new) for c in ch] == [("metric", "b", C), ("node", "b", C), ("mesh", None, C)]
    ch = tr.update("b", NodeMetrics(cpu_percent=20))
    assert [(c.scope, c.old, c.new) for c in ch] == [("metric", C, H), ("node", C, H), ("mesh", C, W)]
    # a metric not measured this round keeps its last state
    assert tr.update("a", NodeMetrics(cpu_percent=1)) == []
    assert tr.node("a") is W
    assert [(c.scope, c.new) for c in tr.remove("a")] == [("mesh", H)]
    assert tr.mesh is H
