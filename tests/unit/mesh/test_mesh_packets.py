"""Wire-format tests: round trips, strictness, and fuzzing (only PacketError may escape)."""

from __future__ import annotations

import os
import random
import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from x0tta6bl4.mesh import packets as P
from x0tta6bl4.mesh.packets import (
    DATA,
    HELLO,
    MAX_DATAGRAM,
    MLDSA65_SIG_LEN,
    RERR,
    RREP,
    RREQ,
    HelloBody,
    HelloNeighbour,
    Packet,
    PacketError,
    RerrBody,
    RrepBody,
    RreqBody,
    decode,
    encode,
    signing_bytes,
)

ID_ALPHABET = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._:-"
ids = st.text(ID_ALPHABET, min_size=1, max_size=32)
u32 = st.integers(0, 0xFFFFFFFF)
u64 = st.integers(0, 0xFFFFFFFFFFFFFFFF)
key_ids = st.one_of(st.just(P.NO_KEY), st.binary(min_size=8, max_size=8).filter(lambda b: b != P.NO_KEY))


@st.composite
def packets(draw, ptype=None):
    ptype = draw(st.sampled_from([DATA, RREQ, RREP, RERR, HELLO])) if ptype is None else ptype
    flags = draw(st.integers(0, 255)) & P.ALLOWED_FLAGS[ptype]
    dest = draw(ids) if ptype in (DATA, RREQ, RREP) else draw(st.one_of(st.just(""), ids))
    if ptype == DATA:
        body = draw(st.binary(max_size=600))
    elif ptype == RREQ:  # flag M (0x20) iff the body carries a metric
        metric = draw(st.integers(0, P.METRIC_INF)) if flags & P.FLAG_RREQ_M else None
        body = RreqBody(tuple(draw(st.lists(ids, max_size=32))), metric)
    elif ptype == RREP:  # flag M (0x04) iff the body carries a metric
        body = RrepBody(draw(u32), draw(st.integers(0, P.METRIC_INF)) if flags & P.FLAG_RREP_M else None)
    elif ptype == RERR:
        body = RerrBody(tuple(draw(st.lists(st.tuples(ids, u32), min_size=1, max_size=20))))
    else:
        nbs = draw(
            st.lists(
                st.builds(HelloNeighbour, ids, st.integers(0, 1000), u64, u32),
                max_size=20,
            )
        )
        body = HelloBody(draw(st.integers(-128, 127)), tuple(nbs))
    key_id = draw(key_ids)
    sig = b"" if key_id == P.NO_KEY else draw(st.one_of(st.binary(max_size=64), st.just(os.urandom(MLDSA65_SIG_LEN))))
    counter = 0 if key_id == P.NO_KEY else draw(u64)
    return Packet(
        type=ptype,
        sender=draw(ids),
        origin=draw(ids),
        dest=dest,
        flags=flags,
        ttl=draw(st.integers(1, 255)),
        hop_count=draw(st.integers(0, 255)),
        origin_seq=draw(u32),
        dest_seq=draw(u32),
        packet_id=draw(u32),
        timestamp_ns=draw(u64),
        body=body,
        key_id=key_id,
        signature=sig,
        counter=counter,
    )


def _fits(p: Packet) -> bool:
    try:
        encode(p)
        return True
    except PacketError as e:
        assert e.reason == "oversized"
        return False


@pytest.mark.parametrize("ptype", [DATA, RREQ, RREP, RERR, HELLO])
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_round_trip_every_type(ptype, data):
    p = data.draw(packets(ptype))
    if not _fits(p):
        return
    wire = encode(p)
    assert len(wire) <= MAX_DATAGRAM
    q = decode(wire)
    assert q == p
    assert encode(q) == wire
    # signed region is the datagram minus sig_len + signature
    assert wire.startswith(signing_bytes(p))
    assert len(wire) == len(signing_bytes(p)) + 2 + len(p.signature)


def test_mldsa65_signature_fits_with_data():
    p = Packet(DATA, "n1", "n1", "n2", body=b"x" * 4000, key_id=b"K" * 8, signature=b"\x01" * MLDSA65_SIG_LEN)
    q = decode(encode(p))
    assert len(q.signature) == 3309 and q.key_id == b"K" * 8


def test_header_layout_is_documented_32_bytes():
    p = Packet(RREQ, "a", "bb", "ccc", ttl=7, hop_count=2, origin_seq=1, dest_seq=2, packet_id=3, timestamp_ns=4)
    w = encode(p)
    assert w[:2] == b"X6" and w[2] == 2 and w[3] == RREQ and w[5] == 7 and w[6] == 2
    assert w[7:10] == bytes([1, 2, 3])
    assert struct.unpack("!IIIQH", w[10:32]) == (1, 2, 3, 4, 0)
    assert w[32:38] == b"abbccc"
    assert w[38:46] == P.NO_KEY and w[46:54] == bytes(8) and w[54:56] == b"\x00\x00" and len(w) == 56


def test_trailer_carries_the_packet_counter_inside_the_signed_region():
    p = Packet(HELLO, "n1", "n1", body=HelloBody(), key_id=b"K" * 8, counter=0x0102030405060708,
               signature=b"s" * 5)
    w = encode(p)
    region = signing_bytes(p)
    # the counter is the last 8 bytes of the signed region, right after the key id
    assert region[-16:] == b"K" * 8 + bytes.fromhex("0102030405060708")
    assert w == region + b"\x00\x05" + b"s" * 5
    assert decode(w).counter == 0x0102030405060708
    # a different counter is a different signed message
    assert signing_bytes(p.with_(counter=p.counter + 1)) != region


def test_counter_without_key_and_old_version_are_refused_with_their_reason():
    with pytest.raises(PacketError, match="bad_trailer: packet counter without key id"):
        encode(Packet(HELLO, "n1", "n1", body=HelloBody(), counter=5))
    w = bytearray(encode(Packet(HELLO, "n1", "n1", body=HelloBody())))
    w[-10:-2] = (5).to_bytes(8, "big")
    with pytest.raises(PacketError, match="bad_trailer: packet counter without key id"):
        decode(bytes(w))
    v1 = bytearray(encode(Packet(HELLO, "n1", "n1", body=HelloBody())))
    v1[2] = 1
    with pytest.raises(PacketError) as ei:
        decode(bytes(v1))
    assert ei.value.reason == "bad_version" and "version 1, this node speaks 2" in str(ei.value)
    with pytest.raises(PacketError, match="bad_field: counter"):
        encode(Packet(HELLO, "n1", "n1", body=HelloBody(), key_id=b"K" * 8, counter=1 << 64))


def _valid() -> bytes:
    return encode(Packet(DATA, "n1", "n1", "n2", body=b"hello"))


@pytest.mark.parametrize(
    "mutate,reason",
    [
        (lambda w: w[:10], "short"),
        (lambda w: w + b"\x00" * (MAX_DATAGRAM + 1 - len(w)), "oversized"),
        (lambda w: b"XX" + w[2:], "bad_magic"),
        (lambda w: w[:2] + b"\x01" + w[3:], "bad_version"),
        (lambda w: w[:3] + b"\x09" + w[4:], "bad_type"),
        (lambda w: w[:4] + b"\x80" + w[5:], "bad_flags"),
        (lambda w: w[:5] + b"\x00" + w[6:], "bad_ttl"),
        (lambda w: w[:7] + b"\x00" + w[8:], "bad_length"),
        (lambda w: w[:7] + b"\x21" + w[8:], "bad_length"),
        (lambda w: w[:30] + b"\x01\x00" + w[32:], "bad_length"),  # payload_len too large
        (lambda w: w[:30] + b"\x00\x04" + w[32:], "trailing"),  # payload_len too small -> bytes left over
        (lambda w: w + b"\x00", "trailing"),
        (lambda w: w[:-2] + b"\x10\x01", "bad_trailer"),  # sig_len > max
        (lambda w: w[:-2] + b"\x00\x05", "bad_trailer"),  # sig_len beyond datagram
        (lambda w: w[:32] + b"n\x00" + w[34:], "bad_id"),
    ],
)
def test_strict_parsing_reasons(mutate, reason):
    with pytest.raises(PacketError) as ei:
        decode(mutate(_valid()))
    assert ei.value.reason == reason


def test_body_consistency_errors():
    rrep = bytearray(encode(Packet(RREP, "a", "b", "c", body=RrepBody(5))))
    # claim 5-byte body: lengths become inconsistent with the RREP body layout
    bad = bytes(rrep[:30]) + b"\x00\x05" + bytes(rrep[32:38]) + b"\x00" + bytes(rrep[38:])
    with pytest.raises(PacketError):
        decode(bad)
    with pytest.raises(PacketError):
        encode(Packet(RREQ, "a", "b", "c", body=b"x"))
    with pytest.raises(PacketError):
        encode(Packet(RREQ, "a", "b", "c", body=RreqBody(("z",) * 33)))
    with pytest.raises(PacketError):
        encode(Packet(RERR, "a", "b", body=RerrBody(())))
    with pytest.raises(PacketError):
        encode(Packet(DATA, "a", "b", ""))  # DATA needs a destination
    with pytest.raises(PacketError):
        encode(Packet(DATA, "a" * 33, "b", "c"))
    with pytest.raises(PacketError):
        encode(Packet(DATA, "a", "b", "c", ttl=0))
    with pytest.raises(PacketError):
        encode(Packet(DATA, "a", "b", "c", body=b"x" * MAX_DATAGRAM))
    with pytest.raises(PacketError):
        encode(Packet(DATA, "a", "b", "c", signature=b"x" * 5000, key_id=b"k" * 8))


@settings(max_examples=1000, deadline=None)
@given(st.binary(max_size=400))
def test_random_bytes_only_raise_packet_error(data):
    try:
        p = decode(data)
    except PacketError:
        return
    assert encode(p) == data


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(packets(), st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255), st.sampled_from("fitd")),
                          min_size=1, max_size=6))
def test_mutated_valid_packets_only_raise_packet_error(p, muts):
    if not _fits(p):
        return
    w = bytearray(encode(p))
    for pos, val, kind in muts:
        i = pos % (len(w) + 1)
        if kind == "f" and i < len(w):
            w[i] ^= val or 1
        elif kind == "i":
            w[i:i] = bytes([val])
        elif kind == "t":
            del w[i:]
        elif kind == "d" and i < len(w):
            del w[i]
    try:
        q = decode(bytes(w))
    except PacketError as e:
        assert e.reason
        return
    assert encode(q) == bytes(w)  # anything accepted is canonical


def test_ten_thousand_random_and_mutated_datagrams():
    rng = random.Random(1234)
    base = [
        encode(Packet(DATA, "n1", "n1", "n2", body=b"payload")),
        encode(Packet(RREQ, "n1", "n1", "n9", packet_id=7)),
        encode(Packet(RREP, "n3", "n1", "n9", body=RrepBody(3000))),
        encode(Packet(RERR, "n3", "n3", body=RerrBody((("n9", 4), ("n8", 1))))),
        encode(Packet(HELLO, "n3", "n3", body=HelloBody(0, (HelloNeighbour("n1", 10, 5, 6),)))),
    ]
    rejected_random = accepted = 0
    for i in range(10_000):
        if i % 2:
            data = bytes(rng.getrandbits(8) for _ in range(rng.randrange(0, 120)))
        else:
            w = bytearray(rng.choice(base))
            for _ in range(rng.randrange(1, 4)):
                w[rng.randrange(len(w))] = rng.getrandbits(8)
            data = bytes(w)
        try:
            q = decode(data)
        except PacketError as e:
            assert e.reason in REASONS
            rejected_random += i % 2
            continue
        accepted += 1
        assert encode(q) == data
    assert rejected_random == 5000  # random noise never parses
    assert 0 < accepted < 5000  # some mutations hit payload/seq fields and stay valid


REASONS = {
    "short", "oversized", "bad_magic", "bad_version", "bad_type", "bad_flags", "bad_ttl",
    "bad_id", "bad_length", "bad_body", "bad_trailer", "trailing", "bad_field",
}  # fmt: skip


def test_seq_compare_wraps():
    assert P.seq_newer(1, 0xFFFFFFFF)
    assert not P.seq_newer(0xFFFFFFFF, 1)
    assert P.seq_ge(5, 5) and not P.seq_newer(5, 5)
