import math

import numpy as np
import pytest

from x0tta6bl4.analysis.features import COL, FEATURE_NAMES, TelemetryError, extract, single_node_features
from x0tta6bl4.twin import MeshDigitalTwin
from x0tta6bl4.twin.telemetry import FEATURES, TelemetrySimulator


def good_fields(n=4, **over):
    f = {
        "rssi": [-60.0] * n, "snr": [30.0] * n, "loss_rate": [0.5] * n, "link_age": [100.0] * n,
        "latency_ms": [10.0, 12.0, 14.0, 16.0][:n], "throughput": [50.0] * n, "cpu": [30.0] * n,
        "memory": [40.0] * n, "failed_auth": [0.0] * n,
    }
    f.update(over)
    return f


def window(**node_over):
    return {"neighbours": {"a": ["b"]}, "nodes": {"a": good_fields(**node_over), "b": good_fields()}}


def test_dict_and_window_forms_agree():
    g = MeshDigitalTwin().create_test_topology(20, 4.0, 1)
    w = TelemetrySimulator(g, seed=0).run(2)[-1]
    a, b = extract(w), extract(w.to_dict())
    assert np.allclose(a.x, b.x)
    assert np.array_equal(a.edge_index, b.edge_index)
    assert a.x.shape == (20, len(FEATURE_NAMES))


def test_statistics_are_correct():
    nf = extract(window())
    x = nf.x[0]
    assert x[COL["latency_ms_mean"]] == pytest.approx(13.0)
    assert x[COL["latency_ms_max"]] == pytest.approx(16.0)
    assert x[COL["latency_ms_slope"]] == pytest.approx(2.0)
    assert x[COL["cpu_std"]] == pytest.approx(0.0)
    assert x[COL["degree"]] == 1.0
    assert nf.edge_index.shape == (2, 2)


@pytest.mark.parametrize(
    "over, node, field, words",
    [
        ({"cpu": [30.0, math.nan, 30.0, 30.0]}, "a", "cpu", "NaN"),
        ({"latency_ms": [1.0, math.inf, 1.0, 1.0]}, "a", "latency_ms", "NaN/inf"),
        ({"loss_rate": [-1.0, 0.0, 0.0, 0.0]}, "a", "loss_rate", "negative"),
        ({"memory": [101.0] * 4}, "a", "memory", "100"),
        ({"throughput": ["fast"] * 4}, "a", "throughput", "not numeric"),
        ({"snr": [1.0, 2.0]}, "a", "snr", "samples"),
        ({"rssi": []}, "a", "rssi", "non-empty"),
    ],
)
def test_bad_values_rejected_with_node_and_field(over, node, field, words):
    with pytest.raises(TelemetryError) as ei:
        extract(window(**over))
    msg = str(ei.value)
    assert repr(node) in msg and repr(field) in msg and words in msg
    assert ei.value.node == node and ei.value.field == field


def test_missing_field_named():
    w = window()
    del w["nodes"]["b"]["failed_auth"]
    with pytest.raises(TelemetryError, match=r"node 'b': missing field 'failed_auth'"):
        extract(w)


def test_unknown_neighbour_and_unknown_node_named():
    w = window()
    w["neighbours"]["a"].append("ghost")
    with pytest.raises(TelemetryError, match=r"unknown neighbour 'ghost'"):
        extract(w)
    w = window()
    w["neighbours"]["ghost"] = ["a"]
    with pytest.raises(TelemetryError, match=r"unknown node 'ghost'"):
        extract(w)


def test_malformed_windows_raise_telemetry_error_not_crash():
    for bad in ({}, {"nodes": []}, {"nodes": {"a": 5}}, 42, {"nodes": {"a": good_fields()}, "neighbours": ["a"]},
                {"nodes": {"a": good_fields()}, "neighbours": {"a": "b"}}):
        with pytest.raises(TelemetryError):
            extract(bad)


def test_nan_in_simulated_window_is_caught():
    g = MeshDigitalTwin().create_test_topology(10, 3.0, 1)
    w = TelemetrySimulator(g, seed=0).run(1)[0]
    w.series[3, 2, FEATURES.index("snr")] = np.nan
    with pytest.raises(TelemetryError, match=r"node 3: field 'snr'"):
        extract(w)


def test_single_node_scalars_accepted():
    x = single_node_features("n", {f: 1.0 for f in FEATURES})
    assert x.shape == (len(FEATURE_NAMES),)
    assert x[COL["cpu_slope"]] == 0.0
