import dataclasses

import pytest

from x0tta6bl4.twin import MeshDigitalTwin, MttrModel


def test_calibrate_recovers_exact_parameters():
    truth = MttrModel(hello_interval_s=0.5, miss_count=4, detect_per_hop_s=0.1,
                      repair_base_s=0.3, repair_per_hop_s=0.25)
    samples = [{"hops": h, "detect_s": truth.detect_s(h), "repair_s": truth.repair_s(h)}
               for h in (1, 2, 3, 5, 8)]
    m = MttrModel.calibrate(samples, miss_count=4)
    assert m.calibrated
    assert m.hello_interval_s == pytest.approx(0.5)
    assert m.detect_per_hop_s == pytest.approx(0.1)
    assert m.repair_base_s == pytest.approx(0.3)
    assert m.repair_per_hop_s == pytest.approx(0.25)
    assert m.fit_rmse_s["detect"] == pytest.approx(0, abs=1e-9)


def test_calibrate_least_squares_on_noisy_and_single_hop_data():
    noisy = [{"hops": 1, "detect_s": 3.0, "repair_s": 1.0}, {"hops": 1, "detect_s": 3.2, "repair_s": 1.2}]
    m = MttrModel.calibrate(noisy)  # one distinct hop count -> intercept only
    assert m.detect_s(1) == pytest.approx(3.1)
    assert m.repair_per_hop_s == 0.0 and m.repair_base_s == pytest.approx(1.1)


def test_calibrate_rejects_bad_input():
    with pytest.raises(ValueError, match="repair_s"):
        MttrModel.calibrate([{"hops": 1, "detect_s": 1.0}])
    with pytest.raises(ValueError):
        MttrModel.calibrate([])
    with pytest.raises(ValueError, match="finite"):
        MttrModel.calibrate([{"hops": 1, "detect_s": float("nan"), "repair_s": 1}])


def test_twin_uses_calibrated_model_and_caps_at_duration():
    m = MttrModel(hello_interval_s=10, miss_count=3, repair_base_s=5, calibrated=True)
    t = MeshDigitalTwin("m", mttr_model=m)
    t.from_neighbours({i: [(i + 1) % 4] for i in range(4)})
    r = t.simulate_node_failure(0, duration_seconds=20)
    assert r.mttr_model_calibrated
    assert r.mttr_seconds == 20.0  # node is back before routing would converge
    r = t.simulate_node_failure(0, duration_seconds=600)
    assert r.mttr_seconds == pytest.approx(30 + 0.05 * 2 + 5 + 0.2 * 2)


def test_shipped_default_is_calibrated_on_measured_runs():
    import json

    from x0tta6bl4.twin.mttr import CALIBRATION_PATH

    blob = json.loads(CALIBRATION_PATH.read_text())
    m = MttrModel.default()
    assert m.calibrated and m == MttrModel.from_dict(blob["model"])
    assert MeshDigitalTwin("d").mttr_model == m
    # fitted on real kills of the UDP data plane (HELLO 0.2 s x 3 misses)
    rows = blob["trials"]
    assert len(rows) >= 10 and {"hops", "detect_s", "repair_s"} <= set(rows[0])
    assert 0.1 < m.hello_interval_s < 0.3
    assert blob["report"]["held_out_mttr_error"]["mean_rel_pct"] < 25
    # the shipped fit reproduces from the shipped measurements
    # (to the last few bits: the least-squares sum depends on the BLAS build)
    again = MttrModel.calibrate(rows, miss_count=m.miss_count)
    fields = [f.name for f in dataclasses.fields(MttrModel) if f.compare]
    assert [getattr(again, f) for f in fields] == pytest.approx([getattr(m, f) for f in fields], rel=1e-12)


def test_model_roundtrip_dict():
    m = MttrModel(hello_interval_s=0.2, detect_per_hop_s=0.01, calibrated=True)
    assert MttrModel.from_dict(m.to_dict()) == m
