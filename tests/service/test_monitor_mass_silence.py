"""Mass silence (issue #20, do no harm): many nodes whose reports stop at once, with no neighbour reporting them
lost, are a failed reporting path - a mesh host stalled or cut off from the bus - not failed nodes.

Found on a 500-node mesh over 4 host processes: one host's 125 nodes went silent together and the loop rerouted
around ten healthy nodes at once. A stale node no neighbour reported lost now waits ``silence_hold_s`` past its
staleness; when ``mass_silence_min`` or more (and ``mass_silence_share`` of the replica's nodes) are silent at
once, none is marked and one audit event names them. A lone silent node is marked as before, a hold later."""
from __future__ import annotations

from monitorkit import MonitorOnBus

from x0tta6bl4.bus import subjects
from x0tta6bl4.bus.codec import new_meta
from x0tta6bl4.stages import monitor as stage
from x0tta6bl4.v1 import events_pb2

NODES = [f"n{i}" for i in range(40)]


class Monitor(MonitorOnBus):
    async def report(self, *nodes: str) -> None:
        for node in nodes:
            t = events_pb2.NodeTelemetry(meta=new_meta("agent"), node_id=node, reachable=True)
            t.meta.ts_unix_ns = self.clock()
            await self.bus.publish(subjects.telemetry(node), t)

    async def tick(self) -> list[str]:
        return await stage.stale_tick(self.bus.context(), self.deps)

    def unreachable(self) -> list[str]:
        return sorted({m.node_id for m in self.bus.messages(subjects.MAPEK_HEALTH)
                       if "unreachable" in m.reasons})


def monitor(tmp_path, **settings) -> Monitor:
    return Monitor(tmp_path, silence_hold_s=1.0, **settings)


async def test_a_lone_silent_node_is_marked_a_hold_after_its_staleness(tmp_path):
    mon = monitor(tmp_path)
    await mon.report(*NODES)
    for _ in range(4):                      # everyone but n7 keeps reporting
        mon.clock.advance(0.6)
        await mon.report(*[n for n in NODES if n != "n7"])
        assert await mon.tick() == []       # 2.4 s: stale, held
    mon.clock.advance(0.5)
    await mon.report(*[n for n in NODES if n != "n7"])
    assert await mon.tick() == []           # 2.9 s: stale for 0.9 s, held
    mon.clock.advance(0.2)
    assert await mon.tick() == ["n7"]       # 3.1 s: stale for longer than the hold
    assert mon.unreachable() == ["n7"] and len(mon.bus.messages(subjects.MAPEK_TELEMETRY)) == 1
    assert mon.bus.audited("health.mass_silence") == []


async def test_a_host_going_silent_marks_no_node_and_is_audited_once(tmp_path):
    mon = monitor(tmp_path)
    host = NODES[:10]                       # a quarter of the mesh: one mesh host's nodes
    await mon.report(*NODES)
    for _ in range(10):                     # its reports stop; the rest keep reporting for 6 s
        mon.clock.advance(0.6)
        await mon.report(*NODES[10:])
        assert await mon.tick() == []
    assert mon.unreachable() == [] and mon.bus.messages(subjects.MAPEK_TELEMETRY) == []
    [audit] = mon.bus.audited("health.mass_silence")
    assert audit.details["nodes"] == 10 and audit.details["sample"] == sorted(host)
    # the host is back: its nodes report again and nothing was done about them
    await mon.report(*NODES)
    mon.clock.advance(0.6)
    await mon.report(*NODES)
    assert await mon.tick() == [] and mon.deps.silent == {}
    # later a lone node stops: marked as before (a new episode would be audited again)
    await mon.report(*NODES)
    for _ in range(6):
        mon.clock.advance(0.6)
        await mon.report(*[n for n in NODES if n != "n3"])
        marked = await mon.tick()
        if marked:
            break
    assert marked == ["n3"] and mon.unreachable() == ["n3"]


async def test_nodes_going_silent_one_by_one_spread_over_a_second_are_one_mass_silence(tmp_path):
    """A host reports its nodes at different moments: their staleness comes over a second, not in one tick."""
    mon = monitor(tmp_path)
    host = NODES[:8]
    await mon.report(*NODES)
    for node in host:                       # each of the host's nodes reported once more, 0.1 s apart
        mon.clock.advance(0.1)
        await mon.report(node, *NODES[8:])
    for _ in range(40):
        mon.clock.advance(0.1)
        await mon.report(*NODES[8:])
        assert await mon.tick() == []
    assert len(mon.bus.audited("health.mass_silence")) == 1


async def test_few_silent_nodes_are_not_a_mass_silence(tmp_path):
    """Below ``mass_silence_min`` (or the share of the replica's nodes) each is a failure of its own."""
    mon = monitor(tmp_path, mass_silence_min=8)
    await mon.report(*NODES)
    marked: list[str] = []
    for _ in range(8):
        mon.clock.advance(0.5)
        await mon.report(*NODES[3:])
        marked += await mon.tick()
    assert sorted(marked) == ["n0", "n1", "n2"] and mon.bus.audited("health.mass_silence") == []
    big = monitor(tmp_path / "big", mass_silence_min=2, mass_silence_share=0.5)
    await big.report(*NODES)
    marked = []
    for _ in range(8):
        big.clock.advance(0.5)
        await big.report(*NODES[3:])
        marked += await big.tick()
    assert sorted(marked) == ["n0", "n1", "n2"]    # 3 of 40 is under half of the replica's nodes


async def test_nodes_in_maintenance_are_marked_at_once_and_are_no_mass_silence(tmp_path):
    """``meshctl mesh down``: every node announced in maintenance stops reporting. They are marked unreachable as
    soon as they are stale (no hold: planned), start no cycle, and are no mass silence."""
    from x0tta6bl4.v1 import mesh_pb2

    mon = monitor(tmp_path)
    down = NODES[:12]
    await mon.report(*NODES)
    for node in down:
        ev = mesh_pb2.MeshEvent(meta=new_meta("meshctl"), node_id=node, kind=stage.MAINTENANCE_START,
                                details={"reason": "mesh down"})
        ev.meta.ts_unix_ns = mon.clock()
        await mon.bus.publish(subjects.mesh_event(node), ev)
    marked: list[str] = []
    for _ in range(5):
        mon.clock.advance(0.6)
        await mon.report(*NODES[12:])
        marked += await mon.tick()
    assert sorted(marked) == sorted(down)
    assert all(not mon.deps.view.nodes[n].reachable for n in down)
    assert mon.bus.messages(subjects.MAPEK_TELEMETRY) == []           # no cycle
    assert mon.bus.audited("health.mass_silence") == []
