"""Routes that improve, measured on a ring of namespaced nodes (issue #21).

A ring of 6 nodes, each a process in its own network namespace (:class:`~.netns.NetnsMesh`),
a DATA flow with end-to-end ACKs from ``n0`` to ``n2``: the short path is ``n0-n1-n2`` (one
relay, ``hops`` 1 at the destination), the detour ``n0-n5-n4-n3-n2`` (``hops`` 3).

* :meth:`RingRoutes.relay_return`: SIGKILL of the relay ``n1`` (traffic takes the detour),
  then the relay is started again; measured: the time from its ``ready`` line to the first
  DATA delivered over it again, and the round-trip delivery while traffic moves back.
* :meth:`RingRoutes.lossy_relay`: nftables drops PCT % of what the relay receives and sends
  (``numgen random``, both directions) for a window; measured: round-trip delivery of the
  DATA sent in the window (ACKs received), and how often the delivered path switched.

Used by ``tests/integration/mesh/test_mesh_netns_routes.py`` (short windows) and
``bench/bench_routes.py`` (the issue's 30 s windows). Root only; the caller owns the mesh.
"""

from __future__ import annotations

import itertools
import time
from dataclasses import dataclass, field

from .netns import NetnsMesh
from .routing import AodvConfig


@dataclass
class ReturnTrial:
    detour_s: float          # kill -> first DATA delivered over the detour
    start_s: float           # relay restarted -> its "ready" line (process start, not routing)
    back_s: float            # relay ready -> first DATA delivered over it again
    delivery: float          # round-trip delivery of the DATA sent while moving back (ready .. ready + 3 s)
    sent: int
    hops: list[int] = field(default_factory=list)   # path lengths seen in that window (by send order)

    def row(self) -> dict:
        return {"detour_s": round(self.detour_s, 3), "restart_s": round(self.start_s, 3),
                "back_s": round(self.back_s, 3), "delivery": round(self.delivery, 4), "sent": self.sent}


@dataclass
class LossTrial:
    pct: int
    window_s: float
    delivery: float          # round-trip: DATA sent in the window whose ACK came back
    sent: int
    switches: int            # changes of the delivered path (by send order)
    left_after_s: float | None   # loss on -> first DATA sent that went over the detour
    lost: int = 0            # DATA sent in the window without an ACK back
    tail: float = 0.0        # round-trip delivery of the DATA sent in the window's second half
    end_switches: dict[str, int] = field(default_factory=dict)   # route_switched events per end of the flow
    back_s: float | None = None  # loss off -> first DATA sent that went over the relay again (None: not measured)

    def delivery_over(self, full_s: float) -> float:
        """Delivery over a window of ``full_s`` seconds (the issue's 30 s) that continued like this one's
        second half (``tail``): the packets lost here against what the full window sends."""
        if self.window_s >= full_s or self.sent == 0:
            return self.delivery
        extra = self.sent * (full_s - self.window_s) / self.window_s
        return (self.sent - self.lost + extra * self.tail) / (self.sent + extra)

    def row(self) -> dict:
        return {"loss_pct": self.pct, "window_s": self.window_s, "delivery": round(self.delivery, 4),
                "sent": self.sent, "lost": self.lost, "tail_delivery": round(self.tail, 4),
                "switches": self.switches, "end_switches": self.end_switches,
                "left_after_s": None if self.left_after_s is None else round(self.left_after_s, 2),
                "back_s": None if self.back_s is None else round(self.back_s, 2)}


class RingRoutes:
    def __init__(self, mesh: NetnsMesh, src: str = "n0", dst: str = "n2", relay: str = "n1",
                 short_hops: int = 1, detour_hops: int = 3) -> None:
        self.m = mesh
        self.src, self.dst, self.relay = src, dst, relay
        self.short, self.detour = short_hops, detour_hops

    # ------------------------------------------------------------------ records
    def delivered(self, since: float = 0.0) -> list[dict]:
        return [r for r in self.m.records(self.dst, "delivered", since) if r["origin"] == self.src]

    def acked_ids(self, since: float = 0.0) -> set[int]:
        return {r["id"] for r in self.m.records(self.src, "ack", since) if r["dest"] == self.dst}

    def wait_delivered(self, pred, since: float, timeout: float, what: str) -> dict:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            hit = next((r for r in self.delivered(since) if pred(r)), None)
            if hit is not None:
                return hit
            time.sleep(0.02)
        raise TimeoutError(f"{what}: not within {timeout} s")

    def on_path(self, hops: int, count: int = 10, timeout: float = 20.0) -> None:
        """Wait until ``count`` DATA packets in a row, sent from now on, were delivered over ``hops``."""
        t0 = time.monotonic()
        end = t0 + timeout
        while time.monotonic() < end:
            recs = [r for r in self.delivered(t0) if r["ts"] / 1e9 >= t0]
            if len(recs) >= count and all(r["hops"] == hops for r in recs[-count:]):
                return
            time.sleep(0.05)
        seen = [r["hops"] for r in self.delivered(t0)][-20:]
        raise TimeoutError(f"traffic not on the {hops + 1}-hop path within {timeout} s (hops seen {seen})")

    def window(self, t0: float, t1: float) -> tuple[float, int, list[int]]:
        """(round-trip delivery, DATA sent, hops in send order) for the DATA sent in [t0, t1] (the
        source's packet ids are consecutive; the window is bounded by the first and last id seen)."""
        recs = sorted((r for r in self.delivered() if t0 <= r["ts"] / 1e9 <= t1), key=lambda r: r["id"])
        acks = [r for r in self.m.records(self.src, "ack") if r["dest"] == self.dst
                and t0 <= (r["now"] - r["rtt_ms"] * 1e6) / 1e9 <= t1]
        ids = [r["id"] for r in recs] + [r["id"] for r in acks]
        if not ids:
            return 0.0, 0, []
        lo, hi = min(ids), max(ids)
        sent = hi - lo + 1
        acked = {r["id"] for r in acks}
        return len(acked) / sent, sent, [r["hops"] for r in recs]

    def settle_acks(self, t1: float, timeout: float = 5.0) -> None:
        """Wait until an ACK for a DATA packet sent after ``t1`` arrived (the window's ACKs are in)."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if any((r["now"] - r["rtt_ms"] * 1e6) / 1e9 > t1 for r in self.m.records(self.src, "ack", t1)):
                return
            time.sleep(0.05)

    # ------------------------------------------------------------------ trials
    def relay_return(self, move_window_s: float = 3.0) -> ReturnTrial:
        self.on_path(self.short)
        t_kill = time.monotonic()
        self.m.kill(self.relay)
        det = self.wait_delivered(lambda r: r["hops"] == self.detour, t_kill, 10, "traffic on the detour")
        self.on_path(self.detour, count=20)
        t_rev = time.monotonic()
        self.m.revive(self.relay)
        ready = self.m.wait_for(self.relay, lambda r: r.get("type") == "ready", timeout=30, since=t_rev)
        if ready is None:
            raise TimeoutError("the relay did not start again within 30 s")
        t_ready = ready["_rx"]
        back = self.wait_delivered(lambda r: r["hops"] == self.short and r["ts"] / 1e9 >= t_ready, t_ready, 10,
                                   "traffic back over the returned relay")
        t_end = t_ready + move_window_s
        while time.monotonic() < t_end:
            time.sleep(0.05)
        self.settle_acks(t_end)
        delivery, sent, hops = self.window(t_ready, t_end)
        return ReturnTrial(det["_rx"] - t_kill, t_ready - t_rev, back["_rx"] - t_ready, delivery, sent, hops)

    def last_switch(self) -> float:
        """When either end of the flow last switched its route to the other (0.0: never)."""
        ts = [r["_rx"] for n, peer in ((self.src, self.dst), (self.dst, self.src))
              for r in self.m.records(n, "event") if r.get("kind") == "route_switched" and r.get("peer") == peer]
        return max(ts, default=0.0)

    def lossy_relay(self, pct: int, window_s: float, back_timeout: float = 0.0) -> LossTrial:
        """Loss on the relay for ``window_s``; with ``back_timeout`` also how soon after the loss is
        removed traffic is back on the relay (``back_s``, None if not within the timeout)."""
        self.on_path(self.short)
        # a route switched back to the relay just now does not leave it for the detour within the hold-down
        # (AodvConfig.switch_holddown_ms): start when the last switch is older than that
        hold_s = AodvConfig().switch_holddown_ms / 1000
        while time.monotonic() < self.last_switch() + hold_s + 0.2:
            time.sleep(0.1)
        t0 = time.monotonic()
        self.m.loss(self.relay, pct, "both")
        try:
            time.sleep(window_s)          # the measurement window itself
        finally:
            t1 = time.monotonic()
            self.m.loss(self.relay, 0)
        self.settle_acks(t1)
        delivery, sent, hops = self.window(t0, t1)
        tail, _n, _h = self.window((t0 + t1) / 2, t1)
        switches = sum(1 for a, b in itertools.pairwise(hops) if a != b)
        recs = sorted((r for r in self.delivered() if t0 <= r["ts"] / 1e9 <= t1), key=lambda r: r["id"])
        left = next((r["ts"] / 1e9 - t0 for r in recs if r["hops"] != self.short), None)
        ends = {n: sum(1 for r in self.m.records(n, "event", t0) if r.get("kind") == "route_switched"
                       and r.get("peer") == peer and r["_rx"] <= t1)
                for n, peer in ((self.src, self.dst), (self.dst, self.src))}
        back = None
        if back_timeout > 0:
            try:
                rec = self.wait_delivered(lambda r: r["hops"] == self.short and r["ts"] / 1e9 >= t1, t1,
                                          back_timeout, "traffic back on the relay")
                back = rec["ts"] / 1e9 - t1
            except TimeoutError:
                pass
        return LossTrial(pct, window_s, delivery, sent, switches, left, round(sent * (1 - delivery)), tail, ends,
                         back)

    def restore(self) -> None:
        """Traffic back on the relay after a loss trial that did not move back by itself: the relay is
        restarted (its neighbours see a new link, on probation only)."""
        self.m.kill(self.relay)
        self.m.revive(self.relay)
        self.on_path(self.short, timeout=30.0)

    def loops(self, fresh: bool = False) -> dict[str, float]:
        """Per node: DATA dropped for a loop or an exhausted TTL (from the last telemetry line; with
        ``fresh`` each node is asked for one now and it is waited for)."""
        if fresh:
            t = time.monotonic()
            for n in self.m.nodes:
                self.m.command(n, {"kind": "telemetry"})
            for n in self.m.nodes:
                self.m.wait_for(n, lambda r: r.get("type") == "telemetry", timeout=10, since=t)
        out = {}
        for n in self.m.nodes:
            tel = self.m.records(n, "telemetry")
            c = tel[-1].get("counters", {}) if tel else {}
            out[n] = float(c.get("dropped.loop", 0) + c.get("dropped.ttl_exceeded", 0))
        return out
