"""MTTR model: failure detection + route repair time as a function of hops.

    detect_s = miss_count * hello_interval_s + detect_per_hop_s * hops
    repair_s = repair_base_s + repair_per_hop_s * hops
    mttr_s   = detect_s + repair_s

The dataclass defaults are placeholders (a HELLO-based mesh with 1 s hellos
and 3 missed hellos). :meth:`MttrModel.default` returns the parameters
calibrated on the measured data plane (``mttr_calibration.json``, written by
``python -m x0tta6bl4.twin.calibrate``), which the twin uses unless given a
model; it falls back to the placeholders only if that file is missing.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

CALIBRATION_PATH = Path(__file__).with_name("mttr_calibration.json")
_PARAMS = ("hello_interval_s", "miss_count", "detect_per_hop_s", "repair_base_s", "repair_per_hop_s")


def _fit_line(x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """Least-squares intercept/slope, slope clipped at >= 0 (time never shrinks with hops)."""
    if x.size == 0:
        raise ValueError("no measurements")
    if np.unique(x).size < 2:
        return float(y.mean()), 0.0
    a = np.stack([np.ones_like(x), x], axis=1)
    (c0, c1), *_ = np.linalg.lstsq(a, y, rcond=None)
    if c1 < 0:  # constrained fit: slope 0 -> intercept is the mean
        return float(y.mean()), 0.0
    if c0 < 0:  # intercept 0 -> slope through origin
        return 0.0, float((x @ y) / (x @ x))
    return float(c0), float(c1)


@dataclass(frozen=True)
class MttrModel:
    hello_interval_s: float = 1.0
    miss_count: int = 3
    detect_per_hop_s: float = 0.05
    repair_base_s: float = 0.5
    repair_per_hop_s: float = 0.2
    calibrated: bool = False
    fit_rmse_s: dict[str, float] = field(default_factory=dict, compare=False)

    def detect_s(self, hops: float) -> float:
        return self.miss_count * self.hello_interval_s + self.detect_per_hop_s * hops

    def repair_s(self, hops: float) -> float:
        return self.repair_base_s + self.repair_per_hop_s * hops

    def mttr_s(self, hops: float) -> float:
        return self.detect_s(hops) + self.repair_s(hops)

    @classmethod
    def calibrate(
        cls, measurements: Iterable[Mapping[str, float]], miss_count: int = 3
    ) -> MttrModel:
        """Least-squares fit from samples ``{"hops", "detect_s", "repair_s"}``.

        ``miss_count`` is the data plane's configured dead-interval multiplier;
        the fitted detection intercept is divided by it to give the effective
        hello interval.  Slopes are constrained to be non-negative.
        """
        rows = list(measurements)
        if not rows:
            raise ValueError("calibrate() needs at least one measurement")
        try:
            hops = np.array([float(r["hops"]) for r in rows])
            det = np.array([float(r["detect_s"]) for r in rows])
            rep = np.array([float(r["repair_s"]) for r in rows])
        except KeyError as exc:
            raise ValueError(f"measurement missing key {exc.args[0]!r}") from None
        if not (np.isfinite(hops).all() and np.isfinite(det).all() and np.isfinite(rep).all()):
            raise ValueError("measurements must be finite")
        if miss_count < 1:
            raise ValueError("miss_count must be >= 1")
        d0, d1 = _fit_line(hops, det)
        r0, r1 = _fit_line(hops, rep)
        model = cls(
            hello_interval_s=d0 / miss_count,
            miss_count=miss_count,
            detect_per_hop_s=d1,
            repair_base_s=r0,
            repair_per_hop_s=r1,
            calibrated=True,
        )
        rmse = {
            "detect": float(np.sqrt(np.mean((det - (d0 + d1 * hops)) ** 2))),
            "repair": float(np.sqrt(np.mean((rep - (r0 + r1 * hops)) ** 2))),
        }
        object.__setattr__(model, "fit_rmse_s", rmse)
        return model

    def to_dict(self) -> dict:
        d = {k: getattr(self, k) for k in _PARAMS}
        d["calibrated"] = self.calibrated
        d["fit_rmse_s"] = dict(self.fit_rmse_s)
        return d

    @classmethod
    def from_dict(cls, d: Mapping) -> MttrModel:
        params: dict[str, Any] = {k: (int(d[k]) if k == "miss_count" else float(d[k])) for k in _PARAMS}
        m = cls(**params, calibrated=bool(d.get("calibrated", False)))
        object.__setattr__(m, "fit_rmse_s", {k: float(v) for k, v in (d.get("fit_rmse_s") or {}).items()})
        return m

    @classmethod
    def default(cls) -> MttrModel:
        """The shipped calibration (measured data plane), else the placeholder parameters."""
        return _load_default(str(CALIBRATION_PATH))


@lru_cache(maxsize=4)
def _load_default(path: str) -> MttrModel:
    try:
        return MttrModel.from_dict(json.loads(Path(path).read_text())["model"])
    except (OSError, KeyError, ValueError, TypeError):
        return MttrModel()
