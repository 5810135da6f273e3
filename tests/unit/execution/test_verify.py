"""Verification's pure parts (x0tta6bl4.mapek.verify): the history of reports, delivery between two reports,
the baseline before an incident, the expected effect with the twin's connectivity, the checks and harm; and
the undo of each action (x0tta6bl4.execution.actions)."""
from __future__ import annotations

import pytest

from x0tta6bl4.execution.actions import after_verified_steps, plan_steps, revokes_at_once, undo_steps
from x0tta6bl4.ids import new_meta
from x0tta6bl4.mapek import verify
from x0tta6bl4.mapek.health import classify_node
from x0tta6bl4.v1 import events_pb2, mesh_pb2

K = events_pb2
C = mesh_pb2.MeshCommand
S = 10**9
SQUARE = {"a": ["b", "c"], "b": ["a", "d"], "c": ["a", "d"], "d": ["b", "c"]}


def tel(node: str, at_s: float, reachable: bool = True, neighbours=None, flows=(), **over) -> events_pb2.NodeTelemetry:
    t = events_pb2.NodeTelemetry(meta=new_meta("monitor"), node_id=node, reachable=reachable,
                                 neighbours=SQUARE.get(node, []) if neighbours is None else neighbours,
                                 **{"cpu_pct": 5.0, "mem_pct": 20.0, **over})
    t.meta.ts_unix_ns = int(at_s * S)
    for dest, sent, acked in flows:
        t.flows.add(dest=dest, sent=sent, acked=acked)
    return t


def square_history(until_s: float = 100.0, ratio: float = 1.0) -> verify.History:
    """a, b, c, d report every 0.5 s from t=80 s; a sends 20/s to d, ``ratio`` of it acknowledged."""
    h = verify.History()
    at = 80.0
    while at <= until_s:
        sent = int((at - 80) * 20)
        for n in SQUARE:
            h.record(tel(n, at, flows=[("d", sent, int(sent * ratio))] if n == "a" else []))
        at += 0.5
    return h


def test_history_keeps_reports_in_order_and_a_window_of_them():
    h = verify.History(retention_s=10)
    for at in (1, 2, 3):
        h.record(tel("a", at))
    h.record(tel("a", 2.5))                              # older than the newest: ignored
    assert [s.ts_ns for s in h.samples["a"]] == [1 * S, 2 * S, 3 * S]
    h.record(tel("a", 12.5))                             # 1 and 2 are past the retention; one older report stays
    assert [s.ts_ns // S for s in h.samples["a"]] == [2, 3, 12]
    assert h.at("a", int(2.9 * S)).ts_ns == 2 * S and h.at("a", S) is None
    assert [s.ts_ns // S for s in h.since("a", 3 * S)] == [3, 12]
    a, b = h.window("a", 0, 4 * S)                       # nothing that old: the window starts at the first report
    assert (a.ts_ns, b.ts_ns) == (2 * S, 3 * S)
    assert h.window("a", 13 * S, 14 * S) is None and h.window("zz", 0, 5 * S) is None
    h.on_change("a", None)                               # a deleted key changes nothing
    assert len(h.samples["a"]) == 3 and h.start_ns() == 2 * S


def test_delivery_between_two_reports_and_its_one_packet_of_slack():
    a = verify.Sample.of(tel("a", 10, flows=[("d", 100, 98)]))
    b = verify.Sample.of(tel("a", 11, flows=[("d", 120, 117)]))
    d = verify.delivery(a, b, "d")
    assert (d.sent, d.acked, d.seconds) == (20, 19, 1.0) and d.ratio == 0.95 and d.rate == 19.0
    assert d.at_least(0.95) and d.at_least(1.0)          # 19 + 1 in flight
    assert not verify.Delivery(20, 17, 1.0).at_least(0.95)
    restarted = verify.Sample.of(tel("a", 12, flows=[("d", 5, 5)]))       # the agent restarted: counts from 0
    assert verify.delivery(b, restarted, "d") == verify.Delivery(5, 5, 1.0)
    assert verify.delivery(a, b, "zz") == verify.Delivery(0, 0, 1.0)


def test_the_baseline_ends_before_the_first_symptom():
    h = square_history(until_s=100, ratio=1.0)
    for at in (100.5, 101.0, 101.5):                     # from 100 s on: the flow is cut (degraded state)
        h.record(tel("a", at, flows=[("d", int((at - 80) * 20), 400)]))
    base = verify.baseline(h, incident_ns=101 * S, window_s=5, gap_s=1)
    assert (base.start_ns, base.end_ns) == (95 * S, 100 * S) and not base.missing
    assert base.reachable == {"a", "b", "c", "d"} and base.adjacency()["a"] == ["b", "c"]
    flow = base.flows[("a", "d")]
    assert flow.ratio == 1.0 and flow.rate == 20.0       # measured before the symptom, not the cut state
    assert verify.baseline(h, incident_ns=80 * S).missing.startswith("no telemetry recorded before the incident")
    # a node whose last report is older than stale_s had gone already; a flow that had just started counts,
    # with what little it delivered (too few packets to measure a bar: held to 100 %)
    h2 = verify.History()
    h2.record(tel("a", 10, flows=[("d", 0, 0)]))
    h2.record(tel("a", 95, flows=[("d", 5, 5)]))
    h2.record(tel("b", 50))
    base2 = verify.baseline(h2, 101 * S)
    assert set(base2.nodes) == {"a"} and base2.flows == {("a", "d"): verify.Delivery(5, 5, 0.0)}
    assert verify.before_ratio(base2.flows[("a", "d")]) == 1.0


def test_a_flow_too_young_to_measure_is_held_to_delivering_fully():
    h = verify.History()
    for at, sent, acked in ((95.0, 0, 0), (99.5, 10, 5)):    # the flow started just before the incident
        for n in SQUARE:
            h.record(tel(n, at, flows=[("d", sent, acked)] if n == "a" else []))
    base = verify.baseline(h, 101 * S)
    assert base.flows[("a", "d")].sent == 10 and base.flows[("a", "d")].ratio == 0.5
    spec = events_pb2.ActionSpec(kind=K.ACTION_KIND_REROUTE, target_node="b")
    effect = verify.expected_effect(spec, base)
    for at, sent, acked in ((101.0, 40, 20), (102.0, 60, 36)):   # since the action: 16 of 20
        h.record(tel("a", at, flows=[("d", sent, acked)]))
    out = verify.check(spec, [tel(n, 102) for n in SQUARE], classify_node, True, base, effect, h, 101 * S)
    assert out.failed == ["flow a->d delivers 80 % (16/20 in 1.0 s, 16.0/s), below 95 % (it had sent 10 packet(s) "
                          "in the window before the incident: too few to measure, held to 100 %)"]


def test_the_expected_effect_of_each_action():
    base = verify.baseline(square_history(), 101 * S)
    out = verify.expected_effect(events_pb2.ActionSpec(kind=K.ACTION_KIND_REROUTE, target_node="b"), base)
    assert list(out.removed) == ["b"] and out.connectivity == 1.0 and out.reversible and out.min_delivery == 0.95
    line = verify.baseline(square_history(), 101 * S)    # without the link c-d: d hangs on b
    line.nodes["c"] = verify.Sample(line.nodes["c"].ts_ns, True, ("a",), {})
    line.nodes["d"] = verify.Sample(line.nodes["d"].ts_ns, True, ("b",), {})
    cut = verify.expected_effect(events_pb2.ActionSpec(kind=K.ACTION_KIND_REROUTE, target_node="b"), line)
    assert cut.connectivity == pytest.approx(2 / 6)      # d hangs on b: {a, c} and {d}
    restart = verify.expected_effect(events_pb2.ActionSpec(kind=K.ACTION_KIND_RESTART, target_node="e"), base)
    assert list(restart.rejoins) == ["e"] and not restart.removed and not restart.reversible
    stricter = events_pb2.ActionSpec(kind=K.ACTION_KIND_REROUTE, target_node="b",
                                     expected=events_pb2.ExpectedEffect(min_delivery=0.99, summary="s"))
    assert verify.expected_effect(stricter, base).min_delivery == 0.99
    looser = events_pb2.ActionSpec(kind=K.ACTION_KIND_REROUTE, target_node="b",
                                   expected=events_pb2.ExpectedEffect(min_delivery=0.1))
    assert verify.expected_effect(looser, base).min_delivery == 0.95     # the spec may not lower the bar


def test_check_says_why_and_a_restarted_node_must_rejoin():
    h = square_history(until_s=100)
    base = verify.baseline(h, 101 * S)
    spec = events_pb2.ActionSpec(kind=K.ACTION_KIND_RESTART, target_node="b")
    effect = verify.expected_effect(spec, base)
    for at in (101.0, 101.5, 102.0, 102.5):
        sent = int((at - 80) * 20)
        h.record(tel("a", at, flows=[("d", sent, sent)], neighbours=["c"]))
    now = [tel("a", 102.5, neighbours=["c"]), tel("b", 102.5, reachable=False),
           tel("c", 102.5, neighbours=["a", "d"]), tel("d", 102.5, neighbours=["c"])]
    out = verify.check(spec, now, classify_node, True, base, effect, h, 101 * S, hold_s=1.0)
    assert not out.recovered
    assert "b unreachable (has not rejoined)" in out.failed
    assert "connectivity 0.50 below the 1.00 the twin predicts for restart b" in out.failed
    assert "1 flow(s) deliver at least 95 % of their rate before the incident, held 1 s" in out.passed
    now[1] = tel("b", 102.5, neighbours=["a", "d"])
    out = verify.check(spec, now, classify_node, True, base, effect, h, 101 * S, hold_s=1.0)
    assert out.recovered, out.failed
    assert "b rejoined" in out.passed and "connectivity 1.00 as the twin predicts (1.00)" in out.passed


def test_a_flow_not_yet_held_long_enough_is_not_recovered():
    h = square_history(until_s=100)
    base = verify.baseline(h, 101 * S)
    spec = events_pb2.ActionSpec(kind=K.ACTION_KIND_REROUTE, target_node="b")
    effect = verify.expected_effect(spec, base)
    h.record(tel("a", 101.5, flows=[("d", 430, 430)]))
    nodes = [tel(n, 101.5) for n in SQUARE]
    out = verify.check(spec, nodes, classify_node, True, base, effect, h, 101 * S, hold_s=1.0)
    assert not out.recovered and not out.final
    assert "flow a->d: not yet held 1 s with 20+ packets since the action (0.0 s of reports)" in out.failed


def test_harm_is_worse_than_just_before_the_action():
    h = square_history(until_s=100, ratio=0.5)           # half the flow delivered before the action (degraded)
    base = verify.baseline(h, 90 * S)
    spec = events_pb2.ActionSpec(kind=K.ACTION_KIND_REROUTE, target_node="b")
    effect = verify.expected_effect(spec, base)
    nodes = [tel(n, 100) for n in SQUARE]
    before = verify.before_action(h, base, nodes, 100 * S)
    assert before.flows[("a", "d")].ratio == 0.5 and before.connectivity == 1.0
    sent, acked = 400, 200
    for at in (100.5, 101.0, 101.5):                     # after: 10 % acknowledged
        sent, acked = sent + 10, acked + 1
        h.record(tel("a", at, flows=[("d", sent, acked)]))
    harmed = verify.harm(before, base, effect, h, nodes, 100 * S, hold_s=1.0)
    assert harmed == ["flow a->d delivers 10 % (2/20 in 1.0 s, 2.0/s) since the action, 50 % just before it"]
    for at in (102.0, 102.5, 103.0):                     # 50 % again: as before the action, no harm
        sent, acked = sent + 10, acked + 5
        h.record(tel("a", at, flows=[("d", sent, acked)]))
    assert verify.harm(before, base, effect, h, nodes, 100 * S, hold_s=1.0) == []
    # connectivity: below the prediction and below what it was
    cut = [tel(n, 103, neighbours=[]) for n in SQUARE]
    assert verify.harm(before, base, effect, h, cut, 100 * S, hold_s=1.0) == [
        "connectivity 0.00 since the action, 1.00 just before it (the twin predicted 1.00)"]


def test_a_small_dip_or_routing_around_a_node_already_down_is_no_harm():
    h = square_history(until_s=100, ratio=1.0)
    base = verify.baseline(h, 90 * S)
    spec = events_pb2.ActionSpec(kind=K.ACTION_KIND_REROUTE, target_node="b")
    effect = verify.expected_effect(spec, base)
    nodes = [tel(n, 100) for n in SQUARE]
    before = verify.before_action(h, base, nodes, 100 * S)
    sent, acked = 400, 400
    for at in (100.5, 101.0, 101.5):                     # 17 of 20: 85 %, less than 20 points below 100 %
        sent, acked = sent + 10, acked + (9 if at < 101.5 else 8)
        h.record(tel("a", at, flows=[("d", sent, acked)]))
    assert verify.harm(before, base, effect, h, nodes, 100 * S) == []
    assert verify.harm(before, base, effect, h, nodes, 100 * S, margin=0.05)     # a stricter margin: harm
    down = [tel(n, 100, reachable=n != "b") for n in SQUARE]                        # b was down at the action
    before_down = verify.before_action(h, base, down, 100 * S)
    assert verify.harm(before_down, base, effect, h, nodes, 100 * S, margin=0.05) == []


def test_a_flow_that_was_cut_before_the_action_cannot_be_harmed():
    h = square_history(until_s=100, ratio=0.0)
    base = verify.baseline(h, 90 * S)
    nodes = [tel(n, 100) for n in SQUARE]
    before = verify.before_action(h, base, nodes, 100 * S)
    assert base.flows == {} and before.flows == {}       # nothing delivered before: no flow to measure
    effect = verify.expected_effect(events_pb2.ActionSpec(kind=K.ACTION_KIND_REROUTE, target_node="b"), base)
    assert verify.harm(before, base, effect, h, nodes, 100 * S) == []


@pytest.mark.parametrize(("kind", "undo"), [
    (K.ACTION_KIND_REROUTE, C.KIND_UNAVOID_NODE), (K.ACTION_KIND_ISOLATE, C.KIND_UNAVOID_NODE),
    (K.ACTION_KIND_REINSTATE, C.KIND_AVOID_NODE)])
def test_undo_of_a_reversible_action(kind, undo):
    (phase,) = undo_steps(events_pb2.ActionSpec(kind=kind, target_node="b"), ["a", "b", "c"])
    assert [(s.kind, s.node, s.command, s.peer) for s in phase] == [("mesh", n, undo, "b") for n in ("a", "c")]


@pytest.mark.parametrize("kind", [K.ACTION_KIND_RESTART, K.ACTION_KIND_ROTATE_KEYS, K.ACTION_KIND_DEPLOY])
def test_what_cannot_be_undone(kind):
    assert undo_steps(events_pb2.ActionSpec(kind=kind, target_node="b"), ["a", "b"]) is None


def test_an_isolation_revokes_at_once_only_for_a_security_fault():
    spec = events_pb2.ActionSpec(kind=K.ACTION_KIND_ISOLATE, target_node="b")
    for fault in ("compromised", "key_compromise", ""):
        assert revokes_at_once(fault)
        first, _avoid = plan_steps(spec, ["a", "b", "c"], fault)
        assert [(s.kind, s.op, s.node) for s in first] == [("keyvault", "revoke", "b")]
        assert after_verified_steps(spec, fault) == []
    (avoid,) = plan_steps(spec, ["a", "b", "c"], "flapping")
    assert {s.command for s in avoid} == {C.KIND_AVOID_NODE}
    (later,) = after_verified_steps(spec, "flapping")
    assert [(s.op, s.node) for s in later] == [("revoke", "b")]
    assert after_verified_steps(events_pb2.ActionSpec(kind=K.ACTION_KIND_REROUTE, target_node="b"), "x") == []


def _reports(h: verify.History, at: float, **c_over) -> list[events_pb2.NodeTelemetry]:
    """Every node of the square reports at ``at`` (a's flow to d fully delivered; c with ``c_over``)."""
    sent = int((at - 80) * 20)
    out = [tel(n, at, flows=[("d", sent, sent)] if n == "a" else [], **(c_over if n == "c" else {})) for n in SQUARE]
    for t in out:
        h.record(t)
    return out


def test_a_critical_spike_in_one_report_is_reported_two_in_a_row_fail_and_critical_before_is_excused():
    """A node critical in its latest report but not in the one just before (a 0.5 s latency percentile on a busy
    machine) is reported, not failed; critical in two reports in a row it fails the verification; a node that
    was as critical on the same metric before the incident is reported (the repair cannot fix that)."""
    h = square_history(until_s=100)
    base = verify.baseline(h, 101 * S)
    spec = events_pb2.ActionSpec(kind=K.ACTION_KIND_RESTART, target_node="b")
    effect = verify.expected_effect(spec, base)
    for at in (101.0, 101.5):
        _reports(h, at)
    out = verify.check(spec, _reports(h, 102.0, p99_latency_ms=250.0), classify_node, True, base, effect, h,
                       101 * S, hold_s=0.5)
    assert out.recovered, out.failed
    assert any("c critical in one report only: p99_latency_ms=250" in p for p in out.passed), out.passed
    # still critical at the next report: a node that stays so
    out = verify.check(spec, _reports(h, 102.5, p99_latency_ms=240.0), classify_node, True, base, effect, h,
                       101 * S, hold_s=0.5)
    assert not out.recovered and "c critical: p99_latency_ms=240 > 100 (critical)" in out.failed, out.failed
    # critical on the same metric before the incident already (in the baseline window): excused
    h2 = square_history(until_s=99.5)
    _reports(h2, 100.0, p99_latency_ms=300.0)
    base2 = verify.baseline(h2, 101 * S)
    effect2 = verify.expected_effect(spec, base2)
    for at in (101.0, 101.5):
        _reports(h2, at, p99_latency_ms=280.0)
    out = verify.check(spec, _reports(h2, 102.0, p99_latency_ms=260.0), classify_node, True, base2, effect2, h2,
                       101 * S, hold_s=0.5)
    assert out.recovered, out.failed
    assert any("c critical before the incident too (p99_latency_ms)" in p for p in out.passed), out.passed
    # cpu critical now (twice) but only latency before: not excused
    _reports(h2, 102.5, p99_latency_ms=260.0, cpu_pct=97.0)
    out = verify.check(spec, _reports(h2, 103.0, p99_latency_ms=260.0, cpu_pct=97.0), classify_node, True, base2,
                       effect2, h2, 101 * S, hold_s=0.5)
    assert any(f.startswith("c critical: ") and "cpu_pct=97" in f for f in out.failed), out.failed


def test_a_node_that_sends_nothing_reports_the_loss_of_the_links_it_routes_over():
    """host.link_loss_pct: the mean HELLO loss of a node's links, without the links to nodes it routes around."""
    from x0tta6bl4.mesh.host import link_loss_pct
    d = {"links": [{"peer": "b", "loss_rate": 0.3}, {"peer": "c", "loss_rate": 0.0}, {"peer": "d", "loss_rate": 0.0}]}
    assert link_loss_pct(d) == pytest.approx(10.0)
    assert link_loss_pct({**d, "avoided": ["b"]}) == 0.0
    assert link_loss_pct({"links": [], "avoided": []}) == 0.0
    assert link_loss_pct({**d, "avoided": ["b", "c", "d"]}) == 0.0
