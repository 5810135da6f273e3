"""Who gets blamed, end to end: a real mesh host (signed HELLOs, in-process keys) reporting over the secured bus
to the real monitor and analyzer processes. A flood of packets spoofed, forged and replayed in a node's name
makes no "compromised" finding about anybody; one packet that proves something -- a node's key, verified,
on a packet claiming another node's id -- makes the key's owner, and only it, compromised."""
from __future__ import annotations

import asyncio

from testkit import eventually

from x0tta6bl4.bus import subjects
from x0tta6bl4.bus.reader import read_all
from x0tta6bl4.mesh.host import MeshHost
from x0tta6bl4.mesh.packets import HELLO, HelloBody, Packet, encode
from x0tta6bl4.mesh.security import NodeSecurity
from x0tta6bl4.mesh.topology import parse_spec
from x0tta6bl4.pqc import NodeIdentity
from x0tta6bl4.v1 import events_pb2


def hello(sender: str, now: int) -> Packet:
    return Packet(HELLO, sender, sender, "", ttl=1, origin_seq=7, timestamp_ns=now, body=HelloBody(0, ()))


async def stored(js, node: str) -> events_pb2.NodeTelemetry | None:
    """The monitor's stored report of ``node`` (None while it has none)."""
    try:
        return events_pb2.NodeTelemetry.FromString((await (await js.key_value("telemetry")).get(node)).value)
    except Exception:  # noqa: BLE001 - not there yet (no bucket, no key)
        return None


async def anomalies(js) -> list[events_pb2.Anomaly]:
    return [events_pb2.Anomaly.FromString(m.data) for m in await read_all(js, subjects.MAPEK_ANOMALY)]


async def test_spoofed_packets_frame_nobody_and_evidence_names_the_keys_owner(stack_factory, monkeypatch):
    stack = stack_factory(services=("monitor", "analyzer"),
                          env={"X0TTA6BL4_WINDOW_S": "0.5", "X0TTA6BL4_USE_MODEL": "0",
                               "X0TTA6BL4_MONITOR_COLLECTOR": "off"})
    topo = parse_spec("line:3", seed=0)
    for k, v in stack.mesh_host_env("mesh", topo.nodes).items():     # the host's own bus identity
        if k.startswith("X0TTA6BL4_NATS_"):
            monkeypatch.setenv(k, v)
    host = MeshHost(stack.url, topo, offline_keys=True, telemetry_interval=0.25)
    await host.start()
    nc = await stack.connect()                 # the operator reads the results
    js = nc.jetstream()
    rt = host.runtime
    try:
        await rt.wait_converged(15)
        n1 = rt.agents["n1"]

        async def reporting():
            return all([await stored(js, n) is not None for n in topo.nodes])
        await eventually(reporting, 20)
        rogue = NodeSecurity("n1", NodeIdentity.generate("x0tta6bl4.local", "n1", now=0), host.trust)
        captured: list[bytes] = []
        orig = n1._sendto

        def spy(data, addr):
            captured.append(data)
            orig(data, addr)
        n1._sendto = spy
        await eventually(lambda: len(captured) >= 2)
        n1._sendto = orig

        def inject(src: str, dst: str, data: bytes) -> None:
            rt.agents[src]._transport.sendto(data, rt.agents[dst].address)

        stop = asyncio.Event()

        async def attack():
            while not stop.is_set():
                now = n1.clock()
                bad = bytearray(encode(n1.security.sign(hello("n1", now))))
                bad[-123] ^= 0x40
                for victim in ("n0", "n2"):
                    for data in (encode(hello("n1", now)), bytes(bad), encode(rogue.sign(hello("n1", now))),
                                 encode(n1.security.sign(hello("n1", now - 60 * 10**9))), captured[0]):
                        inject("n1", victim, data)
                await asyncio.sleep(0.02)   # pacing
        task = asyncio.create_task(attack())
        try:
            # the monitor sees the attack in the receivers' telemetry ...
            async def attack_reported():
                return all([(t := await stored(js, n)) is not None and sum(t.rejected_packets.values())
                            for n in ("n0", "n2")])
            await eventually(attack_reported, 20)
            # ... through several periodic windows
            n_windows = len(await read_all(js, subjects.MAPEK_TELEMETRY))

            async def windows_after():
                return len(await read_all(js, subjects.MAPEK_TELEMETRY)) >= n_windows + 3
            await eventually(windows_after, 20)
        finally:
            stop.set()
            await task
        # a packet that proves something: n2's key, verified, on a packet that claims to be n1 (sent again at each
        # look: one UDP datagram on a busy machine may be counted after the window that would have carried it)
        async def found():
            inject("n1", "n0", encode(rt.agents["n2"].security.sign(hello("n1", n1.clock()))))
            return [a for a in await anomalies(js) if a.fault_type == "compromised"]
        compromised = await eventually(found, 30, 0.3)
        assert {(a.root_cause, a.node_id) for a in compromised} == {("n2", "n2")}, compromised
        # nothing else was blamed on anybody for the flood: no anomaly names n1 (whose id it carried) or the
        # receivers that counted it
        assert not [a for a in await anomalies(js) if {a.root_cause, a.node_id} & {"n0", "n1"}]
        t1 = await stored(js, "n1")
        assert t1 is not None and t1.failed_auth == 0
    finally:
        await nc.close()
        await host.stop()
