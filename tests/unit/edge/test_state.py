"""Edge CRDT state: merges commute, are idempotent, lose nothing; Lamport order is causal; offline policy."""
from __future__ import annotations

import itertools

import pytest

from x0tta6bl4.edge import EdgeError, EdgeNode, EdgeState, routing_table


def replicas():
    a, b, c = EdgeState("a"), EdgeState("b"), EdgeState("c")
    a.set_config("k", 1)
    b.set_config("k", 2)
    b.hint_route("n3", avoid=True)
    c.set_config("x", {"nested": [1, 2.5, "s"]})
    c.hint_route("n3", next_hop="n4")
    return a, b, c


def test_merge_order_does_not_matter_and_nothing_is_lost():
    views = []
    for order in itertools.permutations(range(3)):
        reps = replicas()
        target = EdgeState("z")
        for i in order:
            target.merge(reps[i].update())
            target.merge(reps[i].update())          # idempotent
        views.append(target.view())
    assert all(v == views[0] for v in views)
    v = views[0]
    assert {(w["key"], w["node"]) for w in v["config_writes"]} == {("k", "a"), ("k", "b"), ("x", "c")}
    assert v["config"]["x"] == {"nested": [1, 2.5, "s"]}        # JSON values keep their types
    assert isinstance(v["config"]["k"], int)


def test_lamport_clock_orders_causally():
    a, b = EdgeState("a"), EdgeState("b")
    for _ in range(5):
        a.tick()
    b.merge(a.update())
    t = b.set_config("after", True)
    assert t > a.clock                                             # b saw a's events before writing
    a.merge(b.update())
    assert a.config()["after"] is True


def test_delta_sync_by_state_vector():
    a, b = EdgeState("a"), EdgeState("b")
    a.set_config("k", 1)
    b.merge(a.update())
    a.set_config("k2", 2)
    delta = a.update(b.state_vector())
    assert len(delta) < len(a.update())
    b.merge(delta)
    assert b.config() == a.config()


def test_routing_table_from_topology_and_overrides():
    t = routing_table("n0", "grid:9", {"n8": "n3"})
    assert t["n1"] == "n1" and t["n8"] == "n3" and len(t) == 8
    new = routing_table("zz", "grid:9")            # a node new to the mesh joins through its first node
    assert new["n0"] == "n0" and new["n8"] == "n0" and len(new) == 9
    with pytest.raises(EdgeError, match="--attach n99: not in topology"):
        routing_table("zz", "grid:9", attach=["n99"])
    with pytest.raises(EdgeError, match="--attach is for a node new to the mesh"):
        routing_table("n0", "grid:9", attach=["n1"])


def test_offline_node_policy_routing_and_encrypted_storage(tmp_path):
    en = EdgeNode.setup(tmp_path, "n0", topology="grid:9", policy={"allowed_actions": ["isolate"],
                                                                     "min_confidence": 0.8})
    assert en.offline
    assert en.decide("isolate", "n1", 0.85).allowed
    assert not en.decide("isolate", "n1", 0.5).allowed
    assert not en.decide("reroute", "n1", 0.99).allowed
    assert en.next_hop("n1") is None                               # isolated -> avoided
    en.hint_route("n2", next_hop="n3")
    assert en.next_hop("n2") == "n3"
    en.save()
    raw = b"".join(p.read_bytes() for p in (tmp_path / "n0" / "keystore").iterdir())
    assert b"decision.local" not in raw and b"spiffe://" not in raw              # encrypted at rest
    again = EdgeNode.open(tmp_path, "n0")
    assert again.state.view() == en.state.view()
    assert all(again.verify_audit(e) for e in again.state.audit_events())
    with pytest.raises(EdgeError):
        EdgeNode.setup(tmp_path, "n0")                              # no silent re-keying
