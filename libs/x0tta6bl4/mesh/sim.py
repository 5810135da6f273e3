"""Deterministic in-memory medium for MeshCore nodes (virtual clock, no I/O).

Used by unit tests and for quick what-if experiments.  Each transmission is
encoded and decoded through the real wire codec (``wire=True``) and arrives at
linked, live neighbours after ``hop_delay_ms``.
"""

from __future__ import annotations

import heapq
import itertools
import random
from collections.abc import Iterable
from dataclasses import dataclass, field

from .core import CoreConfig, MeshCore
from .packets import DATA, FLAG_ACK, Packet, decode, encode
from .routing import Event, Output

MS = 1_000_000


@dataclass
class SimStats:
    tx: dict[str, int] = field(default_factory=dict)  # per packet type name
    tx_bytes: int = 0


class SimNetwork:
    def __init__(
        self,
        links: Iterable[tuple[str, str]],
        *,
        nodes: Iterable[str] = (),
        config: CoreConfig | None = None,
        seed: int = 0,
        hop_delay_ms: float = 1.0,
        tick_ms: float = 10.0,
        wire: bool = True,
        loss: float = 0.0,
    ) -> None:
        self.adj: dict[str, set[str]] = {}
        for n in nodes:
            self.adj.setdefault(n, set())
        for a, b in links:
            self.adj.setdefault(a, set()).add(b)
            self.adj.setdefault(b, set()).add(a)
        self.config = config or CoreConfig()
        self.cores = {n: MeshCore(n, self.config, seed=seed * 1000 + i) for i, n in enumerate(sorted(self.adj))}
        self.rng = random.Random(seed)
        self.now = 0
        self.hop_delay = int(hop_delay_ms * MS)
        self.tick = int(tick_ms * MS)
        self.wire = wire
        self.loss = loss
        self.node_loss: dict[str, float] = {}  # node -> share of what it sends and of what it receives dropped
        self.dead: set[str] = set()
        self.blocked: set[frozenset[str]] = set()
        self._q: list = []
        self._seq = itertools.count()
        self._next_tick = 0
        self.transmissions: list[tuple[int, str, str, Packet]] = []
        self.events: list[tuple[int, str, Event]] = []
        self.delivered: list[tuple[int, str, Packet]] = []
        self.drops: list[tuple[int, str, str, Packet | None]] = []
        self.stats = SimStats()
        self.record = True

    # ------------------------------------------------------------------ medium
    def linked(self, a: str, b: str) -> bool:
        return b in self.adj.get(a, ()) and frozenset((a, b)) not in self.blocked

    def _emit(self, node: str, out: Output) -> None:
        for ev in out.events:
            self.events.append((self.now, node, ev))
        for p in out.delivered:
            self.delivered.append((self.now, node, p))
        for reason, dropped in out.drops:
            self.drops.append((self.now, node, reason, dropped))
        for s in out.sends:
            pkt = s.packet
            data = encode(pkt) if self.wire else None
            self.stats.tx[pkt.type_name] = self.stats.tx.get(pkt.type_name, 0) + 1
            self.stats.tx_bytes += len(data) if data else 0
            targets = sorted(self.adj[node]) if s.to is None else [s.to]
            for t in targets:
                if self.record:
                    self.transmissions.append((self.now, node, t, pkt))
                if not self.linked(node, t) or t in self.dead or node in self.dead:
                    continue
                if self.loss and self.rng.random() < self.loss:
                    continue
                if self.node_loss and any(self.rng.random() < self.node_loss.get(n, 0.0) for n in (node, t)):
                    continue
                heapq.heappush(self._q, (self.now + self.hop_delay, next(self._seq), t, data if self.wire else pkt))

    # ------------------------------------------------------------------ clock
    def run_for(self, seconds: float) -> None:
        self.run_until(self.now + int(seconds * 1e9))

    def run_until(self, t_end: int) -> None:
        while True:
            t_pkt = self._q[0][0] if self._q else None
            if t_pkt is not None and t_pkt <= self._next_tick and t_pkt <= t_end:
                t, _, node, item = heapq.heappop(self._q)
                self.now = t
                if node in self.dead:
                    continue
                pkt = decode(item) if self.wire else item
                self._emit(node, self.cores[node].handle(pkt, t))
            elif self._next_tick <= t_end:
                self.now = self._next_tick
                for n, core in self.cores.items():
                    if n not in self.dead:
                        self._emit(n, core.tick(self.now))
                self._next_tick += self.tick
            else:
                self.now = t_end
                return

    # ------------------------------------------------------------------ actions
    def send(self, src: str, dest: str, payload: bytes = b"x", *, ack: bool = False) -> Packet:
        out, pkt = self.cores[src].send_data(dest, payload, self.now, ack=ack)
        self._emit(src, out)
        return pkt

    def kill(self, node: str) -> None:
        self.dead.add(node)

    def revive(self, node: str, seed: int = 0) -> None:
        """A killed node starts again with fresh protocol state (a restarted process)."""
        self.dead.discard(node)
        self.cores[node] = MeshCore(node, self.config, seed=seed or self.rng.randrange(1 << 30))

    def cut(self, a: str, b: str) -> None:
        self.blocked.add(frozenset((a, b)))

    def avoid_everywhere(self, node: str) -> None:
        for n, core in self.cores.items():
            if n not in self.dead:
                self._emit(n, core.avoid(node, self.now))

    # ------------------------------------------------------------------ queries
    def path(self, src: str, dst: str, limit: int = 64) -> list[str] | None:
        """Follow next hops from src to dst; None if broken; raises on a loop."""
        path = [src]
        cur = src
        while cur != dst:
            nh = self.cores[cur].router.next_hop(dst)
            if nh is None or nh in self.dead:
                return None
            if nh in path:
                raise AssertionError(f"routing loop {[*path, nh]}")
            path.append(nh)
            cur = nh
            if len(path) > limit:
                raise AssertionError("path too long")
        return path

    def data_delivered(self, node: str, since: int = 0) -> list[Packet]:
        return [p for t, n, p in self.delivered
                if n == node and t >= since and p.type == DATA and not p.flags & FLAG_ACK]
