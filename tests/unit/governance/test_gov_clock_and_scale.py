"""ManualClock behaviour and a scale sanity check (no sleeping anywhere)."""

import hashlib
import math

import pytest

from x0tta6bl4.governance import (
    Action,
    ActionKind,
    Clock,
    GovernanceEngine,
    ManualClock,
    ProposalState,
    VoteChoice,
)


def test_manual_clock():
    c = ManualClock(10.0)
    assert isinstance(c, Clock)
    assert c() == 10.0 == c.now
    assert c.advance(2.5) == 12.5
    assert c.set(20) == 20.0
    with pytest.raises(ValueError):
        c.advance(-1)
    with pytest.raises(ValueError):
        c.advance(math.nan)
    with pytest.raises(ValueError):
        c.set(19)


def test_engine_rejects_broken_clock_and_verifier():
    with pytest.raises(TypeError):
        GovernanceEngine("not callable", ManualClock())
    with pytest.raises(TypeError):
        GovernanceEngine(lambda *a: True, 5.0)
    eng = GovernanceEngine(lambda *a: True, lambda: math.nan)
    with pytest.raises(TypeError, match="clock"):
        eng.register_voter("v", 1)


def test_terminal_states():
    assert {s for s in ProposalState if s.is_terminal} == {
        ProposalState.REJECTED, ProposalState.EXECUTED, ProposalState.EXPIRED, ProposalState.CANCELED}


def test_two_thousand_voters_close_early_and_stay_fast():
    clock = ManualClock(0.0)
    eng = GovernanceEngine(lambda v, p, s: s == hashlib.sha256(v.encode() + p).digest(), clock)
    voters = [f"spiffe://x0tta6bl4.mesh/node/node-{i}" for i in range(2000)]
    for v in voters:
        eng.register_voter(v, 100)
    pid = eng.create_proposal(title="scale", description="", action=Action(ActionKind.CONFIG_CHANGE),
                              proposer="ops", duration_s=60, quorum=0.5, threshold=0.5).proposal.proposal_id
    from x0tta6bl4.governance import vote_signing_payload
    for i, v in enumerate(voters):
        choice = VoteChoice.YES if i % 3 else VoteChoice.NO
        nonce = i.to_bytes(16, "big")
        sig = hashlib.sha256(v.encode() + vote_signing_payload(pid, v, choice, 100, nonce)).digest()
        r = eng.cast_vote(pid, v, choice, 100, nonce, sig)
    assert r.proposal.state is ProposalState.PASSED and r.proposal.closed_early
    t = r.proposal.final_tally
    assert t.eligible == 20_000.0 and t.cast == 20_000.0 and t.voters == 2000
