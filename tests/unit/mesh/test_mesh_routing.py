"""AODV correctness with the pure core on a simulated in-memory medium (virtual clock)."""

from __future__ import annotations

import itertools
import random

import networkx as nx
import pytest

from x0tta6bl4.mesh.core import CoreConfig
from x0tta6bl4.mesh.packets import DATA, FLAG_ACK, RERR, RREP, RREQ
from x0tta6bl4.mesh.routing import AodvConfig, AodvRouter
from x0tta6bl4.mesh.sim import SimNetwork
from x0tta6bl4.mesh.topology import grid, line, random_geometric, ring

MS = 1_000_000


def sim(topo, **kw) -> SimNetwork:
    net = SimNetwork(topo.edge_list(), nodes=topo.nodes, **kw)
    net.run_for(0.7)  # HELLOs: everybody knows its neighbours
    return net


def establish(net: SimNetwork, src: str, dst: str, t: float = 0.2) -> list[str]:
    net.send(src, dst, b"probe", ack=True)
    net.run_for(t)
    p = net.path(src, dst)
    assert p is not None, f"no route {src}->{dst}"
    return p


def usable_loops(net: SimNetwork) -> None:
    """For every destination the graph of usable next hops is acyclic."""
    for dst in net.cores:
        g = nx.DiGraph()
        for n, core in net.cores.items():
            if n in net.dead or n == dst:
                continue
            nh = core.router.next_hop(dst)
            if nh is not None:
                g.add_edge(n, nh)
        assert nx.is_directed_acyclic_graph(g), f"loop towards {dst}: {nx.find_cycle(g)}"


@pytest.mark.parametrize("topo", [line(6), ring(7), grid(rows=4, cols=4), random_geometric(20, seed=3)],
                         ids=lambda t: t.name)
def test_discovers_shortest_path(topo):
    g = topo.graph()
    rng = random.Random(1)
    pairs = [tuple(rng.sample(topo.nodes, 2)) for _ in range(6)]
    for src, dst in pairs:
        net = sim(topo, seed=rng.randrange(1000))  # fresh network each time: first RREQ wins
        path = establish(net, src, dst)
        assert len(path) - 1 == nx.shortest_path_length(g, src, dst)
        assert all(topo.graph().has_edge(a, b) for a, b in itertools.pairwise(path))
        assert net.data_delivered(dst)[0].body == b"probe"


def test_no_loops_under_churn():
    topo = random_geometric(18, seed=11)
    net = sim(topo, seed=5, loss=0.05)
    rng = random.Random(7)
    nodes = list(topo.nodes)
    for step in range(60):
        for _ in range(3):
            a, b = rng.sample(nodes, 2)
            if a not in net.dead and b not in net.dead:
                net.send(a, b, b"d", ack=True)
        if step % 12 == 5:
            net.kill(rng.choice([n for n in nodes if n not in net.dead]))
        if step % 9 == 3:
            a, b = rng.choice(topo.edge_list())
            net.cut(a, b)
        net.run_for(0.05)
        usable_loops(net)
    # no DATA packet ever visited a node twice
    visits: dict[tuple, list[str]] = {}
    for _, frm, _to, p in net.transmissions:
        if p.type == DATA and not p.flags & FLAG_ACK:
            visits.setdefault((p.origin, p.packet_id), [])
            if not visits[(p.origin, p.packet_id)] or visits[(p.origin, p.packet_id)][-1] != frm:
                visits[(p.origin, p.packet_id)].append(frm)
    assert all(len(v) == len(set(v)) for v in visits.values())


def test_ttl_honoured_for_rreq_and_data():
    topo = line(7)
    cfg = CoreConfig(aodv=AodvConfig(ttl=3, rreq_retries=0))
    net = sim(topo, config=cfg)
    net.send("n0", "n6", b"far")
    net.run_for(1.0)
    assert net.path("n0", "n6") is None
    assert not net.data_delivered("n6")
    # the RREQ was rebroadcast by n1 and n2 only (ttl 3 -> 2 -> 1, dropped at n3)
    rebroadcasters = {frm for _, frm, _, p in net.transmissions if p.type == RREQ and p.origin == "n0"}
    assert rebroadcasters == {"n0", "n1", "n2"}
    assert any(r == "ttl_exceeded" and n == "n3" for _, n, r, _ in net.drops)
    assert [e for e in net.events if e[2].kind == "route_discovery_failed" and e[1] == "n0"]
    # within reach it works
    net.send("n0", "n3", b"near")
    net.run_for(0.2)
    assert net.path("n0", "n3") == ["n0", "n1", "n2", "n3"]
    # a DATA packet with ttl 2 over a 3-hop route dies at the second relay
    core = net.cores["n0"]
    out, _pkt = core.router.originate_data("n3", b"short-lived", net.now, ttl=2)
    net._emit("n0", out)
    net.run_for(0.05)
    assert not [p for p in net.data_delivered("n3") if p.body == b"short-lived"]
    assert any(r == "ttl_exceeded" and n == "n2" for _, n, r, p in net.drops if p is not None and p.type == DATA)


def test_duplicate_rreq_suppressed():
    topo = grid(rows=4, cols=4)
    net = sim(topo)
    net.send("n0", "n15", b"x")
    net.run_for(0.2)
    per_node: dict[tuple, int] = {}
    for _, frm, _to, p in net.transmissions:
        if p.type == RREQ and p.origin == "n0":
            per_node[(frm, p.packet_id)] = per_node.get((frm, p.packet_id), 0) + 1
    # each broadcast reaches deg(frm) receivers; so each node transmitted a given RREQ at most once
    for (frm, _pid), count in per_node.items():
        assert count == len(topo.neighbours(frm))
    dups = [r for _, _, r, _ in net.drops if r == "duplicate_rreq"]
    assert dups, "grid has many redundant RREQ arrivals that must be suppressed"


def test_rerr_propagates_to_source_and_repairs():
    topo = grid(rows=3, cols=3)
    net = sim(topo, seed=2)
    path = establish(net, "n0", "n8")
    victim = path[2]
    upstream = path[1]
    for _ in range(5):
        net.send("n0", "n8", b"warm", ack=True)
        net.run_for(0.02)
    t_kill = net.now
    net.kill(victim)
    for _ in range(60):
        net.send("n0", "n8", b"flow", ack=True)
        net.run_for(0.02)
    lost = [t for t, n, e in net.events if e.kind == "neighbour_lost" and n == upstream and e.peer == victim]
    assert lost and lost[0] - t_kill <= 3 * 200 * MS + 20 * MS
    rerr_tx = [(t, frm, to) for t, frm, to, p in net.transmissions if p.type == RERR and t >= t_kill]
    assert any(frm == upstream and to == "n0" for _, frm, to in rerr_tx)
    broken = [e for t, n, e in net.events if n == "n0" and e.kind == "route_broken" and e.peer == "n8"]
    assert broken and broken[0].details["reason"] == "rerr"
    repaired = [e for t, n, e in net.events if n == "n0" and e.kind == "route_repaired" and e.peer == "n8"]
    assert repaired
    new = net.path("n0", "n8")
    assert new is not None and victim not in new
    after = [p for p in net.data_delivered("n8", since=lost[0]) if p.body == b"flow"]
    assert len(after) > 20


def test_avoided_node_is_never_used():
    topo = grid(rows=3, cols=3)
    net = sim(topo, seed=4)
    # n4 (centre) is on many shortest paths; warm routes through it first
    establish(net, "n1", "n7")
    assert "n4" in net.path("n1", "n7")
    net.avoid_everywhere("n4")
    t0 = net.now
    rng = random.Random(3)
    others = [n for n in topo.nodes if n != "n4"]
    for _ in range(40):
        a, b = rng.sample(others, 2)
        net.send(a, b, b"z", ack=True)
        net.run_for(0.02)
    net.run_for(0.3)
    for _, frm, to, p in net.transmissions:
        if p.type == DATA and _ >= t0:
            assert to != "n4" and frm != "n4"
    p = net.path("n1", "n7")
    assert p is not None and "n4" not in p and len(p) - 1 == 4
    # routes via the avoided node were dropped and data still flows
    assert net.data_delivered("n7", since=t0)
    for core in net.cores.values():
        for r in core.router.routes.values():
            if core.router.usable(r):
                assert r.next_hop != "n4" and r.dest != "n4"
    # unavoid: n4 may be used again
    for _n, core in net.cores.items():
        core.unavoid("n4", net.now)
    net.run_for(0.5)
    assert net.cores["n1"].router.next_hop("n4") == "n4"


def test_avoid_only_at_source_forces_destination_only_discovery():
    topo = grid(rows=3, cols=3)
    net = sim(topo, seed=9)
    establish(net, "n3", "n5")
    assert net.path("n3", "n5") == ["n3", "n4", "n5"]
    net._emit("n3", net.cores["n3"].avoid("n4", net.now))
    net.send("n3", "n5", b"q", ack=True)
    net.run_for(0.3)
    p = net.path("n3", "n5")
    assert p is not None and p[1] != "n4"


def test_pinned_route_and_expiry():
    topo = line(4)
    cfg = CoreConfig(aodv=AodvConfig(active_route_timeout_ms=500, delete_period_ms=500))
    net = sim(topo, config=cfg)
    establish(net, "n0", "n3")
    assert net.cores["n0"].router.lookup("n3") is not None
    net.run_for(1.2)  # no traffic: the route expires (neighbour routes are refreshed by HELLO)
    r0 = net.cores["n0"].router
    assert r0.lookup("n3") is None and r0.lookup("n1") is not None
    net.run_for(1.0)
    assert "n3" not in r0.routes  # deleted after DELETE_PERIOD
    r0.pin("n3", "n1", hops=3)
    assert r0.next_hop("n3") == "n1"
    net.run_for(5.0)
    assert r0.next_hop("n3") == "n1"  # pinned routes never expire
    net.send("n0", "n3", b"p")
    net.run_for(0.1)
    assert net.data_delivered("n3")
    with pytest.raises(ValueError):
        r0.avoid("n1", net.now)
        r0.pin("n3", "n1")


def test_destination_sequence_numbers_increase():
    r = AodvRouter("d", AodvConfig())
    from x0tta6bl4.mesh.packets import Packet

    out = r.neighbour_up("a", 1, 0)
    assert r.next_hop("a") == "a"
    seqs = []
    for i, dseq in enumerate([0, 5, 2, 100]):
        out = r.handle(Packet(RREQ, "a", "s", "d", origin_seq=10 + i, dest_seq=dseq, packet_id=i), i * MS)
        (rrep,) = [s.packet for s in out.sends if s.packet.type == RREP]
        seqs.append(rrep.dest_seq)
        assert rrep.dest_seq >= dseq
    assert seqs == sorted(seqs) and len(set(seqs)) == 4


def test_late_rreq_copy_is_still_a_duplicate_after_path_discovery_time():
    """A flood slowed down by a loaded host: a copy arriving after PATH_DISCOVERY_TIME (640 ms) must
    not be flooded again (that re-flooding, hop after hop, melted a 50-node mesh during key rotation)."""
    from x0tta6bl4.mesh.packets import Packet
    cfg = AodvConfig()
    r = AodvRouter("n5", cfg)
    rreq = Packet(RREQ, "n1", "n0", "n9", ttl=16, origin_seq=1, packet_id=77, timestamp_ns=0)
    first = r.handle(rreq, 0)
    assert [s.packet.type for s in first.sends] == [RREQ]
    t_late = cfg.path_discovery_ns + 500 * 1_000_000
    r.tick(t_late)
    late = r.handle(rreq.with_(sender="n2"), t_late)
    assert not late.sends and [d for d, _ in late.drops] == ["duplicate_rreq"]
    # remembered for rreq_cache_ms, then forgotten (bounded memory)
    r.tick(cfg.rreq_seen_ns + 1)
    assert ("n0", 77) not in r.seen_rreq
