"""Replay protection and blame between real UDP agents on loopback (keys from an in-process LocalAuthority):
a captured HELLO or any other control packet sent again is dropped and counted as replayed by the receiver,
changing nothing; packets spoofed in a node's name are counted against the receivers, never against that
node, and the analyzer's rules find no compromised node in the resulting telemetry; legitimate traffic
keeps flowing through all of it."""
from __future__ import annotations

import asyncio

from testkit import consistently, eventually

from x0tta6bl4.mapek.analyze import RuleAnalyzer
from x0tta6bl4.mesh.core import CoreConfig
from x0tta6bl4.mesh.host import to_proto
from x0tta6bl4.mesh.packets import CONTROL_TYPES, HELLO, HelloBody, Packet, decode, encode
from x0tta6bl4.mesh.runtime import MeshRuntime
from x0tta6bl4.mesh.security import LocalAuthority, NodeSecurity
from x0tta6bl4.mesh.topology import parse_spec
from x0tta6bl4.pqc import NodeIdentity
from x0tta6bl4.v1 import events_pb2

# a silent neighbour is declared lost after 25 HELLO intervals (5 s): long enough to look at a paused
# node's link without it expiring
CONFIG = CoreConfig(miss_count=25)


async def secure_mesh(spec: str = "line:3", config: CoreConfig = CONFIG):
    topo = parse_spec(spec, seed=0)
    auth = LocalAuthority()
    ids = {n: auth.issue(n) for n in topo.nodes}
    trust = auth.trust()
    rt = MeshRuntime(topo, config=config, ack_timeout=1.0)
    for n, a in rt.agents.items():
        a.attach_security(NodeSecurity(n, ids[n], trust))
    await rt.start()
    await rt.wait_converged(10)
    return rt, auth, trust


def capture(agent, to_addr, types=CONTROL_TYPES) -> list[bytes]:
    """Record the datagrams ``agent`` sends to ``to_addr`` (what an eavesdropper on that link sees)."""
    seen: list[bytes] = []
    orig = agent._sendto

    def spy(data, addr):
        if tuple(addr) == tuple(to_addr) and decode(data).type in types:
            seen.append(data)
        orig(data, addr)
    agent._sendto = spy
    return seen


def inject(rt, src: str, dst: str, pkt_or_bytes) -> None:
    """Send from ``src``'s address: the receiver sees exactly what a spoofed or replayed datagram looks like."""
    data = pkt_or_bytes if isinstance(pkt_or_bytes, bytes) else encode(pkt_or_bytes)
    rt.agents[src]._transport.sendto(data, rt.agents[dst].address)


async def flow(rt, src: str, dst: str, n: int) -> None:
    """``n`` acknowledged DATA packets src -> dst; every one must arrive and be acknowledged."""
    a, b = rt.agents[src], rt.agents[dst]
    acked, delivered = a.counters["acked"], b.counters["delivered"]
    for i in range(n):
        rt.send(src, dst, b"legit-%d" % i)
        await asyncio.sleep(0.005)     # pacing
    await eventually(lambda: a.counters["acked"] == acked + n and b.counters["delivered"] == delivered + n,
                     what=f"{n} DATA packets {src}->{dst} delivered and acknowledged")


def link_state(agent, peer: str):
    ln = agent.core.neighbours.links[peer]
    return ln.last_heard_ns, ln.last_seq, ln.hellos, ln.peer_ts_ns, ln.loss_rate, ln.aodv_seq


async def quiet(get, polls: int = 6) -> None:
    """Wait until ``get()`` returned the same value at ``polls`` consecutive polls (what was in flight landed)."""
    last, same = [get()], [0]

    def settled() -> bool:
        v = get()
        same[0] = same[0] + 1 if v == last[0] else 0
        last[0] = v
        return same[0] >= polls
    await eventually(settled, what="no more change")


def test_a_replayed_hello_is_dropped_and_counted_at_the_receiver_and_changes_nothing():
    async def go():
        rt, _auth, _trust = await secure_mesh()
        try:
            n0, n1, n2 = rt.agents["n0"], rt.agents["n1"], rt.agents["n2"]
            hellos = capture(n1, n0.address, {HELLO})
            # n0 processed the captured HELLO: it heard a later one of n1 and refused nothing so far
            await eventually(lambda: hellos and n0.core.neighbours.links["n1"].last_seq >= decode(hellos[0]).origin_seq
                             and n0.counters["rejected"] == 0, what="n0 accepted a captured HELLO of n1")
            captured = hellos[0]
            # n1 goes quiet; once n0 has processed what was in flight, its view of n1 must stay as it is
            n1.impair.paused = True
            await quiet(lambda: link_state(n0, "n1"))
            before = link_state(n0, "n1")
            rejected = n0.counters["rejected"]
            inject(rt, "n1", "n0", captured)            # the replay, within max_skew_s of its signing
            inject(rt, "n1", "n2", captured)            # and to n1's other neighbour, which got the original too
            await eventually(lambda: n0.counters["rejected.replayed"] == 1 and n2.counters["rejected.replayed"] == 1)
            assert n0.counters["rejected"] == rejected + 1
            await consistently(lambda: link_state(n0, "n1") == before, 0.3)   # the neighbour table never saw it
            ev = [e for e in n0.recent_events if e["kind"] == "security.replayed"]
            assert len(ev) == 1 and ev[0]["peer"] == "" and ev[0]["details"]["claimed"] == "n1"
            assert n0.telemetry()["rejected_packets"]["replayed"] == 1
            n1.impair.paused = False
            await flow(rt, "n0", "n2", 30)              # legitimate traffic is unaffected
            assert all(a.counters["failed_auth"] == 0 for a in rt.agents.values())
        finally:
            await rt.stop()
    asyncio.run(go())


def test_every_kind_of_control_packet_replayed_is_refused():
    async def go():
        rt, _auth, _trust = await secure_mesh(config=CoreConfig())   # n2's death detected in 0.6 s
        try:
            n0, n1, n2 = rt.agents["n0"], rt.agents["n1"], rt.agents["n2"]
            seen = capture(n1, n0.address)
            # route discoveries in both directions: n1 relays n2's RREQ to n0 and n2's RREP to n0
            for a in rt.agents.values():
                a.flush_routes()
            await flow(rt, "n2", "n0", 3)
            for a in rt.agents.values():
                a.flush_routes()
            await flow(rt, "n0", "n2", 3)
            # n2 dies while n0 sends to it: n1 tells n0 (the precursor of its active route to n2) with a RERR
            stop = asyncio.Event()

            async def keep_sending():
                while not stop.is_set():
                    rt.send("n0", "n2", b"x", ack=False)
                    await asyncio.sleep(0.05)   # pacing
            task = asyncio.create_task(keep_sending())
            n2.kill()
            try:
                await eventually(lambda: any(decode(d).type_name == "RERR" for d in seen), 10,
                                 what="n1 sent n0 a RERR about n2")
            finally:
                stop.set()
                await task
            captured = list(seen)
            types = {decode(d).type_name for d in captured}
            assert {"HELLO", "RREQ", "RREP", "RERR"} <= types, types
            before = {r: n0.counters[f"rejected.{r}"] for r in ("replayed", "stale_counter", "stale_timestamp")}
            for d in captured:
                inject(rt, "n1", "n0", d)

            def all_refused():
                c = n0.counters
                refused = sum(c[f"rejected.{r}"] - before[r] for r in ("replayed", "stale_counter"))
                assert refused == len(captured), (refused, len(captured))
                return True
            await eventually(all_refused)
            assert n0.counters["rejected.stale_timestamp"] == before["stale_timestamp"]  # caught by the window
            await n2.revive()
            await rt.wait_converged(10)
            await flow(rt, "n0", "n2", 20)
        finally:
            await rt.stop()
    asyncio.run(go())


def hello(sender: str, now: int) -> Packet:
    return Packet(HELLO, sender, sender, "", ttl=1, origin_seq=7, timestamp_ns=now, body=HelloBody(0, ()))


def test_packets_spoofed_in_a_nodes_name_do_not_frame_it():
    async def go():
        rt, _auth, trust = await secure_mesh()
        try:
            n0, n1 = rt.agents["n0"], rt.agents["n1"]
            captured = capture(n1, n0.address, {HELLO})
            await eventually(lambda: len(captured) >= 2)
            rogue = NodeSecurity("n1", NodeIdentity.generate("x0tta6bl4.local", "n1", now=0), trust)
            stop = asyncio.Event()

            async def attack():
                """Everything a spoofer can send in n1's name, from n1's address, to both its neighbours."""
                while not stop.is_set():
                    now = n1.clock()
                    bad = bytearray(encode(n1.security.sign(hello("n1", now))))
                    bad[-123] ^= 0x40
                    for victim in ("n0", "n2"):
                        inject(rt, "n1", victim, hello("n1", now))                             # unsigned
                        inject(rt, "n1", victim, bytes(bad))                                    # bad signature
                        inject(rt, "n1", victim, rogue.sign(hello("n1", now)))                 # key never issued
                        inject(rt, "n1", victim, n1.security.sign(hello("n1", now - 60 * 10**9)))  # stale
                        inject(rt, "n1", victim, captured[0])                                   # replayed
                    inject(rt, "n0", "n1", hello("n2", now))      # n2's id from n0's address
                    await asyncio.sleep(0.02)   # pacing: ~50 rounds/s
            task = asyncio.create_task(attack())
            reasons = ("unsigned", "bad_signature", "unknown_key", "stale_timestamp", "replayed")
            await eventually(lambda: all(rt.agents[v].counters[f"rejected.{r}"] >= 20
                                         for v in ("n0", "n2") for r in reasons)
                             and n1.counters["rejected.spoofed_sender"] >= 20, 20)
            await flow(rt, "n0", "n2", 50)               # legitimate traffic flows through the attack, no loss
            stop.set()
            await task
            assert rt.converged()                         # nobody lost a neighbour

            # no event blames n1 (or n2) for what was sent in their names
            events = [e for a in rt.agents.values() for e in a.recent_events if e["kind"].startswith("security.")]
            assert events and all(e["peer"] == "" for e in events), {(e["kind"], e["peer"]) for e in events}
            # telemetry as the mesh host publishes it: the receivers report what they refused, by reason
            tel = {n: a.telemetry() for n, a in rt.agents.items()}
            protos = [to_proto(t, 1, t["loss_pct"], t["p99_latency_ms"]) for t in tel.values()]
            by_node = {t.node_id: t for t in protos}
            for v in ("n0", "n2"):
                assert all(by_node[v].rejected_packets[r] >= 20 for r in reasons), dict(by_node[v].rejected_packets)
            assert by_node["n1"].rejected_packets["spoofed_sender"] >= 20
            assert all(t.failed_auth == 0 for t in protos)
            window = events_pb2.TelemetryWindow(trigger_node="n1", nodes=protos)
            window.meta.cycle_id = window.meta.event_id = "spoof"
            found = RuleAnalyzer().analyze(window)
            assert not [a for a in found if a.fault_type == "compromised"], found
        finally:
            await rt.stop()
    asyncio.run(go())
