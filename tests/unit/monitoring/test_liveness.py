"""Liveness against what the monitor has read, staleness deadlines, and windows that stay small whatever
the mesh size (x0tta6bl4.mapek.liveness, MeshView.neighbourhood, mapek.monitor.window): pure logic."""
from __future__ import annotations

import random

from x0tta6bl4.ids import new_meta
from x0tta6bl4.mapek import monitor as assessing
from x0tta6bl4.mapek.liveness import Deadlines, Lag
from x0tta6bl4.mapek.state import MeshView
from x0tta6bl4.v1 import events_pb2

S = 10**9
T0 = 1_700_000_000 * S


def test_caught_up_the_horizon_is_now():
    lag = Lag()
    assert lag.horizon(T0) == T0                       # never estimated: the wall clock
    lag.handled(T0 - S // 100, T0)
    assert lag.estimate(T0, pending=0) == T0 and lag.lag_s == 0


def test_with_a_backlog_the_horizon_is_the_median_delay_behind_and_skewed_clocks_do_not_move_it():
    lag = Lag()
    for _ in range(50):
        lag.handled(T0 - 3 * S, T0)                    # the reports handled now were sent 3 s ago
    for _ in range(5):
        lag.handled(T0 + 20 * S, T0)                   # a few nodes with clocks far ahead
    assert lag.estimate(T0, pending=4_000) == T0 - 3 * S
    assert lag.lag_s == 3.0 and lag.pending == 4_000


def test_a_monitor_that_handles_nothing_while_messages_wait_judges_nobody_anew():
    lag = Lag()
    lag.handled(T0 - S, T0)
    assert lag.estimate(T0, pending=10) == T0 - S
    assert lag.estimate(T0 + 5 * S, pending=10) == T0 - S        # stuck (say, SIGSTOP): the horizon stays
    assert lag.lag_s == 6.0
    assert lag.horizon(T0 + 6 * S) == T0 - S
    assert lag.estimate(T0 + 7 * S, pending=0) == T0 + 7 * S     # caught up again


def test_unknown_pending_is_judged_by_the_handled_reports_alone():
    assert Lag().estimate(T0, pending=None) == T0                # nothing handled, nothing known: now
    lag = Lag()
    lag.handled(T0 - 2 * S, T0 + S)
    assert lag.estimate(T0 + S, pending=None) == T0 - 2 * S      # handled 3 s after it was sent


def test_the_horizon_never_goes_back():
    lag = Lag()
    lag.estimate(T0, pending=0)
    lag.handled(T0 - 5 * S, T0 + S)
    assert lag.estimate(T0 + S, pending=3) == T0


def test_deadlines_pop_each_silent_node_once_in_deadline_order():
    d = Deadlines()
    d.touch("a", T0 + 2 * S)
    d.touch("b", T0 + 1 * S)
    d.touch("c", T0 + 9 * S)
    d.touch("a", T0 + 3 * S)                           # a reported again: its old deadline is stale
    assert d.due(T0 + 2 * S + 1) == ["b"]
    assert d.due(T0 + 4 * S) == ["a"]
    assert d.due(T0 + 4 * S) == []                     # each once, until touched again
    d.forget("c")
    assert d.due(T0 + 10 * S) == [] and len(d) == 0


def test_deadlines_stay_bounded_under_many_reports():
    d = Deadlines()
    for i in range(200_000):
        d.touch(f"n{i % 100}", T0 + i)
    assert len(d) == 100 and len(d._heap) <= 4 * 100 + 1024
    assert sorted(d.due(T0 + 10**6)) == sorted(f"n{i}" for i in range(100))


def node(name: str, neighbours: list[str], rng: random.Random) -> events_pb2.NodeTelemetry:
    """A report the size of a real mesh node's (links with every metric set)."""
    t = events_pb2.NodeTelemetry(meta=new_meta("agent"), node_id=name, reachable=True, neighbours=neighbours,
                                 cpu_pct=rng.uniform(1, 40), mem_pct=rng.uniform(10, 60),
                                 loss_pct=rng.uniform(0, 1), p99_latency_ms=rng.uniform(1, 20))
    for p in neighbours:
        t.links.add(peer=p, loss_rate=rng.uniform(0, 0.01), latency_ms=rng.uniform(0.1, 5))
    return t


def grid_mesh(n: int) -> MeshView:
    """n nodes on a 100-wide grid, each naming its 4 grid neighbours."""
    rng, width, view = random.Random(7), 100, MeshView()
    for i in range(n):
        x = i % width
        nb = [f"n{j}" for j in (i - 1 if x else -1, i + 1 if x < width - 1 else -1, i - width, i + width)
              if 0 <= j < n]
        view.update(node(f"n{i}", nb, rng))
    return view


def test_the_neighbour_index_equals_a_scan_of_the_mesh():
    view = grid_mesh(300)
    view.update(node("n5", ["n4", "n6", "n299"], random.Random(1)))     # neighbours changed
    view.remove("n105")
    for n in ("n5", "n6", "n299", "n105", "n0", "n204"):
        scan = set(view.nodes[n].neighbours) if n in view.nodes else set()
        scan |= {m for m, t in view.nodes.items() if n in t.neighbours}
        scan.discard(n)
        assert view.neighbours(n) == sorted(scan), n


def test_a_window_over_a_small_mesh_carries_every_node():
    view = grid_mesh(50)
    w = assessing.window(view, "cause", "n7", ["unreachable"])
    assert [t.node_id for t in w.nodes] == sorted(view.nodes)
    w = assessing.window(view, "cause", "n7", exclude={"n8"})
    assert "n8" not in {t.node_id for t in w.nodes} and len(w.nodes) == 49


def test_a_window_over_ten_thousand_nodes_is_the_incident_and_its_neighbourhood_under_64_kb():
    view = grid_mesh(10_000)
    whole = sum(t.ByteSize() for t in view.nodes.values())
    assert whole > 2 * 1024 * 1024                      # the whole mesh would not even be publishable
    w = assessing.window(view, "cause", "n5050", ["unreachable"], first_symptom_ns=T0)
    ids = {t.node_id for t in w.nodes}
    assert w.ByteSize() < 64 * 1024
    assert {"n5050", *view.neighbours("n5050")} <= ids                    # the incident and its neighbours
    assert all(n in ids for m in view.neighbours("n5050") for n in view.neighbours(m))   # two hops too
    assert len(ids) > 50
    # no trigger (a periodic window, an operator's cycle): the unhealthy nodes' neighbourhoods
    w = assessing.window(view, "periodic", focus=["n17", "n9999"])
    ids = {t.node_id for t in w.nodes}
    assert w.ByteSize() < 64 * 1024 and {"n17", "n9999"} <= ids and w.trigger_node == ""
