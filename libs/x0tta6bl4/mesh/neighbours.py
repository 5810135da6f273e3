"""Neighbour table: HELLO bookkeeping and per-link quality (pure, no I/O).

A neighbour is *up* once one HELLO is received from it and *lost* when no HELLO
arrived for ``miss_count * hello_interval`` (defaults 3 x 0.2 s).  For every
neighbour we keep:

* ``rssi_dbm``/``snr_db``: RSSI-like value = the sender's advertised tx power
  minus the local path loss towards it (``path_loss_db`` callable / dict,
  default 40 dB on loopback), SNR = RSSI - noise floor (-95 dBm);
* ``loss_rate``: EWMA of missing HELLO sequence numbers (0..1);
* ``latency_ms``: EWMA of one-way latency = rtt/2 where rtt comes from the
  HELLO echo (our timestamp echoed back, minus the neighbour's dwell time);
* ``reverse_loss``: the loss the neighbour reports seeing from us; ``symmetric``
  when it lists us in its HELLO;
* ``quality``: (1 - loss) * clamp(snr / 40, 0, 1).

All times are integers in nanoseconds from an injected clock.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from .packets import U32_MASK, HelloBody, HelloNeighbour, Packet

NS = 1_000_000_000
NOISE_FLOOR_DBM = -95.0


@dataclass(slots=True)
class LinkState:
    node_id: str
    first_seen_ns: int
    last_heard_ns: int
    last_seq: int
    peer_ts_ns: int  # timestamp of their last HELLO (echoed back to them)
    aodv_seq: int = 0
    hellos: int = 1
    loss_rate: float = 0.0
    latency_ms: float | None = None
    rssi_dbm: float = 0.0
    snr_db: float = 0.0
    reverse_loss: float = 0.0
    symmetric: bool = False

    @property
    def quality(self) -> float:
        snr_factor = min(1.0, max(0.0, self.snr_db / 40.0))
        return round((1.0 - self.loss_rate) * snr_factor, 4)

    def snapshot(self, now_ns: int) -> dict:
        return {
            "peer": self.node_id,
            "rssi_dbm": round(self.rssi_dbm, 2),
            "snr_db": round(self.snr_db, 2),
            "loss_rate": round(self.loss_rate, 4),
            "latency_ms": round(self.latency_ms, 4) if self.latency_ms is not None else 0.0,
            "link_age_s": round((now_ns - self.first_seen_ns) / NS, 3),
            "quality": self.quality,
            "reverse_loss": round(self.reverse_loss, 4),
            "symmetric": self.symmetric,
        }


PathLoss = Callable[[str], float] | Mapping[str, float] | float


@dataclass
class NeighbourTable:
    self_id: str
    hello_interval: float = 0.2
    miss_count: int = 3
    alpha: float = 0.25
    tx_power_dbm: int = 0
    path_loss_db: PathLoss = 40.0
    rng: random.Random = field(default_factory=random.Random)
    links: dict[str, LinkState] = field(default_factory=dict)
    lost_links: dict[str, LinkState] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.hello_interval <= 0 or self.miss_count < 1:
            raise ValueError("hello_interval must be > 0 and miss_count >= 1")
        self.hello_seq = self.rng.randrange(1 << 31)

    # ------------------------------------------------------------------ timing
    @property
    def hello_interval_ns(self) -> int:
        return int(self.hello_interval * NS)

    @property
    def dead_interval_ns(self) -> int:
        return int(self.hello_interval * self.miss_count * NS)

    def _path_loss(self, peer: str) -> float:
        pl = self.path_loss_db
        if callable(pl):
            return float(pl(peer))
        if isinstance(pl, Mapping):
            return float(pl.get(peer, 40.0))
        return float(pl)

    # ------------------------------------------------------------------ input
    def on_hello(self, pkt: Packet, now_ns: int) -> tuple[LinkState, bool]:
        """Account one HELLO; return (link, is_new_neighbour)."""
        body = pkt.body if isinstance(pkt.body, HelloBody) else HelloBody()
        peer = pkt.sender
        link = self.links.get(peer)
        is_new = link is None
        if link is None:
            old = self.lost_links.pop(peer, None)
            if old is not None and now_ns - old.last_heard_ns < 30 * NS:
                # a flapping neighbour keeps its loss history; the outage counts as loss
                link = old
                link.first_seen_ns = now_ns
                self.links[peer] = link
        if link is None:
            link = LinkState(peer, now_ns, now_ns, pkt.origin_seq, pkt.timestamp_ns)
            self.links[peer] = link
        else:
            gap = (pkt.origin_seq - link.last_seq) & U32_MASK
            if gap == 0:
                return link, is_new  # duplicate HELLO
            if gap >= 0x80000000 or gap > 1000:
                # sequence went backwards or jumped: peer restarted, reset stats
                link.loss_rate = 0.0
                link.first_seen_ns = now_ns
            else:
                a = self.alpha
                for _ in range(min(gap - 1, 50)):
                    link.loss_rate = a + (1 - a) * link.loss_rate
                link.loss_rate = (1 - a) * link.loss_rate
            link.last_seq = pkt.origin_seq
            link.last_heard_ns = now_ns
            link.peer_ts_ns = pkt.timestamp_ns
            link.hellos += 1
        link.aodv_seq = pkt.dest_seq
        link.rssi_dbm = body.tx_power_dbm - self._path_loss(peer)
        link.snr_db = link.rssi_dbm - NOISE_FLOOR_DBM
        link.symmetric = False
        for nb in body.neighbours:
            if nb.node_id != self.self_id:
                continue
            link.symmetric = True
            link.reverse_loss = nb.loss_permille / 1000.0
            if nb.echo_ts_ns:
                rtt_ns = now_ns - nb.echo_ts_ns - nb.echo_delay_us * 1000
                if 0 <= rtt_ns < 10 * NS:
                    one_way_ms = rtt_ns / 2e6
                    if link.latency_ms is None:
                        link.latency_ms = one_way_ms
                    else:
                        link.latency_ms = (1 - self.alpha) * link.latency_ms + self.alpha * one_way_ms
            break
        return link, is_new

    def expire(self, now_ns: int) -> list[str]:
        """Remove and return neighbours silent for miss_count HELLO intervals."""
        dead = self.dead_interval_ns
        lost = [p for p, link in self.links.items() if now_ns - link.last_heard_ns > dead]
        for p in lost:
            self.lost_links[p] = self.links.pop(p)
        if len(self.lost_links) > 256:
            for p in sorted(self.lost_links, key=lambda x: self.lost_links[x].last_heard_ns)[:64]:
                del self.lost_links[p]
        return lost

    def remove(self, peer: str) -> bool:
        return self.links.pop(peer, None) is not None

    # ------------------------------------------------------------------ output
    def make_hello_body(self, now_ns: int) -> HelloBody:
        entries = []
        for link in list(self.links.values())[:64]:
            entries.append(
                HelloNeighbour(
                    node_id=link.node_id,
                    loss_permille=min(1000, round(link.loss_rate * 1000)),
                    echo_ts_ns=link.peer_ts_ns,
                    echo_delay_us=max(0, min(0xFFFFFFFF, (now_ns - link.last_heard_ns) // 1000)),
                )
            )
        return HelloBody(tx_power_dbm=self.tx_power_dbm, neighbours=tuple(entries))

    def next_hello_seq(self) -> int:
        self.hello_seq = (self.hello_seq + 1) & U32_MASK
        return self.hello_seq

    def peers(self) -> list[str]:
        return sorted(self.links)

    def snapshot(self, now_ns: int) -> list[dict]:
        return [self.links[p].snapshot(now_ns) for p in sorted(self.links)]
