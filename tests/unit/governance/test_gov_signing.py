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
