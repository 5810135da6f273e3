"""The planner's do-no-harm decisions on the in-memory bus: a live endpoint of a flow, or a node whose loss leaves
a live flow no path, is never taken out on the loop's own authority -- the plan observes and the incident goes
to operators (Escalation on mapek.escalation, audited) -- and an incident the executor escalated (a harmful
action rolled back) is not planned again while its claim stands. The executor's decisions (rollback,
irreversible harm, budget): test_executor.py."""
from __future__ import annotations

import pytest
from trustkit import Keys

from services.planner.main import PlannerSettings, build
from x0tta6bl4.bus import subjects
from x0tta6bl4.bus.memory import TestBus
from x0tta6bl4.ids import new_meta
from x0tta6bl4.mapek import plan as planning
from x0tta6bl4.v1 import common_pb2, events_pb2

K = events_pb2
S = 10**9
GRID = {"n0": ["n1", "n3"], "n1": ["n0", "n2", "n4"], "n2": ["n1", "n5"], "n3": ["n0", "n4", "n6"],
        "n4": ["n1", "n3", "n5", "n7"], "n5": ["n2", "n4", "n8"], "n6": ["n3", "n7"], "n7": ["n4", "n6", "n8"],
        "n8": ["n5", "n7"]}


def anomaly(node: str, fault: str = "congestion", cycle: str = "c1", first_ns: int = 1_000 * S) -> events_pb2.Anomaly:
    return events_pb2.Anomaly(meta=new_meta("analyzer", cycle, event_id=f"a-{cycle}"), node_id=node,
                              root_cause=node, fault_type=fault, anomaly_score=1.0, confidence=0.97,
                              severity=common_pb2.SEVERITY_CRITICAL, detector="rules", first_symptom_unix_ns=first_ns,
                              incident_id=f"{node}.{fault}")


@pytest.fixture(autouse=True)
def keys(tmp_path, monkeypatch) -> Keys:
    keys = Keys.make(tmp_path)
    for var, value in keys.env("planner").items():
        monkeypatch.setenv(var, value)
    return keys


async def grid(bus: TestBus, avoided=(), down=()) -> None:
    """The 3x3 grid in the telemetry bucket, a live flow n0 -> n8; ``avoided``: routed around by everyone."""
    for n, peers in GRID.items():
        t = events_pb2.NodeTelemetry(meta=new_meta("monitor"), node_id=n, reachable=n not in down, cpu_pct=5.0,
                                     mem_pct=20.0, neighbours=peers, avoided=[a for a in avoided if a != n])
        if n == "n0":
            t.flows.add(dest="n8", sent=400, acked=400, idle_s=0.05)
        await bus.kv("telemetry").put(n, t.SerializeToString())


async def test_a_live_endpoint_of_a_flow_is_not_routed_around_but_escalated():
    bus = TestBus(build(PlannerSettings()))
    await grid(bus)
    await bus.publish(subjects.MAPEK_ANOMALY, anomaly("n0"))        # the flow's source looks congested
    [plan] = bus.messages(subjects.MAPEK_PLAN)
    assert plan.decision == K.DECISION_KIND_OBSERVE
    assert plan.escalation == ("n0 is a live endpoint of flow n0->n8: a live endpoint is never routed around or "
                               "isolated")
    assert bus.messages(subjects.MAPEK_ACTION) == []
    [esc] = bus.messages(subjects.MAPEK_ESCALATION)
    assert (esc.reason, esc.incident_id, esc.action_id, esc.fault_type) == ("live_endpoint", "n0.congestion", "",
                                                                            "congestion")
    assert esc.action.kind == K.ACTION_KIND_REROUTE and esc.action.target_node == "n0"
    assert esc.detail == plan.escalation and esc.meta.cycle_id == "c1"
    [audit] = bus.audited("incident.escalated")
    assert audit.subject_id == "n0.congestion" and audit.details["reason"] == "live_endpoint"
    [decision] = bus.audited("decision")
    assert decision.details["auto_approved"] is False and "refused" in decision.details["reason"]
    # the incident stays claimed: the next window's anomaly is a duplicate, not a second escalation
    await bus.publish(subjects.MAPEK_ANOMALY, anomaly("n0", cycle="c2", first_ns=1_001 * S))
    assert len(bus.messages(subjects.MAPEK_ESCALATION)) == 1 and len(bus.audited("anomaly.duplicate")) == 1


async def test_a_node_whose_loss_cuts_a_live_flow_is_not_taken_out():
    """The degrade finding: n1 is routed around already; routing around n3 too would leave n0 no way out."""
    bus = TestBus(build(PlannerSettings()))
    await grid(bus, avoided=("n1",))
    await bus.publish(subjects.MAPEK_ANOMALY, anomaly("n3"))
    [plan] = bus.messages(subjects.MAPEK_PLAN)
    assert plan.decision == K.DECISION_KIND_OBSERVE and bus.messages(subjects.MAPEK_ACTION) == []
    [esc] = bus.messages(subjects.MAPEK_ESCALATION)
    assert esc.reason == "flow_cut" and esc.detail.startswith("taking n3 out would leave flow n0->n8 no path")


async def test_a_refused_incident_is_planned_again_once_the_harm_is_gone():
    """A killed relay still counts as reachable until the monitor finds it stale (its neighbours reported it
    lost first): routing around it is refused while n1 is routed around too. The refusal only observes, so the
    incident is not held until its claim expires: repeated while the facts stand it is a duplicate (one
    escalation); once n3 is down (nothing to lose) or n1 is back, the next finding acts."""
    bus = TestBus(build(PlannerSettings()))
    await grid(bus, avoided=("n1",))
    await bus.publish(subjects.MAPEK_ANOMALY, anomaly("n3", "node_down"))
    await bus.publish(subjects.MAPEK_ANOMALY, anomaly("n3", "node_down", cycle="c2", first_ns=1_001 * S))
    assert [p.decision for p in bus.messages(subjects.MAPEK_PLAN)] == [K.DECISION_KIND_OBSERVE]
    assert len(bus.messages(subjects.MAPEK_ESCALATION)) == 1 and len(bus.audited("anomaly.duplicate")) == 1
    assert bus.messages(subjects.MAPEK_ACTION) == []
    await grid(bus, avoided=("n1",), down=("n3",))        # the monitor finds n3 stale
    await bus.publish(subjects.MAPEK_ANOMALY, anomaly("n3", "node_down", cycle="c3", first_ns=1_002 * S))
    plans = bus.messages(subjects.MAPEK_PLAN)
    assert [(p.decision, p.escalation) for p in plans[1:]] == [(K.DECISION_KIND_AUTO_EXECUTE, "")]
    [req] = bus.messages(subjects.MAPEK_ACTION)
    assert (req.action.kind, req.action.target_node) == (K.ACTION_KIND_REROUTE, "n3")
    # the acting claim now holds the incident: a further finding is a duplicate, not planned twice
    await bus.publish(subjects.MAPEK_ANOMALY, anomaly("n3", "node_down", cycle="c4", first_ns=1_003 * S))
    assert len(bus.messages(subjects.MAPEK_PLAN)) == 2 and len(bus.audited("anomaly.duplicate")) == 2


async def test_routing_around_a_relay_with_a_detour_or_a_dead_endpoint_goes_ahead():
    bus = TestBus(build(PlannerSettings()))
    await grid(bus, down=("n8",))
    await bus.publish(subjects.MAPEK_ANOMALY, anomaly("n8", "node_down"))   # the destination died: route around it
    await bus.publish(subjects.MAPEK_ANOMALY, anomaly("n4", cycle="c2"))     # a relay with detours
    plans = bus.messages(subjects.MAPEK_PLAN)
    assert [(p.root_cause, p.decision, p.escalation) for p in plans] == [
        ("n8", K.DECISION_KIND_AUTO_EXECUTE, ""), ("n4", K.DECISION_KIND_AUTO_EXECUTE, "")]
    reqs = bus.messages(subjects.MAPEK_ACTION)
    assert [(r.action.kind, r.action.target_node) for r in reqs] == [(K.ACTION_KIND_REROUTE, "n8"),
                                                                     (K.ACTION_KIND_REROUTE, "n4")]
    assert list(reqs[1].action.expected.removed) == ["n4"] and reqs[1].action.expected.connectivity == 1.0
    assert bus.messages(subjects.MAPEK_ESCALATION) == []


async def test_an_incident_the_executor_escalated_is_not_planned_again():
    bus = TestBus(build(PlannerSettings()))
    await grid(bus)
    v = events_pb2.Verification(meta=new_meta("executor", "c1"), action_id="act-1", recovered=False,
                                rolled_back=True, escalated=True, incident_id="n4.congestion", fault_type="congestion",
                                action=events_pb2.ActionSpec(kind=K.ACTION_KIND_REROUTE, target_node="n4"),
                                checks_failed=["worse since the action: flow n0->n8 delivers 2 %"])
    await bus.publish(subjects.MAPEK_VERIFIED, v)
    assert planning.claim_verdict(bus.kv("incidents").value("n4.congestion"), 2_000 * S) == planning.CLAIM_OPEN
    await bus.publish(subjects.MAPEK_ANOMALY, anomaly("n4", first_ns=2_000 * S))
    assert bus.messages(subjects.MAPEK_PLAN) == [] and bus.messages(subjects.MAPEK_ACTION) == []
    assert len(bus.audited("anomaly.duplicate")) == 1
    # a verification that is merely not recovered releases the incident: the next symptom is planned
    v2 = events_pb2.Verification(meta=new_meta("executor", "c2"), action_id="act-2", recovered=False,
                                 incident_id="n5.congestion", fault_type="congestion",
                                 action=events_pb2.ActionSpec(kind=K.ACTION_KIND_REROUTE, target_node="n5"))
    await bus.publish(subjects.MAPEK_VERIFIED, v2)
    released = bus.kv("incidents").value("n5.congestion")
    assert planning.claim_verdict(released, 2_000 * S, acting=True) == planning.CLAIM_NEW
    assert planning.failed_actions(released) == {"reroute"}
