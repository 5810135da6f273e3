"""Casting votes: validation, authentication, changes, idempotency, replay."""

import math

import pytest

from x0tta6bl4.governance import (
    Action,
    ActionKind,
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    ProposalState,
    Unauthenticated,
    VoteCast,
    VoteChoice,
    default_vote_id,
    vote_signing_payload,
)

YES, NO, ABSTAIN = VoteChoice.YES, VoteChoice.NO, VoteChoice.ABSTAIN


@pytest.fixture
def setup(h):
    voters = h.register_many(3, 100)
    p = h.propose()
    return h, p.proposal_id, voters


def test_vote_records_event_and_weight(setup):
    h, pid, (a, _b, _c) = setup
    r = h.vote(pid, a, YES, 49, vote_id="vote-1")
    (event,) = r.events
    assert isinstance(event, VoteCast)
    assert (event.vote_id, event.voter_id, event.choice, event.tokens, event.weight) == ("vote-1", a, YES, 49.0, 7.0)
    assert r.vote_id == "vote-1" and r.weight == 7.0 and not r.duplicate
    assert r.proposal.state is ProposalState.ACTIVE
    assert h.engine.get_vote("vote-1").voter_id == a


def test_full_balance_allowed_more_is_failed_precondition(setup):
    h, pid, (a, b, _c) = setup
    h.vote(pid, a, YES, 100)
    with pytest.raises(FailedPrecondition, match="balance"):
        h.vote(pid, b, YES, 100.000001)


@pytest.mark.parametrize("tokens", [0, 0.0, -0.0, -1, math.nan, math.inf, -math.inf])
def test_invalid_token_amounts(setup, tokens):
    h, pid, (a, _b, _c) = setup
    with pytest.raises(InvalidArgument, match="tokens"):
        h.vote(pid, a, YES, tokens, signature=b"x")
    assert h.engine.votes(pid) == {}


@pytest.mark.parametrize("tokens", [True, "10", None])
def test_non_numeric_tokens(setup, tokens):
    h, pid, (a, _b, _c) = setup
    with pytest.raises(InvalidArgument, match="tokens"):
        h.engine.cast_vote(pid, a, YES, tokens, h.fresh_nonce(), b"sig")


def test_choice_must_be_valid(setup):
    h, pid, (a, _b, _c) = setup
    with pytest.raises(InvalidArgument, match="choice"):
        h.engine.cast_vote(pid, a, "UNSPECIFIED", 1, h.fresh_nonce(), b"sig")
    assert h.vote(pid, a, "NO", 1).vote.choice is NO  # string values accepted


@pytest.mark.parametrize("nonce", [b"", b"x" * 15, b"x" * 65, "a" * 16])
def test_nonce_length_and_type(setup, nonce):
    h, pid, (a, _b, _c) = setup
    with pytest.raises(InvalidArgument, match="nonce"):
        h.engine.cast_vote(pid, a, YES, 1, nonce, b"sig")


def test_empty_signature_is_invalid_argument(setup):
    h, pid, (a, _b, _c) = setup
    with pytest.raises(InvalidArgument, match="signature"):
        h.engine.cast_vote(pid, a, YES, 1, h.fresh_nonce(), b"")


def test_unknown_identity_is_unauthenticated(setup):
    h, pid, _ = setup
    stranger = h.node("stranger")
    with pytest.raises(Unauthenticated, match="stranger"):
        h.vote(pid, stranger, YES, 1)


def test_bad_signature_is_unauthenticated(setup):
    h, pid, (a, b, _c) = setup
    nonce = h.fresh_nonce()
    # b signs a's vote: valid signature, wrong key.
    forged = h.sign(b, vote_signing_payload(pid, a, YES, 100, nonce))
    with pytest.raises(Unauthenticated, match="does not verify"):
        h.vote(pid, a, YES, 100, nonce=nonce, signature=forged)
    # a's signature for 1 token does not cover 100 tokens.
    sig_for_1 = h.sign(a, vote_signing_payload(pid, a, YES, 1, nonce))
    with pytest.raises(Unauthenticated):
        h.vote(pid, a, YES, 100, nonce=nonce, signature=sig_for_1)
    assert h.engine.votes(pid) == {}


def test_verifier_exception_is_unauthenticated(h):
    from x0tta6bl4.governance import GovernanceEngine

    def broken(voter, payload, sig):
        raise ValueError("malformed signature encoding")

    eng = GovernanceEngine(broken, h.clock)
    eng.register_voter("v", 10)
    pid = eng.create_proposal(title="t", description="", action=Action(ActionKind.RESTART), proposer="p",
                              duration_s=10, quorum=0.5, threshold=0.5).proposal.proposal_id
    with pytest.raises(Unauthenticated, match="ValueError"):
        eng.cast_vote(pid, "v", YES, 1, bytes(16), b"sig")


def test_truthy_non_bool_verifier_result_is_rejected(h):
    from x0tta6bl4.governance import GovernanceEngine
    eng = GovernanceEngine(lambda v, p, s: "yes", h.clock)
    eng.register_voter("v", 10)
    pid = eng.create_proposal(title="t", description="", action=Action(ActionKind.RESTART), proposer="p",
                              duration_s=10, quorum=0.5, threshold=0.5).proposal.proposal_id
    with pytest.raises(Unauthenticated):
        eng.cast_vote(pid, "v", YES, 1, bytes(16), b"sig")


def test_unknown_proposal_is_not_found(setup):
    h, _, (a, _b, _c) = setup
    with pytest.raises(NotFound, match="nope"):
        h.vote("nope", a, YES, 1)


def test_voter_registered_after_creation_is_not_eligible(setup):
    h, pid, _ = setup
    late = h.node("late")
    h.register(late, 100)
    with pytest.raises(FailedPrecondition, match="not eligible"):
        h.vote(pid, late, YES, 1)


def test_changed_vote_replaces_previous_never_both(setup):
    h, pid, (a, _b, _c) = setup
    h.vote(pid, a, YES, 100)
    h.vote(pid, a, NO, 25)
    t = h.engine.tally(pid)
    assert (t.yes, t.no, t.voters) == (0.0, 5.0, 1)
    assert h.engine.votes(pid)[a].choice is NO
    h.vote(pid, a, NO, 64)
    assert h.engine.tally(pid).no == 8.0
    h.clock.advance(3600)
    (closed,) = h.tick()
    assert closed.tally.no == 8.0 and closed.tally.yes == 0.0


def test_retry_with_same_vote_id_is_applied_once(setup):
    h, pid, (a, _b, _c) = setup
    nonce = h.fresh_nonce()
    first = h.vote(pid, a, YES, 36, nonce=nonce, vote_id="v-1")
    version = h.engine.state.version
    h.clock.advance(5)
    again = h.vote(pid, a, YES, 36, nonce=nonce, vote_id="v-1")
    assert again.duplicate and again.events == ()
    assert again.vote == first.vote                      # the existing result, original timestamp
    assert h.engine.state.version == version
    assert h.engine.tally(pid).yes == 6.0


def test_retry_after_vote_was_superseded_returns_original_without_reapplying(setup):
    h, pid, (a, _b, _c) = setup
    n1 = h.fresh_nonce()
    h.vote(pid, a, YES, 100, nonce=n1, vote_id="v-1")
    h.vote(pid, a, NO, 100, vote_id="v-2")
    stale = h.vote(pid, a, YES, 100, nonce=n1, vote_id="v-1")   # late network retry
    assert stale.duplicate and stale.vote.choice is YES
    assert h.engine.votes(pid)[a].vote_id == "v-2"           # still the latest vote
    assert h.engine.tally(pid).no == 10.0 and h.engine.tally(pid).yes == 0.0


def test_retry_is_idempotent_even_after_close(setup):
    h, pid, (a, _b, _c) = setup
    n = h.fresh_nonce()
    h.vote(pid, a, YES, 100, nonce=n, vote_id="v-1")
    h.clock.advance(3600)
    h.tick()
    assert h.vote(pid, a, YES, 100, nonce=n, vote_id="v-1").duplicate


def test_default_vote_id_makes_resent_signed_vote_idempotent(setup):
    h, pid, (a, _b, _c) = setup
    n = h.fresh_nonce()
    r1 = h.vote(pid, a, ABSTAIN, 9, nonce=n)
    assert r1.vote_id == default_vote_id(vote_signing_payload(pid, a, ABSTAIN, 9, n))
    r2 = h.vote(pid, a, ABSTAIN, 9, nonce=n)
    assert r2.duplicate and r2.vote_id == r1.vote_id and r2.events == ()


def test_same_vote_id_different_content_is_already_exists(setup):
    h, pid, (a, b, _c) = setup
    h.vote(pid, a, YES, 1, vote_id="v-1")
    with pytest.raises(AlreadyExists, match="v-1"):
        h.vote(pid, a, NO, 1, vote_id="v-1")
    with pytest.raises(AlreadyExists, match="v-1"):
        h.vote(pid, b, YES, 1, vote_id="v-1")


def test_nonce_replay_with_different_content_is_rejected(setup):
    h, pid, (a, _b, _c) = setup
    n = h.fresh_nonce()
    h.vote(pid, a, YES, 100, nonce=n, vote_id="v-1")
    with pytest.raises(AlreadyExists, match="nonce"):
        h.vote(pid, a, NO, 100, nonce=n, vote_id="v-2")       # properly signed, but nonce reused
    assert h.engine.votes(pid)[a].choice is YES


def test_replayed_signed_vote_under_new_vote_id_cannot_flip_a_changed_vote(setup):
    h, pid, (a, _b, _c) = setup
    n1 = h.fresh_nonce()
    payload = vote_signing_payload(pid, a, YES, 100, n1)
    captured = h.sign(a, payload)
    h.vote(pid, a, YES, 100, nonce=n1, signature=captured, vote_id="v-1")
    h.vote(pid, a, NO, 100, vote_id="v-2")
    # attacker re-submits the captured YES with a fresh vote id
    r = h.engine.cast_vote(pid, a, YES, 100, n1, captured, vote_id="attacker-1")
    assert r.duplicate and r.events == () and r.vote.vote_id == "v-1"
    assert h.engine.votes(pid)[a].choice is NO


def test_same_nonce_may_not_be_reused_on_another_proposal(setup):
    h, pid, (a, _b, _c) = setup
    other = h.propose(title="other").proposal_id
    n = h.fresh_nonce()
    h.vote(pid, a, YES, 1, nonce=n)
    with pytest.raises(AlreadyExists, match="nonce"):
        h.vote(other, a, YES, 1, nonce=n)


def test_voting_after_period_end_is_rejected_even_before_tick(setup):
    h, pid, (a, b, _c) = setup
    h.clock.advance(3600 - 0.001)
    h.vote(pid, a, YES, 1)                                   # still open
    h.clock.advance(0.001)                                   # now == closes_at
    with pytest.raises(FailedPrecondition, match="voting period"):
        h.vote(pid, b, YES, 1)


def test_voting_on_closed_proposal_is_rejected(setup):
    h, pid, (a, _b, _c) = setup
    h.clock.advance(3600)
    h.tick()
    with pytest.raises(FailedPrecondition, match="REJECTED"):
        h.vote(pid, a, YES, 1)


def test_tokens_are_committed_per_proposal_not_spent(setup):
    h, pid, (a, _b, _c) = setup
    other = h.propose(title="other").proposal_id
    h.vote(pid, a, YES, 100)
    h.vote(other, a, YES, 100)
    assert h.engine.get_balance(a) == 100.0
