"""Strict message types on a real stack (#21): another protobuf published on a node's telemetry subject - the
finding: a wrong-type message that happened to parse as NodeTelemetry became a phantom node - is dead-lettered
by the monitor with a reason naming the type or the field that gives it away, and changes nothing it knows.
Real nats-server, the real monitor process, a real mesh host; the messages are real ones of other types."""
from __future__ import annotations

import pytest
from testkit import consistently, eventually, start_mesh

from x0tta6bl4.bus import subjects
from x0tta6bl4.bus.codec import new_meta
from x0tta6bl4.bus.permissions import MESH_HOST_PREFIX
from x0tta6bl4.bus.publisher import Publisher
from x0tta6bl4.bus.reader import mesh_telemetry, read_all
from x0tta6bl4.v1 import common_pb2, events_pb2, mesh_pb2

pytestmark = pytest.mark.timeout(120)


async def dead_letters(js) -> list[events_pb2.DeadLetter]:
    return [events_pb2.DeadLetter.FromString(m.data)
            for m in await read_all(js, subjects.dead_letter("monitor-telemetry"), stream=subjects.STREAM_DLQ)]


async def test_other_message_types_on_a_telemetry_subject_are_dead_lettered(stack_factory):
    stack = stack_factory(services=("monitor",), env={"X0TTA6BL4_MONITOR_COLLECTOR": "off",
                                                      "X0TTA6BL4_DISCOVER_HOSTS": "false"})
    mesh = start_mesh(stack, "line:3", "n0:n2")
    op = await stack.connect()
    host = await stack.connect(MESH_HOST_PREFIX + "mesh")      # the mesh host's credential: n0..n2's subjects
    try:
        js = op.jetstream()

        async def reporting() -> dict[str, events_pb2.NodeTelemetry]:
            tel = await mesh_telemetry(js)
            assert set(tel) == {"n0", "n1", "n2"} and all(t.neighbours for t in tel.values()), tel.keys()
            return tel
        await eventually(reporting, 30, 0.2)

        # real messages of other types, as a buggy or confused publisher would send them
        event = mesh_pb2.MeshEvent(meta=new_meta("mesh-agent"), node_id="n1", kind="neighbour_lost", peer="n0",
                                   details={"silent_ms": "600"})
        change = events_pb2.HealthChange(meta=new_meta("monitor"), node_id="n1", previous=common_pb2.HEALTH_HEALTHY,
                                         current=common_pb2.HEALTH_CRITICAL, reasons=["unreachable"])
        command = mesh_pb2.MeshCommand(meta=new_meta("executor"), command_id="n1", node_id="n1",
                                       kind=mesh_pb2.MeshCommand.KIND_AVOID_NODE, peer="n0")
        raw = [event, change, command]
        for m in raw:                                          # bare bytes: no type header
            await host.publish(subjects.telemetry("n1"), m.SerializeToString())
        typed = mesh_pb2.MeshEvent(meta=new_meta("mesh-agent"), node_id="n2", kind="route_broken", peer="n1")
        await Publisher(host, "mesh-agent").emit(subjects.telemetry("n2"), typed)     # with the X0-Type header
        await host.flush()

        async def parked() -> list[events_pb2.DeadLetter]:
            got = await dead_letters(js)
            assert len(got) == 4, [d.reason for d in got]
            return got
        got = await eventually(parked, 20, 0.2)
        reasons = sorted(d.reason for d in got)
        assert reasons == sorted([
            "x0tta6bl4.v1.NodeTelemetry: not a NodeTelemetry: field 3 (p99_latency_ms) arrived as LEN, but "
            "x0tta6bl4.v1.NodeTelemetry declares it I64",                                        # the MeshEvent
            "x0tta6bl4.v1.NodeTelemetry: not a NodeTelemetry: field 3 (p99_latency_ms) arrived as VARINT, but "
            "x0tta6bl4.v1.NodeTelemetry declares it I64",                                        # the HealthChange
            "x0tta6bl4.v1.NodeTelemetry: not a NodeTelemetry: field 3 (p99_latency_ms) arrived as LEN, but "
            "x0tta6bl4.v1.NodeTelemetry declares it I64",                                        # the MeshCommand
            "x0tta6bl4.v1.NodeTelemetry expected, but the message is a x0tta6bl4.v1.MeshEvent (header X0-Type)",
        ])
        assert {d.original_subject for d in got} == {"mesh.telemetry.n1", "mesh.telemetry.n2"}
        assert {d.consumer for d in got} == {"monitor-telemetry"}
        async def audited() -> bool:
            audits = [events_pb2.AuditEvent.FromString(m.data)
                      for m in await read_all(js, subjects.audit("monitor", "message.dead_lettered"),
                                              stream=subjects.STREAM_AUDIT)]
            assert len(audits) == 4 and {a.subject_id for a in audits} == {"mesh.telemetry.n1", "mesh.telemetry.n2"}
            return True
        await eventually(audited, 10, 0.2)

        # nothing changed: the nodes are the real three, their reports their own (links and neighbours kept)
        async def unchanged() -> bool:
            tel = await mesh_telemetry(js)
            assert set(tel) == {"n0", "n1", "n2"} and all(t.reachable and t.neighbours for t in tel.values())
            return True
        await consistently(unchanged, 1.5, 0.2)
    finally:
        await host.close()
        await op.close()
        mesh.terminate()
        mesh.wait(10)
