"""Mesh security against the real keyvault process and nats-server: identities the host generates and keyvault
certifies over gRPC, records from the KV bucket ``keys``, rotation (Rotate + RELOAD_KEYS, as the executor's
ROTATE_KEYS) under traffic: each node rotated exactly once, by its host; revocation."""
from __future__ import annotations

import asyncio
import time

from testkit import eventually, scaled

from x0tta6bl4.bus import subjects
from x0tta6bl4.bus.reader import read_all
from x0tta6bl4.mesh.host import MeshHost
from x0tta6bl4.mesh.topology import parse_spec
from x0tta6bl4.v1 import events_pb2, mesh_pb2
from x0tta6bl4.v1 import keyvault_pb2 as pb

C = mesh_pb2.MeshCommand


async def rpc(nc, method, req, resp_type):
    r = await nc.request(subjects.KEYVAULT_RPC.format(method=method), req.SerializeToString(), timeout=20)
    assert not (r.headers or {}).get("X0-Error"), r.headers
    return resp_type.FromString(r.data)


def test_rotation_under_traffic_loses_nothing_then_revoked_node_is_routed_around(stack):
    async def go():
        # max_skew_s 3: a revoked key still signing becomes evidence 3 s after its first refusal
        host = MeshHost(stack.url, topo, keyvault=stack.kv_addr, telemetry_interval=1.0, max_skew_s=3.0,
                        key_dir=stack.mesh_key_dir("mesh"), creds=stack.creds("mesh-host-mesh"))
        executor = await stack.connect("executor")      # keyvault Rotate/Revoke over NATS: as the executor does
        operator = await stack.connect()                # reads the audit trail
        await host.start()
        rt = host.runtime
        try:
            await rt.wait_converged(15)
            n0, n8 = rt.agents["n0"], rt.agents["n8"]
            sent = 0
            stop = asyncio.Event()

            async def traffic():
                nonlocal sent
                while not stop.is_set():
                    if n0.send("n8", b"data") is not None:
                        sent += 1
                    await asyncio.sleep(0.005)   # pacing: ~200 packets/s
            task = asyncio.create_task(traffic())
            await eventually(lambda: n8.counters["delivered"] > 50, 15)
            old = {n: host.security[n].key_id for n in host.nodes}
            old_gen = {n: host.security[n].identity.generation for n in host.nodes}
            certified = host._certified
            # executor's ROTATE_KEYS: keyvault Rotate (over NATS, as the executor does) then RELOAD_KEYS. Keyvault
            # publishes a rotation request per node; the host generates, certifies and switches each node
            t0 = time.monotonic()
            rot = await rpc(executor, "Rotate", pb.RotateRequest(node_ids=host.nodes, overlap_s=2.0),
                            pb.RotateResponse)
            assert not rot.pending, rot.pending              # certified by the host while Rotate waited
            new = {r.node_id: r.sig_key_id for r in rot.records}
            replies = await asyncio.gather(*(host.apply(n, C.KIND_RELOAD_KEYS) for n in host.nodes))
            t_verified = time.monotonic() - t0
            assert all("beacon verified" in r for r in replies), replies
            assert {n: host.security[n].key_id for n in host.nodes} == new
            # exactly once per node: one new generation each, generated and certified by the host
            assert {n: host.security[n].identity.generation for n in host.nodes} == {n: g + 1
                                                                                    for n, g in old_gen.items()}
            assert host._certified == certified + len(host.nodes)
            assert all(host.keys.load(n).signing.key_id == new[n] for n in host.nodes)
            for n in host.nodes:            # every neighbour accepts beacons signed with the new key only
                ok, wait = host.beacon_verified(n, new[n])
                assert ok and not wait
            # channels re-established on the new keys
            await eventually(lambda: all(host.security[n].session_keys(p) == (new[n], new[p])
                                       for n in host.nodes for p in rt.topology.neighbours(n)), 10)
            # old keys retired by keyvault after the overlap -> gone from every directory
            await eventually(lambda: all(host.trust.directory.lookup(old[n]) is None for n in host.nodes), 10)
            await eventually(lambda: all(any(e["kind"] == "keys.retired" for e in rt.agents[n].recent_events)
                                       for n in host.nodes), 5)
            stop.set()
            await task
            await eventually(lambda: n8.counters["delivered"] == sent and n0.counters["acked"] == sent, 5)
            assert t_verified < scaled(5.0)
            lost = sum(a.counters[k] for a in rt.agents.values() for k in
                       ("dropped.no_session", "dropped.decrypt_failed", "dropped.channel_queue_full"))
            assert lost == 0
            # audit trail: keyvault's steps plus the host's per-node events
            js = operator.jetstream()
            audit = [events_pb2.AuditEvent.FromString(m.data) for m in await read_all(js, "audit.>")]
            kinds = {a.event_type for a in audit}
            assert {"key.certified", "key.rotation.started", "key.rotation.requested", "key.retired"} <= kinds, kinds
            assert "identity.issued" not in kinds and "key.rotated" not in kinds   # keyvault generated nothing
            for n in host.nodes:
                ev = [e["kind"] for e in rt.agents[n].recent_events]
                assert ev.index("keys.reloaded") < ev.index("keys.verified") < ev.index("keys.retired")

            # revoke the centre: neighbours reject its beacons and route around it
            await rpc(executor, "Revoke", pb.RevokeRequest(node_id="n4", reason="test"), pb.KeyRecord)
            around = ("n1", "n3", "n5", "n7")
            await eventually(lambda: all("n4" not in rt.agents[p].core.neighbours.links for p in around), 10)
            assert all(rt.agents[p].counters["rejected.revoked_key"] > 0 for p in around)
            assert any(e["kind"] == "keys.revoked" for e in rt.agents["n4"].recent_events)
            # a route around n4 is found (a probe gets through), then nothing sent over it is lost
            d0 = n8.counters["delivered"]

            def probe() -> bool:
                if n8.counters["delivered"] > d0:
                    return True
                n0.send("n8", b"probe")
                return False
            await eventually(probe, 10, 0.2, what="a packet from n0 delivered at n8 around the revoked n4")
            d0 = n8.counters["delivered"]
            for _ in range(20):
                n0.send("n8", b"after")
                await asyncio.sleep(0.01)    # pacing
            await eventually(lambda: n8.counters["delivered"] >= d0 + 20, 10)
            assert "n4" not in rt.path("n0", "n8")
            # n4 goes on signing with its revoked key: once that cannot be an old copy, its neighbours report
            # it as evidence about n4 (the monitor's failed_auth for n4); the refusals before are their own
            await eventually(lambda: sum(rt.agents[p].counters["auth_evidence.revoked_key_used"]
                                         for p in around) > 0, 15)
            ev = [e for p in around for e in rt.agents[p].recent_events if e["kind"] == "security.revoked_key_used"]
            assert ev and all(e["peer"] == "n4" for e in ev)
            assert all(e["peer"] == "" for p in around for e in rt.agents[p].recent_events
                       if e["kind"] == "security.revoked_key")
        finally:
            await host.stop()
            await executor.close()
            await operator.close()
    topo = parse_spec("grid:9", seed=0)
    stack.add_mesh_host("mesh", topo.nodes)             # the host's own bus identity: these nodes only
    asyncio.run(go())
