import numpy as np
import pytest

from x0tta6bl4.analysis.calibration import expected_calibration_error, fit_temperature
from x0tta6bl4.analysis.evaluate import roc_auc


def test_temperature_recovers_overconfidence():
    rng = np.random.default_rng(0)
    true_logit = rng.normal(0, 2, 20000)
    y = rng.random(20000) < 1 / (1 + np.exp(-true_logit))
    t = fit_temperature(3.0 * true_logit, y)  # model 3x overconfident
    assert t == pytest.approx(3.0, rel=0.1)
    p_raw = 1 / (1 + np.exp(-3 * true_logit))
    p_cal = 1 / (1 + np.exp(-3 * true_logit / t))
    assert expected_calibration_error(p_cal, y) < expected_calibration_error(p_raw, y)
    assert expected_calibration_error(p_cal, y) < 0.02


def test_roc_auc_known_values():
    assert roc_auc(np.array([0, 0, 1, 1]), np.array([0.1, 0.2, 0.8, 0.9])) == 1.0
    assert roc_auc(np.array([0, 1]), np.array([0.5, 0.5])) == 0.5
    assert roc_auc(np.array([1, 0, 1, 0]), np.array([0.1, 0.2, 0.3, 0.4])) == pytest.approx(0.25)
