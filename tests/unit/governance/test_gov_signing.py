"""Canonical vote signing payload."""

import struct

import pytest

from x0tta6bl4.governance import VOTE_DOMAIN, InvalidArgument, VoteChoice, vote_signing_payload

N = bytes(range(16))


def test_exact_encoding():
    got = vote_signing_payload("p1", "v", VoteChoice.YES, 4, N)
    expected = (struct.pack(">I", 17) + b"x0tta6bl4/vote/v1"
                + struct.pack(">I", 2) + b"p1"
                + struct.pack(">I", 1) + b"v"
                + struct.pack(">I", 3) + b"YES"
                + struct.pack(">I", 8) + struct.pack(">d", 4.0)
                + struct.pack(">I", 16) + N)
    assert got == expected
    assert VOTE_DOMAIN == b"x0tta6bl4/vote/v1"


def test_deterministic_and_numeric_type_insensitive():
    a = vote_signing_payload("p1", "voter", "NO", 100, N)
    assert a == vote_signing_payload("p1", "voter", VoteChoice.NO, 100.0, N)
    assert a == vote_signing_payload("p1", "voter", "NO", 100, bytearray(N))


def test_length_prefix_prevents_field_shifting():
    # Without length prefixes "ab"+"c" and "a"+"bc" would concatenate identically.
    assert vote_signing_payload("ab", "c", "YES", 1, N) != vote_signing_payload("a", "bc", "YES", 1, N)


@pytest.mark.parametrize("change", [
    dict(proposal_id="p2"), dict(voter="w"), dict(choice="ABSTAIN"), dict(tokens=4.000001),
    dict(nonce=bytes(16)),
])
def test_every_field_is_bound(change):
    base = dict(proposal_id="p1", voter="v", choice="YES", tokens=4.0, nonce=N)
    assert vote_signing_payload(**base) != vote_signing_payload(**{**base, **change})


@pytest.mark.parametrize("kw", [dict(choice="MAYBE"), dict(tokens="4"), dict(tokens=True), dict(nonce="abc"),
                                dict(proposal_id=1)])
def test_rejects_bad_types(kw):
    base = dict(proposal_id="p1", voter="v", choice="YES", tokens=4.0, nonce=N)
    with pytest.raises(InvalidArgument):
        vote_signing_payload(**{**base, **kw})


# ---- proposals -----------------------------------------------------------------------------

def _proposal(**change):
    from x0tta6bl4.governance import Action
    base = dict(title="reroute n3", description="why", action=Action(kind="reroute", target_node="n3",
                                                                      params={"via": "n4", "a": "1"}),
                proposer="spiffe://td/node/alice", duration_s=60, quorum=0.5, threshold=0.5,
                execution_window_s=0, request_id="", nonce=N)
    return {**base, **change}


def test_proposal_payload_is_domain_separated_and_deterministic():
    from x0tta6bl4.governance import PROPOSE_DOMAIN, Action, proposal_signing_payload
    a = proposal_signing_payload(**_proposal())
    assert a.startswith(struct.pack(">I", len(PROPOSE_DOMAIN)) + PROPOSE_DOMAIN)
    assert PROPOSE_DOMAIN not in (VOTE_DOMAIN, b"x0tta6bl4/cancel/v1")
    # numbers by value, params in any order, bytearray nonce: the same bytes
    same = _proposal(duration_s=60.0, action=Action(kind="reroute", target_node="n3", params={"a": "1", "via": "n4"}),
                     nonce=bytearray(N))
    assert proposal_signing_payload(**same) == a


@pytest.mark.parametrize("change", [
    dict(title="reroute n4"), dict(description="why not"), dict(proposer="spiffe://td/node/bob"),
    dict(duration_s=61), dict(quorum=0.6), dict(threshold=0.9), dict(execution_window_s=30),
    dict(request_id="r1"), dict(nonce=bytes(16)), "kind", "target", "param value", "param key", "extra param",
])
def test_every_proposal_field_is_bound(change):
    from x0tta6bl4.governance import Action, proposal_signing_payload
    base = _proposal()
    act = base["action"]
    if change == "kind":
        change = dict(action=Action(kind="isolate", target_node="n3", params=dict(act.params)))
    elif change == "target":
        change = dict(action=Action(kind="reroute", target_node="n5", params=dict(act.params)))
    elif change == "param value":
        change = dict(action=Action(kind="reroute", target_node="n3", params={"via": "n5", "a": "1"}))
    elif change == "param key":
        change = dict(action=Action(kind="reroute", target_node="n3", params={"vib": "n4", "a": "1"}))
    elif change == "extra param":
        change = dict(action=Action(kind="reroute", target_node="n3", params={**act.params, "b": ""}))
    assert proposal_signing_payload(**base) != proposal_signing_payload(**{**base, **change})


def test_proposal_param_boundaries_cannot_shift():
    from x0tta6bl4.governance import Action, proposal_signing_payload
    one = _proposal(action=Action(kind="deploy", params={"ab": "c"}))
    other = _proposal(action=Action(kind="deploy", params={"a": "bc"}))
    assert proposal_signing_payload(**one) != proposal_signing_payload(**other)


@pytest.mark.parametrize("kw", [dict(title=None), dict(quorum="0.5"), dict(duration_s=True), dict(nonce="abc"),
                                dict(action={"kind": "reroute"}), dict(request_id=7)])
def test_proposal_payload_rejects_bad_types(kw):
    from x0tta6bl4.governance import proposal_signing_payload
    with pytest.raises(InvalidArgument):
        proposal_signing_payload(**_proposal(**kw))


def test_default_request_id_is_a_digest_of_what_was_signed():
    from x0tta6bl4.governance import default_request_id, proposal_signing_payload
    a = default_request_id(proposal_signing_payload(**_proposal()))
    assert a == default_request_id(proposal_signing_payload(**_proposal()))
    assert a.startswith("p-") and len(a) == 34
    assert a != default_request_id(proposal_signing_payload(**_proposal(nonce=bytes(16))))
