"""links_healthy: the planner's evidence that a gray failure's links are clean again (probation)."""
import pytest

from x0tta6bl4.mapek.health import links_healthy
from x0tta6bl4.v1 import events_pb2

pytestmark = pytest.mark.unit


def tel(node: str, links: dict[str, float], reachable: bool = True) -> events_pb2.NodeTelemetry:
    t = events_pb2.NodeTelemetry(node_id=node, reachable=reachable)
    for peer, latency in links.items():
        t.links.add(peer=peer, latency_ms=latency, loss_rate=0.0)
    return t


def test_clean_links_both_ways_are_healthy():
    ok, why = links_healthy("n4", {"a": tel("n4", {"n1": 0.3, "n3": 0.2}), "b": tel("n1", {"n4": 0.3})})
    assert ok and why == []


def test_a_slow_link_seen_by_a_neighbour_is_not():
    ok, why = links_healthy("n4", {"a": tel("n4", {"n1": 0.3}), "b": tel("n1", {"n4": 75.0})})
    assert not ok and why == ["n1->n4 loss 0.0% latency 75.0 ms"]


def test_an_unmeasured_link_is_no_evidence_of_a_clean_one():
    # a link re-established a moment ago reports latency 0 until its first HELLO round trip
    ok, why = links_healthy("n4", {"a": tel("n4", {"n1": 0.0}), "b": tel("n1", {"n4": 0.4})})
    assert not ok and why == ["n4->n1 latency not measured yet"]


def test_no_link_and_unreachable_neighbours():
    assert links_healthy("n4", {"a": tel("n4", {})}) == (False, ["n4 reports no link"])
    ok, _ = links_healthy("n4", {"a": tel("n4", {"n1": 0.3}), "b": tel("n1", {"n4": 90.0}, reachable=False)})
    assert ok
