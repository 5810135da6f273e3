"""The planner's do-no-harm rules (x0tta6bl4.mapek.plan): live flows and the nodes everyone routes around from
the telemetry, refusing to take out a live endpoint of a flow or a node whose loss leaves a live flow no path,
and the expected effect every action states."""
from __future__ import annotations

from x0tta6bl4.governance.decision import DecisionKind, DecisionPolicy
from x0tta6bl4.ids import new_meta
from x0tta6bl4.mapek import plan
from x0tta6bl4.v1 import common_pb2, events_pb2

K = events_pb2
GRID = {"n0": ["n1", "n3"], "n1": ["n0", "n2", "n4"], "n2": ["n1", "n5"], "n3": ["n0", "n4", "n6"],
        "n4": ["n1", "n3", "n5", "n7"], "n5": ["n2", "n4", "n8"], "n6": ["n3", "n7"], "n7": ["n4", "n6", "n8"],
        "n8": ["n5", "n7"]}


def tel(node: str, reachable: bool = True, avoided=(), flows=()) -> events_pb2.NodeTelemetry:
    t = events_pb2.NodeTelemetry(meta=new_meta("monitor"), node_id=node, reachable=reachable,
                                 neighbours=GRID[node], avoided=list(avoided))
    for dest, idle in flows:
        t.flows.add(dest=dest, sent=100, acked=100, idle_s=idle)
    return t


def mesh(avoided=(), down=(), idle: float = 0.1) -> plan.MeshFacts:
    return plan.mesh_facts([tel(n, n not in down, [a for a in avoided if a != n],
                                [("n8", idle)] if n == "n0" else []) for n in GRID])


def anomaly(node: str, fault: str = "congestion") -> events_pb2.Anomaly:
    return events_pb2.Anomaly(meta=new_meta("analyzer", "c1"), node_id=node, root_cause=node, fault_type=fault,
                              confidence=0.97, severity=common_pb2.SEVERITY_CRITICAL, incident_id=f"{node}.{fault}")


def test_the_facts_live_flows_and_nodes_everyone_avoids():
    m = mesh(avoided=("n1",))
    assert m.flows == (("n0", "n8"),) and m.avoided == frozenset({"n1"})
    assert m.reachable == frozenset(GRID)
    assert mesh(idle=30.0).flows == ()                   # a flow that stopped sending is no live flow
    partly = plan.mesh_facts([tel("n0", avoided=["n1"]), tel("n1"), tel("n2")])
    assert partly.avoided == frozenset()                 # n2 still routes through n1


def test_a_live_endpoint_is_never_taken_out():
    for node in ("n0", "n8"):
        why = plan.refusal(K.ACTION_KIND_REROUTE, node, mesh())
        assert why == f"{node} is a live endpoint of flow n0->n8: a live endpoint is never routed around or isolated"
        assert plan.refusal(K.ACTION_KIND_ISOLATE, node, mesh())
    assert plan.refusal(K.ACTION_KIND_RESTART, "n0", mesh()) == ""              # not taken out of routing
    assert plan.refusal(K.ACTION_KIND_REROUTE, "n8", mesh(down=("n8",))) == ""  # down already: nothing to lose


def test_a_node_whose_loss_leaves_a_live_flow_no_path_is_not_taken_out():
    assert plan.refusal(K.ACTION_KIND_REROUTE, "n3", mesh()) == ""              # n0 still has n1
    assert plan.refusal(K.ACTION_KIND_REROUTE, "n3", mesh(avoided=("n1",))) == (
        "taking n3 out would leave flow n0->n8 no path (around it and the nodes avoided: n1)")
    assert plan.flows_cut(mesh(avoided=("n1",)), "n4") == []                    # n0-n3-n6-n7-n8 remains


def test_a_refused_plan_observes_and_names_the_escalation():
    p, d = plan.make_plan(anomaly("n3"), DecisionPolicy(), mesh=mesh(avoided=("n1",)))
    assert p.decision == K.DECISION_KIND_OBSERVE and d.kind is DecisionKind.OBSERVE
    assert p.escalation.startswith("taking n3 out would leave flow n0->n8 no path")
    assert "refused: taking n3 out" in p.rationale and "escalated to operators" in p.rationale
    ok, _ = plan.make_plan(anomaly("n3"), DecisionPolicy(), mesh=mesh())
    assert ok.decision == K.DECISION_KIND_AUTO_EXECUTE and ok.escalation == ""
    down, _ = plan.make_plan(anomaly("n8", "node_down"), DecisionPolicy(), mesh=mesh(down=("n8",)))
    assert down.decision == K.DECISION_KIND_AUTO_EXECUTE and down.escalation == ""
    low = anomaly("n0")
    low.confidence, low.severity = 0.3, common_pb2.SEVERITY_LOW
    observed, _ = plan.make_plan(low, DecisionPolicy(), mesh=mesh())
    assert observed.decision == K.DECISION_KIND_OBSERVE and observed.escalation == ""   # nothing would act


def test_a_node_everyone_routes_around_already_is_not_rerouted_again():
    """A fault of a node on probation (its links coming back after a flap: 'flapping' for a few seconds) is
    observed: rerouting around it again would change nothing and spend its action budget."""
    p, d = plan.make_plan(anomaly("n4", "flapping"), DecisionPolicy(), mesh=mesh(avoided=("n4",)))
    assert p.decision == K.DECISION_KIND_OBSERVE and d.kind is DecisionKind.OBSERVE and p.escalation == ""
    assert p.rationale.endswith("n4 is already routed around by every node: nothing to do")
    # routed around by some nodes only: still acted on (the others still route through it)
    some = plan.mesh_facts([tel(n, avoided=["n4"] if n in ("n1", "n3") else [],
                                flows=[("n8", 0.1)] if n == "n0" else []) for n in GRID])
    acted, _ = plan.make_plan(anomaly("n4", "flapping"), DecisionPolicy(), mesh=some)
    assert acted.decision == K.DECISION_KIND_AUTO_EXECUTE and acted.action.kind == K.ACTION_KIND_REROUTE
    # another action than a reroute (a key compromise is isolated) is not affected
    iso, _ = plan.make_plan(anomaly("n4", "compromised"), DecisionPolicy(), mesh=mesh(avoided=("n4",)))
    assert iso.action.kind != K.ACTION_KIND_REROUTE and iso.decision != K.DECISION_KIND_OBSERVE


def test_every_action_of_a_plan_states_its_expected_effect():
    twin = lambda kind, node: plan.TwinVerdict(0.8 if kind == K.ACTION_KIND_REROUTE else 1.0)  # noqa: E731
    p, _ = plan.make_plan(anomaly("n4", "node_down"), DecisionPolicy(), twin=twin)
    reroute, restart = p.action, p.alternatives[0]
    assert reroute.expected.summary == "neighbours avoid n4; routes are rediscovered around it"
    assert list(reroute.expected.removed) == ["n4"] and reroute.expected.connectivity == 0.8
    assert reroute.expected.min_delivery == plan.MIN_DELIVERY and reroute.expected.reversible
    assert list(restart.expected.rejoins) == ["n4"] and not restart.expected.reversible
    assert restart.expected.connectivity == 1.0


def test_an_escalated_incident_stays_claimed():
    claim = plan.escalated_claim("c1", 5_000, "gen-1")
    assert plan.claim_verdict(claim, 9_000) == plan.CLAIM_OPEN       # nothing planned until the claim expires
