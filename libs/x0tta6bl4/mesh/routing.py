"""AODV (RFC 3561 style) routing, as a pure state machine.

``AodvRouter`` holds the route table and reacts to inputs with an ``Output``
(packets to send, events, packets delivered locally, drops).  It does no I/O
and reads no clock: every call receives ``now`` in nanoseconds.

Implemented: RREQ flooding with (origin, request id) duplicate suppression;
destination sequence numbers (wrap-around compare) for loop freedom; TTL
decrement and drop at exhaustion; destination and intermediate RREPs
unicast back along the reverse path; precursor lists and RERR to precursors
on link break / missing route; route lifetime, expiry and deletion; RREQ
retries with binary exponential back-off; buffering of DATA during
discovery; re-discovery for destinations with recent traffic after a break
(with the ``D`` flag, so stale intermediate caches through a node that just
died cannot answer);
pinned (static) routes; avoided nodes (never used as next hop, their control
packets ignored, routes through them invalidated).

Route metric and routes that improve (issue #21; docs/mesh.md "Route metric"):

* RREQ and RREP carry a 16-bit metric, the sum of the link costs along the path
  (:meth:`~.neighbours.NeighbourTable.cost`: ETX from HELLO reception in both
  directions plus a delay penalty, given to the router by the core in
  ``link_cost``); a route's metric is the next hop's advertised metric plus the
  cost of the link to it, so route choice follows measured loss and delay.
* Loop freedom is Babel's feasibility condition (RFC 8966 3.5) on top of AODV's
  destination sequence numbers: every route keeps a feasibility distance ``fd``
  (the smallest metric it held for its sequence number); an advertisement
  (seq, metric) is accepted when its seq is newer, or equal with a metric
  below ``fd``. A node never forwards (advertises) a route it did not install.
* Routes improve: the originator of traffic to a destination re-measures the
  path every ``refresh_interval_ms`` (and soon after one of its own links
  improves) with a destination-only RREQ; the destination answers the first
  copy from each neighbour and every copy with a clearly better metric, under
  a fresh sequence number. The two ends of a flow (the RREQ's origin for the
  forward route, its destination for the reverse one, routes nobody else
  learns from them) choose among those offers with hysteresis: another path is
  taken only when its metric is at most ``switch_ratio`` (0.8) of the current
  path's and ``switch_min_gain`` smaller, and a next hop left by a switch is not
  taken back within ``switch_holddown_ms``. Intermediate nodes install what they
  forward, so the feasibility invariant holds everywhere.

Events (``Event.kind``): ``route_added``, ``route_broken``, ``route_repaired``,
``route_switched`` (a better path taken), ``route_discovery_failed``
(``neighbour_lost`` is emitted by ``MeshCore``).
"""

from __future__ import annotations

import random
from collections import deque
from dataclasses import dataclass, field

from .packets import (
    DATA,
    DEFAULT_TTL,
    FLAG_ACK,
    FLAG_ACK_REQ,
    FLAG_RREP_M,
    FLAG_RREQ_D,
    FLAG_RREQ_M,
    FLAG_RREQ_U,
    MAX_RREQ_AVOID,
    METRIC_INF,
    RERR,
    RREP,
    RREQ,
    U32_MASK,
    Packet,
    RerrBody,
    RrepBody,
    RreqBody,
    seq_ge,
    seq_newer,
)

MS = 1_000_000


def add_metric(a: int, b: int) -> int:
    """Saturating metric sum: infinite stays infinite, a finite sum stays below infinite."""
    if a >= METRIC_INF or b >= METRIC_INF:
        return METRIC_INF
    return min(METRIC_INF - 1, a + b)


@dataclass(frozen=True)
class AodvConfig:
    ttl: int = DEFAULT_TTL
    active_route_timeout_ms: int = 3000
    node_traversal_ms: int = 10
    net_diameter: int = 16
    rreq_retries: int = 2
    delete_period_ms: int = 3000
    max_buffer_per_dest: int = 256
    intermediate_replies: bool = True
    # how long an (origin, RREQ id) is remembered for duplicate suppression; at least PATH_DISCOVERY_TIME.
    # RFC 3561 keeps it PATH_DISCOVERY_TIME (640 ms here), but a flood over a loaded host (a
    # 50-node mesh in a few Python processes while keys rotate) can take longer than that to die
    # out: late copies then looked new and were flooded again, hop after hop, until the TTL ran out
    rreq_cache_ms: int = 10_000
    # route metric and routes that improve (see the module doc)
    hop_cost: int = 256                 # a link's cost when the core gave none (nominal, one clean hop)
    refresh_interval_ms: int = 1000     # an active destination's path is re-measured this often (0 = never)
    refresh_min_gap_ms: int = 300       # triggered re-measurements no closer together than this
    switch_ratio: float = 0.8           # hysteresis: another path is taken at <= this share of the current metric
    switch_min_gain: int = 128          # ... and when it is at least this much smaller
    rreq_improve_ratio: float = 0.9375  # a copy of a known RREQ is processed again below this share of the best
    offer_ttl_ms: int = 1500            # a path offered but not taken is compared against for this long
    switch_holddown_ms: int = 5000      # after a switch, the next hop left is not taken back for this long

    def __post_init__(self) -> None:
        if not (0.0 < self.switch_ratio <= 1.0 and 0.0 < self.rreq_improve_ratio <= 1.0 and self.hop_cost >= 1
                and self.refresh_interval_ms >= 0 and self.switch_min_gain >= 0):
            raise ValueError(f"invalid AODV settings: {self}")

    @property
    def net_traversal_ns(self) -> int:
        return 2 * self.node_traversal_ms * self.net_diameter * MS

    @property
    def path_discovery_ns(self) -> int:
        return 2 * self.net_traversal_ns

    @property
    def rreq_seen_ns(self) -> int:
        return max(self.path_discovery_ns, self.rreq_cache_ms * MS)

    @property
    def my_route_timeout_ms(self) -> int:
        return 2 * self.active_route_timeout_ms


@dataclass(frozen=True, slots=True)
class Send:
    to: str | None  # None = link-local broadcast to all neighbours
    packet: Packet


@dataclass(frozen=True, slots=True)
class Event:
    kind: str
    peer: str = ""
    details: dict = field(default_factory=dict)


@dataclass
class Output:
    sends: list[Send] = field(default_factory=list)
    events: list[Event] = field(default_factory=list)
    delivered: list[Packet] = field(default_factory=list)
    drops: list[tuple[str, Packet | None]] = field(default_factory=list)
    forwarded: int = 0

    def extend(self, other: Output) -> Output:
        self.sends += other.sends
        self.events += other.events
        self.delivered += other.delivered
        self.drops += other.drops
        self.forwarded += other.forwarded
        return self


@dataclass(slots=True)
class Route:
    dest: str
    next_hop: str
    hop_count: int
    seq: int
    seq_valid: bool
    valid: bool
    expires_ns: int
    precursors: set[str] = field(default_factory=set)
    pinned: bool = False
    adv: int = 0            # the metric the next hop advertised for its route to dest
    metric: int = 0         # adv + cost of the link to the next hop (as last computed)
    fd: int = METRIC_INF    # feasibility distance: the smallest metric held for dest at ``seq``

    def snapshot(self) -> dict:
        return {
            "dest": self.dest,
            "next_hop": self.next_hop,
            "hops": self.hop_count,
            "seq": self.seq,
            "valid": self.valid,
            "pinned": self.pinned,
            "metric": self.metric,
        }


@dataclass(slots=True)
class Offer:
    """A path to a destination offered via a neighbour that is not the current next hop."""

    seq: int
    adv: int
    hops: int
    at_ns: int
    lifetime_ns: int


@dataclass(slots=True)
class SeenRreq:
    """An (origin, RREQ id) processed here: duplicate suppression and the destination's answers."""

    expires_ns: int
    best: int                         # best reverse metric of the copies processed
    reply_seq: int | None = None      # destination: the sequence number all answers to this RREQ carry
    replied: set[str] = field(default_factory=set)   # destination: previous hops answered


@dataclass(slots=True)
class Discovery:
    dest: str
    retries: int
    deadline_ns: int
    started_ns: int
    buffer: deque = field(default_factory=deque)
    dest_only: bool = False  # after a break: only the destination may answer (no stale caches)


class AodvRouter:
    def __init__(self, node_id: str, config: AodvConfig | None = None, rng: random.Random | None = None) -> None:
        self.node_id = node_id
        self.config = config or AodvConfig()
        self.rng = rng or random.Random()
        self.own_seq = 1
        self.rreq_id = self.rng.randrange(1 << 31)
        self.data_id = self.rng.randrange(1 << 31)
        self.routes: dict[str, Route] = {}
        self.neighbours: set[str] = set()
        self.avoided: set[str] = set()
        self.seen_rreq: dict[tuple[str, int], SeenRreq] = {}
        self.pending: dict[str, Discovery] = {}
        self.active_dests: dict[str, int] = {}
        self.broken: dict[str, int] = {}  # dest -> time it broke
        self.link_cost: dict[str, int] = {}   # neighbour -> cost of the link to it (set by MeshCore)
        self.offers: dict[str, dict[str, Offer]] = {}   # dest -> next hop -> a path not (yet) taken
        self.refresh_at: dict[str, int] = {}  # active dest -> when its path is re-measured next
        self.last_refresh: dict[str, int] = {}
        self.refresh_metric: dict[str, int] = {}   # active dest -> its route's metric at its last re-measurement
        self.switched: dict[str, dict[str, int]] = {}   # dest -> next hops left by switches -> when (hold-down)
        self.followup: dict[str, bool] = {}   # dest -> re-measure once more soon after the next refresh

    # ================================================================ queries
    def usable(self, r: Route | None) -> bool:
        return (
            r is not None
            and r.valid
            and r.next_hop in self.neighbours
            and r.next_hop not in self.avoided
            and r.dest not in self.avoided
        )

    def lookup(self, dest: str) -> Route | None:
        r = self.routes.get(dest)
        return r if self.usable(r) else None

    def next_hop(self, dest: str) -> str | None:
        r = self.lookup(dest)
        return r.next_hop if r else None

    def route_count(self) -> int:
        return sum(1 for r in self.routes.values() if self.usable(r))

    def table(self) -> list[dict]:
        for r in self.routes.values():
            self.metric_now(r)
        return [self.routes[d].snapshot() for d in sorted(self.routes)]

    def cost(self, peer: str) -> int:
        """Cost of the link to neighbour ``peer`` (nominal when the core measured none)."""
        return self.link_cost.get(peer, self.config.hop_cost)

    def metric_now(self, r: Route) -> int:
        """The route's metric with the link to its next hop as it is measured now."""
        if not r.pinned:
            r.metric = add_metric(r.adv, self.cost(r.next_hop))
        return r.metric

    # ================================================================ helpers
    def _art_ns(self) -> int:
        return self.config.active_route_timeout_ms * MS

    def _update_route(
        self, dest: str, next_hop: str, hops: int, seq: int, seq_valid: bool, lifetime_ns: int, now: int, out: Output,
        adv: int | None = None,
    ) -> bool:
        """RFC 3561 6.2 update rule with Babel's feasibility condition for equal sequence numbers: a route
        advertised by ``next_hop`` with metric ``adv`` (None: unknown, ``hops - 1`` nominal hops) replaces
        the entry when its seq is newer, or equal and ``adv`` below the entry's feasibility distance.
        Returns True if the route was created/updated."""
        if dest == self.node_id or next_hop in self.avoided or dest in self.avoided:
            return False
        if adv is None:
            adv = max(0, hops - 1) * self.config.hop_cost
        metric = add_metric(adv, self.cost(next_hop))
        r = self.routes.get(dest)
        if r is not None and r.pinned:
            return False
        if r is None:
            r = Route(dest, next_hop, hops, seq, seq_valid, True, now + lifetime_ns, adv=adv, metric=metric, fd=metric)
            self.routes[dest] = r
            self._became_valid(r, now, out)
            return True
        better = (
            not r.seq_valid
            or (seq_valid and seq_newer(seq, r.seq))
            or (seq_valid and seq == r.seq and (not r.valid or adv < r.fd))
            or (not r.valid and not seq_valid)
            or (not seq_valid and r.next_hop == next_hop and metric <= self.metric_now(r))
            or (not self.usable(r) and r.next_hop == next_hop)
        )
        if not better:
            if r.valid and r.next_hop == next_hop:
                r.expires_ns = max(r.expires_ns, now + lifetime_ns)
            return False
        was_usable = self.usable(r)
        if seq_valid and (not r.seq_valid or seq != r.seq):
            r.fd = metric           # a new sequence number starts a new feasibility distance
        else:
            r.fd = min(r.fd, metric)
        r.next_hop = next_hop
        r.hop_count = hops
        r.adv, r.metric = adv, metric
        if seq_valid:
            r.seq = seq
            r.seq_valid = True
        r.expires_ns = max(now + lifetime_ns, r.expires_ns if r.valid else 0)
        r.valid = True
        self._drop_offer(dest, next_hop)
        if not was_usable:
            self._became_valid(r, now, out)
        return True

    # ---------------------------------------------------------------- the ends of a flow: offers, hysteresis
    def _drop_offer(self, dest: str, via: str) -> None:
        offers = self.offers.get(dest)
        if offers is not None:
            offers.pop(via, None)
            if not offers:
                del self.offers[dest]

    def _offer(
        self, dest: str, via: str, hops: int, seq: int, adv: int, lifetime_ns: int, now: int, out: Output
    ) -> bool:
        """A path to ``dest`` via neighbour ``via`` reaches an end of a flow (the RREP's originator, the
        RREQ's destination): nobody learns this route from us, so it may be kept although the offer is
        newer. Without a usable route the offer is installed as by :meth:`_update_route`; from the current
        next hop it updates the route (metric up or down, newer seq); from another neighbour it is kept
        and taken only if clearly better (:meth:`_reselect`). Returns True if the route changed."""
        r = self.routes.get(dest)
        if r is None or r.pinned or not self.usable(r):
            return self._update_route(dest, via, hops, seq, True, lifetime_ns, now, out, adv=adv)
        if via in self.avoided or dest in self.avoided:
            return False
        if r.hop_count == 1 and r.next_hop == dest:
            return False            # a neighbour is reached directly (its HELLOs keep that route)
        updated = False
        if via == r.next_hop:
            if not r.seq_valid or seq_newer(seq, r.seq):
                r.seq, r.seq_valid = seq, True
                r.fd = add_metric(adv, self.cost(via))
            elif seq == r.seq:
                r.fd = min(r.fd, add_metric(adv, self.cost(via)))
            else:
                return False        # an older answer
            before = r.metric
            r.adv, r.hop_count = adv, hops
            r.expires_ns = max(r.expires_ns, now + lifetime_ns)
            if self.metric_now(r) * self.config.switch_ratio > before and dest in self.refresh_at:
                # the path got clearly worse downstream: measure again soon instead of in a full period
                gap = self.config.refresh_min_gap_ms * MS
                self.refresh_at[dest] = min(self.refresh_at[dest], self.last_refresh.get(dest, now) + gap)
            self._drop_offer(dest, via)
            updated = True
        else:
            self.offers.setdefault(dest, {})[via] = Offer(seq, adv, hops, now, lifetime_ns)
        return self._reselect(dest, now, out) or updated

    def _reselect(self, dest: str, now: int, out: Output) -> bool:
        """Take the best feasible offer if it beats the current route by the hysteresis margin."""
        r = self.routes.get(dest)
        offers = self.offers.get(dest)
        if r is None or not offers or not self.usable(r):
            return False
        cur = self.metric_now(r)
        ttl = self.config.offer_ttl_ms * MS
        # hold-down: a next hop left by a switch is not taken back within the period (noise cannot flap the
        # route); leaving a path that turned bad for another one is not delayed
        hold = self.config.switch_holddown_ms * MS
        held = {nh for nh, t in self.switched.get(dest, {}).items() if now - t < hold}
        best, best_m = "", METRIC_INF
        for nh, o in list(offers.items()):
            if now - o.at_ns > ttl or nh not in self.neighbours or nh in self.avoided or nh == r.next_hop:
                del offers[nh]
                continue
            if nh in held:
                continue
            if r.seq_valid and not (seq_newer(o.seq, r.seq) or (o.seq == r.seq and o.adv < r.fd)):
                continue            # not feasible: taking it could close a loop
            m = add_metric(o.adv, self.cost(nh))
            if m < best_m:
                best, best_m = nh, m
        if not offers:
            del self.offers[dest]
        cfg = self.config
        if not best or best_m > cur * cfg.switch_ratio or cur - best_m < cfg.switch_min_gain:
            return False
        o = offers.pop(best)
        old = r.next_hop
        self.switched.setdefault(dest, {})[old] = now
        if not r.seq_valid or seq_newer(o.seq, r.seq):
            r.seq, r.seq_valid, r.fd = o.seq, True, best_m
        else:
            r.fd = min(r.fd, best_m)
        r.next_hop, r.hop_count, r.adv, r.metric = best, o.hops, o.adv, best_m
        r.expires_ns = max(r.expires_ns, o.at_ns + o.lifetime_ns)
        out.events.append(Event("route_switched", dest, {"from": old, "to": best, "metric_from": cur,
                                                          "metric_to": best_m, "hops": o.hops}))
        return True

    def _became_valid(self, r: Route, now: int, out: Output) -> None:
        if not self.usable(r):
            return
        if r.hop_count > 1:
            out.events.append(Event("route_added", r.dest, {"next_hop": r.next_hop, "hops": r.hop_count}))
        if r.dest in self.broken:
            t0 = self.broken.pop(r.dest)
            out.events.append(
                Event(
                    "route_repaired",
                    r.dest,
                    {"next_hop": r.next_hop, "hops": r.hop_count, "repair_ms": round((now - t0) / MS, 3)},
                )
            )
        disc = self.pending.pop(r.dest, None)
        if disc is not None:
            while disc.buffer:
                self._send_data_via(disc.buffer.popleft(), r, now, out)

    def _refresh(self, dest: str, now: int) -> None:
        r = self.routes.get(dest)
        if r is not None and r.valid:
            r.expires_ns = max(r.expires_ns, now + self._art_ns())

    def _send_data_via(self, pkt: Packet, r: Route, now: int, out: Output) -> None:
        out.sends.append(Send(r.next_hop, pkt))
        self._refresh(r.dest, now)
        self._refresh(r.next_hop, now)

    def _invalidate(self, dests_via: list[Route], now: int, reason: str, out: Output, exclude: str = "") -> None:
        """Invalidate routes, emit route_broken, RERR to precursors, rediscover active."""
        if not dests_via:
            return
        unreachable: list[tuple[str, int]] = []
        precursors: set[str] = set()
        for r in dests_via:
            if not r.valid:
                continue
            self.switched.pop(r.dest, None)     # a break is news, not noise: no hold-down for the repair
            r.valid = False
            r.seq = (r.seq + 1) & U32_MASK if r.seq_valid else r.seq
            r.fd = METRIC_INF       # a new sequence number: any metric is feasible again
            r.expires_ns = now + self.config.delete_period_ms * MS
            unreachable.append((r.dest, r.seq))
            precursors |= r.precursors
            r.precursors = set()
            if r.dest not in self.broken:
                self.broken[r.dest] = now
            out.events.append(Event("route_broken", r.dest, {"via": r.next_hop, "reason": reason}))
        if unreachable:
            for chunk in range(0, len(unreachable), 255):
                body = RerrBody(tuple(unreachable[chunk : chunk + 255]))
                for p in sorted(precursors):
                    if p == exclude or p not in self.neighbours or p in self.avoided:
                        continue
                    out.sends.append(
                        Send(p, Packet(RERR, self.node_id, self.node_id, "", ttl=1, body=body, timestamp_ns=now))
                    )
        for dest, _ in unreachable:
            if dest in self.active_dests or dest in self.pending:
                self._start_discovery(dest, now, out, dest_only=True)

    def _start_discovery(self, dest: str, now: int, out: Output, dest_only: bool = False) -> None:
        if dest in self.avoided:
            return
        disc = self.pending.get(dest)
        if disc is None:
            disc = Discovery(dest, 0, 0, now)
            self.pending[dest] = disc
        else:
            disc.retries = 0
        disc.dest_only = disc.dest_only or dest_only
        self._send_rreq(disc, now, out)

    def _send_rreq(self, disc: Discovery, now: int, out: Output) -> None:
        disc.deadline_ns = now + self.config.net_traversal_ns * (2**disc.retries)
        out.sends.append(Send(None, self._rreq(disc.dest, disc.dest_only, now)))

    def _rreq(self, dest: str, dest_only: bool, now: int) -> Packet:
        self.own_seq = (self.own_seq + 1) & U32_MASK
        self.rreq_id = (self.rreq_id + 1) & U32_MASK
        r = self.routes.get(dest)
        flags = FLAG_RREQ_M
        dseq = 0
        if r is not None and r.seq_valid:
            dseq = r.seq
        else:
            flags |= FLAG_RREQ_U
        body = RreqBody(metric=0)
        if dest_only:
            flags |= FLAG_RREQ_D
        if self.avoided:
            flags |= FLAG_RREQ_D  # cached routes elsewhere may run through avoided nodes
            body = RreqBody(tuple(sorted(self.avoided))[:MAX_RREQ_AVOID], metric=0)
        self.seen_rreq[(self.node_id, self.rreq_id)] = SeenRreq(now + self.config.rreq_seen_ns, 0)
        return Packet(
            RREQ,
            self.node_id,
            self.node_id,
            dest,
            flags=flags,
            ttl=self.config.ttl,
            origin_seq=self.own_seq,
            dest_seq=dseq,
            packet_id=self.rreq_id,
            timestamp_ns=now,
            body=body,
        )

    def _refresh_path(self, dest: str, now: int, out: Output) -> None:
        """Re-measure the path to an active destination: a destination-only RREQ (no retries, nothing
        buffered); the answers are offers (:meth:`_offer`)."""
        self.last_refresh[dest] = now
        r = self.routes.get(dest)
        if r is not None:
            self.refresh_metric[dest] = self.metric_now(r)
        jitter = 1.0 - 0.1 * self.rng.random()
        period = self.config.refresh_interval_ms * MS * jitter
        if self.followup.pop(dest, False):   # after a link improved: once more soon (the links beyond it
            period = min(period, 2 * self.config.refresh_min_gap_ms * MS)   # may still be on probation)
        self.refresh_at[dest] = now + int(period)
        out.sends.append(Send(None, self._rreq(dest, True, now)))

    def link_changed(self, peer: str, better: bool, now: int) -> None:
        """The link to ``peer`` got clearly better or worse (MeshCore): re-measure soon, without waiting a
        full period, the active destinations that may now have a better path: through it when it got
        better (those not reached through it), around it when it got worse (those reached through it and
        whose metric grew enough since their last re-measurement that a path as good as it was then would
        now be taken)."""
        gap = self.config.refresh_min_gap_ms * MS
        for dest, t in self.refresh_at.items():
            r = self.routes.get(dest)
            if (r is not None and r.next_hop == peer) == better:
                continue
            if not better and r is not None and dest in self.refresh_metric \
                    and self.metric_now(r) * self.config.switch_ratio <= self.refresh_metric[dest]:
                continue
            self.refresh_at[dest] = min(t, max(now, self.last_refresh.get(dest, 0) + gap))
            if better:
                self.followup[dest] = True

    # ================================================================ neighbour input
    def neighbour_up(self, peer: str, peer_seq: int, now: int) -> Output:
        out = Output()
        self.neighbours.add(peer)
        if peer in self.avoided:
            return out
        r = self.routes.get(peer)
        life = self._art_ns()
        if r is not None and r.pinned:
            return out
        cost = self.cost(peer)
        if r is None or not r.valid or r.next_hop != peer or r.hop_count != 1:
            was = self.usable(r)
            if r is None:
                r = Route(peer, peer, 1, peer_seq, True, True, now + life, adv=0, metric=cost, fd=cost)
                self.routes[peer] = r
            else:
                r.next_hop, r.hop_count, r.valid = peer, 1, True
                if not r.seq_valid or seq_newer(peer_seq, r.seq):
                    r.seq, r.fd = peer_seq, cost
                r.seq_valid = True
                r.adv, r.metric, r.fd = 0, cost, min(r.fd, cost)
                r.expires_ns = now + life
            if not was:
                self._became_valid(r, now, out)
        else:
            if seq_newer(peer_seq, r.seq):
                r.seq, r.fd = peer_seq, cost
            r.metric, r.fd = cost, min(r.fd, cost)
            r.expires_ns = max(r.expires_ns, now + life)
        return out

    def neighbour_lost(self, peer: str, now: int) -> Output:
        out = Output()
        self.neighbours.discard(peer)
        self.link_cost.pop(peer, None)
        for dest in list(self.offers):
            self._drop_offer(dest, peer)
        for left in self.switched.values():
            left.pop(peer, None)            # the node we moved away from is gone: its return is news
        broken = [r for r in self.routes.values() if r.valid and r.next_hop == peer and not r.pinned]
        pinned = [r for r in self.routes.values() if r.valid and r.next_hop == peer and r.pinned]
        for r in pinned:
            out.events.append(Event("route_broken", r.dest, {"via": peer, "reason": "link_break", "pinned": True}))
        self._invalidate(broken, now, "link_break", out, exclude=peer)
        return out

    # ================================================================ commands
    def avoid(self, node: str, now: int) -> Output:
        out = Output()
        if node == self.node_id:
            return out
        self.avoided.add(node)
        affected = [
            r for r in self.routes.values() if r.valid and not r.pinned and (r.next_hop == node or r.dest == node)
        ]
        self._invalidate(affected, now, "avoid", out)
        self.pending.pop(node, None)
        self.active_dests.pop(node, None)
        self.refresh_at.pop(node, None)
        self.offers.pop(node, None)
        for dest in list(self.offers):
            self._drop_offer(dest, node)
        return out

    def unavoid(self, node: str, now: int) -> Output:
        self.avoided.discard(node)
        return Output()

    def flush(self, now: int) -> Output:
        out = Output()
        for d in [d for d, r in self.routes.items() if not r.pinned]:
            del self.routes[d]
        for disc in self.pending.values():
            out.drops += [("flushed", p) for p in disc.buffer]
        self.pending.clear()
        self.offers.clear()
        self.refresh_at.clear()
        self.refresh_metric.clear()
        self.switched.clear()
        return out

    def pin(self, dest: str, next_hop: str, hops: int = 1, now: int = 0) -> None:
        if next_hop in self.avoided or dest in self.avoided:
            raise ValueError("cannot pin a route through an avoided node")
        m = hops * self.config.hop_cost
        self.routes[dest] = Route(dest, next_hop, hops, 0, False, True, 1 << 62, pinned=True, adv=m, metric=m, fd=m)

    # ================================================================ data
    def originate_data(
        self, dest: str, payload: bytes, now: int, *, ack: bool = False, ttl: int | None = None
    ) -> tuple[Output, Packet]:
        self.data_id = (self.data_id + 1) & U32_MASK
        pkt = Packet(
            DATA,
            self.node_id,
            self.node_id,
            dest,
            flags=FLAG_ACK_REQ if ack else 0,
            ttl=ttl or self.config.ttl,
            packet_id=self.data_id,
            timestamp_ns=now,
            body=payload,
        )
        return self.originate(pkt, now), pkt

    def originate(self, pkt: Packet, now: int) -> Output:
        out = Output()
        dest = pkt.dest
        if dest == self.node_id:
            out.delivered.append(pkt)
            return out
        if dest in self.avoided:
            out.drops.append(("avoided", pkt))
            return out
        if not pkt.flags & FLAG_ACK:
            self.active_dests[dest] = now
        r = self.lookup(dest)
        if r is not None:
            self._send_data_via(pkt, r, now, out)
            return out
        disc = self.pending.get(dest)
        if disc is None:
            disc = Discovery(dest, 0, 0, now, dest_only=dest in self.broken)
            self.pending[dest] = disc
            self._send_rreq(disc, now, out)
        if len(disc.buffer) >= self.config.max_buffer_per_dest:
            out.drops.append(("buffer_full", disc.buffer.popleft()))
        disc.buffer.append(pkt)
        return out

    # ================================================================ packet input
    def handle(self, pkt: Packet, now: int) -> Output:
        """Process a DATA/RREQ/RREP/RERR received from neighbour ``pkt.sender``."""
        out = Output()
        prev = pkt.sender
        if prev == self.node_id:
            return out
        if prev in self.avoided:
            out.drops.append(("avoided", pkt))
            return out
        if pkt.type == DATA:
            self._handle_data(pkt, now, out)
        elif pkt.type == RREQ:
            self._handle_rreq(pkt, now, out)
        elif pkt.type == RREP:
            self._handle_rrep(pkt, now, out)
        elif pkt.type == RERR:
            self._handle_rerr(pkt, now, out)
        else:
            out.drops.append(("unexpected_type", pkt))
        return out

    def _handle_data(self, pkt: Packet, now: int, out: Output) -> None:
        prev = pkt.sender
        # refresh the reverse route to the origin; learn one only from the origin itself: the previous hop
        # of a relayed packet may reach the origin through us (its route towards us says nothing about its
        # route back), and a route learnt from it would close a loop
        if pkt.origin != self.node_id and pkt.origin not in self.avoided:
            rr = self.routes.get(pkt.origin)
            if rr is None or not self.usable(rr):
                if prev == pkt.origin:
                    self._update_route(pkt.origin, prev, 1, 0, False, self._art_ns(), now, out)
            else:
                self._refresh(pkt.origin, now)
        if pkt.dest == self.node_id:
            out.delivered.append(pkt)
            if pkt.flags & FLAG_ACK_REQ:
                ackp = Packet(
                    DATA,
                    self.node_id,
                    self.node_id,
                    pkt.origin,
                    flags=FLAG_ACK,
                    ttl=self.config.ttl,
                    packet_id=pkt.packet_id,
                    timestamp_ns=pkt.timestamp_ns,
                )
                out.extend(self.originate(ackp, now))
            return
        if pkt.origin == self.node_id:
            out.drops.append(("loop", pkt))
            return
        if pkt.ttl <= 1:
            out.drops.append(("ttl_exceeded", pkt))
            return
        r = self.lookup(pkt.dest)
        if r is None or r.next_hop == prev:
            out.drops.append(("no_route", pkt))
            known = self.routes.get(pkt.dest)
            seq = known.seq if known is not None and known.seq_valid else 0
            if prev in self.neighbours:
                out.sends.append(
                    Send(
                        prev,
                        Packet(
                            RERR, self.node_id, self.node_id, "", ttl=1, timestamp_ns=now,
                            body=RerrBody(((pkt.dest, seq),)),
                        ),
                    )
                )
            return
        r.precursors.add(prev)
        out.forwarded += 1
        self._send_data_via(
            pkt.with_(sender=self.node_id, ttl=pkt.ttl - 1, hop_count=min(255, pkt.hop_count + 1)), r, now, out
        )

    def _handle_rreq(self, pkt: Packet, now: int, out: Output) -> None:
        prev = pkt.sender
        if pkt.origin == self.node_id:
            return
        if pkt.origin in self.avoided:
            out.drops.append(("avoided", pkt))
            return
        body = pkt.body if isinstance(pkt.body, RreqBody) else RreqBody()
        req_avoid = body.avoid
        if prev in req_avoid or self.node_id in req_avoid:
            out.drops.append(("avoided", pkt))  # not marked as seen: a clean copy may follow
            return
        hops = pkt.hop_count + 1
        metric_in = body.metric if body.metric is not None else pkt.hop_count * self.config.hop_cost
        m_rev = add_metric(metric_in, self.cost(prev))
        at_dest = pkt.dest == self.node_id
        key = (pkt.origin, pkt.packet_id)
        seen = self.seen_rreq.get(key)
        first = seen is None
        if seen is not None:
            improved = m_rev < seen.best * self.config.rreq_improve_ratio
            if not improved and not (at_dest and prev not in seen.replied):
                out.drops.append(("duplicate_rreq", pkt))
                return
            seen.best = min(seen.best, m_rev)
        else:
            seen = self.seen_rreq[key] = SeenRreq(now + self.config.rreq_seen_ns, m_rev)
        life_ns = self.config.my_route_timeout_ms * MS
        if at_dest:
            # the reverse route is the flow's way back: an end of the flow, chosen with hysteresis
            self._offer(pkt.origin, prev, hops, pkt.origin_seq, metric_in, life_ns, now, out)
            if seen.reply_seq is None:
                cand = (self.own_seq + 1) & U32_MASK
                self.own_seq = pkt.dest_seq if seq_newer(pkt.dest_seq, cand) else cand
                seen.reply_seq = self.own_seq
            seen.replied.add(prev)
            rrep = Packet(
                RREP, self.node_id, pkt.origin, self.node_id, flags=FLAG_RREP_M, ttl=self.config.ttl, hop_count=0,
                dest_seq=seen.reply_seq, packet_id=pkt.packet_id, timestamp_ns=now,
                body=RrepBody(self.config.my_route_timeout_ms, metric=0),
            )
            out.sends.append(Send(prev, rrep))   # back the way this copy came: prev holds that reverse route
            return
        # reverse route towards the originator (installed before it is advertised further; a first copy
        # that cannot be installed, e.g. from an originator that restarted with a lower seq, still floods)
        installed = self._update_route(pkt.origin, prev, hops, pkt.origin_seq, True, life_ns, now, out,
                                       adv=metric_in)
        if not installed and not first:
            out.drops.append(("duplicate_rreq", pkt))   # a better copy we cannot take: not advertised
            return
        rev = self.lookup(pkt.origin)
        r = self.lookup(pkt.dest)
        if (
            self.config.intermediate_replies
            and r is not None
            and not pkt.flags & FLAG_RREQ_D
            and r.seq_valid
            and (pkt.flags & FLAG_RREQ_U or seq_ge(r.seq, pkt.dest_seq))
            and r.next_hop != prev
            and rev is not None
        ):
            r.precursors.add(prev)
            rev.precursors.add(r.next_hop)
            life_ms = max(1, (r.expires_ns - now) // MS)
            metric = self.metric_now(r)
            r.fd = min(r.fd, metric)
            rrep = Packet(
                RREP, self.node_id, pkt.origin, pkt.dest, flags=FLAG_RREP_M, ttl=self.config.ttl,
                hop_count=r.hop_count, dest_seq=r.seq, packet_id=pkt.packet_id, timestamp_ns=now,
                body=RrepBody(int(min(life_ms, U32_MASK)), metric=metric),
            )
            out.sends.append(Send(rev.next_hop, rrep))
            return
        if pkt.ttl <= 1:
            out.drops.append(("ttl_exceeded", pkt))
            return
        dseq = pkt.dest_seq
        flags = pkt.flags | FLAG_RREQ_M
        known = self.routes.get(pkt.dest)
        if known is not None and known.seq_valid and seq_newer(known.seq, dseq):
            dseq = known.seq
            flags &= ~FLAG_RREQ_U
        ro = self.routes.get(pkt.origin)
        m_fwd = ro.metric if installed and ro is not None else m_rev
        out.forwarded += 1
        out.sends.append(
            Send(None, pkt.with_(sender=self.node_id, ttl=pkt.ttl - 1, hop_count=min(255, hops), dest_seq=dseq,
                                 flags=flags, body=RreqBody(req_avoid, metric=m_fwd)))
        )

    def _handle_rrep(self, pkt: Packet, now: int, out: Output) -> None:
        prev = pkt.sender
        if pkt.dest in self.avoided or pkt.origin in self.avoided:
            out.drops.append(("avoided", pkt))
            return
        hops = pkt.hop_count + 1
        body = pkt.body if isinstance(pkt.body, RrepBody) else RrepBody(self.config.active_route_timeout_ms)
        life = body.lifetime_ms * MS
        adv = body.metric if body.metric is not None else pkt.hop_count * self.config.hop_cost
        if pkt.origin == self.node_id:
            # the flow's forward route: an end of the flow, chosen with hysteresis
            self._offer(pkt.dest, prev, hops, pkt.dest_seq, adv, life, now, out)
            return
        updated = self._update_route(pkt.dest, prev, hops, pkt.dest_seq, True, life, now, out, adv=adv)
        if not updated:
            out.drops.append(("stale_rrep", pkt))
            return
        rev = self.lookup(pkt.origin)
        if rev is None:
            out.drops.append(("no_reverse_route", pkt))
            return
        if pkt.ttl <= 1:
            out.drops.append(("ttl_exceeded", pkt))
            return
        fwd = self.routes[pkt.dest]
        fwd.precursors.add(rev.next_hop)
        rev.precursors.add(prev)
        out.forwarded += 1
        out.sends.append(
            Send(rev.next_hop, pkt.with_(sender=self.node_id, ttl=pkt.ttl - 1, hop_count=min(255, hops),
                                         flags=pkt.flags | FLAG_RREP_M,
                                         body=RrepBody(body.lifetime_ms, metric=fwd.metric)))
        )

    def _handle_rerr(self, pkt: Packet, now: int, out: Output) -> None:
        prev = pkt.sender
        body = pkt.body
        if not isinstance(body, RerrBody):
            out.drops.append(("bad_body", pkt))
            return
        affected = []
        for dest, seq in body.unreachable:
            r = self.routes.get(dest)
            if r is not None and r.valid and r.next_hop == prev and not r.pinned:
                if seq and (not r.seq_valid or seq_newer(seq, r.seq)):
                    r.seq = (seq - 1) & U32_MASK  # _invalidate increments
                    r.seq_valid = True
                affected.append(r)
        self._invalidate(affected, now, "rerr", out, exclude=prev)

    # ================================================================ timers
    def tick(self, now: int) -> Output:
        out = Output()
        for d, r in list(self.routes.items()):
            if r.pinned:
                continue
            if r.valid and now >= r.expires_ns:
                r.valid = False
                r.precursors = set()
                r.expires_ns = now + self.config.delete_period_ms * MS
            elif not r.valid and now >= r.expires_ns:
                del self.routes[d]
        for k in [k for k, t in self.seen_rreq.items() if now >= t.expires_ns]:
            del self.seen_rreq[k]
        for d in [d for d, t in self.active_dests.items() if now - t > self._art_ns()]:
            del self.active_dests[d]
        self._refresh_tick(now, out)
        for d in [d for d, t in self.broken.items() if now - t > 10 * self._art_ns()]:
            del self.broken[d]
        for dest, disc in list(self.pending.items()):
            if now < disc.deadline_ns:
                continue
            if disc.retries < self.config.rreq_retries:
                disc.retries += 1
                self._send_rreq(disc, now, out)
            else:
                del self.pending[dest]
                for p in disc.buffer:
                    out.drops.append(("no_route", p))
                out.events.append(
                    Event("route_discovery_failed", dest, {"waited_ms": round((now - disc.started_ns) / MS, 1)})
                )
        return out

    def _refresh_tick(self, now: int, out: Output) -> None:
        """Re-measure the paths to active destinations that are due; forget stale offers."""
        hold = self.config.switch_holddown_ms * MS
        for dest, left in list(self.switched.items()):
            for nh in [nh for nh, t in left.items() if now - t >= hold]:
                del left[nh]
            if not left:
                del self.switched[dest]
        for dest in list(self.offers):
            self._reselect(dest, now, out)     # the current path's cost may have grown since the offer
        ttl = self.config.offer_ttl_ms * MS
        for dest in list(self.offers):
            offers = self.offers[dest]
            for nh in [nh for nh, o in offers.items() if now - o.at_ns > ttl]:
                del offers[nh]
            if not offers:
                del self.offers[dest]
        if self.config.refresh_interval_ms <= 0:
            return
        for dest in list(self.refresh_at):
            if dest not in self.active_dests:
                del self.refresh_at[dest]
                self.last_refresh.pop(dest, None)
                self.refresh_metric.pop(dest, None)
                self.followup.pop(dest, None)
        for dest in self.active_dests:
            r = self.lookup(dest)
            if dest in self.pending or r is None or r.pinned or r.hop_count <= 1:
                self.refresh_at.pop(dest, None)
                continue
            t = self.refresh_at.get(dest)
            if t is None:
                jitter = 1.0 - 0.1 * self.rng.random()
                self.refresh_at[dest] = now + int(self.config.refresh_interval_ms * MS * jitter)
            elif now >= t:
                self._refresh_path(dest, now, out)
