"""Proposal lifecycle on a controllable clock."""

import pytest

from x0tta6bl4.governance import (
    Action,
    ActionKind,
    CloseReason,
    ExecutionFailed,
    FailedPrecondition,
    NotFound,
    PermissionDenied,
    ProposalAutoApproved,
    ProposalCanceled,
    ProposalClosed,
    ProposalExecuted,
    ProposalExpired,
    ProposalState,
    Severity,
    VoteChoice,
    decide,
)

YES, NO, ABSTAIN = VoteChoice.YES, VoteChoice.NO, VoteChoice.ABSTAIN
S = ProposalState


@pytest.fixture
def three(h):
    return h, h.register_many(3, 100)


def test_active_until_period_end_then_passed_at_tick(three):
    h, (a, b, _c) = three
    p = h.propose(duration_s=100, execution_window_s=50)
    assert p.state is S.ACTIVE and p.closes_at == h.T0 + 100
    h.vote(p.proposal_id, a, YES, 100)
    h.vote(p.proposal_id, b, YES, 100)
    h.clock.advance(99.999)
    assert h.tick() == ()
    h.clock.advance(0.001)                                    # now == closes_at closes
    (closed,) = h.tick()
    assert isinstance(closed, ProposalClosed) and closed.watch_kind == "passed"
    assert closed.outcome is S.PASSED and not closed.early and closed.at == h.T0 + 100
    p = h.engine.get_proposal(p.proposal_id)
    assert p.state is S.PASSED and p.closed_at == h.T0 + 100 and p.execution_deadline == h.T0 + 150
    assert h.tick() == ()                                     # nothing more to do


def test_rejected_reasons(three):
    h, (a, b, _c) = three
    q = h.propose(duration_s=10)
    t = h.propose(duration_s=10)
    h.vote(t.proposal_id, a, NO, 100)
    h.vote(t.proposal_id, b, NO, 100)
    h.clock.advance(10)
    c1, c2 = h.tick()
    assert (c1.proposal_id, c1.outcome, c1.reason) == (q.proposal_id, S.REJECTED, CloseReason.QUORUM_NOT_REACHED)
    assert (c2.proposal_id, c2.outcome, c2.reason) == (t.proposal_id, S.REJECTED, CloseReason.THRESHOLD_NOT_MET)
    assert c1.watch_kind == "rejected"
    # rejected is terminal
    assert h.tick(h.clock() + 10_000) == ()
    with pytest.raises(FailedPrecondition, match="REJECTED"):
        h.report(q.proposal_id, True)


def test_early_close_when_every_eligible_voter_has_voted(three):
    h, (a, b, c) = three
    p = h.propose(duration_s=3600)
    h.vote(p.proposal_id, a, YES, 100)
    h.vote(p.proposal_id, b, NO, 9)
    h.clock.advance(7)
    r = h.vote(p.proposal_id, c, ABSTAIN, 25)                # turnout (10+3+5)/30 = 0.6
    _cast, closed = r.events
    assert isinstance(closed, ProposalClosed) and closed.early and closed.at == h.T0 + 7
    assert closed.outcome is S.PASSED
    assert r.proposal.state is S.PASSED and r.proposal.closed_early
    assert r.proposal.execution_deadline == h.T0 + 7 + 600


def test_no_early_close_while_an_eligible_voter_is_missing_even_if_outcome_looks_clear(h):
    whales = h.register_many(2, 10_000)
    minnow = h.node("minnow")
    h.register(minnow, 1)
    p = h.propose(duration_s=100)
    for w in whales:
        h.vote(p.proposal_id, w, YES, 10_000)
    # the voters who already voted could still change their minds, so stay open
    assert h.engine.get_proposal(p.proposal_id).state is S.ACTIVE
    h.vote(p.proposal_id, whales[0], NO, 10_000)             # ... and indeed they can
    assert h.engine.tally(p.proposal_id).approval == 0.5
    h.vote(p.proposal_id, minnow, YES, 1)                     # last eligible voter closes it
    assert h.engine.get_proposal(p.proposal_id).state is S.PASSED  # 101/(101+100) > 0.5


def test_late_registrants_do_not_block_early_close(h):
    a = h.node(1)
    h.register(a, 100)
    p = h.propose()
    h.register(h.node(2), 100)
    r = h.vote(p.proposal_id, a, YES, 100)
    assert r.proposal.state is S.PASSED


def test_executed_on_success_report(three):
    h, (a, b, _c) = three
    p = h.propose(duration_s=10, execution_window_s=60)
    h.vote(p.proposal_id, a, YES, 100)
    h.vote(p.proposal_id, b, YES, 100)
    h.clock.advance(10)
    h.tick()
    h.clock.advance(30)
    (failed,) = h.report(p.proposal_id, False, "node-3 unreachable")
    assert isinstance(failed, ExecutionFailed)
    mid = h.engine.get_proposal(p.proposal_id)
    assert mid.state is S.PASSED and mid.execution_attempts == 1 and mid.last_execution_detail == "node-3 unreachable"
    h.clock.advance(29.999)
    (done,) = h.report(p.proposal_id, True, "rerouted")
    assert isinstance(done, ProposalExecuted) and done.watch_kind == "executed"
    final = h.engine.get_proposal(p.proposal_id)
    assert final.state is S.EXECUTED and final.finished_at == h.clock() and final.execution_attempts == 2
    # duplicate success report from an at-least-once executor: no-op
    assert h.report(p.proposal_id, True) == ()
    with pytest.raises(FailedPrecondition, match="EXECUTED"):
        h.report(p.proposal_id, False)
    assert h.tick(h.clock() + 1e6) == ()                      # executed never expires


def test_passed_but_not_executed_expires(three):
    h, (a, b, _c) = three
    p = h.propose(duration_s=10, execution_window_s=60)
    h.vote(p.proposal_id, a, YES, 100)
    h.vote(p.proposal_id, b, YES, 100)
    h.clock.advance(10)
    h.tick()
    h.clock.advance(59.999)
    assert h.tick() == ()
    h.clock.advance(0.001)
    with pytest.raises(FailedPrecondition, match="execution window"):
        h.report(p.proposal_id, True)                         # window over, even before tick
    (expired,) = h.tick()
    assert isinstance(expired, ProposalExpired) and expired.watch_kind == "expired"
    final = h.engine.get_proposal(p.proposal_id)
    assert final.state is S.EXPIRED and final.finished_at == h.clock()
    with pytest.raises(FailedPrecondition, match="EXPIRED"):
        h.report(p.proposal_id, True)


def test_late_tick_gives_the_executor_its_full_window(three):
    """Closing is stamped at tick time; the window counts from the close."""
    h, (a, b, _c) = three
    p = h.propose(duration_s=10, execution_window_s=60)
    h.vote(p.proposal_id, a, YES, 100)
    h.vote(p.proposal_id, b, YES, 100)
    h.clock.advance(1000)                                     # service was down
    (closed,) = h.tick()
    assert closed.outcome is S.PASSED
    assert h.engine.get_proposal(p.proposal_id).execution_deadline == h.clock() + 60


def test_tick_with_explicit_now(three):
    h, _ = three
    p = h.propose(duration_s=10)
    assert h.tick(h.T0 + 9) == ()
    (closed,) = h.tick(h.T0 + 10)
    assert closed.at == h.T0 + 10 and closed.proposal_id == p.proposal_id


def test_tick_handles_many_proposals_in_creation_order(three):
    h, (_a, _b, _c) = three
    ids = [h.propose(duration_s=10 + i).proposal_id for i in range(5)]
    h.clock.advance(100)
    events = h.tick()
    assert [e.proposal_id for e in events] == ids


def test_cancel_by_proposer_only_while_active(three):
    h, (a, b, _c) = three
    proposer = h.node("proposer")
    p = h.propose(proposer=proposer)
    with pytest.raises(PermissionDenied, match="only the proposer"):
        h.cancel(p.proposal_id, a)
    h.vote(p.proposal_id, a, YES, 4)
    (ev,) = h.cancel(p.proposal_id, proposer)
    assert isinstance(ev, ProposalCanceled) and ev.watch_kind == "canceled"
    final = h.engine.get_proposal(p.proposal_id)
    assert final.state is S.CANCELED and final.close_reason is CloseReason.CANCELED_BY_PROPOSER
    with pytest.raises(FailedPrecondition, match="CANCELED"):
        h.cancel(p.proposal_id, proposer)
    with pytest.raises(FailedPrecondition, match="CANCELED"):
        h.vote(p.proposal_id, b, YES, 4)
    with pytest.raises(FailedPrecondition, match="CANCELED"):
        h.report(p.proposal_id, True)
    assert h.tick(h.clock() + 1e6) == ()


def test_cannot_cancel_after_period_end_or_after_close(three):
    h, (_a, _b, _c) = three
    proposer = h.node("proposer")
    p = h.propose(proposer=proposer, duration_s=10)
    h.clock.advance(10)
    with pytest.raises(FailedPrecondition, match="voting period"):
        h.cancel(p.proposal_id, proposer)
    h.tick()
    with pytest.raises(FailedPrecondition, match="REJECTED"):
        h.cancel(p.proposal_id, proposer)


def test_cancel_unknown_proposal(three):
    h, _ = three
    with pytest.raises(NotFound, match="ghost"):
        h.cancel("ghost", h.node("proposer"))
    with pytest.raises(NotFound, match="ghost"):
        h.report("ghost", True)


def test_auto_execute_decision_is_recorded_as_auto_approved_and_executed(three):
    h, _ = three
    d = decide(0.97, Severity.CRITICAL)
    res = h.engine.create_from_decision(d, title="Isolate node-4", description="compromised",
                                        action=Action(ActionKind.ISOLATE, target_node="node-4"),
                                        proposer="spiffe://x0tta6bl4.mesh/service/planner", execution_window_s=30,
                                        cycle_id="cycle-1")
    (ev,) = res.events
    h.log += res.events
    assert isinstance(ev, ProposalAutoApproved) and ev.watch_kind == "passed"
    assert ev.confidence == 0.97 and ev.severity is Severity.CRITICAL and ev.reason == d.reason
    p = res.proposal
    assert p.state is S.PASSED and p.auto_approved and p.close_reason is CloseReason.AUTO_APPROVED
    assert p.execution_deadline == h.T0 + 30 and p.cycle_id == "cycle-1"
    assert h.engine.tally(p.proposal_id).voters == 0
    h.clock.advance(5)
    h.report(p.proposal_id, True, "isolated")
    assert h.engine.get_proposal(p.proposal_id).state is S.EXECUTED


def test_auto_approved_proposal_expires_if_not_executed(three):
    h, _ = three
    res = h.engine.create_from_decision(decide(0.95, "critical"), title="t", description="",
                                        action=Action(ActionKind.RESTART), proposer="planner",
                                        execution_window_s=30)
    h.clock.advance(30)
    (ev,) = h.tick()
    assert isinstance(ev, ProposalExpired) and ev.proposal_id == res.proposal.proposal_id


def test_vote_decisions_open_proposals_with_policy_parameters(three):
    h, _ = three
    act = Action(ActionKind.REROUTE, {"avoid": "node-2"})
    emerg = h.engine.create_from_decision(decide(0.85, Severity.HIGH), title="e", description="",
                                          action=act, proposer="planner").proposal
    std = h.engine.create_from_decision(decide(0.7, Severity.HIGH), title="s", description="",
                                        action=act, proposer="planner").proposal
    assert (emerg.state, emerg.duration_s, emerg.quorum) == (S.ACTIVE, 300.0, 0.25)
    assert (std.state, std.duration_s, std.quorum) == (S.ACTIVE, 3600.0, 0.5)


def test_observe_decision_creates_nothing(three):
    h, _ = three
    version = h.engine.state.version
    res = h.engine.create_from_decision(decide(0.5, Severity.CRITICAL), title="o", description="",
                                        action=Action(ActionKind.RESTART), proposer="planner")
    assert res.proposal is None and res.events == ()
    assert h.engine.state.version == version
