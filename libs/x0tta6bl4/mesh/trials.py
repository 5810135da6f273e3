"""One measured failure on a running mesh: kill a relay on an active DATA path and watch it heal.

Shared by the mesh benchmark (detection, repair, delivery ratio) and the twin's MTTR
calibration, so both measure the same thing the same way.
"""
from __future__ import annotations

import asyncio
import random
import time
from dataclasses import dataclass, field

from .runtime import MeshRuntime
from .topology import Topology


async def flow(rt: MeshRuntime, src: str, dst: str, stop: asyncio.Event, sent: list[int], rate: float) -> None:
    """DATA with end-to-end ACKs from src to dst at ``rate`` packets/s until ``stop``."""
    while not stop.is_set():
        p = rt.send(src, dst, b"b" * 64, ack=True)
        if p is not None:
            sent.append(p.timestamp_ns)
        await asyncio.sleep(1.0 / rate)


@dataclass
class KillTrial:
    src: str
    dst: str
    victim: str
    upstream: str
    path: list[str]
    t_kill_ns: int
    detected_ns: int | None            # the upstream node's neighbour_lost for the victim
    first_after_ns: int | None         # first DATA sent after the kill that arrived
    sent: list[int] = field(default_factory=list)
    delivered_ts: set[int] = field(default_factory=set)   # send timestamps of delivered DATA
    path_after: list[str] = field(default_factory=list)   # the forwarding path once rerouted

    @property
    def detect_ms(self) -> float | None:
        return (self.detected_ns - self.t_kill_ns) / 1e6 if self.detected_ns else None

    @property
    def repair_ms(self) -> float | None:
        return (self.first_after_ns - self.t_kill_ns) / 1e6 if self.first_after_ns else None

    def delivery_pct(self, window_ns: int) -> float | None:
        window = [ts for ts in self.sent if self.t_kill_ns < ts <= self.t_kill_ns + window_ns]
        got = [ts for ts in self.delivered_ts if self.t_kill_ns < ts <= self.t_kill_ns + window_ns]
        return 100.0 * len(got) / len(window) if window else None


def pick_flow(topo: Topology, rng: random.Random, min_hops: int = 3) -> tuple[str, str]:
    for _ in range(200):
        src, dst = rng.sample(topo.nodes, 2)
        sp = topo.shortest_path(src, dst)
        if sp and len(sp) > min_hops:
            break
    return src, dst


async def kill_on_active_path(rt: MeshRuntime, topo: Topology, rng: random.Random, events: list[dict],
                              rate: float = 100.0, observe_s: float = 2.0) -> KillTrial | None:
    """Start a flow, kill a relay on its path whose loss does not partition the pair, observe for
    ``observe_s``, heal and re-converge. None when the path has no such relay."""
    src, dst = pick_flow(topo, rng)
    stop = asyncio.Event()
    sent: list[int] = []
    task = asyncio.create_task(flow(rt, src, dst, stop, sent, rate))
    try:
        for _ in range(100):
            await asyncio.sleep(0.02)
            if rt.path(src, dst) and rt.agents[dst].deliveries:
                break
        await asyncio.sleep(0.3)
        path = rt.path(src, dst)
        cands = [n for n in (path or [])[1:-1] if topo.shortest_path(src, dst, without=[n])]
        if not cands:
            return None
        assert path is not None   # cands come from it
        victim = rng.choice(cands)
        upstream = path[path.index(victim) - 1]
        t_kill = time.monotonic_ns()
        rt.faults.kill(victim)
        await asyncio.sleep(observe_s)
    finally:
        stop.set()
        await task
    lost = [e["mono_ns"] for e in events if e["kind"] == "neighbour_lost" and e["peer"] == victim
            and e["node_id"] == upstream and e["mono_ns"] >= t_kill]
    dl = rt.agents[dst].deliveries
    after = sorted(now for now, o, _, ts in dl if o == src and ts > t_kill)
    trial = KillTrial(src, dst, victim, upstream, path, t_kill, lost[0] if lost else None,
                      after[0] if after else None, sent, {ts for _, o, _, ts in dl if o == src},
                      rt.path(src, dst) or [])
    await rt.faults.heal_async()
    await rt.wait_converged(timeout=10)
    await asyncio.sleep(0.2)
    return trial
