import pytest

from x0tta6bl4.bus import subjects
from x0tta6bl4.bus.codec import REQUIRED, InvalidMessage, decode, encode, message_class, new_meta
from x0tta6bl4.v1 import events_pb2, mesh_pb2


def test_round_trip_keeps_every_field():
    a = events_pb2.Anomaly(meta=new_meta("analyzer", "c1"), node_id="n1", root_cause="n2", fault_type="node_down",
                           incident_id="n2.node_down", confidence=0.93, affected_nodes=["n1", "n3"])
    assert decode(events_pb2.Anomaly, encode(a)) == a


@pytest.mark.parametrize("data,reason", [
    (b"\xff\xff\xff", "does not parse"),
    (events_pb2.Anomaly(node_id="n1").SerializeToString(), "missing required field meta"),
    (events_pb2.Anomaly(meta=new_meta("a", "c"), root_cause="n", fault_type="f", incident_id="i").SerializeToString(),
     "missing required field node_id"),
    (events_pb2.Anomaly(meta=new_meta("a"), node_id="n", root_cause="n", fault_type="f",
                        incident_id="i").SerializeToString(), "meta.cycle_id"),
], ids=["garbage", "no-meta", "no-node-id", "no-cycle-id"])   # fixed ids: the data holds random event ids
def test_invalid_messages_name_the_problem(data, reason):
    with pytest.raises(InvalidMessage, match=reason):
        decode(events_pb2.Anomaly, data)


def test_non_finite_numbers_are_rejected_with_the_field_name():
    t = events_pb2.NodeTelemetry(meta=new_meta("agent"), node_id="n1", loss_pct=float("nan"))
    with pytest.raises(InvalidMessage, match="loss_pct"):
        encode(t)
    t.loss_pct = 0
    t.links.add(peer="n2", latency_ms=float("inf"))
    with pytest.raises(InvalidMessage, match=r"links\[0\].latency_ms"):
        encode(t)


def test_unknown_schema_version_is_rejected():
    m = new_meta("x", "c")
    m.schema_version = 99
    t = events_pb2.NodeTelemetry(meta=m, node_id="n1")
    with pytest.raises(InvalidMessage, match="schema_version 99"):
        decode(events_pb2.NodeTelemetry, t.SerializeToString())


def test_subject_tokens_cannot_inject_wildcards():
    assert subjects.telemetry("n1.>") == "mesh.telemetry.n1__"
    assert subjects.audit("governance", "vote.cast") == "audit.governance.vote.cast"
    with pytest.raises(ValueError):
        subjects.token("")


def test_every_consumer_reads_a_declared_stream():
    streams = {s.name for s in subjects.STREAMS}
    assert all(c.stream in streams for c in subjects.CONSUMERS)
    assert len({c.durable for c in subjects.CONSUMERS}) == len(subjects.CONSUMERS)


# ---- strict typing: a message of another type is refused, never read as this one --------------------------
BUS_TYPES = sorted(REQUIRED)     # every message type a consumer or a mesh host decodes from the bus


def populated(cls):
    """A message of ``cls`` with every field set (nested messages too, two levels deep) - what a real
    producer of that type sends."""
    from google.protobuf.descriptor import FieldDescriptor as F

    def fill(msg, depth: int) -> None:
        for fd in msg.DESCRIPTOR.fields:
            if fd.name == "meta":
                msg.meta.CopyFrom(new_meta("producer", "cycle-1"))
            elif fd.message_type is not None and fd.message_type.GetOptions().map_entry:
                vf = fd.message_type.fields_by_name["value"]
                if vf.message_type is not None:
                    if depth < 2:
                        fill(getattr(msg, fd.name)["k"], depth + 1)
                else:
                    getattr(msg, fd.name)["k"] = {F.TYPE_STRING: "v", F.TYPE_BYTES: b"v", F.TYPE_DOUBLE: 1.5,
                                                  F.TYPE_BOOL: True}.get(vf.type, 3)
            elif fd.message_type is not None:
                if depth < 2:
                    fill(getattr(msg, fd.name).add() if fd.is_repeated else getattr(msg, fd.name), depth + 1)
            else:
                v = {F.TYPE_STRING: "n5", F.TYPE_BYTES: b"\x01\x02", F.TYPE_DOUBLE: 12.5, F.TYPE_FLOAT: 1.5,
                     F.TYPE_BOOL: True}.get(fd.type, 2)
                if fd.is_repeated:
                    getattr(msg, fd.name).append(v)
                else:
                    setattr(msg, fd.name, v)
    m = cls()
    fill(m, 0)
    return m


@pytest.mark.parametrize("sent", [t for t in BUS_TYPES if t != "x0tta6bl4.v1.NodeTelemetry"])
def test_no_other_message_type_is_read_as_node_telemetry(sent):
    """The finding: a wrong-type protobuf parsed as NodeTelemetry and became a phantom node."""
    data = populated(message_class(sent)).SerializeToString()
    with pytest.raises(InvalidMessage, match=r"x0tta6bl4.v1.NodeTelemetry: (not a NodeTelemetry: .*arrived as|does "
                                             r"not parse)"):
        decode(events_pb2.NodeTelemetry, data)
    # with the publisher's type header the reason names both types
    with pytest.raises(InvalidMessage, match=f"NodeTelemetry expected, but the message is a {sent}"):
        decode(events_pb2.NodeTelemetry, data, sent)


def test_every_pair_of_bus_types_is_told_apart():
    """Each bus type sent where another is expected: the header always tells; without it, the wire types
    of the fields do for all but a few pairs whose fields line up number by number (an AuditEvent read
    as a MeshEvent: string, string, string, map)."""
    lined_up = set()
    for sent in BUS_TYPES:
        data = populated(message_class(sent)).SerializeToString()
        for expected in BUS_TYPES:
            if expected == sent:
                assert decode(message_class(expected), data, sent) is not None
                continue
            with pytest.raises(InvalidMessage, match="expected, but the message is a"):
                decode(message_class(expected), data, sent)
            try:
                decode(message_class(expected), data)
            except InvalidMessage:
                continue
            lined_up.add((sent, expected))
    # none of them is a message the loop acts on (a plan, an action, a verification, a node's report)
    acted_on = {f"x0tta6bl4.v1.{n}" for n in ("NodeTelemetry", "Anomaly", "Plan", "ActionRequest", "ActionResult",
                                               "Verification", "MeshCommand")}
    assert lined_up and not {expected for _, expected in lined_up} & acted_on, lined_up


def test_a_mesh_event_on_a_telemetry_subject_names_the_field_that_gives_it_away():
    ev = mesh_pb2.MeshEvent(meta=new_meta("mesh-agent"), node_id="n5", kind="neighbour_lost", peer="n4")
    with pytest.raises(InvalidMessage) as e:
        decode(events_pb2.NodeTelemetry, ev.SerializeToString())
    assert str(e.value) == ("x0tta6bl4.v1.NodeTelemetry: not a NodeTelemetry: field 3 (p99_latency_ms) arrived "
                            "as LEN, but x0tta6bl4.v1.NodeTelemetry declares it I64")


def test_a_foreign_field_deep_inside_is_found_too():
    """A window whose node list holds something that is not a NodeTelemetry."""
    w = events_pb2.TelemetryWindow(meta=new_meta("monitor", "c1"), nodes=[
        events_pb2.NodeTelemetry(meta=new_meta("agent"), node_id="n1")])
    data = bytearray(w.SerializeToString())
    stranger = mesh_pb2.MeshEvent(meta=new_meta("agent"), node_id="n2", kind="route_broken").SerializeToString()
    data += bytes([0x22, len(stranger)]) + stranger          # field 4 (nodes), LEN: one more "node"
    with pytest.raises(InvalidMessage, match=r"nodes\[1\]\.field 3 \(nodes\[1\]\.p99_latency_ms\) arrived as LEN"):
        decode(events_pb2.TelemetryWindow, bytes(data))


def test_fields_a_newer_producer_appended_are_tolerated_and_kept():
    t = events_pb2.NodeTelemetry(meta=new_meta("agent"), node_id="n1", loss_pct=2.0)
    data = t.SerializeToString() + bytes([(99 << 3 | 0) & 0x7F | 0x80, 99 >> 4, 7])   # field 99, VARINT 7
    got = decode(events_pb2.NodeTelemetry, data)
    assert got.node_id == "n1" and got.loss_pct == 2.0
    assert got.SerializeToString() == data                    # forwarded as received

