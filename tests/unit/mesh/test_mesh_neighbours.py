"""Neighbour table, topology generators and fault-spec parsing."""

from __future__ import annotations

import random

import pytest

from x0tta6bl4.mesh import topology as T
from x0tta6bl4.mesh.core import CoreConfig, MeshCore
from x0tta6bl4.mesh.faults import parse_fault
from x0tta6bl4.mesh.neighbours import NeighbourTable
from x0tta6bl4.mesh.packets import HELLO, HelloBody, HelloNeighbour, Packet

MS = 1_000_000


def hello(sender: str, seq: int, ts: int, nbs=(), tx=0) -> Packet:
    return Packet(HELLO, sender, sender, origin_seq=seq, timestamp_ns=ts, body=HelloBody(tx, tuple(nbs)))


def test_loss_rate_from_sequence_gaps():
    nt = NeighbourTable("a", rng=random.Random(0))
    t = 0
    nt.on_hello(hello("b", 100, t), t)
    for seq in range(101, 200):
        t += 200 * MS
        if seq % 4 == 0:
            continue  # 25 % of HELLOs lost
        nt.on_hello(hello("b", seq, t), t)
    assert 0.12 < nt.links["b"].loss_rate < 0.4
    clean = NeighbourTable("a")
    for seq in range(50):
        clean.on_hello(hello("c", seq, seq * 200 * MS), seq * 200 * MS)
    assert clean.links["c"].loss_rate == 0.0
    assert clean.links["c"].quality == 1.0


def test_neighbour_lost_after_miss_count_intervals():
    nt = NeighbourTable("a", hello_interval=0.2, miss_count=3)
    nt.on_hello(hello("b", 1, 0), 0)
    assert nt.expire(599 * MS) == []
    assert nt.expire(601 * MS) == ["b"]
    assert "b" not in nt.links


def test_latency_from_hello_echo_and_rssi():
    a = NeighbourTable("a", path_loss_db={"b": 60.0}, alpha=1.0)
    b = NeighbourTable("b", alpha=1.0)
    # a -> b at t=0 (a's clock), b receives it at t=3 ms and answers 2 ms later
    a_hello = Packet(HELLO, "a", "a", origin_seq=1, timestamp_ns=1_000 * MS, body=a.make_hello_body(1_000 * MS))
    b.on_hello(a_hello, 1_003 * MS)
    b_body = b.make_hello_body(1_005 * MS)
    assert b_body.neighbours[0] == HelloNeighbour("a", 0, 1_000 * MS, 2_000)
    link, new = a.on_hello(hello("b", 7, 1_005 * MS, b_body.neighbours, tx=10), 1_008 * MS)
    assert new and link.symmetric
    assert link.latency_ms == pytest.approx(3.0)  # rtt 8 ms - 2 ms dwell = 6 ms, one-way 3 ms
    assert link.rssi_dbm == -50.0 and link.snr_db == 45.0
    snap = a.snapshot(1_008 * MS)[0]
    assert set(snap) >= {"peer", "rssi_dbm", "snr_db", "loss_rate", "latency_ms", "link_age_s"}


def test_restarted_peer_resets_stats():
    nt = NeighbourTable("a")
    nt.on_hello(hello("b", 1_000_000, 0), 0)
    link, new = nt.on_hello(hello("b", 5, 1), 200 * MS)
    assert not new and link.loss_rate == 0.0 and link.last_seq == 5


def test_core_hello_schedule_and_lost_event():
    c = MeshCore("a", CoreConfig(hello_interval=0.2, hello_jitter=0.0), seed=1)
    out = c.tick(0)
    assert [s.packet.type for s in out.sends] == [HELLO] and out.sends[0].to is None
    assert not c.tick(100 * MS).sends
    assert c.tick(200 * MS).sends
    c.handle(hello("b", 1, 0), 210 * MS)
    assert c.router.next_hop("b") == "b"
    out = c.tick(900 * MS)
    kinds = [e.kind for e in out.events]
    assert "neighbour_lost" in kinds and "route_broken" in kinds
    assert c.router.next_hop("b") is None


def test_topology_generators():
    assert len(T.line(5).links) == 4
    assert len(T.ring(5).links) == 5
    g = T.grid(50)
    assert g.name == "grid5x10" and len(g.nodes) == 50 and len(g.links) == 5 * 9 + 4 * 10
    r = T.random_geometric(50, seed=3)
    assert r.is_connected() and r.nodes[0] == "n0" and r.nodes[-1] == "n49"
    assert T.random_geometric(50, seed=3).links == r.links  # seeded
    s = T.scale_free(50, seed=1)
    assert s.is_connected() and len(s.nodes) == 50
    assert T.grid(rows=2, cols=3).shortest_path("n0", "n5", without=["n1", "n4"]) is None


def test_topology_files(tmp_path):
    y = tmp_path / "t.yaml"
    y.write_text("nodes: [a, b, c]\nlinks: [[a, b], [b, c]]\n")
    t = T.load(y)
    assert t.nodes == ["a", "b", "c"] and t.neighbours("b") == ["a", "c"]
    toml = tmp_path / "t.toml"
    toml.write_text('generator = "ring"\nn = 6\n')
    assert len(T.load(toml).links) == 6
    assert len(T.parse_spec("rgg:20", seed=1).nodes) == 20
    with pytest.raises(ValueError):
        T.from_dict({"links": [["a", "b", "c"]]})
    with pytest.raises(ValueError):
        T.Topology(["a", "a"])


def test_fault_specs():
    assert parse_fault("loss n3 20").args == ("n3", "20")
    assert parse_fault("flap n1 n2 0.2 6").op == "flap"
    assert parse_fault("heal").args == ()
    for bad in ["", "explode n1", "kill", "loss n1 120", "partition n1"]:
        with pytest.raises(ValueError):
            parse_fault(bad)
