"""The signed, hash-chained governance event log (x0tta6bl4.governance.eventlog): what replay applies and
what it quarantines, with real ML-DSA-65 keys and a real trust bundle. These tests write the v2 (JSON) format
that logs written before v3 hold (replay reads it); test_gov_eventlog_v3.py: the v3 protobuf records."""
from __future__ import annotations

import base64
import hashlib
import json
import struct

import govlogkit
import pytest
from govlogkit import applied, quarantined

from x0tta6bl4.governance import Action, ActionKind, CloseReason, ProposalState, Tally, eventlog, fold
from x0tta6bl4.governance import events as gev
from x0tta6bl4.governance.eventlog import (
    GENESIS,
    Applied,
    LogError,
    LogReplay,
    Quarantined,
    encode_legacy,
    open_record,
)
from x0tta6bl4.trust import ROLE_APPROVE, ROLE_AUDIT, ROLE_GOVLOG, Signer, TrustBundle

HASH_DOMAIN = eventlog.HASH_DOMAINS[2]


def seal(*args, **kw):
    """The v2 writer (the format of logs written before v3)."""
    return eventlog.seal(*args, version=2, **kw)


def record_hash(*args):
    return eventlog.record_hash(*args, version=2)


GOV = Signer.generate("governance")
PLANNER = Signer.generate("planner")
ROGUE = Signer.generate("governance")          # a governance-named key the bundle does not list
BUNDLE = TrustBundle("x0tta6bl4.mesh", (GOV.trusted(), PLANNER.trusted()))


def voter(name: str, balance: float = 100.0) -> gev.VoterRegistered:
    return gev.VoterRegistered(voter_id=name, balance=balance, at=1.0)


def forged_pass(pid: str = "p-evil") -> list:
    created = gev.ProposalCreated(
        proposal_id=pid, title="isolate n3", description="", action=Action(ActionKind.ISOLATE, {}, "n3"),
        proposer="planner", duration_s=60, quorum=0.1, threshold=0.5, execution_window_s=600, at=2.0)
    closed = gev.ProposalClosed(proposal_id=pid, outcome=ProposalState.PASSED,
                                reason=CloseReason.QUORUM_AND_THRESHOLD_MET,
                                tally=Tally(1, 0, 0, 1, 1, 1), early=True, at=3.0)
    return [created, closed]


def chain(*batches: list, signer: Signer = GOV) -> list[bytes]:
    """Messages of consecutive records, one per batch of events."""
    head, out = GENESIS, []
    for events in batches:
        data, rec = seal(head, events, [{"proposal_id": "p", "action_id": "a"}], signer)
        head = rec.head
        out.append(data)
    return out


def replay(messages: list[bytes]) -> tuple[LogReplay, list]:
    return govlogkit.replay(messages, BUNDLE)


def test_a_genuine_chain_replays_in_full():
    msgs = chain([voter("a")], [voter("b", 50)], [])
    r, verdicts = replay(msgs)
    assert applied(verdicts) == [1, 2, 3] and not quarantined(verdicts)
    assert [v.record_seq for v in verdicts] == [1, 2, 3]
    state = fold(e for v in verdicts for e in v.events)
    assert state.voters["b"].balance == 50
    assert r.head.seq == 3
    assert verdicts[0].links == ({"proposal_id": "p", "action_id": "a"},)


def test_the_documented_hash_is_the_one_signed():
    data, rec = seal(GENESIS, [voter("a")], [], GOV)
    header_line, body = data.split(b"\n", 1)
    header = json.loads(header_line)
    field = lambda x: struct.pack(">I", len(x)) + x   # noqa: E731 - the docstring's field()
    preimage = field(HASH_DOMAIN) + struct.pack(">Q", 1) + field(bytes(32)) + field(GOV.key_id.encode()) + field(body)
    assert hashlib.sha256(preimage).digest() == rec.hash == bytes.fromhex(header["hash"])
    assert record_hash(1, bytes(32), GOV.key_id, body) == rec.hash
    GOV.trusted().verify(ROLE_GOVLOG, rec.hash, base64.b64decode(header["sig"]))
    assert header["key_id"] == GOV.key_id and header["seq"] == 1 and header["prev"] == "00" * 32


def test_one_altered_byte_is_quarantined():
    msgs = chain([voter("a", 100)], [voter("b")])
    altered = msgs[0].replace(b'"balance":100', b'"balance":900')
    assert altered != msgs[0] and len(altered) == len(msgs[0])
    msgs[0] = altered
    _, verdicts = replay(msgs)
    q = quarantined(verdicts)
    assert "hash mismatch" in q[1]
    # record 2 links to the genuine record 1, which never became valid: it cannot follow the empty chain
    assert "does not follow record 0" in q[2]
    assert applied(verdicts) == []


def test_altered_header_hash_is_not_a_way_around():
    """Rewriting the hash to match the altered body leaves a signature over the old hash."""
    data, _ = seal(GENESIS, [voter("a", 100)], [], GOV)
    header_line, body = data.split(b"\n", 1)
    header = json.loads(header_line)
    body, original = body.replace(b'"balance":100', b'"balance":900'), body
    assert body != original
    header["hash"] = record_hash(1, bytes(32), GOV.key_id, body).hex()
    forged = json.dumps(header).encode() + b"\n" + body
    with pytest.raises(LogError, match="signature not trusted"):
        open_record(forged, GENESIS, BUNDLE)


def test_a_key_not_in_the_bundle_is_refused():
    msgs = chain([voter("a")])
    msgs += [seal(LogReplay(BUNDLE).head, [voter("evil", 1e6)], [], ROGUE)[0]]
    _, verdicts = replay(msgs)
    assert applied(verdicts) == [1]
    assert "is not in the trust bundle" in quarantined(verdicts)[2]


def test_the_planners_key_cannot_sign_the_log():
    r, _ = replay(chain([voter("a")]))
    data, _ = seal(r.head, [voter("evil", 1e6)], [], PLANNER)   # a key trusted, but to approve and audit
    with pytest.raises(LogError, match="belongs to planner, not to governance"):
        open_record(data, r.head, BUNDLE)
    # even a bundle that lists the planner's key under the governance name: it has no govlog role
    alias = TrustBundle("x", (GOV.trusted(), Signer("governance", PLANNER._key).trusted((ROLE_APPROVE, ROLE_AUDIT))))
    with pytest.raises(LogError, match="not trusted to govlog"):
        open_record(data, r.head, alias)


def test_a_signature_made_for_another_role_does_not_verify():
    data, rec = seal(GENESIS, [voter("a")], [], GOV)
    header_line, body = data.split(b"\n", 1)
    header = json.loads(header_line)
    header["sig"] = base64.b64encode(GOV.sign(ROLE_APPROVE, rec.hash)).decode()   # same key, approval context
    with pytest.raises(LogError, match="bad govlog signature"):
        open_record(json.dumps(header).encode() + b"\n" + body, GENESIS, BUNDLE)


def test_reordered_records_are_quarantined_and_the_chain_goes_on():
    m1, m2, m3 = chain([voter("a")], [voter("b")], [voter("c")])
    _, verdicts = replay([m1, m3, m2])
    q = quarantined(verdicts)
    assert applied(verdicts) == [1, 3]        # stream order: m1, m3 (gap: refused), m2 (follows m1)
    assert "records missing" in q[2]


def test_a_replayed_genuine_record_is_quarantined():
    m1, m2 = chain([voter("a")], [voter("b")])
    _, verdicts = replay([m1, m2, m1])
    assert applied(verdicts) == [1, 2]
    assert "replayed or out of order" in quarantined(verdicts)[3]


def test_a_dropped_record_is_detected():
    m1, _m2, m3 = chain([voter("a")], [voter("b")], [voter("c")])
    r, verdicts = replay([m1, m3])
    assert applied(verdicts) == [1] and r.head.seq == 1
    assert "does not follow record 1: records missing" in quarantined(verdicts)[2]


def test_a_forged_record_does_not_break_the_genuine_chain_after_it():
    """The writer appends after the last VALID record; replay skips the forgery and accepts it."""
    r = LogReplay(BUNDLE)
    log = []
    for events in ([voter("a")], "forged", [voter("b")], "garbage", [voter("c")]):
        if events == "forged":
            log.append(encode_legacy([voter("evil", 1e6)], []))
        elif events == "garbage":
            log.append(b"\x00not json at all")
        else:
            data, _ = seal(r.head, events, [], GOV)   # the writer: after its chain head
            log.append(data)
        r.feed(len(log), log[-1])
    _, verdicts = replay(log)
    assert applied(verdicts) == [1, 3, 5]
    assert set(quarantined(verdicts)) == {2, 4}
    state = fold(e for v in verdicts if isinstance(v, Applied) for e in v.events)
    assert set(state.voters) == {"a", "b", "c"}


def test_forged_messages_in_every_shape_are_quarantined_with_a_reason():
    r, _ = replay(chain([voter("a")]))
    head = r.head
    good, _ = seal(head, [voter("b")], [], GOV)
    header = json.loads(good.split(b"\n", 1)[0])
    unsigned = dict(header, sig="")
    shapes = {
        "garbage": b"\xff\xfe binary",
        "non-json": b"hello governance",
        "legacy v1 forged voter": encode_legacy([voter("evil", 1e6)], []),
        "legacy v1 forged passed proposal": encode_legacy(forged_pass(), []),
        "json without header": json.dumps({"events": []}).encode(),
        "empty": b"",
        "header only": json.dumps(header).encode() + b"\n",
        "no signature": json.dumps(unsigned).encode() + b"\n" + good.split(b"\n", 1)[1],
        "bad version": json.dumps(dict(header, v=3)).encode() + b"\n{}",
        "bad seq type": json.dumps(dict(header, seq="2")).encode() + b"\n{}",
        "undecodable event (signed)": seal(head, [], [], GOV)[0].replace(b'"events":[]',
                                                                        b'"events":[{"type":"x"}]'),
    }
    for name, data in shapes.items():
        verdicts = r.feed(99, data)
        assert len(verdicts) == 1 and isinstance(verdicts[0], Quarantined), name
        assert verdicts[0].reason, name
    assert r.head == head                      # none of them moved the chain
    assert r.feed(100, good) == [Applied(100, 2, (voter("b"),), ())]


def test_a_signed_record_with_an_undecodable_body_is_quarantined():
    head = GENESIS
    body = b'{"events":[{"type":"governance.voter_registered","schema_version":1}],"links":[]}'
    digest = record_hash(1, head.hash, GOV.key_id, body)
    header = {"v": 2, "seq": 1, "prev": head.hash.hex(), "hash": digest.hex(), "key_id": GOV.key_id,
              "sig": base64.b64encode(GOV.sign(ROLE_GOVLOG, digest)).decode()}
    with pytest.raises(LogError, match=r"undecodable event: ValueError: governance\.voter_registered: missing"):
        open_record(json.dumps(header).encode() + b"\n" + body, head, BUNDLE)


# ---- migration: the unsigned (v1) log written before signing ----------------------------------------------
def test_a_legacy_prefix_is_kept_aside_until_a_signed_record_says_what_to_do():
    old = [encode_legacy([voter("a")], []), encode_legacy([voter("b")], [{"proposal_id": "p1"}])]
    r, verdicts = replay(old)
    assert verdicts == [] and r.head == GENESIS and [x.stream_seq for x in r.legacy] == [1, 2]


def test_adopting_the_legacy_log_seals_it_in_the_first_signed_record():
    old = [encode_legacy([voter("a")], []), encode_legacy([voter("b")], [])]
    r, _ = replay(old)
    adopted, legacy_seal = r.adopt_legacy()
    assert [a.stream_seq for a in adopted] == [1, 2] and legacy_seal.records == 2
    data, rec = seal(r.head, [], [], GOV, legacy=legacy_seal)
    r.advance(rec)
    # a later replay applies the sealed prefix, then the seal, then what follows
    nxt, _ = seal(r.head, [voter("c")], [], GOV)
    _, verdicts = replay([*old, data, nxt])
    assert applied(verdicts) == [1, 2, 3, 4] and not quarantined(verdicts)
    assert {e.voter_id for v in verdicts for e in v.events} == {"a", "b", "c"}


def test_a_legacy_prefix_that_does_not_match_its_seal_is_quarantined():
    old = [encode_legacy([voter("a")], []), encode_legacy([voter("b")], [])]
    r, _ = replay(old)
    _, legacy_seal = r.adopt_legacy()
    data, _ = seal(GENESIS, [], [], GOV, legacy=legacy_seal)
    tampered = [old[0], encode_legacy([voter("b", 1e6)], [])]
    _, verdicts = replay([*tampered, data])
    assert applied(verdicts) == [3]
    assert all("does not match the adopted legacy log" in why for why in quarantined(verdicts).values())
    assert set(quarantined(verdicts)) == {1, 2}


def test_a_legacy_prefix_not_adopted_is_quarantined_by_the_first_signed_record():
    data, _ = seal(GENESIS, [], [], GOV)
    _, verdicts = replay([encode_legacy([voter("evil", 1e6)], []), data])
    assert applied(verdicts) == [2]
    assert "did not adopt" in quarantined(verdicts)[1]


def test_legacy_records_after_the_log_is_signed_are_quarantined():
    m1, = chain([voter("a")])
    _, verdicts = replay([m1, encode_legacy(forged_pass(), [])])
    assert applied(verdicts) == [1]
    assert "legacy (v1) format after the log was signed" in quarantined(verdicts)[2]


def test_nothing_to_adopt_once_signed():
    r, _ = replay(chain([voter("a")]))
    with pytest.raises(LogError, match="signed already"):
        r.adopt_legacy()
