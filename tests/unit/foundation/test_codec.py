import pytest

from x0tta6bl4.bus import subjects
from x0tta6bl4.bus.codec import InvalidMessage, decode, encode, new_meta
from x0tta6bl4.v1 import events_pb2


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
])
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
