"""Health thresholds (pure domain: no I/O, no clocks).

Default table (spec):

=================  ========  ===========  =========
metric             HEALTHY   WARNING      CRITICAL
=================  ========  ===========  =========
p99 latency (ms)   < 40      40 – 100     > 100
packet loss (%)    < 1       1 – 5        > 5
CPU (%)            < 70      70 – 90      > 90
memory (%)         < 80      80 – 95      > 95
MTTR (minutes)     < 3       3 – 5        > 5
=================  ========  ===========  =========

Boundary semantics (all metrics, "bigger is worse"), with ``w`` = warning and
``c`` = critical threshold of a :class:`Band`::

    value <  w        -> HEALTHY
    w <= value <= c   -> WARNING     (both ends inclusive: 40 and 100 ms are WARNING)
    value >  c        -> CRITICAL    (100.000001 ms is CRITICAL)
    value == +inf     -> CRITICAL    (e.g. unreachable peer)
    NaN or negative   -> ValueError naming the metric (a broken measurement is
                         not silently classified)

A node's state is the worst of its measured metrics; metrics that are None
(not measured) are skipped; a node with no measured metric is UNKNOWN. The
mesh state is the worst node state, ignoring UNKNOWN nodes (UNKNOWN only if
no node has data).
"""

from __future__ import annotations

import json
import math
import os
import pathlib
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, fields
from enum import IntEnum
from typing import Any


class Health(IntEnum):
    UNKNOWN = -1
    HEALTHY = 0
    WARNING = 1
    CRITICAL = 2


class ThresholdConfigError(ValueError):
    """Invalid threshold configuration; the message names the setting."""


METRICS: tuple[str, ...] = ("latency_p99_ms", "loss_percent", "cpu_percent", "memory_percent", "mttr_minutes")
_PERCENT = {"loss_percent", "cpu_percent", "memory_percent"}


def _number(setting: str, v: Any) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise ThresholdConfigError(f"{setting} must be a number, got {v!r}")
    f = float(v)
    if not math.isfinite(f):
        raise ThresholdConfigError(f"{setting} must be finite, got {v!r}")
    if f < 0:
        raise ThresholdConfigError(f"{setting} must be non-negative, got {v!r}")
    return f


@dataclass(frozen=True)
class Band:
    """warning <= value <= critical is WARNING; see module docstring."""

    warning: float
    critical: float
    name: str = field(default="band", compare=False)

    def __post_init__(self) -> None:
        w = _number(f"{self.name}.warning", self.warning)
        c = _number(f"{self.name}.critical", self.critical)
        if not w < c:
            raise ThresholdConfigError(
                f"{self.name}.warning ({w:g}) must be lower than {self.name}.critical ({c:g})")
        object.__setattr__(self, "warning", w)
        object.__setattr__(self, "critical", c)

    def classify(self, value: float) -> Health:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"{self.name}: value must be a number, got {value!r}")
        if math.isnan(value):
            raise ValueError(f"{self.name}: value is NaN")
        if value < 0:
            raise ValueError(f"{self.name}: value must be non-negative, got {value!r}")
        if value < self.warning:
            return Health.HEALTHY
        if value <= self.critical:
            return Health.WARNING
        return Health.CRITICAL


@dataclass(frozen=True)
class Thresholds:
    latency_p99_ms: Band = Band(40, 100, "latency_p99_ms")
    loss_percent: Band = Band(1, 5, "loss_percent")
    cpu_percent: Band = Band(70, 90, "cpu_percent")
    memory_percent: Band = Band(80, 95, "memory_percent")
    mttr_minutes: Band = Band(3, 5, "mttr_minutes")

    def __post_init__(self) -> None:
        for f in fields(self):
            b = getattr(self, f.name)
            if not isinstance(b, Band):
                raise ThresholdConfigError(f"{f.name} must be a Band, got {b!r}")
            if b.name != f.name:  # re-validate under the right name
                b = Band(b.warning, b.critical, f.name)
                object.__setattr__(self, f.name, b)
            if f.name in _PERCENT and b.critical > 100:
                raise ThresholdConfigError(f"{f.name}.critical ({b.critical:g}) must be <= 100 (percent)")

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any] | None) -> Thresholds:
        """Build from config, e.g. ``{"cpu_percent": {"warning": 60, "critical": 85}}``.

        Unspecified metrics (or a missing ``warning``/``critical``) keep the
        defaults; unknown keys are rejected with their name.
        """
        data = dict(data or {})
        default = cls()
        kwargs: dict[str, Band] = {}
        for key, spec in data.items():
            if key not in METRICS:
                raise ThresholdConfigError(f"unknown threshold setting {key!r} (known: {', '.join(METRICS)})")
            if not isinstance(spec, Mapping):
                raise ThresholdConfigError(f"{key} must be a mapping with 'warning' and 'critical'")
            extra = set(spec) - {"warning", "critical"}
            if extra:
                raise ThresholdConfigError(f"unknown threshold setting {key}.{sorted(extra)[0]}")
            d: Band = getattr(default, key)
            kwargs[key] = Band(spec.get("warning", d.warning), spec.get("critical", d.critical), key)
        return cls(**kwargs)

    def as_dict(self) -> dict[str, dict[str, float]]:
        return {m: {"warning": getattr(self, m).warning, "critical": getattr(self, m).critical} for m in METRICS}

    def classify(self, metric: str, value: float) -> Health:
        if metric not in METRICS:
            raise KeyError(f"unknown metric {metric!r}")
        return getattr(self, metric).classify(value)


@dataclass(frozen=True)
class NodeMetrics:
    """One node's measurements; None = not measured."""

    latency_p99_ms: float | None = None
    loss_percent: float | None = None
    cpu_percent: float | None = None
    memory_percent: float | None = None
    mttr_minutes: float | None = None

    def items(self) -> Iterable[tuple[str, float]]:
        for m in METRICS:
            v = getattr(self, m)
            if v is not None:
                yield m, v


@dataclass(frozen=True)
class NodeHealth:
    node_id: str
    state: Health
    metrics: dict[str, Health]  # measured metrics only
    values: dict[str, float]


def evaluate_node(node_id: str, metrics: NodeMetrics, thresholds: Thresholds | None = None) -> NodeHealth:
    th = thresholds or Thresholds()
    per = {m: th.classify(m, v) for m, v in metrics.items()}
    state = max(per.values()) if per else Health.UNKNOWN
    return NodeHealth(node_id, Health(state), per, dict(metrics.items()))


def mesh_state(states: Iterable[Health]) -> Health:
    known = [s for s in states if s != Health.UNKNOWN]
    return Health(max(known)) if known else Health.UNKNOWN


@dataclass(frozen=True)
class HealthChange:
    scope: str  # "metric" | "node" | "mesh"
    node_id: str | None
    metric: str | None
    old: Health
    new: Health
    value: float | None = None


class HealthTracker:
    """Keeps the last state per metric, node and mesh; reports transitions only.

    Every node/metric starts as ``initial`` (HEALTHY by default), so the first
    update of a healthy node emits nothing and a first WARNING emits
    HEALTHY->WARNING. A metric that stops being measured keeps its last state.
    """

    def __init__(self, thresholds: Thresholds | None = None, initial: Health = Health.HEALTHY) -> None:
        self.thresholds = thresholds or Thresholds()
        self._initial = initial
        self._metric: dict[tuple[str, str], Health] = {}
        self._node: dict[str, Health] = {}
        self._mesh = initial

    @property
    def mesh(self) -> Health:
        return self._mesh

    def node(self, node_id: str) -> Health:
        return self._node.get(node_id, self._initial)

    def nodes(self) -> dict[str, Health]:
        return dict(self._node)

    def update(self, node_id: str, metrics: NodeMetrics) -> list[HealthChange]:
        nh = evaluate_node(node_id, metrics, self.thresholds)
        changes: list[HealthChange] = []
        for m, st in nh.metrics.items():
            old = self._metric.get((node_id, m), self._initial)
            if st != old:
                changes.append(HealthChange("metric", node_id, m, old, st, nh.values[m]))
            self._metric[(node_id, m)] = st
        if nh.metrics:
            node_state = Health(max(self._metric[(node_id, m)] for m in METRICS if (node_id, m) in self._metric))
            old = self._node.get(node_id, self._initial)
            if node_state != old:
                changes.append(HealthChange("node", node_id, None, old, node_state))
            self._node[node_id] = node_state
        changes += self._update_mesh()
        return changes

    def remove(self, node_id: str) -> list[HealthChange]:
        self._node.pop(node_id, None)
        for key in [k for k in self._metric if k[0] == node_id]:
            del self._metric[key]
        return self._update_mesh()

    def _update_mesh(self) -> list[HealthChange]:
        new = mesh_state(self._node.values()) if self._node else self._initial
        if new == self._mesh:
            return []
        old, self._mesh = self._mesh, new
        return [HealthChange("mesh", None, None, old, new)]


def load_thresholds(path: str | os.PathLike | None = None, inline: str | None = None) -> Thresholds:
    """Thresholds from a TOML/YAML/JSON file and/or an inline JSON object (inline wins per metric).

    Format: ``{"cpu_percent": {"warning": 60, "critical": 85}, ...}`` (metrics of
    :data:`~x0tta6bl4.monitoring.thresholds.METRICS`; unspecified ones keep the spec's
    values). Raises ThresholdConfigError with one line naming the setting.
    """
    data: dict[str, Any] = {}
    if path:
        p = pathlib.Path(path)
        where = f"X0TTA6BL4_THRESHOLDS_FILE={str(path)!r}"
        if not p.is_file():
            raise ThresholdConfigError(f"{where}: no such file")
        text = p.read_text()
        try:
            if p.suffix == ".toml":
                loaded = tomllib.loads(text)
            elif p.suffix == ".json":
                loaded = json.loads(text)
            else:
                import yaml
                loaded = yaml.safe_load(text)
        except Exception as e:  # noqa: BLE001 - any parse error becomes one line
            raise ThresholdConfigError(f"{where}: cannot parse: {str(e).splitlines()[0] if str(e) else e!r}") from None
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ThresholdConfigError(f"{where}: top level must be a table of metrics")
        data.update(loaded.get("thresholds", loaded) if isinstance(loaded.get("thresholds"), dict) else loaded)
        try:
            Thresholds.from_mapping(data)
        except ThresholdConfigError as e:
            raise ThresholdConfigError(f"{where}: {e}") from None
    if inline:
        try:
            extra = json.loads(inline)
        except ValueError as e:
            raise ThresholdConfigError(f"X0TTA6BL4_THRESHOLDS: not JSON: {e}") from None
        if not isinstance(extra, dict):
            raise ThresholdConfigError("X0TTA6BL4_THRESHOLDS: must be a JSON object of metrics")
        for k, v in extra.items():
            if isinstance(v, dict) and isinstance(data.get(k), dict):
                data[k] = {**data[k], **v}
            else:
                data[k] = v
        try:
            return Thresholds.from_mapping(data)
        except ThresholdConfigError as e:
            raise ThresholdConfigError(f"X0TTA6BL4_THRESHOLDS: {e}") from None
    return Thresholds.from_mapping(data)
