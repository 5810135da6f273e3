"""The mesh host's --route-metric / X0TTA6BL4_ROUTE_METRIC: a bad value is one line naming it."""
import pytest

from x0tta6bl4.mesh import host
from x0tta6bl4.mesh.neighbours import HOP_COUNT, LinkMetric, LinkState, NeighbourTable

pytestmark = pytest.mark.unit


def test_a_bad_route_metric_from_the_environment_is_named(monkeypatch, capsys):
    monkeypatch.setenv("X0TTA6BL4_ROUTE_METRIC", "ospf")
    with pytest.raises(SystemExit) as e:
        host.main(["--nats", "tls://127.0.0.1:1"])
    assert e.value.code == 2
    assert "X0TTA6BL4_ROUTE_METRIC='ospf': expected etx or hops" in capsys.readouterr().err


def test_a_bad_route_metric_flag_is_named(capsys):
    with pytest.raises(SystemExit) as e:
        host.main(["--nats", "tls://127.0.0.1:1", "--route-metric", "ospf"])
    assert e.value.code == 2 and "--route-metric" in capsys.readouterr().err


def test_hop_count_costs_one_hop_whatever_the_loss_and_delay():
    assert HOP_COUNT.loss_weight == 0 and HOP_COUNT.rtt_penalty == 0 and HOP_COUNT.hop_cost == LinkMetric().hop_cost
    t = NeighbourTable("a", metric=HOP_COUNT)
    etx = NeighbourTable("a")
    for table in (t, etx):
        link = LinkState("b", first_seen_ns=0, last_heard_ns=0, last_seq=0, peer_ts_ns=0)
        link.symmetric, link.tx_ratio, link.latency_ms = True, 0.5, 150.0
        table.links["b"] = link
    assert t.cost("b", 0) == HOP_COUNT.hop_cost
    assert etx.cost("b", 0) > 4 * HOP_COUNT.hop_cost
