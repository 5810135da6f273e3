"""Quadratic-voting arithmetic, quorum and threshold rules."""

import math

import pytest

from x0tta6bl4.governance import CloseReason, ProposalState, Tally, VoteChoice, quadratic_weight

YES, NO, ABSTAIN = VoteChoice.YES, VoteChoice.NO, VoteChoice.ABSTAIN


def test_weight_is_square_root_of_tokens():
    assert quadratic_weight(4) == 2.0
    assert quadratic_weight(100) == 10.0
    assert quadratic_weight(10_000) == 100.0
    assert quadratic_weight(2) == math.sqrt(2)


def test_spec_example_hundred_small_voters_outweigh_one_whale(h):
    small = h.register_many(100, 100)
    whale = h.node("whale")
    h.register(whale, 10_000)
    p = h.propose(quorum=0.5, threshold=0.5)
    assert p.eligible_weight == pytest.approx(1_100.0)   # 100 * sqrt(100) + sqrt(10_000)

    w = h.vote(p.proposal_id, whale, NO, 10_000)
    assert w.weight == 100.0
    for v in small:
        h.vote(p.proposal_id, v, YES, 100)

    final = h.engine.get_proposal(p.proposal_id)
    tally = final.final_tally
    assert tally.yes == 1_000.0           # 100 voters x sqrt(100)
    assert tally.no == 100.0              # sqrt(10,000): linear voting would have tied 10,000 : 10,000
    assert tally.turnout == 1.0
    assert final.state is ProposalState.PASSED
    assert final.close_reason is CloseReason.QUORUM_AND_THRESHOLD_MET


def test_partial_commitment_gives_partial_weight(h):
    a, _b = h.register_many(2, 100)
    p = h.propose()
    r = h.vote(p.proposal_id, a, YES, 25)
    assert r.weight == 5.0
    t = h.engine.tally(p.proposal_id)
    assert (t.yes, t.no, t.abstain, t.eligible, t.voters, t.eligible_voters) == (5.0, 0.0, 0.0, 20.0, 1, 2)
    assert t.turnout == 0.25


def test_quorum_is_inclusive_at_exact_boundary(h):
    voters = h.register_many(4, 100)                    # eligible weight 40
    p = h.propose(quorum=0.5, threshold=0.5)
    h.vote(p.proposal_id, voters[0], YES, 100)          # 10
    h.vote(p.proposal_id, voters[1], YES, 100)          # 10 -> turnout exactly 0.5
    h.clock.advance(3600)
    (closed,) = h.tick()
    assert closed.tally.turnout == 0.5
    assert closed.outcome is ProposalState.PASSED


def test_quorum_just_below_boundary_is_rejected(h):
    voters = h.register_many(4, 100)
    p = h.propose(quorum=0.5, threshold=0.5)
    h.vote(p.proposal_id, voters[0], YES, 100)
    h.vote(p.proposal_id, voters[1], YES, 99.99)        # 10 + 9.9995 < 20
    h.clock.advance(3600)
    (closed,) = h.tick()
    assert closed.outcome is ProposalState.REJECTED
    assert closed.reason is CloseReason.QUORUM_NOT_REACHED


def test_threshold_is_strict(h):
    voters = h.register_many(3, 100)
    p = h.propose(quorum=0.5, threshold=0.5)
    h.vote(p.proposal_id, voters[0], YES, 100)
    h.vote(p.proposal_id, voters[1], NO, 100)           # YES/(YES+NO) == 0.5, not > 0.5
    h.clock.advance(3600)
    (closed,) = h.tick()
    assert closed.tally.approval == 0.5
    assert closed.outcome is ProposalState.REJECTED
    assert closed.reason is CloseReason.THRESHOLD_NOT_MET


def test_abstain_counts_toward_quorum_only(h):
    a, b, c, _d = h.register_many(4, 100)
    p = h.propose(quorum=0.75, threshold=0.5)
    h.vote(p.proposal_id, a, YES, 100)
    h.vote(p.proposal_id, b, ABSTAIN, 100)
    h.vote(p.proposal_id, c, ABSTAIN, 100)              # turnout 30/40 = 0.75, approval 10/10
    h.clock.advance(3600)
    (closed,) = h.tick()
    assert closed.tally.abstain == 20.0
    assert closed.tally.approval == 1.0
    assert closed.outcome is ProposalState.PASSED



def test_without_the_abstentions_the_same_votes_miss_quorum(h):
    a, _b, _c, _d = h.register_many(4, 100)
    p = h.propose(quorum=0.75, threshold=0.5)
    h.vote(p.proposal_id, a, YES, 100)
    h.clock.advance(3600)
    (closed,) = h.tick()
    assert closed.reason is CloseReason.QUORUM_NOT_REACHED


def test_all_abstain_reaches_quorum_but_not_threshold(h):
    a, b = h.register_many(2, 100)
    p = h.propose(quorum=0.5, threshold=0.5)
    h.vote(p.proposal_id, a, ABSTAIN, 100)
    h.vote(p.proposal_id, b, ABSTAIN, 100)              # everyone voted -> closes early
    final = h.engine.get_proposal(p.proposal_id)
    assert final.final_tally.approval == 0.0
    assert final.close_reason is CloseReason.THRESHOLD_NOT_MET


def test_quorum_checked_before_threshold(h):
    voters = h.register_many(10, 100)
    p = h.propose(quorum=0.5, threshold=0.5)
    h.vote(p.proposal_id, voters[0], NO, 100)           # low turnout AND no approval
    h.clock.advance(3600)
    (closed,) = h.tick()
    assert closed.reason is CloseReason.QUORUM_NOT_REACHED


def test_threshold_one_can_never_pass(h):
    a, b = h.register_many(2, 100)
    p = h.propose(quorum=0.1, threshold=1.0)
    h.vote(p.proposal_id, a, YES, 100)
    h.vote(p.proposal_id, b, YES, 100)
    final = h.engine.get_proposal(p.proposal_id)
    assert final.final_tally.approval == 1.0
    assert final.close_reason is CloseReason.THRESHOLD_NOT_MET


def test_eligible_weight_is_snapshot_at_creation(h):
    early = h.register_many(2, 100)
    p = h.propose()
    late = h.node("late")
    h.register(late, 1_000_000)
    assert set(p.eligible) == set(early)
    assert h.engine.tally(p.proposal_id).eligible == 20.0
    q = h.propose()
    assert h.engine.tally(q.proposal_id).eligible == 20.0 + 1000.0


def test_tally_properties_on_empty_tally():
    t = Tally()
    assert t.cast == 0.0 and t.turnout == 0.0 and t.approval == 0.0


def test_running_tally_equals_a_full_recount_under_vote_changes():
    """The O(1) running tally (exact partial sums) matches compute_tally bit for bit, whatever the
    order of votes and changes of mind."""
    import random
    from types import MappingProxyType

    from x0tta6bl4.governance import Action, Proposal, VoteRecord
    from x0tta6bl4.governance.tally import ExactSum, RunningTally, compute_tally

    def make_proposal(eligible):
        return Proposal(proposal_id="p", title="t", description="", action=Action(kind="config_change"),
                        proposer="x", created_at=0.0, duration_s=60.0, quorum=0.5, threshold=0.5,
                        execution_window_s=60.0, eligible=MappingProxyType(eligible))

    def vote_record(voter, choice, tokens, step):
        return VoteRecord(f"id{step}", "p", voter, choice, tokens, quadratic_weight(tokens),
                          step.to_bytes(16, "big"), b"s", float(step))

    rng = random.Random(7)
    eligible = {f"v{i}": 10_000.0 for i in range(300)}
    p = make_proposal(eligible)
    votes: dict = {}
    running = RunningTally()
    for step in range(3000):
        voter = f"v{rng.randrange(300)}"
        tokens = rng.choice([1e-9, 0.1, 1.0, 3.0, 7.77, 123.456, 9999.0, rng.uniform(0, 10_000)])
        rec = vote_record(voter, rng.choice(list(VoteChoice)), tokens, step)
        running.replace(votes.get(voter), rec)
        votes[voter] = rec
        if step % 97 == 0:
            assert running.tally(p) == compute_tally(p, votes)
    assert running.tally(p) == compute_tally(p, votes)
    s = ExactSum()
    xs = [rng.uniform(-1e16, 1e16) for _ in range(200)] + [1e-300, 3.3, -3.3]
    for x in xs:
        s.add(x)
    assert s.value == math.fsum(xs)
    for x in xs[:100]:
        s.add(-x)
    assert s.value == math.fsum(xs[100:])
