"""Live telemetry (protobuf ``NodeTelemetry`` snapshots) -> the analysis window format.

The monitor publishes a ``TelemetryWindow`` holding the *latest* telemetry of
every node. The detectors were trained on per-node time series (the twin's
``FEATURES``, ``window_steps`` samples), so the analyzer keeps a rolling
history of the snapshots and converts the last :data:`LIVE_STEPS` of them
into ``{"neighbours": {id: [ids]}, "nodes": {id: {feature: [samples]}}}``.

Mapping (NodeTelemetry -> twin feature, same units as the simulator):

============  ================================================================
rssi          mean ``links[].rssi_dbm`` (dBm)
snr           mean ``links[].snr_db`` (dB)
loss_rate     100 x mean ``links[].loss_rate`` (%, the node's own links; the
              end-to-end ``loss_pct`` stays with the rules, which know that a
              source with clean links is a victim, not a cause)
link_age      mean ``links[].link_age_s`` (s)
latency_ms    mean ``links[].latency_ms`` (own links, as above)
throughput    ``throughput_bps`` / 1e6 (Mbit/s)
cpu, memory   ``cpu_pct``, ``mem_pct`` (%)
failed_auth   ``failed_auth`` (count since the last report)
============  ================================================================

An unreachable node gets the simulator's node-down signature (rssi -100 dBm,
snr 0, loss 100 %, latency 1000 ms, throughput 0, link age 0; cpu/memory
frozen at the last known values).

Validation is strict and per node: :func:`node_sample` raises
:class:`~x0tta6bl4.analysis.features.TelemetryError` naming the node and the
field (negative or out-of-range values, a missing node id, links to itself).
NaN/inf never get here: the bus codec dead-letters them on decode.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Hashable, Iterable
from dataclasses import dataclass, field

import numpy as np

from x0tta6bl4.twin.telemetry import FEATURES, TelemetryWindow

from .features import TelemetryError

LIVE_STEPS = 12
"""Samples per node fed to the detector (the simulator's ``window_steps``)."""

_F = {f: i for i, f in enumerate(FEATURES)}
DOWN = {"rssi": -100.0, "snr": 0.0, "loss_rate": 100.0, "link_age": 0.0, "latency_ms": 1000.0,
        "throughput": 0.0, "failed_auth": 0.0}


def _num(node: str, name: str, v: float, lo: float | None = 0.0, hi: float | None = None) -> float:
    v = float(v)
    if not math.isfinite(v):
        raise TelemetryError(f"node {node!r}: field {name!r} is not a finite number ({v})", node, name)
    if lo is not None and v < lo:
        raise TelemetryError(f"node {node!r}: field {name!r} is negative ({v:g}), impossible"
                             if lo == 0 else f"node {node!r}: field {name!r} = {v:g} below {lo:g}", node, name)
    if hi is not None and v > hi:
        raise TelemetryError(f"node {node!r}: field {name!r} = {v:g} exceeds {hi:g}", node, name)
    return v


def node_sample(t, last: np.ndarray | None = None) -> np.ndarray:
    """One validated feature sample (len(FEATURES),) from a ``NodeTelemetry``.

    ``last`` is the node's previous sample (for the frozen cpu/memory of a
    node that went down)."""
    node = t.node_id
    if not node:
        raise TelemetryError("telemetry without node_id (missing field 'node_id')", None, "node_id")
    x = np.zeros(len(FEATURES))
    cpu = _num(node, "cpu_pct", t.cpu_pct, 0, 100)
    mem = _num(node, "mem_pct", t.mem_pct, 0, 100)
    _num(node, "loss_pct", t.loss_pct, 0, 100)
    _num(node, "p99_latency_ms", t.p99_latency_ms)
    thr = _num(node, "throughput_bps", t.throughput_bps)
    rssi, snr, loss, lat, age = [], [], [], [], []
    for i, q in enumerate(t.links):
        if not q.peer:
            raise TelemetryError(f"node {node!r}: links[{i}] has no peer (missing field 'peer')", node, "links")
        if q.peer == node:
            raise TelemetryError(f"node {node!r}: links[{i}] is a link to itself", node, "links")
        rssi.append(_num(node, f"links[{q.peer}].rssi_dbm", q.rssi_dbm, -200, 0))
        snr.append(_num(node, f"links[{q.peer}].snr_db", q.snr_db, None))
        loss.append(_num(node, f"links[{q.peer}].loss_rate", q.loss_rate, 0, 1))
        lat.append(_num(node, f"links[{q.peer}].latency_ms", q.latency_ms))
        age.append(_num(node, f"links[{q.peer}].link_age_s", q.link_age_s))
    if not t.reachable:
        for k, v in DOWN.items():
            x[_F[k]] = v
        x[_F["cpu"]] = last[_F["cpu"]] if last is not None else cpu
        x[_F["memory"]] = last[_F["memory"]] if last is not None else mem
        return x
    if rssi:
        x[_F["rssi"]] = float(np.mean(rssi))
        x[_F["snr"]] = max(0.0, float(np.mean(snr)))
        x[_F["loss_rate"]] = 100.0 * float(np.mean(loss))
        x[_F["latency_ms"]] = float(np.mean(lat))
        x[_F["link_age"]] = float(np.mean(age))
    else:  # reachable but no neighbour yet (just started): no radio evidence
        x[_F["rssi"]], x[_F["snr"]], x[_F["loss_rate"]], x[_F["latency_ms"]] = -100.0, 0.0, 0.0, 0.0
    x[_F["throughput"]] = thr / 1e6
    x[_F["cpu"]] = cpu
    x[_F["memory"]] = mem
    x[_F["failed_auth"]] = float(t.failed_auth)
    return x


@dataclass
class Snapshot:
    """One window's validated samples."""
    key: str                      # the window's event id
    samples: dict[str, np.ndarray]
    neighbours: dict[str, list[str]]


@dataclass
class Converted:
    window: TelemetryWindow       # the twin's array form; ``window.to_dict()`` is the plain analysis format
    dropped_links: list[tuple[str, str]] = field(default_factory=list)  # (node, neighbour without telemetry)


def snapshot(key: str, nodes: Iterable, previous: Snapshot | None = None) -> tuple[Snapshot, dict[str, str]]:
    """Validate every node of one window; bad nodes are left out with their reason."""
    samples: dict[str, np.ndarray] = {}
    neighbours: dict[str, list[str]] = {}
    rejected: dict[str, str] = {}
    for t in nodes:
        try:
            if t.node_id in samples:
                raise TelemetryError(f"node {t.node_id!r}: reported twice in one window", t.node_id)
            last = previous.samples.get(t.node_id) if previous is not None else None
            samples[t.node_id] = node_sample(t, last)
            neighbours[t.node_id] = [p for p in t.neighbours if p != t.node_id]
        except TelemetryError as e:
            rejected[t.node_id or "?"] = str(e)
            samples.pop(t.node_id, None)
    return Snapshot(key, samples, neighbours), rejected


class History:
    """Rolling history of window snapshots in stream order (the analyzer's cache).

    Every analyzer replica feeds it the same ``mapek.telemetry`` stream in the same
    order, so the history *before* a given window -- and hence the detector's input --
    is the same whichever replica handles that window."""

    def __init__(self, keep: int = 4 * LIVE_STEPS):
        self.keep = keep
        self.snaps: OrderedDict[str, Snapshot] = OrderedDict()
        self.rejected: dict[str, dict[str, str]] = {}

    def add(self, key: str, nodes: Iterable) -> Snapshot:
        """Validate and append one window (idempotent per key)."""
        if key in self.snaps:
            return self.snaps[key]
        prev = next(reversed(self.snaps.values())) if self.snaps else None
        snap, rejected = snapshot(key, nodes, prev)
        self.snaps[key] = snap
        self.rejected[key] = rejected
        while len(self.snaps) > self.keep:
            old, _ = self.snaps.popitem(last=False)
            self.rejected.pop(old, None)
        return snap

    def __contains__(self, key: str) -> bool:
        return key in self.snaps

    def __len__(self) -> int:
        return len(self.snaps)

    def before(self, key: str, n: int = LIVE_STEPS - 1) -> list[Snapshot]:
        """The ``n`` snapshots stored before ``key`` (the last ``n`` if ``key`` is unknown)."""
        keys = list(self.snaps)
        end = keys.index(key) if key in self.snaps else len(keys)
        return [self.snaps[k] for k in keys[max(0, end - n):end]]


def to_window(history: Iterable[Snapshot], current: Snapshot) -> Converted:
    """The analysis window for ``current``: its nodes, each with the series of its samples in
    ``history`` (oldest first) then the current one; a node with fewer samples than the others is
    back-filled with its oldest sample. Links to nodes without telemetry are dropped (reported)."""
    past = [s for s in history if s.key != current.key]
    ids = list(current.samples)
    t = 1 + len(past)
    series = np.empty((len(ids), t, len(FEATURES)))
    for i, nid in enumerate(ids):
        seq = [s.samples[nid] for s in past if nid in s.samples] + [current.samples[nid]]
        series[i, t - len(seq):] = seq
        series[i, : t - len(seq)] = seq[0]
    neighbours: dict[Hashable, list[Hashable]] = {}
    dropped: list[tuple[str, str]] = []
    for nid in ids:
        keep: list[Hashable] = []
        for p in current.neighbours.get(nid, []):
            if p in current.samples:
                keep.append(p)
            else:
                dropped.append((nid, p))
        neighbours[nid] = keep
    return Converted(TelemetryWindow(node_ids=list(ids), neighbours=dict(neighbours), series=series), dropped)
