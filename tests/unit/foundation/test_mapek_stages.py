"""The stage logic of the foundation cycle, without the broker."""
from x0tta6bl4.bus.codec import new_meta
from x0tta6bl4.governance.decision import DecisionPolicy
from x0tta6bl4.knowledge.outcomes import ActionStats, rank
from x0tta6bl4.mapek import monitor, plan, verify
from x0tta6bl4.mapek.analyze import RuleAnalyzer, relevant
from x0tta6bl4.mapek.health import classify_node
from x0tta6bl4.mapek.state import MeshView
from x0tta6bl4.v1 import common_pb2, events_pb2

LINE = {"n1": ["n2"], "n2": ["n1", "n3"], "n3": ["n2", "n4"], "n4": ["n3"]}


def tel(node, **kw):
    base = dict(node_id=node, neighbours=LINE.get(node, []), reachable=True, p99_latency_ms=5, loss_pct=0,
                cpu_pct=10, mem_pct=20)
    base.update(kw)
    return events_pb2.NodeTelemetry(meta=new_meta("agent"), **base)


def window(*nodes, trigger=""):
    return events_pb2.TelemetryWindow(meta=new_meta("monitor", "cyc"), nodes=list(nodes), trigger_node=trigger)


def test_threshold_boundaries():
    H, W, C = common_pb2.HEALTH_HEALTHY, common_pb2.HEALTH_WARNING, common_pb2.HEALTH_CRITICAL
    for value, expected in [(39.9, H), (40, W), (100, W), (100.1, C)]:
        assert classify_node(tel("n1", p99_latency_ms=value))[0] == expected
    for value, expected in [(0.99, H), (1, W), (5, W), (5.01, C)]:
        assert classify_node(tel("n1", loss_pct=value))[0] == expected
    assert classify_node(tel("n1", cpu_pct=90.5))[0] == C
    assert classify_node(tel("n1", mem_pct=80))[0] == W
    assert classify_node(tel("n1", reachable=False)) == (C, ["unreachable"])


def test_unreachable_node_is_the_root_cause_not_its_neighbours():
    w = window(tel("n1"), tel("n2", loss_pct=8), tel("n3", reachable=False), tel("n4", loss_pct=9), trigger="n3")
    out = RuleAnalyzer().analyze(w)
    down = [a for a in out if a.fault_type == "node_down"]
    assert len(down) == 1 and down[0].root_cause == "n3"
    assert set(down[0].affected_nodes) == {"n2", "n4"}
    assert down[0].severity == common_pb2.SEVERITY_CRITICAL and down[0].confidence > 0.9
    assert all(a.meta.cycle_id == "cyc" for a in out)


def test_worst_node_of_a_symptomatic_group_is_the_source():
    def slow(node, ms):
        t = tel(node, p99_latency_ms=ms)
        t.links.add(peer="x", latency_ms=ms)
        return t
    w = window(tel("n1"), slow("n2", 60), slow("n3", 300), slow("n4", 45))
    (a,) = RuleAnalyzer().analyze(w)
    assert a.root_cause == "n3" and a.fault_type == "congestion" and set(a.affected_nodes) == {"n2", "n4"}


def test_trigger_filters_unrelated_incidents():
    w = window(tel("n1", cpu_pct=99), tel("n2"), tel("n3"), tel("n4", mem_pct=99), trigger="n4")
    out = relevant(w, RuleAnalyzer().analyze(w))
    assert [a.root_cause for a in out] == ["n4"]


def test_plan_auto_executes_critical_and_votes_on_medium():
    w = window(tel("n1"), tel("n2"), tel("n3", reachable=False), tel("n4"), trigger="n3")
    (a,) = RuleAnalyzer().analyze(w)
    p, _d = plan.make_plan(a, DecisionPolicy())
    assert p.decision == events_pb2.DECISION_KIND_AUTO_EXECUTE
    assert p.action.kind == events_pb2.ACTION_KIND_REROUTE and p.action.target_node == "n3"
    req = plan.action_request(p, "auto")
    assert req.action_id and req.meta.cycle_id == "cyc" and req.incident_id == "n3.node_down"
    a.confidence = 0.7
    p2, _ = plan.make_plan(a, DecisionPolicy())
    assert p2.decision == events_pb2.DECISION_KIND_STANDARD_VOTE and p2.vote_duration_s == 3600


def test_twin_cascade_downgrades_auto_isolation_of_a_live_node_to_a_vote():
    w = window(tel("n1"), tel("n2"), tel("n3", failed_auth=40), tel("n4"), trigger="n3")
    (a,) = RuleAnalyzer().analyze(w)
    a.confidence, a.severity = 0.97, common_pb2.SEVERITY_CRITICAL
    risky = lambda k, n: plan.TwinVerdict(0.5, ["n2", "n4", "n5"])  # noqa: E731
    p, _ = plan.make_plan(a, DecisionPolicy(), twin=risky)
    assert p.action.kind == events_pb2.ACTION_KIND_ISOLATE
    assert p.decision == events_pb2.DECISION_KIND_EMERGENCY_VOTE and "cascade" in p.rationale
    assert list(p.cascade_risk) == ["n2", "n4", "n5"]
    # a node that is already down is routed around at once; the cascade risk is reported
    (down,) = RuleAnalyzer().analyze(window(tel("n3", reachable=False), trigger="n3"))
    p2, _ = plan.make_plan(down, DecisionPolicy(), twin=risky)
    assert p2.decision == events_pb2.DECISION_KIND_AUTO_EXECUTE and len(p2.cascade_risk) == 3


def test_knowledge_prefers_the_action_that_worked():
    stats = {"restart": ActionStats("cpu_overload", "restart").record(False, 0).record(False, 0),
             "reroute": ActionStats("cpu_overload", "reroute").record(True, 800).record(True, 900)}
    assert rank(["restart", "reroute"], stats) == ["reroute", "restart"]
    assert plan.candidate_actions("cpu_overload", stats)[0] == events_pb2.ACTION_KIND_REROUTE
    assert rank(["restart", "reroute"], {}) == ["restart", "reroute"]


def before_incident(*nodes, at_s=95):
    """A history holding one report of each node from before the incident (at ``at_s``)."""
    history = verify.History()
    for t in nodes:
        t.meta.ts_unix_ns = at_s * 10**9
        history.record(t)
    return history


def test_verify_ignores_the_routed_around_node_and_requires_the_rest_healthy():
    spec = events_pb2.ActionSpec(kind=events_pb2.ACTION_KIND_REROUTE, target_node="n3")
    history = before_incident(tel("n1"), tel("n2"), tel("n3"), tel("n4"))
    base = verify.baseline(history, 100 * 10**9)
    effect = verify.expected_effect(spec, base)
    assert list(effect.removed) == ["n3"] and round(effect.connectivity, 2) == 0.33   # n4 hangs on n3 (a line)

    def check(nodes, steps_ok=True):
        return verify.check(spec, nodes, classify_node, steps_ok, base, effect, history, 100 * 10**9)
    nodes = [tel("n1"), tel("n2"), tel("n3", reachable=False), tel("n4")]
    assert check(nodes).recovered
    nodes[1] = tel("n2", p99_latency_ms=60)  # warning band: reported, not failed
    out = check(nodes)
    assert out.recovered and "warning band" in out.passed[0]
    nodes[1] = tel("n2", loss_pct=20)
    out = check(nodes)
    assert not out.recovered and any("n2 critical" in f for f in out.failed)
    assert not check([tel("n1")], steps_ok=False).recovered


def test_monitor_starts_a_cycle_only_when_a_node_gets_worse():
    H, W, C = common_pb2.HEALTH_HEALTHY, common_pb2.HEALTH_WARNING, common_pb2.HEALTH_CRITICAL
    assert monitor.assess(tel("n1", cpu_pct=95), H).starts_cycle
    assert monitor.assess(tel("n1", cpu_pct=95), W).starts_cycle
    assert not monitor.assess(tel("n1", cpu_pct=95), C).changed
    assert not monitor.assess(tel("n1"), C).starts_cycle and monitor.assess(tel("n1"), C).changed


def test_loss_reports_need_two_neighbours_when_there_are_two():
    view = MeshView()
    for n in LINE:
        view.update(tel(n))
    r = monitor.LossReports()
    r.report("n3", "n2", 5)
    assert not r.declared_down("n3", view)
    r.report("n3", "n4", 7)
    assert r.declared_down("n3", view) and r.first_report_ns("n3") == 5
    r.report("n1", "n2", 9)   # n1 has one neighbour: one report is enough
    assert r.declared_down("n1", view)


def test_end_to_end_loss_at_a_node_with_clean_links_is_observed_not_blamed():
    src = tel("n1", loss_pct=60)
    src.links.add(peer="n2", loss_rate=0.0)
    (a,) = RuleAnalyzer().analyze(window(src, tel("n2"), tel("n3"), tel("n4")))
    assert a.fault_type == "path_degraded" and a.confidence < 0.6
    p, _ = plan.make_plan(a, DecisionPolicy())
    assert p.decision == events_pb2.DECISION_KIND_OBSERVE


def test_path_loss_while_a_node_is_down_is_explained_by_the_down_node():
    src = tel("n1", loss_pct=60)
    out = RuleAnalyzer().analyze(window(src, tel("n2"), tel("n3", reachable=False), tel("n4")))
    assert [(a.root_cause, a.fault_type) for a in out] == [("n3", "node_down")]


def test_a_node_with_all_links_slow_is_the_source_of_end_to_end_latency():
    src, dst = tel("n1", p99_latency_ms=70), tel("n4", p99_latency_ms=65)
    src.links.add(peer="n2", latency_ms=0.5)
    dst.links.add(peer="n3", latency_ms=0.4)
    slow = tel("n3")
    for p in ("n2", "n4"):
        slow.links.add(peer=p, latency_ms=52)
    ok = tel("n2")
    ok.links.add(peer="n1", latency_ms=0.5)
    ok.links.add(peer="n3", latency_ms=52)
    out = RuleAnalyzer().analyze(window(src, ok, slow, dst, trigger="n1"))
    (a,) = relevant(window(trigger="n1"), out)
    assert (a.root_cause, a.fault_type) == ("n3", "congestion")
    assert 0.6 <= a.confidence <= 0.8 and "n1" in a.affected_nodes
    p, _ = plan.make_plan(a, DecisionPolicy())
    assert p.decision == events_pb2.DECISION_KIND_STANDARD_VOTE and p.action.target_node == "n3"


def test_verify_needs_the_flows_delivering_as_before_the_incident_held_after_the_action():
    spec = events_pb2.ActionSpec(kind=events_pb2.ACTION_KIND_REROUTE, target_node="n3")
    s = 10**9

    def src(at_s, sent, acked):
        t = tel("n1")
        t.meta.ts_unix_ns = int(at_s * s)
        t.flows.add(dest="n2", sent=sent, acked=acked)
        return t
    history = verify.History()
    for t in (src(90, 0, 0), src(95, 100, 100), tel("n2"), tel("n3"), tel("n4")):
        t.meta.ts_unix_ns = t.meta.ts_unix_ns if t.node_id == "n1" else 95 * s
        history.record(t)
    base = verify.baseline(history, 100 * s)            # the window 94..99 s: 100 of 100 acknowledged
    effect = verify.expected_effect(spec, base)
    others = [tel("n2"), tel("n3", reachable=False), tel("n4")]
    history.record(src(100.5, 110, 100))
    history.record(src(101.0, 120, 100))                 # nothing acknowledged since the action at 100 s
    out = verify.check(spec, [src(101.0, 120, 100), *others], classify_node, True, base, effect, history, 100 * s)
    assert not out.recovered
    history.record(src(101.6, 130, 119))                 # 19 of 20 since 100.5 s, held 1.1 s
    out = verify.check(spec, [src(101.6, 130, 119), *others], classify_node, True, base, effect, history, 100 * s)
    assert out.recovered, out.failed


def test_down_node_victims_include_the_neighbours_it_last_reported():
    dead = tel("n3", reachable=False)          # still lists n2, n4 from its last report
    n2, n4 = tel("n2", neighbours=["n1"]), tel("n4", neighbours=[])   # they already dropped n3
    (a,) = RuleAnalyzer().analyze(window(tel("n1"), n2, dead, n4, trigger="n3"))
    assert a.root_cause == "n3" and set(a.affected_nodes) == {"n2", "n4"}


def test_incident_claims_open_resolved_stale_and_new():
    from x0tta6bl4.mapek import plan as planning
    assert planning.claim_verdict(None, 5) == planning.CLAIM_NEW
    assert planning.claim_verdict(planning.open_claim("c1"), 5) == planning.CLAIM_OPEN
    assert planning.claim_verdict(b"c1", 5) == planning.CLAIM_OPEN            # an older plain claim
    done = planning.resolved_claim("c1", 1_000)
    assert planning.claim_verdict(done, 999) == planning.CLAIM_STALE         # symptom before the repair
    assert planning.claim_verdict(done, 1_000) == planning.CLAIM_STALE
    assert planning.claim_verdict(done, 1_001) == planning.CLAIM_NEW          # a new symptom: a new incident
    # an observed-only claim gives way to a finding that would act; an acting claim does not
    observed = planning.open_claim("c1", observe=True)
    assert planning.claim_verdict(observed, 5) == planning.CLAIM_OPEN
    assert planning.claim_verdict(observed, 5, acting=True) == planning.CLAIM_NEW
    assert planning.claim_verdict(planning.open_claim("c1"), 5, acting=True) == planning.CLAIM_OPEN


def test_reinstatement_waits_for_the_probation_and_restarts_it_on_trouble():
    from x0tta6bl4.mapek import plan as planning
    s = 10**9
    rec = planning.avoided_record("n4", "act-1", 100 * s)
    assert planning.avoided_node(rec) == "n4"
    assert planning.reinstate_step(rec, False, 101 * s, 10 * s) == (planning.WAIT, None)    # still down
    step, rec = planning.reinstate_step(rec, True, 102 * s, 10 * s)                        # back: probation
    assert step == planning.UPDATE
    assert planning.reinstate_step(rec, True, 111 * s, 10 * s) == (planning.WAIT, None)    # 9 s healthy
    step, flapped = planning.reinstate_step(rec, False, 111 * s, 10 * s)                   # trouble: restart
    assert step == planning.UPDATE and "healthy_since_ns" not in flapped.decode()
    step, rec = planning.reinstate_step(rec, True, 112 * s, 10 * s)                        # 10 s healthy
    assert step == planning.REINSTATE
    plan = planning.reinstate_plan(rec, 10)
    assert plan.action.kind == events_pb2.ACTION_KIND_REINSTATE and plan.action.target_node == "n4"
    assert plan.decision == events_pb2.DECISION_KIND_AUTO_EXECUTE and plan.incident_id == "n4.reinstate"
    assert plan.plan_id == planning.reinstate_plan(rec, 10).plan_id                        # deterministic
    assert planning.reinstate_step(rec, True, 113 * s, 10 * s) == (planning.WAIT, None)    # under way
    step, stale = planning.reinstate_step(rec, True, 112 * s + planning.REINSTATE_STALE_NS + 1, 10 * s)
    assert step == planning.UPDATE and "reinstating_ns" not in stale.decode()              # never verified
    again = planning.reinstate_failed(rec)
    assert planning.reinstate_step(again, True, 200 * s, 10 * s)[0] == planning.UPDATE     # probation anew
    assert planning.reinstate_step(b"garbage", True, 200 * s, 10 * s) == (planning.WAIT, None)


def test_reinstate_action_unavoids_the_node_everywhere():
    from x0tta6bl4.execution.actions import plan_steps
    spec = events_pb2.ActionSpec(kind=events_pb2.ACTION_KIND_REINSTATE, target_node="n2")
    (phase,) = plan_steps(spec, ["n0", "n1", "n2", "n3"])
    from x0tta6bl4.v1 import mesh_pb2
    assert [(s.kind, s.node, s.command, s.peer) for s in phase] == [
        ("mesh", n, mesh_pb2.MeshCommand.KIND_UNAVOID_NODE, "n2") for n in ("n0", "n1", "n3")]
