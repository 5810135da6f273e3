"""MeshCore: one node's complete, I/O-free protocol logic.

Combines the :class:`~.neighbours.NeighbourTable` (HELLO, link quality,
loss detection) with the :class:`~.routing.AodvRouter`.  Every entry point takes
``now`` (ns, from an injected clock) and returns a :class:`~.routing.Output`.
Used identically by the UDP agent, the in-memory simulator and the tests.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from .neighbours import NS, LinkMetric, NeighbourTable, PathLoss
from .packets import HELLO, Packet
from .routing import AodvConfig, AodvRouter, Event, Output, Send

# a link whose cost falls to this share of its reference cost (or grows by its inverse) makes the router
# re-measure its active paths at once (a returning neighbour, a recovered link, a link turning lossy); the
# reference follows the cost at each such change
CHANGED = 0.75
# ... an improvement only when the link was at least this many nominal hops' cost (a returning neighbour
# starts at the maximum, a lossy link costs several hops): a HELLO that arrives late on a busy host makes
# the cost jump by two hops and back, and every such jump re-flooded the active paths (50-node host CPU)
BAD_HOPS = 4


@dataclass(frozen=True)
class CoreConfig:
    hello_interval: float = 0.2
    miss_count: int = 3
    hello_jitter: float = 0.1  # HELLOs are sent up to this fraction *early*
    tx_power_dbm: int = 0
    aodv: AodvConfig = AodvConfig()
    metric: LinkMetric = field(default_factory=LinkMetric)


class MeshCore:
    def __init__(
        self,
        node_id: str,
        config: CoreConfig | None = None,
        *,
        seed: int | None = None,
        path_loss_db: PathLoss = 40.0,
    ) -> None:
        self.node_id = node_id
        self.config = config or CoreConfig()
        self.rng = random.Random(seed)
        self.neighbours = NeighbourTable(
            node_id,
            hello_interval=self.config.hello_interval,
            miss_count=self.config.miss_count,
            tx_power_dbm=self.config.tx_power_dbm,
            path_loss_db=path_loss_db,
            rng=self.rng,
            metric=self.config.metric,
        )
        self.router = AodvRouter(node_id, self.config.aodv, rng=self.rng)
        self.next_hello_ns: int | None = None

    # ------------------------------------------------------------------ input
    def handle(self, pkt: Packet, now: int) -> Output:
        if pkt.sender == self.node_id:
            return Output()
        if pkt.type == HELLO:
            link, is_new = self.neighbours.on_hello(pkt, now)
            self._link_cost(pkt.sender, link, now)
            out = self.router.neighbour_up(pkt.sender, pkt.dest_seq, now)
            if is_new:
                out.events.insert(0, Event("neighbour_added", pkt.sender, {}))
            return out
        return self.router.handle(pkt, now)

    def _link_cost(self, peer: str, link, now: int) -> None:
        """Give the router the link's current cost; a clear improvement triggers a path refresh."""
        cost = self.neighbours.cost(peer, now)
        self.router.link_cost[peer] = cost
        ref = link.trigger_cost
        if cost <= ref * CHANGED or cost * CHANGED >= ref:
            link.trigger_cost = cost
            better = cost < ref
            if not better or ref >= BAD_HOPS * self.neighbours.metric.hop_cost:
                self.router.link_changed(peer, better, now)

    def tick(self, now: int) -> Output:
        out = Output()
        for peer in self.neighbours.expire(now):
            out.events.append(
                Event("neighbour_lost", peer, {"silent_ms": round(self.neighbours.dead_interval_ns / 1e6, 1)})
            )
            out.extend(self.router.neighbour_lost(peer, now))
        if self.next_hello_ns is None or now >= self.next_hello_ns:
            out.extend(self.hello_now(now))
        out.extend(self.router.tick(now))
        return out

    def hello_now(self, now: int) -> Output:
        """A HELLO now (also off schedule: a triggered beacon); the next one follows one interval later."""
        ival = self.neighbours.hello_interval_ns
        for peer, link in self.neighbours.links.items():   # overdue HELLOs count as lost
            if now - link.last_heard_ns > ival:      # (a link heard since has the cost its HELLO gave it)
                self._link_cost(peer, link, now)
        if self.neighbours.probing():    # a lossy link is being re-admitted: gather its evidence faster
            ival //= self.neighbours.metric.probe_factor
        self.next_hello_ns = now + int(ival * (1.0 - self.config.hello_jitter * self.rng.random()))
        return Output(sends=[Send(None, self.make_hello(now))])

    def make_hello(self, now: int) -> Packet:
        return Packet(
            HELLO,
            self.node_id,
            self.node_id,
            "",
            ttl=1,
            origin_seq=self.neighbours.next_hello_seq(),
            dest_seq=self.router.own_seq,
            timestamp_ns=now,
            body=self.neighbours.make_hello_body(now),
        )

    # ------------------------------------------------------------------ data
    def send_data(self, dest: str, payload: bytes, now: int, *, ack: bool = False) -> tuple[Output, Packet]:
        return self.router.originate_data(dest, payload, now, ack=ack)

    # ------------------------------------------------------------------ commands
    def avoid(self, node: str, now: int) -> Output:
        return self.router.avoid(node, now)

    def unavoid(self, node: str, now: int) -> Output:
        return self.router.unavoid(node, now)

    def flush_routes(self, now: int) -> Output:
        out = self.router.flush(now)
        # re-install 1-hop routes to live neighbours right away
        for peer, link in self.neighbours.links.items():
            out.extend(self.router.neighbour_up(peer, link.aodv_seq, now))
        return out

    def next_wakeup_ns(self) -> int:
        """Earliest time at which :meth:`tick` has something to do (HELLO due,
        a neighbour's dead interval elapsing, an RREQ retry), so an adapter can
        sleep exactly until then and detect losses without tick granularity."""
        cands = [self.next_hello_ns if self.next_hello_ns is not None else 0]
        dead = self.neighbours.dead_interval_ns
        if self.neighbours.links:
            cands.append(min(link.last_heard_ns for link in self.neighbours.links.values()) + dead + 1)
        if self.router.pending:
            cands.append(min(d.deadline_ns for d in self.router.pending.values()))
        if self.router.refresh_at:
            cands.append(min(self.router.refresh_at.values()))
        return min(cands)


__all__ = ["NS", "CoreConfig", "LinkMetric", "MeshCore"]
