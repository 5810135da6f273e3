"""Telemetry partitions in the topology and the permission table (issue #20): MESH's subject transform, one
durable consumer per partition, only the monitor may pull them. tests/integration/monitor/
test_monitor_partitions.py checks the same against a real nats-server."""
from __future__ import annotations

import pytest

from x0tta6bl4.bus import permissions, subjects
from x0tta6bl4.bus.connection import stream_config

MESH = next(s for s in subjects.STREAMS if s.name == subjects.STREAM_MESH)


def test_one_partition_stores_telemetry_as_published() -> None:
    assert stream_config(MESH).subject_transform is None
    assert all(stream_config(s, 1, 4).subject_transform is None for s in subjects.STREAMS if s is not MESH)
    assert subjects.telemetry_stored("n1", 1) == "mesh.telemetry.n1" and subjects.partition_consumers(1) == ()
    assert subjects.monitor_telemetry_consumer(0, 1) == "monitor-telemetry"


def test_partitions_store_telemetry_under_the_nodes_partition() -> None:
    tr = stream_config(MESH, 1, 4).subject_transform
    assert (tr.src, tr.dest) == ("mesh.telemetry.*", "mesh.telemetry.{{partition(4,1)}}.{{wildcard(1)}}")
    assert [c.durable for c in subjects.partition_consumers(4)] == [f"monitor-telemetry-p{i}" for i in range(4)]
    assert [c.subject for c in subjects.partition_consumers(2)] == ["mesh.telemetry.0.*", "mesh.telemetry.1.*"]
    # FNV-1a of the subject token modulo K, as nats-server computes {{partition(K,1)}}
    assert [subjects.partition_of(f"n{i}", 4) for i in range(6)] == [3, 0, 1, 2, 3, 0]
    assert subjects.telemetry_stored("n0", 4) == "mesh.telemetry.3.n0"
    assert subjects.partition_of("a.b", 4) == subjects.partition_of("a_b", 4)     # the token, as published


@pytest.mark.parametrize("partition", [0, 15])
def test_only_the_monitor_may_pull_a_partitions_consumer(partition: int) -> None:
    pull = f"$JS.API.CONSUMER.MSG.NEXT.MESH.monitor-telemetry-p{partition}"
    ack = f"$JS.ACK.MESH.monitor-telemetry-p{partition}.>"
    monitor = permissions.service("monitor")
    assert pull in monitor.publish and ack in monitor.publish and pull not in monitor.deny_publish
    for other in [permissions.service(n) for n in permissions.SERVICES if n != "monitor"] + [permissions.operator()]:
        assert pull in other.deny_publish and ack in other.deny_publish, other.identity
