"""Signed control packets and encrypted DATA between real UDP agents (in-process LocalAuthority root)."""
from __future__ import annotations

import asyncio

from testkit import eventually

from x0tta6bl4.mesh.packets import DATA, FLAG_ENC, HELLO, HelloBody, Packet, decode, encode
from x0tta6bl4.mesh.runtime import MeshRuntime
from x0tta6bl4.mesh.security import LocalAuthority, NodeSecurity
from x0tta6bl4.mesh.topology import parse_spec
from x0tta6bl4.pqc import NodeIdentity


async def secure_mesh(spec="line:3", mac_control=True, **kw):
    topo = parse_spec(spec, seed=0)
    auth = LocalAuthority()
    ids = {n: auth.issue(n) for n in topo.nodes}
    trust = auth.trust(**kw)
    rt = MeshRuntime(topo, ack_timeout=1.0)
    for n, a in rt.agents.items():
        a.attach_security(NodeSecurity(n, ids[n], trust, mac_control=mac_control))
    await rt.start()
    await rt.wait_converged(10)
    return rt, auth, trust


def inject(rt, src, dst, pkt_or_bytes):
    data = pkt_or_bytes if isinstance(pkt_or_bytes, bytes) else encode(pkt_or_bytes)
    rt.agents[src]._transport.sendto(data, rt.agents[dst].address)


def hello(sender, now, **kw):
    return Packet(HELLO, sender, sender, "", ttl=1, origin_seq=99999, timestamp_ns=now, body=HelloBody(0, ()), **kw)


def test_signed_mesh_delivers_encrypted_and_rejects_forgeries():
    async def go():
        rt, _auth, trust = await secure_mesh()
        try:
            n0, n1 = rt.agents["n0"], rt.agents["n1"]
            for i in range(30):
                rt.send("n0", "n2", b"payload-%d" % i)
                await asyncio.sleep(0.005)   # pacing
            await eventually(lambda: n0.counters["acked"] == 30)
            assert rt.agents["n2"].counters["delivered"] == 30
            assert n1.counters["forwarded"] >= 30 and n1.counters["rx.decrypted"] >= 60
            assert n0.counters["tx.encrypted"] >= 30 and n0.counters["dropped.bad_signature"] == 0
            now = n1.clock()
            sec1 = n1.security
            good = sec1.sign(hello("n1", now))
            # tampered signature
            bad = bytearray(encode(good))
            bad[-100] ^= 0x01
            inject(rt, "n1", "n0", bytes(bad))
            # unknown key id: a valid ML-DSA signature under a key keyvault never issued
            rogue = NodeSecurity("n1", NodeIdentity.generate("x0tta6bl4.local", "n1", now=0), trust)
            inject(rt, "n1", "n0", rogue.sign(hello("n1", now)))
            # key of another node (n2) on a packet from n1
            inject(rt, "n1", "n0", rt.agents["n2"].security.sign(hello("n1", now)))
            # stale timestamp, unsigned
            inject(rt, "n1", "n0", sec1.sign(hello("n1", now - 60 * 10**9)))
            inject(rt, "n1", "n0", hello("n1", now))
            # plaintext DATA and a replayed DATA frame
            inject(rt, "n1", "n0", Packet(DATA, "n1", "n1", "n0", packet_id=7, timestamp_ns=now, body=b"clear"))
            frames = []
            orig = n1._sendto
            n1._sendto = lambda data, addr: (frames.append((data, addr)), orig(data, addr))[1]
            rt.send("n2", "n0", b"once", ack=False)
            await eventually(lambda: any(decode(d).flags & FLAG_ENC and decode(d).dest == "n0" for d, _ in frames))
            n1._sendto = orig
            d, _addr = next((d, a) for d, a in frames if decode(d).flags & FLAG_ENC and decode(d).dest == "n0")
            await eventually(lambda: n0.counters["delivered"] == 1)
            inject(rt, "n1", "n0", d)
            await eventually(lambda: n0.counters["dropped.replayed"] == 1)
            c = n0.counters
            reasons = ("bad_signature", "unknown_key", "wrong_signer", "stale_timestamp", "unsigned", "plaintext",
                       "replayed")
            for r in reasons:
                assert c[f"dropped.{r}"] == c[f"rejected.{r}"] == 1, r
            assert c["delivered"] == 1
            assert c["rejected"] == 7 and c["failed_auth"] == 0
            rejections = [e for e in n0.recent_events if e["kind"] in {f"security.{r}" for r in reasons}]
            assert {e["kind"] for e in rejections} == {f"security.{r}" for r in reasons}
            # counted against n0 (the receiver): no event blames n1, whose id and address they carried
            assert all(e["peer"] == "" and e["details"]["link"] == "n1" for e in rejections)
            # the one packet that proves something: n2's key, verified, on a packet claiming to be n1
            [ev] = [e for e in n0.recent_events if e["kind"] == "security.impersonation"]
            assert ev["peer"] == "n2" and ev["details"]["claimed"] == "n1"
            assert c["auth_evidence.impersonation"] == 1
            t = n0.telemetry()
            assert t["failed_auth"] == 0 and t["rejected_packets"] == dict.fromkeys(reasons, 1)
            assert n0.telemetry()["rejected_packets"] == {}            # per report
            assert n0.core.neighbours.links.keys() == {"n1"}       # the link itself is unaffected
        finally:
            await rt.stop()
    asyncio.run(go())


def test_verification_cache_bounds_cost_and_never_caches_tampering():
    async def go():
        # every HELLO signed (with link MACs only first contacts are: tests/unit/meshsec/test_meshsec_mac.py)
        rt, _auth, trust = await secure_mesh("grid:9", mac_control=False)
        try:
            # beacons of several hello rounds (each HELLO reaches 2-4 neighbours that share the trust store)
            await eventually(lambda: trust.stats["verify.calls"] >= 40, 10)
            st = trust.stats
            # every HELLO is verified once for all its receivers
            assert st["verify.cache_hits"] > st["verify.calls"] * 0.8, st
            assert st["verify.failed"] == 0
        finally:
            await rt.stop()
    asyncio.run(go())


def test_offline_rotation_rekeys_channels_without_loss_and_revocation_isolates():
    async def go():
        rt, auth, trust = await secure_mesh("grid:9")
        try:
            sent = 0
            stop = asyncio.Event()

            async def traffic():
                nonlocal sent
                while not stop.is_set():
                    rt.send("n0", "n8", b"t")
                    sent += 1
                    await asyncio.sleep(0.005)   # pacing
            task = asyncio.create_task(traffic())
            await eventually(lambda: rt.agents["n8"].counters["delivered"] > 20)
            old = {n: a.security.key_id for n, a in rt.agents.items()}
            for n, a in rt.agents.items():
                a.security.reload(auth.rotate(n))
            await eventually(lambda: all(a.security.peer_key(p) == rt.agents[p].security.key_id
                                    for n, a in rt.agents.items() for p in rt.topology.neighbours(n)))
            await eventually(lambda: all(a.security.session_keys(p) == (a.security.key_id, rt.agents[p].security.key_id)
                                    for n, a in rt.agents.items() for p in rt.topology.neighbours(n)))
            for n in rt.agents:
                auth.retire(n)
                assert trust.directory.lookup(old[n]) is None
            d_retired = rt.agents["n8"].counters["delivered"]     # traffic goes on with the old keys gone
            await eventually(lambda: rt.agents["n8"].counters["delivered"] >= d_retired + 20)
            stop.set()
            await task
            await eventually(lambda: rt.agents["n8"].counters["delivered"] == sent == rt.agents["n0"].counters["acked"],
                             what="every packet delivered and acknowledged")
            # revoke the centre: its beacons are rejected and traffic goes around it
            auth.revoke("n4", "compromised")
            await eventually(lambda: all("n4" not in rt.agents[p].core.neighbours.links
                                         for p in ("n1", "n3", "n5", "n7")))
            assert all(rt.agents[p].counters["rejected.revoked_key"] > 0 for p in ("n1", "n3", "n5", "n7"))
            d0 = rt.agents["n8"].counters["delivered"]
            for _ in range(20):
                rt.send("n0", "n8", b"after")
                await asyncio.sleep(0.01)    # pacing
            await eventually(lambda: rt.agents["n8"].counters["delivered"] >= d0 + 20)
            assert "n4" not in rt.path("n0", "n8")
        finally:
            await rt.stop()
    asyncio.run(go())
