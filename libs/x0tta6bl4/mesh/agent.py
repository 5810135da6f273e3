"""Asyncio UDP node agent: a thin adapter around :class:`~.core.MeshCore`.

One agent = one UDP socket.  It only accepts datagrams from its configured
peers (``peers``: node id -> (host, port)), so a topology is enforced even on
loopback.  Everything protocol-related lives in the pure core; the agent adds
I/O, timers, counters, latency statistics, fault-injection impairments,
security hooks, telemetry and event sinks, and commands.

Sinks (``telemetry_sink``, ``event_sink``, ``on_deliver``) may be plain or
async callables; exceptions raised by sinks are counted, never propagated.

Security hooks: ``signer(packet) -> packet`` is applied to every outgoing
HELLO/RREQ/RREP/RERR (hop by hop, so relays re-sign); it should set ``key_id``
and ``signature`` over :func:`~.packets.signing_bytes`.  ``verifier(packet) ->
bool`` is applied to every incoming control packet; the default only relies on
the codec's structural checks.  A refusal is a ``bad_signature`` rejection.

Key-based security: ``security=`` (or :meth:`MeshAgent.attach_security`) takes a
:class:`~.security.NodeSecurity`: control packets are then signed with the node's
ML-DSA-65 key and packet counter, checked against the receiver's replay windows and
verified against the keyvault key directory, and DATA travels hop by hop over
per-neighbour AES-256-GCM channels (flags ``ENC``/``HS``, see :mod:`.security`).

Rejected packets (:data:`REJECT_REASONS`: malformed, from an unknown address, with a
sender that does not match the address, unsigned, replayed, with an unknown, revoked
or foreign key, a stale timestamp or counter, a bad signature, plaintext or
undecryptable DATA, a bad handshake) are counted against THIS node, the receiver:
``dropped.<reason>``, ``rejected.<reason>`` and the telemetry's ``rejected_packets``
(per reason, since the last report), and reported as ``security.<reason>`` events
(rate limited to 10/s per kind) whose ``peer`` is empty -- the node a packet claims to
come from (``details["claimed"]``) or whose address it came from (``details["link"]``)
is not blamed: both are forgeable. Only evidence (:class:`~.security.Verdict`: a
verified, fresh, non-replayed signature by a revoked key or under another node's id)
names a node: ``security.revoked_key_used`` / ``security.impersonation`` with ``peer`` =
the key's owner, counted as ``auth_evidence.<kind>`` here; the monitor turns those
events into the owner's ``failed_auth``. An agent never reports ``failed_auth`` about
itself (its telemetry field stays 0).
"""

from __future__ import annotations

import asyncio
import dataclasses
import inspect
import logging
import random
import time
from collections import Counter, deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import psutil

from .core import CoreConfig, MeshCore
from .neighbours import PathLoss
from .packets import (
    CONTROL_TYPES,
    DATA,
    FLAG_ACK,
    FLAG_ENC,
    FLAG_HS,
    HELLO,
    Packet,
    PacketError,
    decode,
    encode,
    valid_node_id,
)
from .routing import Event, Output

log = logging.getLogger(__name__)

Address = tuple[str, int]
Signer = Callable[[Packet], Packet]
Verifier = Callable[[Packet], bool]
Sink = Callable[[dict], Any]

MS = 1_000_000
REJECT_REASONS = frozenset({
    "malformed", "unknown_peer", "spoofed_sender", "unsigned", "replayed", "stale_counter", "unknown_key",
    "revoked_key", "wrong_signer", "stale_timestamp", "bad_signature", "plaintext", "decrypt_failed",
    "bad_frame", "bad_handshake", "handshake_failed", "no_security",
})  # fmt: skip


def structural_verifier(pkt: Packet) -> bool:
    """Default verifier: the codec already validated the trailer's structure."""
    return True


def percentile(samples, q: float) -> float:
    if not samples:
        return 0.0
    s = sorted(samples)
    k = min(len(s) - 1, max(0, round(q / 100.0 * (len(s) - 1))))
    return float(s[k])


@dataclass
class Impairments:
    drop_prob: float = 0.0  # inbound datagrams dropped with this probability
    tx_drop_prob: float = 0.0  # outbound datagrams (per neighbour) dropped with this probability
    latency_ms: float = 0.0  # added to every outbound datagram
    blocked: set[str] = field(default_factory=set)  # peers whose link is cut
    paused: bool = False  # frozen: no rx, no tx, no timers (like SIGSTOP)

    def clear(self) -> None:
        self.drop_prob = 0.0
        self.tx_drop_prob = 0.0
        self.latency_ms = 0.0
        self.blocked.clear()
        self.paused = False


class _Protocol(asyncio.DatagramProtocol):
    def __init__(self, agent: MeshAgent) -> None:
        self.agent = agent

    def datagram_received(self, data: bytes, addr) -> None:
        self.agent._on_datagram(data, addr)

    def error_received(self, exc: Exception) -> None:
        self.agent.counters["socket_errors"] += 1


class MeshAgent:
    def __init__(
        self,
        node_id: str,
        bind: Address = ("127.0.0.1", 0),
        peers: Mapping[str, Address] | None = None,
        *,
        config: CoreConfig | None = None,
        seed: int | None = None,
        clock: Callable[[], int] = time.monotonic_ns,
        signer: Signer | None = None,
        verifier: Verifier | None = None,
        telemetry_sink: Sink | None = None,
        event_sink: Sink | None = None,
        on_deliver: Callable[[Packet], Any] | None = None,
        telemetry_interval: float = 1.0,
        tick_interval: float | None = None,
        path_loss_db: PathLoss = 40.0,
        ack_timeout: float = 2.0,
        security: Any = None,
    ) -> None:
        self.node_id = node_id
        self.bind = bind
        self.config = config or CoreConfig()
        self.seed = seed
        self.clock = clock
        self.signer = signer
        self.verifier = verifier or structural_verifier
        self.telemetry_sink = telemetry_sink
        self.event_sink = event_sink
        self.on_deliver = on_deliver
        self.telemetry_interval = telemetry_interval
        self.tick_interval = tick_interval or self.config.hello_interval / 10
        self.path_loss_db = path_loss_db
        self.ack_timeout_ns = int(ack_timeout * 1e9)
        self.impair = Impairments()
        self.links_down: set[str] = set()   # neighbours whose link an operator took out of service (set_link)
        self._config_history: list[CoreConfig] = []   # what set_config replaced (restore_config goes back)
        self.rng = random.Random(seed)
        self.core = MeshCore(node_id, self.config, seed=seed, path_loss_db=path_loss_db)
        self.peers: dict[str, Address] = {}
        self._addr_to_id: dict[Address, str] = {}
        if peers:
            self.set_peers(peers)
        self.counters: Counter = Counter()
        self.latency_ns: deque[int] = deque(maxlen=2000)  # one-way, DATA delivered here
        self.rtt_by_dest: dict[str, deque[int]] = {}
        self.deliveries: deque[tuple[int, str, int, int]] = deque(maxlen=20000)  # (now, origin, id, ts)
        self.acks: deque[tuple[int, str, int, int]] = deque(maxlen=20000)  # (now, dest, id, ts)
        self._pending_acks: dict[tuple[str, int], int] = {}
        self._outcomes: deque[bool] = deque(maxlen=500)
        # per destination: DATA originated, end-to-end acknowledged, last send (the flows in telemetry)
        self.flows: dict[str, list[int]] = {}
        self.recent_events: deque[dict] = deque(maxlen=1000)
        self._event_budget: dict[str, tuple[int, int]] = {}
        self._rejected_reported: Counter = Counter()
        self._tp_last: tuple[int, float] = (0, 0)  # (time ns, bytes) at start
        self._tp_samples: deque[tuple[int, float]] = deque(maxlen=32)  # every ~100 ms
        self.security = None
        if security is not None:
            self.attach_security(security)
        self._transport: asyncio.DatagramTransport | None = None
        self._hello_handle: asyncio.TimerHandle | None = None
        self._tasks: list[asyncio.Task] = []
        self._bg: set[asyncio.Task] = set()
        self.running = False
        self.killed = False
        self._proc = psutil.Process()
        self.started_ns = 0

    # ================================================================ security
    def attach_security(self, security: Any) -> None:
        """Use ``security`` (a :class:`~.security.NodeSecurity`) for signatures and channels."""
        self.security = security
        security.bind(self.counters, lambda kind, peer, details: self._emit_event(Event(kind, peer, details)),
                      self.clock)
        self.signer = security.sign

    def _drain_security(self) -> None:
        sec = self.security
        while sec is not None and sec.outbox:
            out, sec.outbox = sec.outbox, []
            for p, to in out:
                self._transmit(p, to)

    # ================================================================ lifecycle
    def set_peers(self, peers: Mapping[str, Address]) -> None:
        self.peers = {p: (a[0], int(a[1])) for p, a in peers.items() if p != self.node_id}
        self._addr_to_id = {a: p for p, a in self.peers.items()}

    @property
    def address(self) -> Address:
        if self._transport is None:
            return self.bind
        host, port = self._transport.get_extra_info("sockname")[:2]
        return (host, port)

    async def start(self) -> MeshAgent:
        if self.running:
            return self
        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_datagram_endpoint(lambda: _Protocol(self), local_addr=self.bind)
        self._transport = transport
        sock = transport.get_extra_info("socket")
        try:
            import socket

            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        except OSError:
            pass
        self._read_batched(loop, sock)
        self.bind = self.address  # keep the real port for restarts
        self.running = True
        self.killed = False
        self.started_ns = self.clock()
        self._tp_last = (self.started_ns, 0)
        self._tasks = [asyncio.create_task(self._tick_loop(), name=f"mesh-tick-{self.node_id}")]
        if self.telemetry_sink is not None:
            self._tasks.append(asyncio.create_task(self._telemetry_loop(), name=f"mesh-tel-{self.node_id}"))
        return self

    READ_BATCH = 256

    def _read_batched(self, loop: asyncio.AbstractEventLoop, sock) -> None:
        """asyncio's datagram transport reads one datagram per readiness event, i.e. one per loop
        iteration; with many agents in one busy loop a socket is then drained slower than its
        neighbours fill it, packets age in the kernel buffer (HELLOs arrive too late, neighbours
        are declared lost, route discovery floods follow). Read what is queued (bounded) per event."""
        try:
            fd = sock.fileno()
            loop.remove_reader(fd)
            loop.add_reader(fd, self._read_many, sock)
        except (AttributeError, NotImplementedError, RuntimeError, ValueError):
            pass        # keep the transport's own reader

    def _read_many(self, sock) -> None:
        for _ in range(self.READ_BATCH):
            if self._transport is None:
                return
            try:
                data, addr = sock.recvfrom(65536)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                self.counters["socket_errors"] += 1
                return
            self._on_datagram(data, addr)

    def kill(self) -> None:
        """Abrupt stop (crash): socket closed, timers cancelled, state kept for inspection."""
        self.running = False
        self.killed = True
        if self._hello_handle is not None:
            self._hello_handle.cancel()
            self._hello_handle = None
        for t in self._tasks:
            t.cancel()
        self._tasks = []
        if self._transport is not None:
            self._transport.close()
            self._transport = None

    async def revive(self) -> MeshAgent:
        """Restart a killed agent on the same address with fresh protocol state."""
        if self.running:
            return self
        self.core = MeshCore(self.node_id, self.config, seed=None, path_loss_db=self.path_loss_db)
        self._pending_acks.clear()
        if self.security is not None:
            self.security.reset()
        return await self.start()

    async def shutdown(self) -> None:
        if self.running:
            self._emit_event(Event("shutdown", self.node_id, {}))
        self.kill()
        self.killed = False
        if self._bg:
            await asyncio.gather(*list(self._bg), return_exceptions=True)

    # ================================================================ commands
    def avoid(self, node: str) -> None:
        self._process(self.core.avoid(node, self.clock()))

    def unavoid(self, node: str) -> None:
        self._process(self.core.unavoid(node, self.clock()))

    def flush_routes(self) -> None:
        self._process(self.core.flush_routes(self.clock()))

    async def command(self, cmd: Mapping[str, Any]) -> dict:
        """Dispatch a command dict: {"kind": "avoid"|"unavoid"|"flush_routes"|"shutdown"|
        "send"|"fault"|"heal"|"set_link"|"set_config", "peer": ..., "params": {...}}. Returns {"ok": bool, ...}
        (a bad value raises ValueError)."""
        kind = str(cmd.get("kind", "")).lower().removeprefix("kind_")
        peer = cmd.get("peer", "")
        params = cmd.get("params") or {}
        if kind in ("avoid", "avoid_node"):
            self.avoid(peer)
        elif kind in ("unavoid", "unavoid_node"):
            self.unavoid(peer)
        elif kind == "flush_routes":
            self.flush_routes()
        elif kind == "shutdown":
            await self.shutdown()
        elif kind == "send":
            self.send(peer, str(params.get("payload", "")).encode(), ack=bool(params.get("ack", True)))
        elif kind == "fault":
            self.apply_fault(params)
        elif kind == "heal":
            self.impair.clear()
        elif kind == "set_link":
            return {"ok": True, "detail": self.set_link(peer, str(params.get("state", "")))}
        elif kind == "set_config":
            if params.get("restore") == "previous":
                return {"ok": True, "detail": self.restore_config()}
            hello, miss = params.get("hello_interval"), params.get("miss_count")
            return {"ok": True, "detail": self.set_config(float(hello) if hello is not None else None,
                                                          int(float(miss)) if miss is not None else None)}
        else:
            return {"ok": False, "error": f"unknown command {kind!r}"}
        return {"ok": True}

    def apply_fault(self, params: Mapping[str, Any]) -> None:
        t = params.get("type")
        if t == "loss":
            direction = str(params.get("direction", "in"))
            if direction not in ("in", "out", "both"):
                raise ValueError(f"loss direction must be in, out or both, got {direction!r}")
            if direction in ("in", "both"):
                self.impair.drop_prob = float(params["pct"]) / 100.0
            if direction in ("out", "both"):
                self.impair.tx_drop_prob = float(params["pct"]) / 100.0
        elif t == "latency":
            self.impair.latency_ms = float(params["ms"])
        elif t == "block":
            self.block(str(params["peer"]))
        elif t == "unblock":
            self.impair.blocked.discard(str(params["peer"]))
        elif t == "pause":
            self.impair.paused = True
        elif t == "resume":
            self.impair.paused = False
        else:
            raise ValueError(f"unknown fault {t!r}")

    def block(self, peer: str) -> None:
        self.impair.blocked.add(peer)

    # ================================================================ operator changes
    def set_link(self, peer: str, state: str) -> str:
        """An operator's topology change (not a fault: a heal does not undo it): ``down`` stops sending on the
        link to ``peer`` and drops what arrives on it, ``up`` puts it back."""
        if peer not in self.peers:
            raise ValueError(f"{peer!r} is not a neighbour of {self.node_id} (no such link in the topology)")
        if state == "down":
            self.links_down.add(peer)
        elif state == "up":
            self.links_down.discard(peer)
        else:
            raise ValueError(f"link state must be down or up, got {state!r}")
        return f"link {self.node_id}-{peer} {state}"

    def set_config(self, hello_interval: float | None = None, miss_count: int | None = None) -> str:
        """Set the HELLO interval and/or miss count in force (the previous values are kept for
        :meth:`restore_config`)."""
        old = self.config
        new = dataclasses.replace(old, hello_interval=hello_interval if hello_interval is not None
                                  else old.hello_interval, miss_count=miss_count if miss_count is not None
                                  else old.miss_count)
        self._config_history.append(old)
        self._apply_config(new)
        return (f"hello_interval {old.hello_interval:g} -> {new.hello_interval:g}, "
                f"miss_count {old.miss_count} -> {new.miss_count}")

    def restore_config(self) -> str:
        """Go back to the values the last :meth:`set_config` replaced."""
        if not self._config_history:
            return "nothing to restore"
        old = self._config_history.pop()
        self._apply_config(old)
        return f"restored hello_interval {old.hello_interval:g}, miss_count {old.miss_count}"

    def _apply_config(self, cfg: CoreConfig) -> None:
        if cfg.hello_interval <= 0 or cfg.miss_count < 1:
            raise ValueError("hello_interval must be > 0 and miss_count >= 1")
        self.config = cfg
        self.core.config = cfg
        self.core.neighbours.hello_interval = cfg.hello_interval
        self.core.neighbours.miss_count = cfg.miss_count
        self.core.next_hello_ns = None      # the next HELLO at once, on the new schedule after it

    # ================================================================ data
    def send(self, dest: str, payload: bytes = b"", *, ack: bool = True) -> Packet | None:
        """Originate one DATA packet (with ``ack`` the destination echoes it -> RTT)."""
        if not valid_node_id(dest):
            raise ValueError(f"invalid destination id {dest!r}")
        if not self.running or self.impair.paused:
            self.counters["dropped.not_running"] += 1
            return None
        now = self.clock()
        out, pkt = self.core.send_data(dest, payload, now, ack=ack)
        self.counters["sent"] += 1
        self.counters["sent_bytes"] += len(payload)
        flow = self.flows.setdefault(dest, [0, 0, now])
        flow[0] += 1
        flow[2] = now
        if ack:
            self._pending_acks[(dest, pkt.packet_id)] = now
        self._process(out)
        return pkt

    def hello_soon(self, delay: float = 0.0) -> None:
        """Send a HELLO off schedule within ``delay`` s (calls coalesce into one), then keep the
        regular interval from there: a rotated key is announced at once, and a neighbour that
        rotated learns quickly (from the echo in our HELLO) that we accepted its new key."""
        if not self.running or self._hello_handle is not None:
            return
        self._hello_handle = asyncio.get_running_loop().call_later(max(0.0, delay), self._hello_now)

    def _hello_now(self) -> None:
        self._hello_handle = None
        if self.running and not self.impair.paused:
            now = self.clock()
            self.counters["hello.triggered"] += 1
            self._process(self.core.hello_now(now), now)

    # ================================================================ I/O
    def _on_datagram(self, data: bytes, addr) -> None:
        if not self.running:
            return
        if self.impair.paused:
            self.counters["dropped.paused"] += 1
            return
        self.counters["rx_packets"] += 1
        self.counters["rx_bytes"] += len(data)
        peer = self._addr_to_id.get((addr[0], addr[1]))
        if peer is None:
            self._reject("unknown_peer", {"addr": f"{addr[0]}:{addr[1]}"})
            return
        if peer in self.impair.blocked or peer in self.links_down:
            self.counters["dropped.blocked"] += 1
            return
        if self.impair.drop_prob and self.rng.random() < self.impair.drop_prob:
            self.counters["dropped.impair_loss"] += 1
            return
        try:
            pkt = decode(data)
        except PacketError as e:
            self.counters[f"dropped.malformed.{e.reason}"] += 1
            self._reject("malformed", {"link": peer, "reason": e.reason, "detail": e.detail[:80]})
            return
        if pkt.sender != peer:
            self._reject("spoofed_sender", {"link": peer, "claimed": pkt.sender, "type": pkt.type_name})
            return
        sec = self.security
        if sec is not None:
            now = self.clock()
            if pkt.type == DATA:
                if pkt.flags & FLAG_HS:
                    reason = sec.on_handshake(peer, pkt, now)
                    if reason in REJECT_REASONS:
                        # handshake_failed: NodeSecurity already reported it (with the error)
                        self._reject(reason, {"link": peer, "claimed": pkt.sender, "type": "HS"},
                                     event=reason != "handshake_failed")
                    elif reason is not None:
                        self.counters[f"dropped.{reason}"] += 1
                    self._drain_security()
                    return
                if pkt.flags & FLAG_ENC:
                    res = sec.inbound(peer, pkt, now)
                    if isinstance(res, str):
                        if res in REJECT_REASONS:
                            self._reject(res, {"link": peer, "claimed": pkt.sender, "type": "DATA"})
                        else:
                            self.counters[f"dropped.{res}"] += 1
                        self._drain_security()
                        return
                    pkt = res
                elif sec.require_encryption:
                    self._reject("plaintext", {"link": peer, "claimed": pkt.sender, "type": "DATA"})
                    return
            elif pkt.type in CONTROL_TYPES:
                try:
                    verdict = sec.inspect(pkt, data, now)
                except Exception:  # a verifier bug must not kill the agent
                    log.exception("security check failed")
                    verdict = None
                reason = "bad_signature" if verdict is None else verdict.reason
                if reason is not None:
                    self._reject(reason, {"link": peer, "claimed": pkt.sender, "type": pkt.type_name,
                                          "key_id": pkt.key_id.hex(), "counter": pkt.counter})
                    if verdict is not None and verdict.evidence is not None:
                        self._evidence(*verdict.evidence, pkt, reason)
                    return
                if pkt.type == HELLO:
                    sec.on_hello(peer, pkt, now)
                    if sec.hello_wanted:
                        sec.hello_wanted = False
                        self.hello_soon(sec.echo_delay_s)
        elif pkt.type in CONTROL_TYPES:
            try:
                ok = bool(self.verifier(pkt))
            except Exception:  # noqa: BLE001 - a verifier bug must not kill the agent
                ok = False
            if not ok:
                self._reject("bad_signature", {"link": peer, "claimed": pkt.sender, "type": pkt.type_name})
                return
        elif pkt.flags & (FLAG_ENC | FLAG_HS):
            self._reject("no_security", {"link": peer, "claimed": pkt.sender, "type": "DATA"}, event=False)
            return
        now = self.clock()
        try:
            out = self.core.handle(pkt, now)
        except Exception:  # defensive: never crash on input
            log.exception("core.handle failed on %s", pkt.type_name)
            self.counters["dropped.internal_error"] += 1
            return
        self._process(out, now)
        if sec is not None and sec.outbox:
            self._drain_security()

    def _transmit(self, pkt: Packet, to: str | None) -> None:
        if self._transport is None:
            return
        if pkt.type in CONTROL_TYPES and self.signer is not None:
            # with keys: link MACs where every receiver has a session, else an ML-DSA-65 signature
            pkt = self.signer(pkt) if self.security is None else self.security.protect(pkt, to, self.peers)
            if pkt.type == HELLO and self.security is not None:
                self.security.hello_sent(pkt.timestamp_ns)
        elif pkt.type == DATA and self.security is not None and to is not None:
            pkt = self.security.outbound(pkt, to, self.clock())
            if pkt is None:
                self._drain_security()
                return
        try:
            data = encode(pkt)
        except PacketError as e:
            self.counters[f"dropped.encode.{e.reason}"] += 1
            return
        targets = list(self.peers) if to is None else [to]
        for t in targets:
            addr = self.peers.get(t)
            if addr is None:
                self.counters["dropped.unknown_next_hop"] += 1
                continue
            if t in self.impair.blocked or t in self.links_down:
                self.counters["dropped.blocked_tx"] += 1
                continue
            if self.impair.tx_drop_prob and self.rng.random() < self.impair.tx_drop_prob:
                self.counters["dropped.impair_tx_loss"] += 1
                continue
            self.counters["tx_packets"] += 1
            self.counters["tx_bytes"] += len(data)
            if pkt.type in CONTROL_TYPES:
                self.counters["control_tx_packets"] += 1
                self.counters["control_tx_bytes"] += len(data)
                self.counters[f"tx.{pkt.type_name}"] += 1
            if self.impair.latency_ms > 0:
                asyncio.get_running_loop().call_later(self.impair.latency_ms / 1000.0, self._sendto, data, addr)
            else:
                self._sendto(data, addr)

    def _sendto(self, data: bytes, addr: Address) -> None:
        if self._transport is not None and not self.impair.paused:
            self._transport.sendto(data, addr)

    def _process(self, out: Output, now: int | None = None) -> None:
        now = self.clock() if now is None else now
        for s in out.sends:
            p = s.packet
            if p.type == DATA and p.origin != self.node_id:
                self.counters["forwarded"] += 1
                self.counters["forwarded_bytes"] += len(p.body) if isinstance(p.body, bytes) else 0
            self._transmit(p, s.to)
        for p in out.delivered:
            if p.type != DATA:
                continue
            if p.flags & FLAG_ACK:
                self.counters["acked"] += 1
                if p.origin in self.flows:
                    self.flows[p.origin][1] += 1
                sent = self._pending_acks.pop((p.origin, p.packet_id), None)
                rtt = now - p.timestamp_ns
                self.rtt_by_dest.setdefault(p.origin, deque(maxlen=1000)).append(rtt)
                self.acks.append((now, p.origin, p.packet_id, p.timestamp_ns))
                if sent is not None:
                    self._outcomes.append(True)
                continue
            self.counters["delivered"] += 1
            self.counters["delivered_bytes"] += len(p.body) if isinstance(p.body, bytes) else 0
            self.latency_ns.append(now - p.timestamp_ns)
            self.deliveries.append((now, p.origin, p.packet_id, p.timestamp_ns))
            if self.on_deliver is not None:
                self._call(self.on_deliver, p)
        for reason, _p in out.drops:
            self.counters[f"dropped.{reason}"] += 1
        for ev in out.events:
            self._emit_event(ev)

    # ================================================================ timers
    async def _tick_loop(self) -> None:
        while self.running:
            try:
                if not self.impair.paused:
                    now = self.clock()
                    self._process(self.core.tick(now), now)
                    if self.security is not None:
                        self.security.tick(now)
                        self._drain_security()
                    self._expire_acks(now)
                    if not self._tp_samples or now - self._tp_samples[-1][0] >= 100_000_000:
                        c = self.counters
                        self._tp_samples.append((now, c["delivered_bytes"] + c["forwarded_bytes"]))
            except Exception:
                log.exception("tick failed")
                self.counters["internal_errors"] += 1
            # sleep until the core's next deadline (precise loss detection), at most tick_interval
            delay = self.tick_interval
            if not self.impair.paused:
                delay = min(delay, max(0.0005, (self.core.next_wakeup_ns() - self.clock()) / 1e9))
            await asyncio.sleep(delay)

    def _expire_acks(self, now: int) -> None:
        if not self._pending_acks:
            return
        lim = now - self.ack_timeout_ns
        old = [k for k, t in self._pending_acks.items() if t < lim]
        for k in old:
            del self._pending_acks[k]
            self._outcomes.append(False)
            self.counters["ack_timeouts"] += 1

    async def _telemetry_loop(self) -> None:
        while self.running:
            await asyncio.sleep(self.telemetry_interval)
            if self.running and not self.impair.paused and self.telemetry_sink is not None:
                self._call(self.telemetry_sink, self.telemetry())

    # ================================================================ sinks
    def _call(self, fn: Callable, arg: Any) -> None:
        try:
            res = fn(arg)
            if inspect.isawaitable(res):
                task = asyncio.ensure_future(res)
                self._bg.add(task)
                task.add_done_callback(self._bg_done)
        except Exception:  # noqa: BLE001 - a sink bug is counted, it must not kill the agent
            self.counters["sink_errors"] += 1

    def _bg_done(self, task: asyncio.Task) -> None:
        self._bg.discard(task)
        if not task.cancelled() and task.exception() is not None:
            self.counters["sink_errors"] += 1

    def _emit_event(self, ev: Event) -> None:
        rec = {
            "node_id": self.node_id,
            "kind": ev.kind,
            "peer": ev.peer,
            "details": {k: str(v) for k, v in ev.details.items()},
            "ts_ns": time.time_ns(),
            "mono_ns": self.clock(),
        }
        self.recent_events.append(rec)
        self.counters[f"events.{ev.kind}"] += 1
        if self.event_sink is not None:
            self._call(self.event_sink, rec)

    def _reject(self, reason: str, details: dict, *, event: bool = True) -> None:
        """A packet refused for ``reason``: counted against this node (the receiver); the event names no
        peer (the claimed sender and the link are in ``details``, as claims)."""
        c = self.counters
        c[f"dropped.{reason}"] += 1
        c[f"rejected.{reason}"] += 1
        c["rejected"] += 1
        if event:
            self._security(f"security.{reason}", "", details)

    def _evidence(self, kind: str, culprit: str, pkt: Packet, reason: str) -> None:
        """A packet that proves something about ``culprit`` (see :class:`~.security.Verdict`)."""
        self.counters[f"auth_evidence.{kind}"] += 1
        self.counters["auth_evidence"] += 1
        self._security(f"security.{kind}", culprit, {"type": pkt.type_name, "claimed": pkt.sender,
                                                     "key_id": pkt.key_id.hex(), "reason": reason})

    def _security(self, kind: str, peer: str, details: dict) -> None:
        """Security events, rate limited to 10/s per kind so floods cannot amplify."""
        now = self.clock()
        start, n = self._event_budget.get(kind, (now, 0))
        if now - start > 1_000_000_000:
            start, n = now, 0
        self._event_budget[kind] = (start, n + 1)
        if n < 10:
            self._emit_event(Event(kind, peer, details))

    # ================================================================ telemetry
    def telemetry(self) -> dict:
        now = self.clock()
        c = self.counters
        lat = [x / 1e6 for x in self.latency_ns]
        if not lat:
            lat = [x / 1e6 for d in self.rtt_by_dest.values() for x in d]
        if self._outcomes:
            loss_pct = 100.0 * sum(1 for o in self._outcomes if not o) / len(self._outcomes)
        else:
            avoided = self.core.router.avoided      # links to avoided nodes carry none of this node's traffic
            links = [q for p, q in self.core.neighbours.links.items() if p not in avoided]
            loss_pct = 100.0 * (sum(link.loss_rate for link in links) / len(links)) if links else 0.0
        tbytes = c["delivered_bytes"] + c["forwarded_bytes"]
        t0, b0 = self._tp_last
        for ts, b in self._tp_samples:  # oldest sample of the last ~2 s sliding window
            if now - ts <= 2_000_000_000:
                t0, b0 = ts, b
                break
        dt = max(1e-3, (now - t0) / 1e9)
        throughput = (tbytes - b0) * 8 / dt
        rejected = {k.removeprefix("rejected."): int(v - self._rejected_reported[k]) for k, v in c.items()
                    if k.startswith("rejected.") and v > self._rejected_reported[k]}
        self._rejected_reported = Counter({k: v for k, v in c.items() if k.startswith("rejected.")})
        try:
            cpu = self._proc.cpu_percent(None)
            mem = self._proc.memory_percent()
            rss = self._proc.memory_info().rss
        except psutil.Error:
            cpu = mem = 0.0
            rss = 0
        by_dest = {
            d: {"p50_ms": percentile(v, 50) / 1e6, "p99_ms": percentile(v, 99) / 1e6, "n": len(v)}
            for d, v in self.rtt_by_dest.items()
        }
        return {
            "node_id": self.node_id,
            "ts_ns": time.time_ns(),
            "p99_latency_ms": round(percentile(lat, 99), 4),
            "loss_pct": round(loss_pct, 3),
            "throughput_bps": round(throughput, 1),
            "peer_count": len(self.core.neighbours.links),
            "route_count": self.core.router.route_count(),
            "cpu_pct": cpu,
            "mem_pct": round(mem, 3),
            "rss_bytes": rss,
            "links": self.core.neighbours.snapshot(now),
            "neighbours": self.core.neighbours.peers(),
            "failed_auth": 0,           # never about itself: see the module doc (evidence -> monitor)
            "rejected_packets": rejected,   # packets this node refused since the last report, by reason
            "counters": {**{k: float(v) for k, v in sorted(c.items())},
                         "config.hello_interval_s": float(self.config.hello_interval),   # in force (config_change)
                         "config.miss_count": float(self.config.miss_count)},
            "flows": {d: {"sent": f[0], "acked": f[1], "idle_s": max(0.0, (now - f[2]) / 1e9)}
                      for d, f in self.flows.items()},
            "rtt_by_dest": by_dest,
            "routes": self.core.router.table(),
            "avoided": sorted(self.core.router.avoided),
            "impairments": {
                "drop_prob": self.impair.drop_prob,
                "tx_drop_prob": self.impair.tx_drop_prob,
                "latency_ms": self.impair.latency_ms,
                "blocked": sorted(self.impair.blocked),
                "paused": self.impair.paused,
            },
            "links_down": sorted(self.links_down),
            "reachable": self.running,
        }
