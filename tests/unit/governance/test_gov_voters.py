"""Voter ledger: registration, balances, one identity one entry."""

import math

import pytest

from x0tta6bl4.governance import AlreadyExists, InvalidArgument, NotFound, VoterRegistered


def test_register_and_get_balance(h):
    v = h.node(1)
    (event,) = h.engine.register_voter(v, 250, key_id="key-1")
    assert event == VoterRegistered(voter_id=v, balance=250.0, at=h.T0, key_id="key-1")
    assert h.engine.get_balance(v) == 250.0
    assert h.engine.state.voters[v].max_weight == math.sqrt(250)


def test_reregistration_is_rejected_and_changes_nothing(h):
    v = h.node(1)
    h.register(v, 100)
    version = h.engine.state.version
    with pytest.raises(AlreadyExists, match="node-1"):
        h.engine.register_voter(v, 10_000)
    assert h.engine.get_balance(v) == 100.0
    assert h.engine.state.version == version


def test_unknown_voter_balance_is_not_found(h):
    with pytest.raises(NotFound, match="node-9"):
        h.engine.get_balance(h.node(9))


@pytest.mark.parametrize("balance", [0, -1, math.nan, math.inf, True, "100", None])
def test_invalid_balance(h, balance):
    with pytest.raises(InvalidArgument, match="balance"):
        h.engine.register_voter(h.node(1), balance)
    assert h.engine.state.voters == {}


@pytest.mark.parametrize("voter", ["", "has space", "tab\there", "x" * 513, 42, None])
def test_invalid_identity(h, voter):
    with pytest.raises(InvalidArgument, match="voter"):
        h.engine.register_voter(voter, 100)


def test_voter_key_rotation_is_an_event_that_replays(h):
    import json

    from x0tta6bl4.governance import VoterKeyRotated, event_from_dict, event_to_dict, fold

    v = h.node("rot")
    log = list(h.engine.register_voter(v, 100, key_id="k1", public_key=b"\x01" * 32))
    (ev,) = h.engine.rotate_voter_key(v, key_id="k2", public_key=b"\x02" * 32)
    log.append(ev)
    assert isinstance(ev, VoterKeyRotated) and ev.voter_id == v
    voter = h.engine.state.voters[v]
    assert (voter.key_id, voter.public_key, voter.balance) == ("k2", b"\x02" * 32, 100)
    assert h.engine.rotate_voter_key(v, key_id="k2", public_key=b"\x02" * 32) == ()   # same key: no event
    assert event_from_dict(json.loads(json.dumps(event_to_dict(ev)))) == ev
    assert fold(log).voters[v] == voter
    with pytest.raises(NotFound):
        h.engine.rotate_voter_key(h.node("nobody"), key_id="k", public_key=b"\x03")
    with pytest.raises(InvalidArgument):
        h.engine.rotate_voter_key(v, key_id="k", public_key=b"")
