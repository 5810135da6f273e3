"""The governance event log's v3 records (x0tta6bl4.v1.GovLogRecord protobuf, written since v3): round trip of
every event type, the documented hash and signature, tampering, garbage and foreign protobuf messages, a chain
that goes on from v2 (JSON) records to v3 ones, and a replay after a restart -- real ML-DSA-65 keys and a real
trust bundle. The v2 format: test_gov_eventlog.py."""
from __future__ import annotations

import base64
import dataclasses
import hashlib
import struct

import govlogkit
import pytest
from govlogkit import applied, quarantined

from x0tta6bl4.governance import Action, ActionKind, CloseReason, ProposalState, Tally, VoteChoice, fold
from x0tta6bl4.governance import events as gev
from x0tta6bl4.governance.decision import Severity
from x0tta6bl4.governance.eventlog import (
    GENESIS,
    HASH_DOMAIN,
    LOG_VERSION,
    Applied,
    LogError,
    LogReplay,
    Quarantined,
    encode_legacy,
    open_record,
    record_hash,
    seal,
)
from x0tta6bl4.governance.events_pb import event_to_pb, oneof_name
from x0tta6bl4.trust import ROLE_APPROVE, ROLE_AUDIT, ROLE_GOVLOG, Signer, TrustBundle
from x0tta6bl4.v1 import common_pb2, events_pb2, govlog_pb2

GOV = Signer.generate("governance")
PLANNER = Signer.generate("planner")
ROGUE = Signer.generate("governance")          # a governance-named key the bundle does not list
BUNDLE = TrustBundle("x0tta6bl4.mesh", (GOV.trusted(), PLANNER.trusted()))
ACT = Action(ActionKind.TOPOLOGY_UPDATE, {"link": "n1,n2", "state": "down"}, "n1")
PLAN = events_pb2.Plan(plan_id="plan-1", root_cause="n3", confidence=0.9, severity=common_pb2.SEVERITY_HIGH,
                       action=events_pb2.ActionSpec(kind=events_pb2.ACTION_KIND_REROUTE, target_node="n3"))
EVERY_EVENT = [
    gev.VoterRegistered("v1", 100.0, 1.0, "k1", b"\x01\x02"),
    gev.VoterKeyRotated("v1", "k2", b"\x03" * 1952, 1.5),
    gev.ProposalCreated("p1", "t\u00e9", "d", ACT, "alice", 60.0, 0.1, 0.5, 600.0, 2.0, "c1", "r1"),
    gev.ProposalAutoApproved("p2", "t", "d", Action(ActionKind.ISOLATE, {}, "n3"), "planner", 600.0, 0.9,
                             Severity.CRITICAL, "auto", 2.5),
    gev.VoteCast("vote1", "p1", "v1", VoteChoice.ABSTAIN, 100.0, 10.0, b"\x00" * 16, b"\x05" * 3309, 3.0),
    gev.ProposalClosed("p1", ProposalState.REJECTED, CloseReason.THRESHOLD_NOT_MET,
                       Tally(1.5, 2.25, 0.0, 10.125, 2, 3), False, 4.0),
    gev.ProposalCanceled("p3", "alice", 5.0), gev.ExecutionFailed("p1", "boom", 6.0),
    gev.ProposalExecuted("p1", "ok", 7.0), gev.ProposalExpired("p2", 8.0)]
LINKS = [{"proposal_id": "p2", "action_id": "a1", "plan_id": "plan-1", "traceparent": "00-" + "1" * 32 + "-"
          + "2" * 16 + "-01", "plan": base64.b64encode(PLAN.SerializeToString(deterministic=True)).decode()},
         {"proposal_id": "p", "action_id": "a"}, {"proposal_id": "q", "traceparent": "", "note": "x"}]


def voter(name: str, balance: float = 100.0) -> gev.VoterRegistered:
    return gev.VoterRegistered(voter_id=name, balance=balance, at=1.0)


def chain(*batches: list, head=GENESIS, versions=None) -> list[bytes]:
    out = []
    for i, events in enumerate(batches):
        data, rec = seal(head, events, [{"proposal_id": "p", "action_id": "a"}], GOV,
                         version=(versions or [LOG_VERSION] * len(batches))[i])
        head = rec.head
        out.append(data)
    return out


def replay(messages: list[bytes]) -> tuple[LogReplay, list]:
    return govlogkit.replay(messages, BUNDLE)


def signed(body: bytes, head=GENESIS, signer: Signer = GOV) -> bytes:
    """A correctly hashed and signed v3 record around any body bytes (what only the key holder can make)."""
    digest = record_hash(head.seq + 1, head.hash, signer.key_id, body)
    return govlog_pb2.GovLogRecord(version=3, seq=head.seq + 1, prev=head.hash, hash=digest, key_id=signer.key_id,
                                   sig=signer.sign(ROLE_GOVLOG, digest), body=body).SerializeToString()


# ---- the protos mirror the event dataclasses -----------------------------------------------------------------
def test_every_event_type_is_a_message_of_the_same_fields():
    oneof = govlog_pb2.GovEvent.DESCRIPTOR.oneofs_by_name["event"]
    assert {f.name for f in oneof.fields} == {oneof_name(cls) for cls in gev.EVENT_TYPES.values()}
    for cls in gev.EVENT_TYPES.values():
        member = govlog_pb2.GovEvent.DESCRIPTOR.fields_by_name[oneof_name(cls)]
        assert member.message_type.name == cls.__name__
        assert [f.name for f in member.message_type.fields] == [f.name for f in dataclasses.fields(cls)], cls
    assert {type(e) for e in EVERY_EVENT} == set(gev.EVENT_TYPES.values())


def test_every_event_and_link_round_trips():
    data, rec = seal(GENESIS, EVERY_EVENT, LINKS, GOV)
    assert data[:1] != b"{" and rec.version == 3
    back = open_record(data, GENESIS, BUNDLE)
    assert back.events == tuple(EVERY_EVENT) and back.links == tuple(LINKS) and back.version == 3
    assert back.hash == rec.hash and back.seq == 1 and back.key_id == GOV.key_id
    # typed on the wire: a reader with the protos alone sees the fields
    msg = govlog_pb2.GovLogRecord.FromString(data)
    body = govlog_pb2.GovLogBody.FromString(msg.body)
    assert [e.WhichOneof("event") for e in body.events][:3] == ["voter_registered", "voter_key_rotated",
                                                                "proposal_created"]
    created = body.events[2].proposal_created
    assert created.action.kind == events_pb2.ACTION_KIND_TOPOLOGY_UPDATE and created.action.params["link"] == "n1,n2"
    assert body.events[3].proposal_auto_approved.severity == common_pb2.SEVERITY_CRITICAL
    assert body.events[5].proposal_closed.tally.eligible_voters == 3
    assert body.links[0].plan == PLAN and body.links[2].extra == {"note": "x"} and body.links[2].HasField("traceparent")
    assert not body.links[1].HasField("plan") and not body.HasField("legacy")


def test_the_documented_hash_and_signature():
    data, rec = seal(GENESIS, [voter("a")], [], GOV)
    msg = govlog_pb2.GovLogRecord.FromString(data)
    assert HASH_DOMAIN == b"x0tta6bl4/gov-log/v3" and msg.version == 3 and msg.seq == 1
    field = lambda x: struct.pack(">I", len(x)) + x   # noqa: E731 - the docstring's field()
    preimage = field(HASH_DOMAIN) + struct.pack(">Q", 1) + field(bytes(32)) + field(GOV.key_id.encode()) \
        + field(msg.body)
    assert hashlib.sha256(preimage).digest() == rec.hash == msg.hash
    assert msg.prev == bytes(32) and msg.key_id == GOV.key_id
    GOV.trusted().verify(ROLE_GOVLOG, msg.hash, msg.sig)            # context b"x0tta6bl4/gov-event/v1"
    assert msg.body == govlog_pb2.GovLogBody(events=[event_to_pb(voter("a"))]).SerializeToString()
    assert data == msg.SerializeToString()                           # the canonical encoding


# ---- tampering ------------------------------------------------------------------------------------------------
def test_one_altered_body_byte_is_quarantined():
    msgs = chain([voter("a", 100)], [voter("b")])
    msg = govlog_pb2.GovLogRecord.FromString(msgs[0])
    body = govlog_pb2.GovLogBody.FromString(msg.body)
    body.events[0].voter_registered.balance = 900
    msg.body = body.SerializeToString()
    msgs[0] = msg.SerializeToString()
    _, verdicts = replay(msgs)
    q = quarantined(verdicts)
    assert "record 1: hash mismatch" in q[1] and "does not follow record 0" in q[2] and applied(verdicts) == []


def test_a_rewritten_hash_leaves_a_signature_over_the_old_one():
    data, _ = seal(GENESIS, [voter("a", 100)], [], GOV)
    msg = govlog_pb2.GovLogRecord.FromString(data)
    msg.body = govlog_pb2.GovLogBody(events=[event_to_pb(voter("a", 900))]).SerializeToString()
    msg.hash = record_hash(1, bytes(32), GOV.key_id, msg.body)
    with pytest.raises(LogError, match="signature not trusted"):
        open_record(msg.SerializeToString(), GENESIS, BUNDLE)


def test_keys_and_roles_that_may_not_sign_the_log():
    head = replay(chain([voter("a")]))[0].head
    with pytest.raises(LogError, match="is not in the trust bundle"):
        open_record(seal(head, [voter("evil", 1e6)], [], ROGUE)[0], head, BUNDLE)
    with pytest.raises(LogError, match="belongs to planner, not to governance"):
        open_record(seal(head, [voter("evil", 1e6)], [], PLANNER)[0], head, BUNDLE)
    alias = TrustBundle("x", (GOV.trusted(), Signer("governance", PLANNER._key).trusted((ROLE_APPROVE, ROLE_AUDIT))))
    with pytest.raises(LogError, match="not trusted to govlog"):
        open_record(seal(head, [voter("evil", 1e6)], [], PLANNER)[0], head, alias)
    data, rec = seal(head, [voter("b")], [], GOV)
    msg = govlog_pb2.GovLogRecord.FromString(data)
    msg.sig = GOV.sign(ROLE_APPROVE, rec.hash)                       # same key, the approval context
    with pytest.raises(LogError, match="bad govlog signature"):
        open_record(msg.SerializeToString(), head, BUNDLE)


def test_reordered_replayed_and_dropped_records():
    m1, m2, m3 = chain([voter("a")], [voter("b")], [voter("c")])
    _, verdicts = replay([m1, m3, m2, m1])
    assert applied(verdicts) == [1, 3]
    q = quarantined(verdicts)
    assert "records missing" in q[2] and "replayed or out of order" in q[4]


# ---- garbage, foreign and malformed messages -------------------------------------------------------------------
def test_garbage_and_wrong_types_are_quarantined_with_a_clear_reason():
    r, _ = replay(chain([voter("a")]))
    head = r.head
    good, _ = seal(head, [voter("b")], [], GOV)
    g = govlog_pb2.GovLogRecord.FromString(good)
    audit = events_pb2.AuditEvent(event_type="x", details={"a": "b"}).SerializeToString()
    shapes = {
        "empty": (b"", "empty message"),
        "garbage": (b"\xff\xfe binary \x00\x01", "neither JSON (v1, v2) nor a GovLogRecord protobuf"),
        "text": (b"hello governance", "neither JSON (v1, v2) nor a GovLogRecord protobuf"),
        "a Plan": (PLAN.SerializeToString(), "GovLogRecord"),
        "an AuditEvent": (audit, "GovLogRecord"),
        "version 2 in protobuf": (govlog_pb2.GovLogRecord(version=2, seq=2).SerializeToString(), "version 2"),
        "no version": (govlog_pb2.GovLogRecord(seq=2, key_id="k").SerializeToString(), "version 0"),
        "unknown field appended": (good + b"\x40\x01", "canonical encoding"),
        "a field repeated": (good + b"\x10\x02", "canonical encoding"),
        "no key id": (govlog_pb2.GovLogRecord(version=3, seq=2, prev=g.prev, hash=g.hash, sig=g.sig,
                                              body=g.body).SerializeToString(), "without key_id"),
        "seq 0": (govlog_pb2.GovLogRecord(version=3, prev=g.prev, hash=g.hash, key_id=g.key_id, sig=g.sig,
                                          body=g.body).SerializeToString(), "seq must be at least 1"),
        "short hash": (govlog_pb2.GovLogRecord(version=3, seq=2, prev=g.prev, hash=g.hash[:31], key_id=g.key_id,
                                               sig=g.sig, body=g.body).SerializeToString(), "32-byte"),
        "no signature": (govlog_pb2.GovLogRecord(version=3, seq=2, prev=g.prev, hash=g.hash, key_id=g.key_id,
                                                 body=g.body).SerializeToString(), "signature not trusted"),
        "forged v1": (encode_legacy([voter("evil", 1e6)], []), "legacy (v1) format after the log was signed"),
        "truncated": (good[:-5], "neither JSON (v1, v2) nor a GovLogRecord protobuf"),
    }
    for name, (data, why) in shapes.items():
        verdicts = r.feed(99, data)
        assert len(verdicts) == 1 and isinstance(verdicts[0], Quarantined), name
        assert why in verdicts[0].reason, (name, verdicts[0].reason)
    assert r.head == head                      # none of them moved the chain
    assert r.feed(100, good) == [Applied(100, 2, (voter("b"),), ())]


def test_signed_records_with_a_bad_body_are_quarantined():
    """What only a holder of the key could write, and a reader still refuses: a body that does not decode."""
    plan_link = govlog_pb2.GovLogLink(proposal_id="p", extra={"proposal_id": "q"})
    bodies = {
        b"\xff\xff\xff": "body is not a GovLogBody",
        govlog_pb2.GovLogBody(events=[govlog_pb2.GovEvent()]).SerializeToString(): "empty or unknown governance event",
        govlog_pb2.GovLogBody(events=[govlog_pb2.GovEvent(vote_cast=govlog_pb2.VoteCast(
            vote_id="v", proposal_id="p", voter_id="a"))]).SerializeToString(): "VOTE_CHOICE_UNSPECIFIED",
        govlog_pb2.GovLogBody(events=[govlog_pb2.GovEvent(proposal_created=govlog_pb2.ProposalCreated(
            proposal_id="p"))]).SerializeToString(): "missing field 'action'",
        govlog_pb2.GovLogBody(events=[govlog_pb2.GovEvent(proposal_closed=govlog_pb2.ProposalClosed(
            proposal_id="p", outcome=5, reason=1, tally=govlog_pb2.GovTally()))]).SerializeToString():
            "PROPOSAL_STATE_EXPIRED",   # a ProposalState, but a close never expires... decodes: checked below
        govlog_pb2.GovLogBody(links=[plan_link]).SerializeToString(): "repeats a field",
        govlog_pb2.GovLogBody(legacy=govlog_pb2.GovLegacySeal(records=1, sha256=b"x")).SerializeToString():
            "bad legacy seal",
    }
    for body, why in bodies.items():
        data = signed(body)
        if why == "PROPOSAL_STATE_EXPIRED":     # a valid record: the reducer, not the log, judges the event
            assert open_record(data, GENESIS, BUNDLE).events[0].outcome is ProposalState.EXPIRED
            continue
        with pytest.raises(LogError, match="record 1: ") as e:
            open_record(data, GENESIS, BUNDLE)
        assert why in str(e.value), (why, str(e.value))


# ---- one chain across the formats ------------------------------------------------------------------------------
def test_a_v2_log_goes_on_with_v3_records():
    """An existing (v2) log after an upgrade: the v3 records link to the last v2 record."""
    msgs = chain([voter("a")], [voter("b")], [voter("c")], [voter("d")], versions=[2, 2, 3, 3])
    assert msgs[1][:1] == b"{" and msgs[2][:1] != b"{"
    r, verdicts = replay(msgs)
    assert applied(verdicts) == [1, 2, 3, 4] and not quarantined(verdicts) and r.head.seq == 4
    v2_second = open_record(msgs[1], replay(msgs[:1])[0].head, BUNDLE)
    assert govlog_pb2.GovLogRecord.FromString(msgs[2]).prev == v2_second.hash and v2_second.version == 2
    assert set(fold(e for v in verdicts for e in v.events).voters) == {"a", "b", "c", "d"}


def test_records_of_either_signed_format_may_follow_each_other():
    """The format is an encoding, not a privilege: a v2 record written after a v3 one (an older replica
    during a rolling upgrade) is a valid link when it is signed and chained."""
    msgs = chain([voter("a")], [voter("b")], [voter("c")], versions=[3, 2, 3])
    _, verdicts = replay(msgs)
    assert applied(verdicts) == [1, 2, 3]


def test_a_legacy_v1_log_is_sealed_by_a_v3_record():
    old = [encode_legacy([voter("a")], []), encode_legacy([voter("b")], [])]
    r, _ = replay(old)
    _, legacy_seal = r.adopt_legacy()
    data, rec = seal(r.head, [], [], GOV, legacy=legacy_seal)
    assert govlog_pb2.GovLogBody.FromString(govlog_pb2.GovLogRecord.FromString(data).body).legacy.records == 2
    nxt, _ = seal(rec.head, [voter("c")], [], GOV)
    _, verdicts = replay([*old, data, nxt])
    assert applied(verdicts) == [1, 2, 3, 4] and not quarantined(verdicts)
    tampered = [old[0], encode_legacy([voter("b", 1e6)], [])]
    _, verdicts = replay([*tampered, data, nxt])
    assert applied(verdicts) == [3, 4] and set(quarantined(verdicts)) == {1, 2}


def test_replay_after_a_restart_continues_the_mixed_chain():
    """A writer replays a v2 log with a forgery in it, appends v3 records after its head; a fresh replay (the
    restart) reads the whole stream to the same head and the same state, and the next append follows it."""
    log = chain([voter("a")], [voter("b")], versions=[2, 2])
    log.append(seal(GENESIS, [voter("evil", 1e6)], [], ROGUE)[0])      # a forgery (v3, untrusted key)
    log.append(b"\x08\x03garbage")
    writer, _ = replay(log)
    for events in ([voter("c")], [gev.VoterKeyRotated("a", "k2", b"\x07" * 32, 9.0)], []):
        data, rec = seal(writer.head, events, [], GOV)
        writer.advance(rec)
        log.append(data)
    restarted, verdicts = replay(log)
    assert restarted.head == writer.head and restarted.head.seq == 5
    assert applied(verdicts) == [1, 2, 5, 6, 7] and set(quarantined(verdicts)) == {3, 4}
    state = fold(e for v in verdicts if isinstance(v, Applied) for e in v.events)
    assert set(state.voters) == {"a", "b", "c"} and state.voters["a"].key_id == "k2"
    data, _ = seal(restarted.head, [voter("d")], [], GOV)
    assert restarted.feed(len(log) + 1, data)[0].record_seq == 6
