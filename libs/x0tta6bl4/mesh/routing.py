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

Events (``Event.kind``): ``route_added``, ``route_broken``, ``route_repaired``,
``route_discovery_failed`` (``neighbour_lost`` is emitted by ``MeshCore``).
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
    FLAG_RREQ_D,
    FLAG_RREQ_U,
    MAX_RREQ_AVOID,
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

    def snapshot(self) -> dict:
        return {
            "dest": self.dest,
            "next_hop": self.next_hop,
            "hops": self.hop_count,
            "seq": self.seq,
            "valid": self.valid,
            "pinned": self.pinned,
        }


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
        self.seen_rreq: dict[tuple[str, int], int] = {}
        self.pending: dict[str, Discovery] = {}
        self.active_dests: dict[str, int] = {}
        self.broken: dict[str, int] = {}  # dest -> time it broke

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
        return [self.routes[d].snapshot() for d in sorted(self.routes)]

    # ================================================================ helpers
    def _art_ns(self) -> int:
        return self.config.active_route_timeout_ms * MS

    def _update_route(
        self, dest: str, next_hop: str, hops: int, seq: int, seq_valid: bool, lifetime_ns: int, now: int, out: Output
    ) -> bool:
        """RFC 3561 6.2 update rule. Returns True if the route was created/updated."""
        if dest == self.node_id or next_hop in self.avoided or dest in self.avoided:
            return False
        r = self.routes.get(dest)
        if r is not None and r.pinned:
            return False
        if r is None:
            r = Route(dest, next_hop, hops, seq, seq_valid, True, now + lifetime_ns)
            self.routes[dest] = r
            self._became_valid(r, now, out)
            return True
        better = (
            not r.seq_valid
            or (seq_valid and seq_newer(seq, r.seq))
            or (seq_valid and seq == r.seq and (not r.valid or hops < r.hop_count))
            or (not r.valid and not seq_valid)
            or (not seq_valid and r.next_hop == next_hop and hops <= r.hop_count)
            or (not self.usable(r) and r.next_hop == next_hop)
        )
        if not better:
            if r.valid and r.next_hop == next_hop:
                r.expires_ns = max(r.expires_ns, now + lifetime_ns)
            return False
        was_usable = self.usable(r)
        r.next_hop = next_hop
        r.hop_count = hops
        if seq_valid:
            r.seq = seq
            r.seq_valid = True
        r.expires_ns = max(now + lifetime_ns, r.expires_ns if r.valid else 0)
        r.valid = True
        if not was_usable:
            self._became_valid(r, now, out)
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
            r.valid = False
            r.seq = (r.seq + 1) & U32_MASK if r.seq_valid else r.seq
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
        self.own_seq = (self.own_seq + 1) & U32_MASK
        self.rreq_id = (self.rreq_id + 1) & U32_MASK
        r = self.routes.get(disc.dest)
        flags = 0
        dseq = 0
        if r is not None and r.seq_valid:
            dseq = r.seq
        else:
            flags |= FLAG_RREQ_U
        body = RreqBody()
        if disc.dest_only:
            flags |= FLAG_RREQ_D
        if self.avoided:
            flags |= FLAG_RREQ_D  # cached routes elsewhere may run through avoided nodes
            body = RreqBody(tuple(sorted(self.avoided))[:MAX_RREQ_AVOID])
        self.seen_rreq[(self.node_id, self.rreq_id)] = now + self.config.rreq_seen_ns
        disc.deadline_ns = now + self.config.net_traversal_ns * (2**disc.retries)
        out.sends.append(
            Send(
                None,
                Packet(
                    RREQ,
                    self.node_id,
                    self.node_id,
                    disc.dest,
                    flags=flags,
                    ttl=self.config.ttl,
                    origin_seq=self.own_seq,
                    dest_seq=dseq,
                    packet_id=self.rreq_id,
                    timestamp_ns=now,
                    body=body,
                ),
            )
        )

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
        if r is None or not r.valid or r.next_hop != peer or r.hop_count != 1:
            was = self.usable(r)
            if r is None:
                r = Route(peer, peer, 1, peer_seq, True, True, now + life)
                self.routes[peer] = r
            else:
                r.next_hop, r.hop_count, r.valid = peer, 1, True
                r.seq = peer_seq if (not r.seq_valid or seq_newer(peer_seq, r.seq)) else r.seq
                r.seq_valid = True
                r.expires_ns = now + life
            if not was:
                self._became_valid(r, now, out)
        else:
            if seq_newer(peer_seq, r.seq):
                r.seq = peer_seq
            r.expires_ns = max(r.expires_ns, now + life)
        return out

    def neighbour_lost(self, peer: str, now: int) -> Output:
        out = Output()
        self.neighbours.discard(peer)
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
        return out

    def pin(self, dest: str, next_hop: str, hops: int = 1, now: int = 0) -> None:
        if next_hop in self.avoided or dest in self.avoided:
            raise ValueError("cannot pin a route through an avoided node")
        self.routes[dest] = Route(dest, next_hop, hops, 0, False, True, 1 << 62, pinned=True)

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
        # learn/refresh the reverse route to the origin (the path it came along is loop-free)
        if pkt.origin != self.node_id and pkt.origin not in self.avoided:
            rr = self.routes.get(pkt.origin)
            if rr is None or not self.usable(rr):
                self._update_route(pkt.origin, prev, pkt.hop_count + 1, 0, False, self._art_ns(), now, out)
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
        req_avoid = pkt.body.avoid if isinstance(pkt.body, RreqBody) else ()
        if prev in req_avoid or self.node_id in req_avoid:
            out.drops.append(("avoided", pkt))  # not marked as seen: a clean copy may follow
            return
        key = (pkt.origin, pkt.packet_id)
        if key in self.seen_rreq:
            out.drops.append(("duplicate_rreq", pkt))
            return
        self.seen_rreq[key] = now + self.config.rreq_seen_ns
        hops = pkt.hop_count + 1
        # reverse route towards the originator
        self._update_route(pkt.origin, prev, hops, pkt.origin_seq, True, self.config.my_route_timeout_ms * MS, now, out)
        rev = self.lookup(pkt.origin)
        if pkt.dest == self.node_id:
            cand = (self.own_seq + 1) & U32_MASK
            self.own_seq = pkt.dest_seq if seq_newer(pkt.dest_seq, cand) else cand
            rrep = Packet(
                RREP, self.node_id, pkt.origin, self.node_id, ttl=self.config.ttl, hop_count=0,
                dest_seq=self.own_seq, packet_id=pkt.packet_id, timestamp_ns=now,
                body=RrepBody(self.config.my_route_timeout_ms),
            )
            out.sends.append(Send(rev.next_hop if rev else prev, rrep))
            return
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
            rrep = Packet(
                RREP, self.node_id, pkt.origin, pkt.dest, ttl=self.config.ttl, hop_count=r.hop_count,
                dest_seq=r.seq, packet_id=pkt.packet_id, timestamp_ns=now,
                body=RrepBody(int(min(life_ms, U32_MASK))),
            )
            out.sends.append(Send(rev.next_hop, rrep))
            return
        if pkt.ttl <= 1:
            out.drops.append(("ttl_exceeded", pkt))
            return
        dseq = pkt.dest_seq
        flags = pkt.flags
        known = self.routes.get(pkt.dest)
        if known is not None and known.seq_valid and seq_newer(known.seq, dseq):
            dseq = known.seq
            flags &= ~FLAG_RREQ_U
        out.forwarded += 1
        out.sends.append(
            Send(None, pkt.with_(sender=self.node_id, ttl=pkt.ttl - 1, hop_count=min(255, hops), dest_seq=dseq,
                                 flags=flags))
        )

    def _handle_rrep(self, pkt: Packet, now: int, out: Output) -> None:
        prev = pkt.sender
        if pkt.dest in self.avoided or pkt.origin in self.avoided:
            out.drops.append(("avoided", pkt))
            return
        hops = pkt.hop_count + 1
        life = (pkt.body.lifetime_ms if isinstance(pkt.body, RrepBody) else self.config.active_route_timeout_ms) * MS
        updated = self._update_route(pkt.dest, prev, hops, pkt.dest_seq, True, life, now, out)
        if pkt.origin == self.node_id:
            if not updated:
                out.drops.append(("stale_rrep", pkt))
            return
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
            Send(rev.next_hop, pkt.with_(sender=self.node_id, ttl=pkt.ttl - 1, hop_count=min(255, hops)))
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
        for k in [k for k, t in self.seen_rreq.items() if now >= t]:
            del self.seen_rreq[k]
        for d in [d for d, t in self.active_dests.items() if now - t > self._art_ns()]:
            del self.active_dests[d]
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
