import itertools

import networkx as nx
import numpy as np
import pytest

from x0tta6bl4.twin import MeshDigitalTwin
from x0tta6bl4.twin.graph_algos import betweenness


def line(n):
    t = MeshDigitalTwin("line")
    t.from_neighbours({i: [i + 1] for i in range(n - 1)})
    return t


def brute_connectivity(g, failed):
    h = g.copy()
    h.remove_nodes_from(failed)
    nodes = list(h)
    pairs = [(a, b) for a, b in itertools.permutations(nodes, 2)]
    if not pairs:
        return 1.0
    return sum(nx.has_path(h, a, b) for a, b in pairs) / len(pairs)


def test_line_middle_failure_is_one_third():
    # survivors 0,1,3,4: ordered pairs 12, reachable (0,1),(1,0),(3,4),(4,3) = 4 -> 1/3
    r = line(5).simulate_node_failure(2, duration_seconds=30)
    assert r.connectivity_maintained == pytest.approx(1 / 3)
    assert r.component_sizes == [2, 2]
    assert r.partitioned
    assert r.duration_seconds == 30


def test_line_end_failure_keeps_full_connectivity():
    r = line(5).simulate_node_failure(0)
    assert r.connectivity_maintained == 1.0
    assert not r.partitioned
    assert r.isolated_neighbours == []


def test_star_centre_failure_disconnects_everything():
    t = MeshDigitalTwin("star")
    t.from_neighbours({"hub": ["a", "b", "c", "d"]})
    r = t.simulate_node_failure("hub")
    assert r.connectivity_maintained == 0.0
    assert r.component_sizes == [1, 1, 1, 1]


def test_cycle_failure_detour_and_mttr():
    t = MeshDigitalTwin("ring")
    t.from_neighbours({i: [(i + 1) % 6] for i in range(6)})
    r = t.simulate_node_failure(0)
    assert r.connectivity_maintained == 1.0
    assert r.detour_hops == 4.0  # 1 -> 2 -> 3 -> 4 -> 5
    m = t.mttr_model
    assert r.mttr_seconds == pytest.approx(m.detect_s(4) + m.repair_s(4))
    assert r.mttr_model_calibrated  # the shipped calibration (twin/mttr_calibration.json) is the default


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_bruteforce_on_random_meshes(seed):
    t = MeshDigitalTwin("r")
    g = t.create_test_topology(30, 3.0, seed)
    rng = np.random.default_rng(seed)
    for v in rng.choice(30, 4, replace=False):
        v = int(v)
        assert t.simulate_node_failure(v).connectivity_maintained == pytest.approx(
            brute_connectivity(g, [v])
        )
    failed = [int(v) for v in rng.choice(30, 3, replace=False)]
    assert t.connectivity_after_failure(failed) == pytest.approx(brute_connectivity(g, failed))


def test_topology_is_connected_reproducible_and_sized():
    a = MeshDigitalTwin().create_test_topology(200, 4.0, 7)
    b = MeshDigitalTwin().create_test_topology(200, 4.0, 7)
    assert nx.is_connected(a)
    assert sorted(a.edges) == sorted(b.edges)
    assert 3.0 < 2 * a.number_of_edges() / 200 < 6.0
    dense = MeshDigitalTwin().create_test_topology(50, 0.2, 1)  # density form
    assert 2 * dense.number_of_edges() / 50 > 5


def test_from_neighbours_symmetrises_and_unknown_node_raises():
    t = MeshDigitalTwin()
    g = t.from_neighbours({"a": ["b"], "b": [], "c": ["b", "c"]})
    assert set(map(frozenset, g.edges)) == {frozenset("ab"), frozenset("bc")}
    with pytest.raises(KeyError, match="zz"):
        t.simulate_node_failure("zz")


def test_betweenness_matches_networkx_with_dead_nodes():
    t = MeshDigitalTwin()
    g = t.create_test_topology(60, 4.0, 3)
    nodes, index, _edges, ip, ix = t._arrays()
    alive = np.ones(60, dtype=bool)
    alive[[5, 9]] = False
    bc = betweenness(ip, ix, alive)
    h = g.copy()
    h.remove_nodes_from([nodes[5], nodes[9]])
    ref = nx.betweenness_centrality(h, normalized=False)
    for v, val in ref.items():
        assert bc[index[v]] == pytest.approx(val, abs=1e-9)
