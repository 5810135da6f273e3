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
* ``quality``: (1 - loss) * clamp(snr / 40, 0, 1);
* the route metric's link **cost** (:meth:`NeighbourTable.cost`), as Babel
  computes ETX (RFC 8966 appendix A.2.2): ``rx_ratio`` = HELLOs received out of
  those expected, by HELLO sequence number, over the last ``window`` (16) and
  over the last ``long_window`` (64), whichever is lower (loss shows within a
  few HELLOs and the long window remembers it); ``tx_ratio`` =
  the same ratio the neighbour reports for our HELLOs (the ``loss_permille`` it
  lists for us, Babel's IHU); ``etx = 1 / (rx_ratio * tx_ratio)`` and
  ``cost = hop_cost + loss_weight * (etx - 1) + delay penalty`` (see
  :class:`LinkMetric`), capped at ``max_cost``.  A new link (or one back after
  an outage of a whole ``window``, or a restarted neighbour) is on probation:
  its ratio counts at least ``min_slots`` HELLO slots, so one HELLO heard gives
  1/3 and it costs its nominal value after 3 HELLOs in a row.

Recovery with hysteresis (a short and a long memory, as flap damping does): a
link whose long window still shows loss is **re-admitted** (ratio 1) once its
last ``recover_slots`` (8, 1.6 s at 0.2 s) HELLOs all arrived, so a link that is
clean again costs its nominal value within ~2 s instead of after a whole long
window (12.8 s).  Every *relapse* - loss again after a re-admission, or a link
back from an outage less than ``flap_memory_s`` after its previous outage -
doubles the clean streak the next re-admission needs, up to ``recover_max_slots``
(16 HELLOs, 3.2 s), and a link back from such an outage is on probation for that
many slots.  A link that flaps faster than that is never re-admitted by the
streak rule (only after a clean long window, which also forgets its relapses);
a randomly lossy link has ever fewer lucky streaks long enough, and the router's
hysteresis and hold-down (routing.py) absorb the rest.  A restarted neighbour
(sequence numbers reset) starts afresh.

Probing (:meth:`NeighbourTable.probing`): while a lossy link's clean streak is
under way (``probe_after`` HELLOs in a row, not yet re-admitted) the node sends
its HELLOs ``probe_factor`` (4) times as often, and so does a neighbour that
sees it probe while it reports loss of its HELLOs; the streak a re-admission
needs then arrives in a quarter of the time (8 HELLOs: 0.4 s), with the same
evidence against a randomly lossy link.  Time is what damps a flapping link,
so probing must not shorten it: a re-admission also needs the clean streak to
have lasted ``recover_hold_s`` (1.2 s, longer than the up period of a link
flapping every second; without it, 8 fast HELLOs in a row - 0.4 s - came often
enough on a link losing 10 % that traffic stayed on it for seconds); probing
goes on until the link is re-admitted.

All times are integers in nanoseconds from an injected clock.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from .packets import U32_MASK, HelloBody, HelloNeighbour, Packet

NS = 1_000_000_000
NOISE_FLOOR_DBM = -95.0


@dataclass(frozen=True)
class LinkMetric:
    """How a link's cost (the route metric's unit) is computed from HELLO reception and delay.

    Without link-layer retransmissions a packet lost on a link is lost end to end, so loss weighs much
    more than in Babel's ETX cost (256 x ETX): with ``loss_weight`` 8192 a link losing 10 % in both
    directions costs 2178, more than eight clean hops, and one HELLO missed in the 16-HELLO window adds
    546 (two hops) until it leaves the window. The delay penalty follows Babel's RTT extension: 0 below
    ``rtt_min_ms`` of round-trip time, ``rtt_penalty`` at ``rtt_max_ms`` and above, linear in between.
    """

    hop_cost: int = 256
    loss_weight: int = 8192
    window: int = 16          # HELLO slots in the reception history (Babel: 16)
    long_window: int = 64     # ... and in the long one: the lower of the two ratios counts
    min_slots: int = 3        # probation: a new link's ratio counts at least this many slots
    recover_slots: int = 8    # a lossy link's last N HELLOs all received: re-admitted (doubled per relapse) ...
    recover_max_slots: int = 16   # ... up to this many (a clean long window re-admits any link)
    flap_memory_s: float = 30.0   # a link back from an outage this soon after its previous one: a relapse
    probe_factor: int = 4     # HELLOs this many times as often while a lossy link is re-admitted (1: never)
    probe_after: int = 2      # ... from this many of its HELLOs in a row on
    recover_hold_s: float = 1.2   # a re-admission's clean streak must also last this long (probing is no
                                  # shortcut for a flapping or randomly lossy link)
    rtt_min_ms: float = 20.0
    rtt_max_ms: float = 200.0
    rtt_penalty: int = 768
    max_cost: int = 4096

    def __post_init__(self) -> None:
        if not (self.hop_cost >= 1 and self.loss_weight >= 0
                and 1 <= self.min_slots <= self.window <= self.long_window <= 256
                and 1 <= self.recover_slots <= self.recover_max_slots <= self.long_window
                and self.flap_memory_s >= 0 and 1 <= self.probe_factor <= 16 and self.probe_after >= 1
                and self.recover_hold_s >= 0
                and self.rtt_max_ms > self.rtt_min_ms >= 0 and self.rtt_penalty >= 0
                and self.hop_cost <= self.max_cost < 0xFFFF):
            raise ValueError(f"invalid link metric settings: {self}")


HOP_COUNT = LinkMetric(loss_weight=0, rtt_penalty=0, probe_factor=1)
"""Route by hop count alone (every symmetric link costs ``hop_cost``): the mesh host's ``--route-metric hops``,
for operators who want slow or lossy links handled by the loop rather than by route choice."""


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
    hist: int = 1            # HELLO reception history, bit 0 = the newest sequence number (1 = received)
    slots: int = 1           # sequence numbers the history covers (up to the long window)
    tx_ratio: float = 0.0    # the share of OUR HELLOs the neighbour reports receiving (0 until it lists us)
    trigger_cost: int = 0xFFFF   # MeshCore: the link's cost when it last triggered a path re-measurement
    relapses: int = 0        # lossy again after a re-admission / repeated outages, since a clean long window
    readmitted: bool = False     # its ratio is 1 by the clean-streak rule while the long window shows loss
    last_outage_ns: int | None = None   # when it last came back from an outage (flap memory)
    peer_probing: bool = False   # its last HELLO came well within an interval of the previous one
    streak_since_ns: int = 0     # when the current run of HELLOs in a row began
    was_lost: bool = False       # it timed out and came back since its last clean long window

    @property
    def quality(self) -> float:
        snr_factor = min(1.0, max(0.0, self.snr_db / 40.0))
        return round((1.0 - self.loss_rate) * snr_factor, 4)

    def heard(self, gap: int, window: int) -> None:
        """A HELLO ``gap`` sequence numbers after the previous one (gap - 1 of them missed)."""
        self.hist = ((self.hist << gap) | 1) & ((1 << window) - 1)
        self.slots = min(window, self.slots + gap)

    def fresh(self) -> None:
        """Start the reception history again (a restarted peer, or back after a long outage)."""
        self.hist, self.slots = 1, 1
        self.readmitted = False

    def streak(self) -> int:
        """HELLOs received in a row, the newest included (trailing ones of the history)."""
        inv = ~self.hist
        return (inv & -inv).bit_length() - 1

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
    metric: LinkMetric = field(default_factory=LinkMetric)
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
                link.was_lost = True
                link.first_seen_ns = now_ns
                self.links[peer] = link
        if link is None:
            link = LinkState(peer, now_ns, now_ns, pkt.origin_seq, pkt.timestamp_ns, streak_since_ns=now_ns)
            self.links[peer] = link
        else:
            gap = (pkt.origin_seq - link.last_seq) & U32_MASK
            if gap == 0:
                return link, is_new  # duplicate HELLO
            link.peer_probing = gap == 1 and now_ns - link.last_heard_ns < self.hello_interval_ns // 2
            if gap != 1:
                link.streak_since_ns = now_ns
            if gap >= 0x80000000 or gap > 1000:
                # sequence went backwards or jumped: peer restarted, reset stats
                link.loss_rate = 0.0
                link.first_seen_ns = now_ns
                link.fresh()
                link.relapses, link.last_outage_ns, link.was_lost = 0, None, False
            else:
                a = self.alpha
                for _ in range(min(gap - 1, 50)):
                    link.loss_rate = a + (1 - a) * link.loss_rate
                link.loss_rate = (1 - a) * link.loss_rate
                if gap >= self.metric.window:
                    # silent for a whole window: a new link, on probation again; a second outage soon
                    # after the previous one is a flap (a relapse: a longer probation)
                    prev = link.last_outage_ns
                    if prev is not None and now_ns - prev < self.metric.flap_memory_s * NS:
                        link.relapses += 1
                    link.last_outage_ns = now_ns
                    link.fresh()
                else:
                    if gap > 1 and link.readmitted:
                        link.relapses += 1         # lossy again after a re-admission
                        link.readmitted = False
                    link.heard(gap, self.metric.long_window)   # a short outage counts as loss
            self._recovery(link, now_ns)
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
            link.tx_ratio = 1.0 - link.reverse_loss
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

    # ------------------------------------------------------------------ link cost
    def recover_need(self, link: LinkState) -> int:
        """HELLOs in a row that re-admit the link: ``recover_slots``, doubled per relapse, capped."""
        m = self.metric
        return min(m.recover_max_slots, m.recover_slots << min(link.relapses, 8))

    def _held(self, link: LinkState, now_ns: int) -> bool:
        """The clean streak has lasted ``recover_hold_s`` (with probing, 8 HELLOs in a row come in 0.4 s: often
        enough on a link losing 10 % that its first re-admissions kept traffic on it for seconds)."""
        return self.metric.probe_factor <= 1 or now_ns - link.streak_since_ns >= self.metric.recover_hold_s * NS

    def _recovery(self, link: LinkState, now_ns: int) -> None:
        """After a HELLO: note a re-admission (the clean-streak rule lifts the ratio), forget the relapses
        after a clean long window."""
        m = self.metric
        mask = (1 << m.long_window) - 1
        if link.slots >= m.long_window and link.hist & mask == mask:
            link.relapses, link.readmitted, link.was_lost = 0, False, False
        elif link.slots > link.streak() and link.streak() >= self.recover_need(link) and self._held(link, now_ns):
            link.readmitted = True

    def recovering(self, link: LinkState) -> bool:
        """The link is worth probing: its history shows loss, it is not re-admitted, and its last
        ``probe_after`` HELLOs or more arrived (a re-admission may be under way); or the neighbour probes
        it while it reports loss of ours (so it sees our HELLOs as fast as we see its)."""
        m = self.metric
        if m.probe_factor <= 1:
            return False
        s = link.streak()
        if link.slots > s and not link.readmitted and s >= m.probe_after:    # until re-admitted
            return True
        return link.peer_probing and link.tx_ratio < 1.0

    def probing(self) -> bool:
        """Send HELLOs ``probe_factor`` times as often now: a link is :meth:`recovering`. A re-admission
        then takes its clean streak (8 or 16 HELLOs) at the fast rate: the same evidence against a
        randomly lossy link, a quarter of the time for a link that is clean again."""
        return any(self.recovering(link) for link in self.links.values())

    def rx_ratio(self, link: LinkState, now_ns: int, *, probation: bool = True) -> float:
        """Share of the neighbour's HELLOs received over the window, counting the ones overdue by now
        (a HELLO a whole interval late is missed: scheduling delays on a busy host are not loss). With
        ``probation`` a link younger than ``min_slots`` HELLOs counts that many slots (after a flap, the
        re-admission's streak). A link whose last :meth:`recover_need` HELLOs all arrived has ratio 1."""
        m = self.metric
        ival = self.hello_interval_ns
        overdue = max(0, int((now_ns - link.last_heard_ns) / ival - 1.0))
        hist = link.hist << overdue
        slots = link.slots + overdue
        need = self.recover_need(link)
        floor = (need if link.relapses else m.min_slots) if probation else 1
        short = (hist & ((1 << m.window) - 1)).bit_count() / max(floor, min(m.window, slots))
        long = (hist & ((1 << m.long_window) - 1)).bit_count() / max(floor, min(m.long_window, slots))
        ratio = min(short, long)
        if ratio < 1.0 and not overdue and link.streak() >= max(need, floor) and self._held(link, now_ns):
            return 1.0          # clean again for long enough: re-admitted
        return ratio

    def cost(self, peer: str, now_ns: int) -> int:
        """The link's cost in the route metric (``max_cost`` for an unknown or one-way link)."""
        link = self.links.get(peer)
        m = self.metric
        if link is None or not link.symmetric:
            return m.max_cost
        d = self.rx_ratio(link, now_ns) * link.tx_ratio
        if d <= 0.0:
            return m.max_cost
        c = m.hop_cost + m.loss_weight * (1.0 / d - 1.0)
        if link.latency_ms is not None:
            x = (2.0 * link.latency_ms - m.rtt_min_ms) / (m.rtt_max_ms - m.rtt_min_ms)
            c += m.rtt_penalty * min(1.0, max(0.0, x))
        return min(m.max_cost, round(c))

    def etx(self, peer: str, now_ns: int) -> float | None:
        link = self.links.get(peer)
        if link is None or not link.symmetric:
            return None
        d = self.rx_ratio(link, now_ns) * link.tx_ratio
        return round(1.0 / d, 3) if d > 0 else None

    # ------------------------------------------------------------------ output
    def make_hello_body(self, now_ns: int) -> HelloBody:
        entries = []
        for link in list(self.links.values())[:64]:
            entries.append(
                HelloNeighbour(
                    node_id=link.node_id,
                    # what we receive of its HELLOs over the window: its tx_ratio (Babel's IHU)
                    loss_permille=min(1000, round((1.0 - self.rx_ratio(link, now_ns, probation=False)) * 1000)),
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
        out = []
        for p in sorted(self.links):
            snap = self.links[p].snapshot(now_ns)
            snap["rx_ratio"] = round(self.rx_ratio(self.links[p], now_ns), 4)
            snap["tx_ratio"] = round(self.links[p].tx_ratio, 4)
            snap["etx"] = self.etx(p, now_ns) or 0.0
            snap["cost"] = self.cost(p, now_ns)
            out.append(snap)
        return out
