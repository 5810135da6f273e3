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
