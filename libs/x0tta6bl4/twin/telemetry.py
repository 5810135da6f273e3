"""Seeded telemetry simulator with labelled fault injection.

Produces per-node time series of ``FEATURES`` for a twin topology, under a
normal load profile with benign distractors (load bursts, interference loss
spikes, link re-establishments, stray auth failures) and injected faults.
Faults propagate to neighbours the way they do on a real mesh (a failing node
raises its neighbours' loss and latency), so the root cause is not simply "the
node with the worst numbers".

``failed_auth`` is what the live monitor reports: verified evidence against
the node itself (its revoked key still signing, its key used under another id),
counted by the neighbours that refused its packets. A compromised node carries
it; its neighbours log nothing against themselves, and a healthy node never has
any (packets refused for a bad signature or a replay count against the receiver's
``rejected_packets``, never as anybody's ``failed_auth``).

Units: rssi dBm, snr dB, loss_rate %, link_age s (mean age of the node's
links), latency_ms ms, throughput Mbit/s, cpu %, memory %, failed_auth count
per sample interval.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field

import networkx as nx
import numpy as np

FEATURES: tuple[str, ...] = (
    "rssi",
    "snr",
    "loss_rate",
    "link_age",
    "latency_ms",
    "throughput",
    "cpu",
    "memory",
    "failed_auth",
)
FAULT_TYPES: tuple[str, ...] = (
    "node_down",
    "degrading_link",
    "congestion",
    "cpu_overload",
    "memory_leak",
    "flapping",
    "compromised",
)
SPREADING_FAULTS = frozenset({"node_down", "degrading_link", "congestion", "flapping"})
"""Faults whose 1-hop neighbours are labelled anomalous (same incident): their links to the node suffer.
A compromised node's neighbours only refuse its packets; their own telemetry is clean."""
RAMP_STEPS = {
    "node_down": 1,
    "degrading_link": 24,
    "congestion": 4,
    "cpu_overload": 3,
    "memory_leak": 36,
    "flapping": 1,
    "compromised": 2,
}
F = {name: i for i, name in enumerate(FEATURES)}


@dataclass(frozen=True)
class FaultSpec:
    node: Hashable
    fault_type: str
    onset_step: int
    severity: float = 1.0

    def __post_init__(self) -> None:
        if self.fault_type not in FAULT_TYPES:
            raise ValueError(f"unknown fault type {self.fault_type!r}")


@dataclass
class WindowLabels:
    is_anomaly: np.ndarray  # (N,) bool
    fault_type: list[str]  # "normal" or one of FAULT_TYPES
    root_cause: list[Hashable | None]
    incidents: list[dict] = field(default_factory=list)  # {root, fault_type, members}


@dataclass
class TelemetryWindow:
    node_ids: list[Hashable]
    neighbours: dict[Hashable, list[Hashable]]
    series: np.ndarray  # (N, T, len(FEATURES)) float64
    step_s: float = 5.0
    index: int = 0
    labels: WindowLabels | None = None

    def to_dict(self) -> dict:
        """Plain form accepted by the analyzer: {"neighbours", "nodes": {id: {feature: [..]}}}."""
        return {
            "neighbours": {k: list(v) for k, v in self.neighbours.items()},
            "nodes": {
                nid: {f: self.series[i, :, j].tolist() for j, f in enumerate(FEATURES)}
                for i, nid in enumerate(self.node_ids)
            },
        }


class TelemetrySimulator:
    def __init__(
        self, graph: nx.Graph, seed: int = 0, step_s: float = 5.0, window_steps: int = 12
    ) -> None:
        if graph.number_of_nodes() == 0:
            raise ValueError("empty topology")
        self.graph = graph
        self.seed = seed
        self.step_s = step_s
        self.window_steps = window_steps
        self.node_ids = list(graph.nodes)
        self.index = {v: i for i, v in enumerate(self.node_ids)}
        self.neigh = [np.array([self.index[u] for u in graph[v]], dtype=np.int64) for v in self.node_ids]
        self.deg = np.array([len(a) for a in self.neigh], dtype=np.float64)

    # -------------------------------------------------------------- faults
    def random_faults(
        self, num_windows: int, rng: np.random.Generator, max_faults: int = 2, p_none: float = 0.2
    ) -> list[FaultSpec]:
        """0..max_faults faults with roots >= 5 hops apart, onset after the first window."""
        if rng.random() < p_none or num_windows < 3:
            return []
        count = int(rng.integers(1, max_faults + 1))
        order = rng.permutation(len(self.node_ids))
        chosen: list[int] = []
        for i in order:
            if len(chosen) == count:
                break
            ok = True
            for c in chosen:
                try:
                    d = nx.shortest_path_length(self.graph, self.node_ids[i], self.node_ids[c])
                except nx.NetworkXNoPath:
                    d = 10**9
                if d < 5:
                    ok = False
                    break
            if ok:
                chosen.append(int(i))
        T = self.window_steps
        out = []
        for i in chosen:
            ft = FAULT_TYPES[int(rng.integers(len(FAULT_TYPES)))]
            onset = int(rng.integers(T, (num_windows - 1) * T))
            out.append(FaultSpec(self.node_ids[i], ft, onset, float(rng.uniform(0.6, 1.0))))
        return out

    # ---------------------------------------------------------------- run
    def run(
        self, num_windows: int = 6, faults: Sequence[FaultSpec] | None = None, seed: int | None = None
    ) -> list[TelemetryWindow]:
        """Simulate ``num_windows`` consecutive windows. ``faults=None`` draws random
        faults from the seeded generator; pass ``[]`` for a fault-free run."""
        rng = np.random.default_rng(self.seed if seed is None else seed)
        if faults is None:
            faults = self.random_faults(num_windows, rng)
        T = self.window_steps
        S = num_windows * T
        N = len(self.node_ids)
        x = self._normal(rng, N, S)
        intensity_active = np.zeros((N, S), dtype=bool)
        node_fault: list[tuple[int, FaultSpec, list[int]]] = []
        for f in faults:
            r = self.index[f.node]
            members = [r] + (self.neigh[r].tolist() if f.fault_type in SPREADING_FAULTS else [])
            self._inject(rng, x, r, f, S)
            t = np.arange(S)
            intensity_active[members] |= (t >= f.onset_step)[None, :]
            node_fault.append((r, f, members))
        self._clip(x)
        windows = []
        nb = {v: list(self.graph[v]) for v in self.node_ids}
        for w in range(num_windows):
            sl = slice(w * T, (w + 1) * T)
            is_anom = np.zeros(N, dtype=bool)
            ftype = ["normal"] * N
            root: list = [None] * N
            incidents = []
            for r, f, members in node_fault:
                active_steps = intensity_active[r, sl].sum()
                if active_steps >= 3:
                    for m in members:
                        is_anom[m] = True
                        ftype[m] = f.fault_type
                        root[m] = f.node
                    incidents.append(
                        {
                            "root": f.node,
                            "fault_type": f.fault_type,
                            "members": [self.node_ids[m] for m in members],
                            "onset_step": f.onset_step,
                        }
                    )
            windows.append(
                TelemetryWindow(
                    node_ids=list(self.node_ids),
                    neighbours=nb,
                    series=x[:, sl, :].copy(),
                    step_s=self.step_s,
                    index=w,
                    labels=WindowLabels(is_anom, ftype, root, incidents),
                )
            )
        return windows

    # ------------------------------------------------------------ internals
    def _normal(self, rng: np.random.Generator, N: int, S: int) -> np.ndarray:
        x = np.zeros((N, S, len(FEATURES)))
        t = np.arange(S)
        rssi_b = np.clip(rng.normal(-62, 6, N), -82, -40)
        snr_b = rssi_b + 95 + rng.normal(0, 2, N)
        loss_b = np.exp(rng.normal(np.log(0.3), 0.5, N))
        lat_b = rng.uniform(5, 20, N)
        thr_b = rng.uniform(20, 90, N)
        cpu_b = rng.uniform(10, 50, N)
        mem_b = rng.uniform(25, 65, N)
        age0 = rng.uniform(300, 20000, N)
        period = rng.uniform(40, 120)
        load = 1 + 0.2 * np.sin(2 * np.pi * t / period + rng.uniform(0, 2 * np.pi))
        load = load[None, :] * (1 + 0.05 * rng.standard_normal((N, 1)))
        x[..., F["rssi"]] = rssi_b[:, None] + rng.normal(0, 1.5, (N, S))
        x[..., F["snr"]] = snr_b[:, None] + rng.normal(0, 1.5, (N, S))
        x[..., F["loss_rate"]] = loss_b[:, None] * load * np.exp(rng.normal(0, 0.4, (N, S)))
        x[..., F["latency_ms"]] = lat_b[:, None] * (0.8 + 0.2 * load) + np.abs(rng.normal(0, 2, (N, S)))
        x[..., F["throughput"]] = thr_b[:, None] * load + rng.normal(0, 3, (N, S))
        x[..., F["cpu"]] = cpu_b[:, None] * load + rng.normal(0, 3, (N, S))
        x[..., F["memory"]] = mem_b[:, None] + rng.normal(0, 1, (N, S))
        x[..., F["failed_auth"]] = 0.0   # verified evidence only: a healthy node has none
        # link age: grows with time; benign re-establishment of one link shortens the mean
        age = np.empty((N, S))
        age[:, 0] = age0
        resets = rng.random((N, S)) < 0.003
        keep = (self.deg - 1) / np.maximum(self.deg, 1)
        for s in range(1, S):
            age[:, s] = age[:, s - 1] + self.step_s
            age[resets[:, s], s] *= keep[resets[:, s]]
        x[..., F["link_age"]] = age
        T = self.window_steps
        # benign distractors, per node and window
        n_win = S // T
        for w in range(n_win):
            burst = np.flatnonzero(rng.random(N) < 0.04)
            for i in burst:  # load burst: high but legitimate cpu/latency/throughput
                a = w * T + int(rng.integers(0, T - 2))
                b = min(S, a + int(rng.integers(3, 9)))
                x[i, a:b, F["cpu"]] += rng.uniform(20, 45)
                x[i, a:b, F["latency_ms"]] += rng.uniform(15, 60)
                x[i, a:b, F["throughput"]] *= 1.3
            spike = np.flatnonzero(rng.random(N) < 0.04)
            for i in spike:  # interference: short loss spike
                a = w * T + int(rng.integers(0, T))
                b = min(S, a + int(rng.integers(1, 3)))
                x[i, a:b, F["loss_rate"]] += rng.uniform(3, 20)
                x[i, a:b, F["snr"]] -= rng.uniform(3, 8)
            gc = np.flatnonzero(rng.random(N) < 0.03)
            for i in gc:  # memory grows then GC
                a = w * T + int(rng.integers(0, T - 3))
                b = min(S, a + int(rng.integers(3, 8)))
                x[i, a:b, F["memory"]] += np.linspace(0, rng.uniform(8, 20), b - a)
        return x

    def _inject(self, rng: np.random.Generator, x: np.ndarray, r: int, f: FaultSpec, S: int) -> None:
        t = np.arange(S)
        ramp = RAMP_STEPS[f.fault_type]
        on = t >= f.onset_step
        inten = f.severity * np.clip((t - f.onset_step + 1) / ramp, 0, 1) * on
        nb = self.neigh[r]
        deg_nb = np.maximum(self.deg[nb], 1)[:, None]

        def noise(scale: float, shape: tuple[int, ...] = (S,)) -> np.ndarray:
            return rng.normal(0, scale, shape)

        ft = f.fault_type
        if ft == "node_down":
            x[r, on, F["rssi"]] = -100.0
            x[r, on, F["snr"]] = 0.0
            x[r, on, F["loss_rate"]] = 100.0
            x[r, on, F["throughput"]] = 0.0
            x[r, on, F["latency_ms"]] = 1000.0
            x[r, on, F["link_age"]] = 0.0
            x[r, on, F["failed_auth"]] = 0.0
            last = max(f.onset_step - 1, 0)
            x[r, on, F["cpu"]] = x[r, last, F["cpu"]]  # last known values, frozen
            x[r, on, F["memory"]] = x[r, last, F["memory"]]
            x[nb, :, F["loss_rate"]] += (4 * inten)[None, :] * rng.uniform(0.6, 1.4, (len(nb), 1))
            x[nb, :, F["latency_ms"]] += (25 * inten)[None, :] * rng.uniform(0.6, 1.4, (len(nb), 1))
            x[nb, :, F["throughput"]] *= (1 - 0.2 * inten)[None, :]
            x[nb, :, F["cpu"]] += (5 * inten)[None, :]
            self._two_hop(x, r, "latency_ms", 8 * inten)
        elif ft == "degrading_link":
            x[r, :, F["rssi"]] -= 22 * inten
            x[r, :, F["snr"]] -= 22 * inten
            x[r, :, F["loss_rate"]] += 12 * inten**2 + np.abs(noise(1.0)) * inten
            x[r, :, F["latency_ms"]] += 30 * inten
            x[r, :, F["throughput"]] *= 1 - 0.5 * inten
            x[nb, :, F["rssi"]] -= 22 * inten[None, :] / deg_nb
            x[nb, :, F["snr"]] -= 22 * inten[None, :] / deg_nb
            x[nb, :, F["loss_rate"]] += (3 * inten)[None, :] * rng.uniform(0.6, 1.4, (len(nb), 1))
            x[nb, :, F["latency_ms"]] += (10 * inten)[None, :]
        elif ft == "congestion":
            x[r, :, F["latency_ms"]] += 90 * inten * (1 + 0.2 * noise(1.0))
            x[r, :, F["loss_rate"]] += 5 * inten
            x[r, :, F["throughput"]] = np.where(
                on, x[r, :, F["throughput"]].max() * 1.3 + noise(0.5), x[r, :, F["throughput"]]
            )
            x[r, :, F["cpu"]] += 15 * inten
            x[nb, :, F["latency_ms"]] += (45 * inten)[None, :] * rng.uniform(0.6, 1.4, (len(nb), 1))
            x[nb, :, F["loss_rate"]] += (2 * inten)[None, :]
            x[nb, :, F["throughput"]] *= (1 - 0.2 * inten)[None, :]
            self._two_hop(x, r, "latency_ms", 12 * inten)
        elif ft == "cpu_overload":
            cpu = x[r, :, F["cpu"]]
            x[r, :, F["cpu"]] = cpu + (97 - cpu) * inten + noise(1.0) * inten
            x[r, :, F["latency_ms"]] += 30 * inten
            x[r, :, F["throughput"]] *= 1 - 0.3 * inten
            x[nb, :, F["latency_ms"]] += (6 * inten)[None, :]
        elif ft == "memory_leak":
            # the leak never plateaus: linear growth until memory saturates (clipped at 100)
            grow = f.severity * np.maximum(t - f.onset_step + 1, 0) / ramp * on
            mem = x[r, :, F["memory"]]
            x[r, :, F["memory"]] = mem + (97 - mem[: max(f.onset_step, 1)].mean()) * grow
            x[r, :, F["cpu"]] += 10 * np.minimum(grow, 1) ** 2
            x[r, :, F["latency_ms"]] += 8 * np.minimum(grow, 1) ** 2
        elif ft == "flapping":
            period = int(rng.integers(3, 6))
            down_len = int(rng.integers(1, 3))
            phase = (t - f.onset_step) % period
            down = on & (phase < down_len)
            flap = on & (phase == 0)
            x[r, down, F["loss_rate"]] += 50 * f.severity
            x[r, down, F["throughput"]] *= 0.3
            x[r, down, F["rssi"]] -= 10
            x[r, down, F["latency_ms"]] += 40
            dn = np.flatnonzero(down)
            x[np.ix_(nb, dn, np.array([F["loss_rate"]]))] += 8 * f.severity
            x[np.ix_(nb, dn, np.array([F["latency_ms"]]))] += 15
            age_r = x[r, :, F["link_age"]].copy()
            for s in np.flatnonzero(on):
                prev_r = age_r[s - 1] if s > 0 else 0.0
                age_r[s] = 0.0 if flap[s] else prev_r + self.step_s
            x[r, :, F["link_age"]] = age_r
            # neighbours: their link to r restarts with r's, the other links age normally
            keep = (deg_nb - 1) / deg_nb
            cols = np.flatnonzero(on)
            x[np.ix_(nb, cols, np.array([F["link_age"]]))] = (
                x[np.ix_(nb, cols, np.array([F["link_age"]]))] * keep[:, :, None]
                + (age_r[cols][None, :] / deg_nb)[:, :, None]
            )
        elif ft == "compromised":
            x[r, :, F["throughput"]] += 50 * inten
            x[r, :, F["cpu"]] += 15 * inten
            x[r, :, F["latency_ms"]] += 5 * inten
            # the evidence its neighbours verified is counted against it (the monitor's failed_auth):
            # about one refused packet per neighbour and sample once fully active; nothing on the neighbours
            x[r, :, F["failed_auth"]] += rng.poisson(max(self.deg[r], 1.0) * inten)
            x[nb, :, F["cpu"]] += (3 * inten)[None, :]

    def _two_hop(self, x: np.ndarray, r: int, feat: str, amount: np.ndarray) -> None:
        one = set(self.neigh[r].tolist()) | {r}
        two = {int(u) for v in self.neigh[r] for u in self.neigh[v]} - one
        if two:
            x[sorted(two), :, F[feat]] += amount[None, :]

    @staticmethod
    def _clip(x: np.ndarray) -> None:
        for name in ("loss_rate", "cpu", "memory"):
            np.clip(x[..., F[name]], 0, 100, out=x[..., F[name]])
        for name in ("throughput", "link_age", "failed_auth", "snr"):
            np.maximum(x[..., F[name]], 0, out=x[..., F[name]])
        np.maximum(x[..., F["latency_ms"]], 0.5, out=x[..., F["latency_ms"]])
        np.clip(x[..., F["rssi"]], -110, -20, out=x[..., F["rssi"]])


def generate_labelled_windows(
    seed: int,
    num_nodes: int = 50,
    connectivity: float = 4.0,
    num_windows: int = 6,
    faults: Sequence[FaultSpec] | None = None,
) -> list[TelemetryWindow]:
    """One seeded scenario: random mesh + telemetry + (random unless given) faults.

    Same arguments -> identical windows and labels."""
    from .twin import MeshDigitalTwin

    g = MeshDigitalTwin(f"scenario-{seed}").create_test_topology(num_nodes, connectivity, seed)
    return TelemetrySimulator(g, seed=seed).run(num_windows, faults)
