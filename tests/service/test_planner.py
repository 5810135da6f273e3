"""The plan stage on the in-memory bus: anomalies -> plans and actions (signed as approved by the planner),
incident claims, knowledge, nodes routed around and their reinstatement."""
from __future__ import annotations

import json

import pytest
from trustkit import Keys

from services.planner.main import PlannerSettings, build, deps
from x0tta6bl4.bus import subjects
from x0tta6bl4.bus.memory import TestBus
from x0tta6bl4.config import ConfigError
from x0tta6bl4.ids import derive_id, new_meta
from x0tta6bl4.knowledge.outcomes import ActionStats
from x0tta6bl4.mapek import plan as planning
from x0tta6bl4.mapek.approval import ApprovalError, verify_approval
from x0tta6bl4.stages import planner as stage
from x0tta6bl4.v1 import common_pb2, events_pb2

K = events_pb2
S = 10**9


def anomaly(node: str = "n3", fault: str = "node_down", confidence: float = 0.97,
            severity: int = common_pb2.SEVERITY_CRITICAL, first_ns: int = 1_000 * S, cycle: str = "c1",
            eid: str = "") -> events_pb2.Anomaly:
    return events_pb2.Anomaly(meta=new_meta("analyzer", cycle, event_id=eid or f"a-{cycle}"), node_id=node,
                              root_cause=node, fault_type=fault, anomaly_score=1.0, confidence=confidence,
                              severity=severity, affected_nodes=["n2", "n4"], detector="rules",
                              first_symptom_unix_ns=first_ns, incident_id=f"{node}.{fault}")


def verification(kind: int = K.ACTION_KIND_REROUTE, node: str = "n3", fault: str = "node_down",
                 recovered: bool = True, mttr_ms: float = 800.0, at_ns: int = 2_000 * S, cycle: str = "c1",
                 action_id: str = "act-1") -> events_pb2.Verification:
    v = events_pb2.Verification(meta=new_meta("executor", cycle), action_id=action_id, recovered=recovered,
                                mttr_ms=mttr_ms, incident_id=f"{node}.{fault}", fault_type=fault,
                                action=events_pb2.ActionSpec(kind=kind, target_node=node))
    v.meta.ts_unix_ns = at_ns
    return v


def tel(node: str, neighbours=(), **over) -> events_pb2.NodeTelemetry:
    t = events_pb2.NodeTelemetry(meta=new_meta("monitor"), node_id=node, reachable=True, cpu_pct=5.0,
                                 mem_pct=20.0, neighbours=list(neighbours))
    for k, v in over.items():
        if k == "links":
            t.links.extend(v)
        else:
            setattr(t, k, v)
    return t


async def report(bus: TestBus, *nodes: events_pb2.NodeTelemetry) -> None:
    """What the monitor writes to the `telemetry` bucket (the planner's mirror follows it)."""
    for t in nodes:
        await bus.kv("telemetry").put(subjects.token(t.node_id), t.SerializeToString())


@pytest.fixture(autouse=True)
def keys(tmp_path, monkeypatch) -> Keys:
    """The deployment's keys; the planner's settings (X0TTA6BL4_SIGNING_KEY_FILE, _TRUST_FILE) name them."""
    keys = Keys.make(tmp_path)
    for var, value in keys.env("planner").items():
        monkeypatch.setenv(var, value)
    return keys


@pytest.fixture
def bus() -> TestBus:
    return TestBus(build(PlannerSettings(action_timeout_s=12.0)))


# ---- anomalies -> plans --------------------------------------------------------------------------
async def test_a_confident_critical_anomaly_is_planned_and_executed_automatically(bus: TestBus, keys: Keys):
    await bus.publish(subjects.MAPEK_ANOMALY, anomaly())
    [plan] = bus.messages(subjects.MAPEK_PLAN)
    assert plan.decision == K.DECISION_KIND_AUTO_EXECUTE and plan.incident_id == "n3.node_down"
    assert (plan.action.kind, plan.action.target_node) == (K.ACTION_KIND_REROUTE, "n3")
    assert [a.kind for a in plan.alternatives] == [K.ACTION_KIND_RESTART]
    assert plan.meta.cycle_id == "c1" and plan.first_symptom_unix_ns == 1_000 * S
    [req] = bus.messages(subjects.MAPEK_ACTION)
    assert (req.plan_id, req.approved_by, req.timeout_s) == (plan.plan_id, "auto", 12.0)
    assert req.action_id == derive_id("action", plan.plan_id, "") and req.incident_id == "n3.node_down"
    # approved by the planner's key for exactly this action, for the action's timeout + approval_ttl_s
    ap = req.approval
    assert verify_approval(req, keys.bundle, ap.issued_unix_ns) == "planner"
    assert ap.key_id == keys.signers["planner"].key_id
    assert ap.expires_unix_ns - ap.issued_unix_ns == (12 + 300) * S
    [decision] = bus.audited("decision")
    assert decision.subject_id == plan.plan_id and decision.details["auto_approved"] is True
    assert planning.claim_verdict(bus.kv("incidents").value("n3.node_down"), 0) == planning.CLAIM_OPEN


@pytest.mark.parametrize(("confidence", "severity", "decision"), [
    (0.97, common_pb2.SEVERITY_HIGH, K.DECISION_KIND_EMERGENCY_VOTE),    # confident but not critical
    (0.85, common_pb2.SEVERITY_CRITICAL, K.DECISION_KIND_EMERGENCY_VOTE),
    (0.7, common_pb2.SEVERITY_MEDIUM, K.DECISION_KIND_STANDARD_VOTE),
    (0.5, common_pb2.SEVERITY_LOW, K.DECISION_KIND_OBSERVE),
])
async def test_a_vote_level_anomaly_is_planned_but_not_executed(bus: TestBus, confidence, severity, decision):
    await bus.publish(subjects.MAPEK_ANOMALY, anomaly(fault="congestion", confidence=confidence, severity=severity))
    [plan] = bus.messages(subjects.MAPEK_PLAN)
    assert plan.decision == decision
    assert bus.messages(subjects.MAPEK_ACTION) == []
    [audit] = bus.audited("decision")
    assert audit.details["auto_approved"] is False


async def test_the_twin_sees_the_mesh_of_the_telemetry_mirror(bus: TestBus):
    await report(bus, tel("hub", ["a", "b", "c"]), tel("a", ["hub"]), tel("b", ["hub"]), tel("c", ["hub"]))
    await bus.publish(subjects.MAPEK_ANOMALY, anomaly("hub", "degrading_link", 0.8, common_pb2.SEVERITY_HIGH))
    [plan] = bus.messages(subjects.MAPEK_PLAN)
    assert plan.action.kind == K.ACTION_KIND_REROUTE and plan.predicted_connectivity == 0.0   # a star's hub


async def test_one_plan_per_incident_while_it_is_handled(bus: TestBus):
    await bus.publish(subjects.MAPEK_ANOMALY, anomaly(cycle="c1"))
    await bus.publish(subjects.MAPEK_ANOMALY, anomaly(cycle="c2", first_ns=1_001 * S))
    assert len(bus.messages(subjects.MAPEK_PLAN)) == 1 and len(bus.messages(subjects.MAPEK_ACTION)) == 1
    [dup] = bus.audited("anomaly.duplicate")
    assert dup.subject_id == "n3.node_down" and dup.cycle_id == "c2" and dup.details == {"node": "n3"}
    # another root cause or fault is another incident
    await bus.publish(subjects.MAPEK_ANOMALY, anomaly(node="n5", cycle="c3"))
    assert [p.incident_id for p in bus.messages(subjects.MAPEK_PLAN)] == ["n3.node_down", "n5.node_down"]


async def test_an_observed_incident_is_planned_again_once_a_finding_of_it_would_act(bus: TestBus):
    """A lossy node is first seen by one neighbour (observed, 0.5); a window later the evidence names it at
    0.95: that finding is planned and acted on at once, not held back by the observation's claim until it
    expires. A second observation, or a vote-level finding after an acting one, changes nothing."""
    await bus.publish(subjects.MAPEK_ANOMALY, anomaly(fault="degrading_link", cycle="c1", confidence=0.5,
                                                      severity=common_pb2.SEVERITY_LOW))
    await bus.publish(subjects.MAPEK_ANOMALY, anomaly(fault="degrading_link", cycle="c2", confidence=0.5,
                                                      severity=common_pb2.SEVERITY_LOW))
    assert [p.decision for p in bus.messages(subjects.MAPEK_PLAN)] == [K.DECISION_KIND_OBSERVE]
    await bus.publish(subjects.MAPEK_ANOMALY, anomaly(fault="degrading_link", cycle="c3", confidence=0.95))
    assert [p.decision for p in bus.messages(subjects.MAPEK_PLAN)] == [K.DECISION_KIND_OBSERVE,
                                                                        K.DECISION_KIND_AUTO_EXECUTE]
    [req] = bus.messages(subjects.MAPEK_ACTION)
    assert req.incident_id == "n3.degrading_link"
    await bus.publish(subjects.MAPEK_ANOMALY, anomaly(fault="degrading_link", cycle="c4", confidence=0.7,
                                                      severity=common_pb2.SEVERITY_MEDIUM))
    assert len(bus.messages(subjects.MAPEK_PLAN)) == 2 and len(bus.audited("anomaly.duplicate")) == 2


async def test_after_a_verified_repair_late_anomalies_are_stale_and_new_symptoms_are_planned(bus: TestBus):
    await bus.publish(subjects.MAPEK_ANOMALY, anomaly(cycle="c1", first_ns=1_000 * S))
    await bus.publish(subjects.MAPEK_VERIFIED, verification(at_ns=2_000 * S))
    # a window that saw the symptom before the repair: the incident just resolved, not planned again
    await bus.publish(subjects.MAPEK_ANOMALY, anomaly(cycle="c2", first_ns=1_500 * S))
    [stale] = bus.audited("anomaly.stale")
    assert stale.subject_id == "n3.node_down" and len(bus.messages(subjects.MAPEK_PLAN)) == 1
    # a symptom that starts after the repair is a new incident
    await bus.publish(subjects.MAPEK_ANOMALY, anomaly(cycle="c3", first_ns=2_500 * S))
    assert [p.meta.cycle_id for p in bus.messages(subjects.MAPEK_PLAN)] == ["c1", "c3"]


async def test_a_failed_repair_releases_the_incident_at_once_for_another_action(bus: TestBus):
    """A reroute that did not repair n3: the next finding is planned at once, with the next candidate (restart),
    not the reroute again; when that fails too, the incident goes to operators instead of a third try."""
    await bus.publish(subjects.MAPEK_ANOMALY, anomaly(cycle="c1"))
    await bus.publish(subjects.MAPEK_VERIFIED, verification(recovered=False))
    assert planning.failed_actions(bus.kv("incidents").value("n3.node_down")) == {"reroute"}
    await bus.publish(subjects.MAPEK_ANOMALY, anomaly(cycle="c2", first_ns=1_001 * S))
    plans = bus.messages(subjects.MAPEK_PLAN)
    assert [(p.meta.cycle_id, p.action.kind) for p in plans] == [("c1", K.ACTION_KIND_REROUTE),
                                                                 ("c2", K.ACTION_KIND_RESTART)]
    assert bus.audited("anomaly.duplicate") == []
    await bus.publish(subjects.MAPEK_VERIFIED, verification(kind=K.ACTION_KIND_RESTART, recovered=False,
                                                            cycle="c2", action_id="act-2"))
    assert planning.failed_actions(bus.kv("incidents").value("n3.node_down")) == {"reroute", "restart"}
    await bus.publish(subjects.MAPEK_ANOMALY, anomaly(cycle="c3", first_ns=1_002 * S))
    last = bus.messages(subjects.MAPEK_PLAN)[-1]
    assert last.decision == K.DECISION_KIND_OBSERVE and "already failed for this incident" in last.escalation
    assert len(bus.messages(subjects.MAPEK_ACTION)) == 2
    [esc] = bus.messages(subjects.MAPEK_ESCALATION)
    assert esc.reason == "actions_failed" and esc.incident_id == "n3.node_down"


async def test_a_claim_lost_to_another_replica_is_not_planned():
    """Two planner replicas share the `incidents` bucket: the second sees the first one's claim."""
    one, two = TestBus(build(PlannerSettings())), TestBus(build(PlannerSettings()))
    two.buckets["incidents"] = one.kv("incidents")
    await one.publish(subjects.MAPEK_ANOMALY, anomaly(eid="e1"))
    await two.publish(subjects.MAPEK_ANOMALY, anomaly(eid="e1-copy", cycle="c1"))
    assert len(one.messages(subjects.MAPEK_PLAN)) == 1 and two.messages(subjects.MAPEK_PLAN) == []
    assert [a.subject_id for a in two.audited("anomaly.duplicate")] == ["n3.node_down"]


# ---- verified outcomes -> knowledge ------------------------------------------------------------
async def test_knowledge_is_recorded_once_per_verification_with_the_topology_size(bus: TestBus):
    await report(bus, tel("n1"), tel("n2"), tel("n4"), tel("n5"))
    v = verification(mttr_ms=800.0)
    await bus.publish(subjects.MAPEK_VERIFIED, v)
    await bus.publish(subjects.MAPEK_VERIFIED, v)           # redelivered: not counted again
    stats = ActionStats.from_json(bus.kv("knowledge").value("node_down.reroute"))
    assert (stats.attempts, stats.successes, stats.best_mttr_ms) == (1, 1, 800.0)
    assert stats.last_topology_size == 4                   # the nodes known when it was verified
    await report(bus, tel("n6"))
    await bus.publish(subjects.MAPEK_VERIFIED, verification(recovered=False, mttr_ms=9000.0, action_id="act-2"))
    stats = ActionStats.from_json(bus.kv("knowledge").value("node_down.reroute"))
    assert (stats.attempts, stats.successes, stats.mean_mttr_ms, stats.last_topology_size) == (2, 1, 800.0, 5)
    recorded = bus.audited("knowledge.recorded")
    assert [(a.subject_id, a.details["success_rate"]) for a in recorded] == [
        ("node_down.reroute", 0.67), ("node_down.reroute", 0.5)]
    assert recorded[1].details["topology_size"] == 5


async def test_the_next_plan_prefers_the_action_that_worked(bus: TestBus):
    for i in range(3):
        await bus.publish(subjects.MAPEK_VERIFIED, verification(K.ACTION_KIND_REROUTE, "n9", "degrading_link",
                                                                recovered=False, action_id=f"r{i}"))
        await bus.publish(subjects.MAPEK_VERIFIED, verification(K.ACTION_KIND_RESTART, "n9", "degrading_link",
                                                                recovered=True, action_id=f"s{i}"))
    await bus.publish(subjects.MAPEK_ANOMALY, anomaly("n3", "degrading_link", cycle="c9"))
    [plan] = bus.messages(subjects.MAPEK_PLAN)
    assert plan.action.kind == K.ACTION_KIND_RESTART
    assert [a.kind for a in plan.alternatives] == [K.ACTION_KIND_REROUTE]


# ---- nodes routed around and their reinstatement -------------------------------------------------
async def test_a_verified_reroute_puts_its_node_in_avoided_with_the_fault(bus: TestBus):
    await bus.publish(subjects.MAPEK_VERIFIED, verification(at_ns=2_000 * S))
    record = json.loads(bus.kv("avoided").value("n3"))
    assert record == {"node": "n3", "plan": "act-1", "since_ns": 2_000 * S, "fault": "node_down"}
    # a degraded or congested node routed around is tracked too (its probation asks for clean links)
    await bus.publish(subjects.MAPEK_VERIFIED, verification(node="n5", fault="congestion", action_id="a5"))
    assert json.loads(bus.kv("avoided").value("n5"))["fault"] == "congestion"
    # a reroute that did not verify, or one of a compromised node (an operator lifts that), is not
    await bus.publish(subjects.MAPEK_VERIFIED, verification(node="n6", recovered=False, action_id="a6"))
    await bus.publish(subjects.MAPEK_VERIFIED, verification(node="n7", fault="compromised", action_id="a7"))
    assert sorted(await bus.kv("avoided").keys()) == ["n3", "n5"]


async def test_a_verified_reinstatement_takes_the_node_out_and_a_failed_one_restarts_probation(bus: TestBus):
    avoided = bus.kv("avoided")
    record = json.dumps({"node": "n3", "plan": "p", "since_ns": 1, "healthy_since_ns": 5, "reinstating_ns": 9})
    await avoided.put("n3", record.encode())
    await bus.publish(subjects.MAPEK_VERIFIED, verification(K.ACTION_KIND_REINSTATE, recovered=False,
                                                            action_id="ri-1"))
    assert json.loads(avoided.value("n3")) == {"node": "n3", "plan": "p", "since_ns": 1}
    await bus.publish(subjects.MAPEK_VERIFIED, verification(K.ACTION_KIND_REINSTATE, recovered=True,
                                                            action_id="ri-2"))
    assert avoided.value("n3") is None


async def test_an_avoided_node_healthy_through_its_probation_is_reinstated(keys: Keys):
    bus = TestBus(service="planner")
    telemetry: dict[str, events_pb2.NodeTelemetry] = {}
    d = deps(PlannerSettings(reinstate_after_s=10.0, action_timeout_s=7.0), telemetry)
    await bus.kv("avoided").put("n3", planning.avoided_record("n3", "act-1", 1_000 * S))
    ctx = bus.context()
    # still silent: nothing moves
    await stage.reinstate_tick(ctx, d, 1_001 * S)
    assert "healthy_since_ns" not in json.loads(bus.kv("avoided").value("n3"))
    # back and healthy: the probation starts
    telemetry["n3"] = tel("n3")
    await stage.reinstate_tick(ctx, d, 1_002 * S)
    assert json.loads(bus.kv("avoided").value("n3"))["healthy_since_ns"] == 1_002 * S
    # unhealthy during probation (critical cpu): it starts over
    telemetry["n3"] = tel("n3", cpu_pct=99.0)
    await stage.reinstate_tick(ctx, d, 1_005 * S)
    assert "healthy_since_ns" not in json.loads(bus.kv("avoided").value("n3"))
    telemetry["n3"] = tel("n3")
    await stage.reinstate_tick(ctx, d, 1_006 * S)
    await stage.reinstate_tick(ctx, d, 1_015 * S)         # 9 s of the 10: not yet
    assert bus.messages(subjects.MAPEK_PLAN) == []
    await stage.reinstate_tick(ctx, d, 1_016 * S)
    [plan] = bus.messages(subjects.MAPEK_PLAN)
    assert plan.action == events_pb2.ActionSpec(kind=K.ACTION_KIND_REINSTATE, target_node="n3")
    assert plan.decision == K.DECISION_KIND_AUTO_EXECUTE and plan.first_symptom_unix_ns == 1_006 * S
    [req] = bus.messages(subjects.MAPEK_ACTION)
    assert req.plan_id == plan.plan_id and req.timeout_s == 7.0 and req.meta.cycle_id == plan.meta.cycle_id
    assert req.action.kind == K.ACTION_KIND_REINSTATE and req.approved_by == "auto"
    assert verify_approval(req, keys.bundle, req.approval.issued_unix_ns) == "planner"   # signed too
    [audit] = bus.audited("decision")
    assert audit.details["action"] == "reinstate" and audit.cycle_id == plan.meta.cycle_id
    # the reinstatement is under way: later ticks wait for its verification
    await stage.reinstate_tick(ctx, d, 1_020 * S)
    assert len(bus.messages(subjects.MAPEK_PLAN)) == 1
    assert json.loads(bus.kv("avoided").value("n3"))["reinstating_ns"] == 1_016 * S


async def test_reinstating_turned_off_runs_no_loop():
    d = deps(PlannerSettings(reinstate_after_s=0), {})

    async def never(_s: float) -> None:
        raise AssertionError("the loop must not tick")
    await stage.reinstate_loop(TestBus(service="planner").context(), d, sleep=never)


async def test_the_loop_ticks_every_reinstate_tick_s():
    bus = TestBus(service="planner")
    telemetry = {"n3": tel("n3")}
    d = deps(PlannerSettings(reinstate_after_s=10.0, reinstate_tick_s=0.5), telemetry)
    d.clock_ns = lambda: 5_000 * S
    await bus.kv("avoided").put("n3", planning.avoided_record("n3", "act-1", 1_000 * S))
    slept: list[float] = []

    async def sleep(s: float) -> None:
        if len(slept) == 2:
            raise StopAsyncIteration      # end the loop after two ticks
        slept.append(s)
    with pytest.raises(StopAsyncIteration):
        await stage.reinstate_loop(bus.context(), d, sleep=sleep)
    assert slept == [0.5, 0.5]
    assert json.loads(bus.kv("avoided").value("n3"))["healthy_since_ns"] == 5_000 * S


def test_the_planner_does_not_start_without_its_signing_key(monkeypatch):
    monkeypatch.delenv("X0TTA6BL4_SIGNING_KEY_FILE")
    with pytest.raises(ConfigError, match="X0TTA6BL4_SIGNING_KEY_FILE is not set: planner needs its signing key"):
        build(PlannerSettings())


async def test_a_signing_key_not_in_the_trust_bundle_approves_nothing(bus: TestBus, tmp_path):
    """What the planner signs with a key the executor does not trust is refused there (unknown key)."""
    stranger = Keys.make(tmp_path / "other")
    await bus.publish(subjects.MAPEK_ANOMALY, anomaly())
    [req] = bus.messages(subjects.MAPEK_ACTION)
    with pytest.raises(ApprovalError, match="is not in the trust bundle"):
        verify_approval(req, stranger.bundle, req.approval.issued_unix_ns)


# ---- what a verification counts -----------------------------------------------------------------------
async def test_an_outcome_is_counted_once_per_action_even_when_handled_again(bus: TestBus):
    """The finding: a handler that failed after recording was retried and counted the outcome each time.
    A second Verification of the same action (another event id: not a redelivery) counts nothing either."""
    await bus.publish(subjects.MAPEK_VERIFIED, verification(action_id="act-1", mttr_ms=700.0))
    again = verification(action_id="act-1", mttr_ms=700.0)
    again.meta.event_id = "another-event"
    await bus.publish(subjects.MAPEK_VERIFIED, again)
    stats = ActionStats.from_json(bus.kv("knowledge").value("node_down.reroute"))
    assert (stats.attempts, stats.successes, stats.recent_actions) == (1, 1, ["act-1"])
    assert [a.details["action_id"] for a in bus.audited("knowledge.recorded")] == ["act-1"]
    [dup] = bus.audited("knowledge.duplicate")
    assert dup.subject_id == "node_down.reroute" and dup.details["action_id"] == "act-1"


async def test_a_verification_without_incident_id_is_refused_once_and_counted_never(bus: TestBus):
    v = verification(action_id="act-9")
    v.incident_id = ""
    await bus.publish(subjects.MAPEK_VERIFIED, v)
    [dead] = bus.dead_letters
    assert dead.consumer == "planner-knowledge"
    assert dead.reason == ("rejected by planner: verification of action 'act-9' names no incident_id: not counted "
                           "in the knowledge base, no incident resolved")
    assert bus.kv("knowledge").value("node_down.reroute") is None and bus.audited("knowledge.recorded") == []
    assert await bus.kv("avoided").keys() == []


def test_stats_written_by_a_newer_planner_still_load():
    data = json.dumps({"fault_type": "f", "action": "reroute", "attempts": 2, "successes": 1,
                       "a_field_from_the_future": 1}).encode()
    assert ActionStats.from_json(data).attempts == 2


# ---- planned maintenance and mesh generations -------------------------------------------------------------
def maintenance(bus: TestBus, node: str, generation: str = "", reason: str = "drain") -> None:
    """What the monitor records when meshctl mesh drain / mesh down announces maintenance."""
    doc = {"since_ns": 1_000 * S, "reason": reason, "by": "meshctl", "generation": generation}
    bus.kv("health")._set(stage.maintenance_key(node), json.dumps(doc).encode())


async def test_an_anomaly_of_a_node_in_maintenance_is_not_planned(bus: TestBus):
    maintenance(bus, "n3", reason="mesh down")
    await bus.publish(subjects.MAPEK_ANOMALY, anomaly("n3", "node_down"))
    assert bus.messages(subjects.MAPEK_PLAN) == [] and bus.messages(subjects.MAPEK_ACTION) == []
    [audit] = bus.audited("anomaly.maintenance")
    assert audit.subject_id == "n3.node_down" and audit.details["reason"] == "mesh down"
    assert bus.kv("incidents").value("n3.node_down") is None       # nothing claimed: nothing to release
    await bus.publish(subjects.MAPEK_ANOMALY, anomaly("n5", "node_down", cycle="c2"))   # others still are
    assert [p.root_cause for p in bus.messages(subjects.MAPEK_PLAN)] == ["n5"]


async def test_maintenance_of_an_older_mesh_generation_does_not_cover_the_new_mesh(bus: TestBus):
    maintenance(bus, "n3", generation="old")
    await report(bus, tel("n3", mesh_generation="new"))
    await bus.publish(subjects.MAPEK_ANOMALY, anomaly("n3", "congestion"))
    assert len(bus.messages(subjects.MAPEK_PLAN)) == 1 and bus.audited("anomaly.maintenance") == []


async def test_actions_name_the_mesh_generation_of_their_target(bus: TestBus, keys: Keys):
    await report(bus, tel("n3", ["n2"], mesh_generation="mesh-A"), tel("n2", ["n3"], mesh_generation="mesh-A"))
    await bus.publish(subjects.MAPEK_ANOMALY, anomaly())
    [plan] = bus.messages(subjects.MAPEK_PLAN)
    assert plan.action.params["generation"] == "mesh-A"
    assert all(a.params["generation"] == "mesh-A" for a in plan.alternatives)
    [req] = bus.messages(subjects.MAPEK_ACTION)
    assert req.action.params["generation"] == "mesh-A"
    assert verify_approval(req, keys.bundle, req.approval.issued_unix_ns) == "planner"   # signed with it
    assert json.loads(bus.kv("incidents").value("n3.node_down"))["generation"] == "mesh-A"


async def test_an_old_mesh_generations_claim_does_not_hold_up_the_new_meshs_incident(bus: TestBus):
    await report(bus, tel("n3", mesh_generation="old"))
    await bus.publish(subjects.MAPEK_ANOMALY, anomaly(cycle="c1"))
    # meshctl mesh down (without maintenance) and up: the same names, a new mesh, the same fault
    await report(bus, tel("n3", mesh_generation="new"))
    await bus.publish(subjects.MAPEK_ANOMALY, anomaly(cycle="c2", first_ns=1_001 * S))
    assert [p.meta.cycle_id for p in bus.messages(subjects.MAPEK_PLAN)] == ["c1", "c2"]
    assert [p.action.params["generation"] for p in bus.messages(subjects.MAPEK_PLAN)] == ["old", "new"]
    assert bus.audited("anomaly.duplicate") == []


async def test_an_avoided_node_of_an_old_mesh_generation_is_dropped_not_reinstated():
    bus = TestBus(service="planner")
    telemetry = {"n3": tel("n3", mesh_generation="new")}
    d = deps(PlannerSettings(reinstate_after_s=10.0), telemetry)
    await bus.kv("avoided").put("n3", planning.avoided_record("n3", "act-1", 1_000 * S, "node_down", "old"))
    await stage.reinstate_tick(bus.context(), d, 1_001 * S)
    assert bus.kv("avoided").value("n3") is None and bus.messages(subjects.MAPEK_ACTION) == []
    [audit] = bus.audited("avoided.dropped")
    assert audit.subject_id == "n3" and audit.details == {"reason": "mesh generation changed", "was": "old",
                                                           "now": "new"}


# ---- reinstating degraded and congested nodes -----------------------------------------------------------
def link(peer: str, loss: float = 0.0, latency_ms: float = 0.2) -> events_pb2.LinkQuality:
    return events_pb2.LinkQuality(peer=peer, loss_rate=loss, latency_ms=latency_ms, link_age_s=30.0)


@pytest.mark.parametrize("fault", ["congestion", "degrading_link"])
async def test_a_degraded_node_is_reinstated_once_its_links_are_clean_through_its_probation(fault, keys: Keys):
    """Routed around, the slow node carries no DATA (its p99 and loss look perfect); the HELLO beacons still
    cross its links, so its own and its neighbours' link measurements say when it is really back."""
    bus = TestBus(service="planner")
    slow = 150.0
    telemetry = {"n3": tel("n3", ["n2", "n4"], links=[link("n2", latency_ms=slow), link("n4", latency_ms=slow)]),
                 "n2": tel("n2", ["n3"], links=[link("n3", latency_ms=slow)]),
                 "n4": tel("n4", ["n3"], links=[link("n3", latency_ms=slow)])}
    d = deps(PlannerSettings(reinstate_after_s=10.0), telemetry)
    await bus.kv("avoided").put("n3", planning.avoided_record("n3", "act-1", 1_000 * S, fault))
    ctx = bus.context()
    await stage.reinstate_tick(ctx, d, 1_001 * S)                  # healthy by the table, links slow: waits
    assert "healthy_since_ns" not in json.loads(bus.kv("avoided").value("n3"))
    telemetry["n3"] = tel("n3", ["n2", "n4"], links=[link("n2"), link("n4")])
    await stage.reinstate_tick(ctx, d, 1_002 * S)                  # its own links clean, a neighbour's not
    assert "healthy_since_ns" not in json.loads(bus.kv("avoided").value("n3"))
    telemetry["n2"] = tel("n2", ["n3"], links=[link("n3")])
    telemetry["n4"] = tel("n4", ["n3"], links=[link("n3")])
    await stage.reinstate_tick(ctx, d, 1_003 * S)                  # every view clean: probation starts
    assert json.loads(bus.kv("avoided").value("n3"))["healthy_since_ns"] == 1_003 * S
    telemetry["n4"] = tel("n4", ["n3"], links=[link("n3", loss=0.2)])   # lossy again meanwhile: over again
    await stage.reinstate_tick(ctx, d, 1_006 * S)
    assert "healthy_since_ns" not in json.loads(bus.kv("avoided").value("n3"))
    telemetry["n4"] = tel("n4", ["n3"], links=[link("n3")])
    await stage.reinstate_tick(ctx, d, 1_007 * S)
    await stage.reinstate_tick(ctx, d, 1_016 * S)
    assert bus.messages(subjects.MAPEK_PLAN) == []
    await stage.reinstate_tick(ctx, d, 1_017 * S)
    [plan] = bus.messages(subjects.MAPEK_PLAN)
    assert plan.action.kind == K.ACTION_KIND_REINSTATE and plan.action.target_node == "n3"
    assert f"({fault}) and has been reachable and healthy with clean links for 10 s" in plan.rationale
    [req] = bus.messages(subjects.MAPEK_ACTION)
    assert verify_approval(req, keys.bundle, req.approval.issued_unix_ns) == "planner"


async def test_a_degraded_node_without_any_link_is_not_back():
    bus = TestBus(service="planner")
    telemetry = {"n3": tel("n3")}                                   # reports, healthy, but no link at all
    d = deps(PlannerSettings(reinstate_after_s=1.0), telemetry)
    await bus.kv("avoided").put("n3", planning.avoided_record("n3", "act-1", 1_000 * S, "congestion"))
    for t in (1_001, 1_003, 1_005):
        await stage.reinstate_tick(bus.context(), d, t * S)
    assert bus.messages(subjects.MAPEK_PLAN) == []
