"""Error hierarchy: one base, typed subclasses carrying gRPC codes."""

import pytest

from x0tta6bl4.governance import (
    AlreadyExists,
    FailedPrecondition,
    GovernanceError,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    Unauthenticated,
    VoteChoice,
)


@pytest.mark.parametrize("cls, code", [
    (InvalidArgument, "INVALID_ARGUMENT"), (NotFound, "NOT_FOUND"),
    (FailedPrecondition, "FAILED_PRECONDITION"), (Unauthenticated, "UNAUTHENTICATED"),
    (AlreadyExists, "ALREADY_EXISTS"), (PermissionDenied, "PERMISSION_DENIED"),
])
def test_hierarchy_and_codes(cls, code):
    err = cls("thing is wrong")
    assert isinstance(err, GovernanceError) and err.code == code
    assert str(err) == err.message == "thing is wrong"
    # the error classes are distinct: none is a subclass of another
    others = {InvalidArgument, NotFound, FailedPrecondition, Unauthenticated, AlreadyExists, PermissionDenied} - {cls}
    assert not any(issubclass(cls, o) for o in others)


def test_each_error_is_raised_by_the_engine_and_names_the_problem(h):
    a = h.node(1)
    h.register(a, 100)
    p = h.propose(proposer="ops", duration_s=10)
    cases = [
        (InvalidArgument, "tokens", lambda: h.vote(p.proposal_id, a, VoteChoice.YES, float("nan"))),
        (NotFound, "'nope'", lambda: h.engine.get_proposal("nope")),
        (FailedPrecondition, "balance", lambda: h.vote(p.proposal_id, a, VoteChoice.YES, 101)),
        (Unauthenticated, "node-2", lambda: h.vote(p.proposal_id, h.node(2), VoteChoice.YES, 1)),
        (AlreadyExists, "node-1", lambda: h.engine.register_voter(a, 5)),
        (PermissionDenied, "proposer", lambda: h.cancel(p.proposal_id, a)),
    ]
    for cls, needle, call in cases:
        with pytest.raises(cls) as info:
            call()
        assert needle in str(info.value)
        assert isinstance(info.value, GovernanceError)


def test_failed_commands_emit_nothing(h):
    a = h.node(1)
    h.register(a, 100)
    p = h.propose()
    before = (h.engine.state.version, len(h.log))
    for call in (lambda: h.vote(p.proposal_id, a, VoteChoice.YES, 0),
                 lambda: h.vote(p.proposal_id, a, VoteChoice.YES, 1000),
                 lambda: h.engine.register_voter(a, 1),
                 lambda: h.propose(title="")):
        with pytest.raises(GovernanceError):
            call()
    assert (h.engine.state.version, len(h.log)) == before
