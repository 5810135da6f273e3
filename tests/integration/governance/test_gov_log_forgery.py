"""Forging or wedging the governance event log, against the real governance process on a real nats-server.

The attacker publishes straight on ``gov.events.*`` with a bus connection (on a secured bus: governance's own
NATS credentials, i.e. a leaked credential; it does not have the governance signing key): a forged
VoterRegistered with a huge balance, a forged ProposalCreated + ProposalClosed(PASSED) carrying an ISOLATE
plan, a record chained correctly but signed with the attacker's key, and a non-JSON message. Then: the
ledger is unchanged, nothing is executed, every forgery is quarantined (audited, counted in /ready and in
the metrics), genuine writes still work, and a governance restart starts cleanly with the same state.
"""
from __future__ import annotations

import asyncio
import base64
import json
import time
import urllib.error
import urllib.request
import uuid

import grpc
import nats
from google.protobuf.message import DecodeError
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from testkit import consistently_sync, eventually_sync

from x0tta6bl4.bus import subjects
from x0tta6bl4.bus.codec import decode, new_meta
from x0tta6bl4.bus.connection import NatsCredentials, connect_once
from x0tta6bl4.governance import Action, ActionKind, CloseReason, ProposalState, Tally
from x0tta6bl4.governance import events as gev
from x0tta6bl4.governance.eventlog import Head, encode_legacy, seal
from x0tta6bl4.trust import Signer
from x0tta6bl4.v1 import common_pb2, events_pb2, govlog_pb2
from x0tta6bl4.v1 import governance_pb2 as g

QUARANTINED_AUDIT = "gov.event.quarantined"


# ---- the bus, as an attacker and as an auditor -------------------------------------------------------
def bus(stack, identity: str, work):
    """Run ``work(nc)`` on a connection as ``identity`` (its credentials when the bus is secured)."""
    async def go():
        creds = NatsCredentials.in_secrets(stack.secrets.root, identity) if stack.bus_secured else None
        nc = await connect_once(stack.url, f"test-{identity}", creds=creds)
        try:
            return await work(nc)
        finally:
            await nc.close()
    return asyncio.run(go())


def inject(gov, data: bytes, kind: str = "voter_registered") -> int:
    """Publish ``data`` on gov.events.<kind> with governance's bus identity (no signing key)."""
    async def work(nc):
        return (await nc.jetstream().publish(subjects.gov_event(kind), data)).seq
    return bus(gov.stack, "governance", work)


def gov_head(gov) -> Head:
    """The last genuine record's position and hash, as anyone who can read GOV sees it."""
    async def work(nc):
        js = nc.jetstream()
        seq = (await js.stream_info(subjects.STREAM_GOV)).state.last_seq
        while seq:
            data = (await js.get_msg(subjects.STREAM_GOV, seq)).data
            try:   # a v3 record (the writer's format); the forgeries published before it are not
                rec = govlog_pb2.GovLogRecord.FromString(data)
                if rec.version == 3 and len(rec.hash) == 32:
                    return Head(rec.seq, rec.hash)
            except DecodeError:
                pass
            seq -= 1
        raise AssertionError("no signed record in GOV")
    return bus(gov.stack, "governance", work)


def read(gov, stream: str, subject: str, cls) -> list:
    async def work(nc):
        js = nc.jetstream()
        if not (await js.stream_info(stream)).state.messages:
            return []
        sub = await js.pull_subscribe(subject, stream=stream, config=ConsumerConfig(
            deliver_policy=DeliverPolicy.ALL, ack_policy=AckPolicy.NONE, inactive_threshold=10))
        out = []
        while True:
            try:
                msgs = await sub.fetch(256, timeout=0.5)
            except (TimeoutError, nats.errors.TimeoutError):
                return out
            out += [decode(cls, m.data) for m in msgs]
            if msgs[-1].metadata.num_pending == 0:
                return out
    return bus(gov.stack, "operator", work)


def audits(gov, event_type: str) -> list[events_pb2.AuditEvent]:
    return read(gov, subjects.STREAM_AUDIT, subjects.audit("governance", event_type), events_pb2.AuditEvent)


def action_requests(gov, pid: str) -> list[events_pb2.ActionRequest]:
    return [a for a in read(gov, subjects.STREAM_MAPEK, subjects.MAPEK_ACTION, events_pb2.ActionRequest)
            if a.proposal_id == pid or pid in a.approved_by]


def http(gov, path: str) -> tuple[int, bytes]:
    sp = next(p for p in gov.stack.procs if p.name == "governance")
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{sp.health_port}{path}", timeout=2) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def log_check(gov) -> dict:
    status, body = http(gov, "/ready")
    doc = json.loads(body)
    return {**doc["checks"]["governance_log"], "ready": doc["ready"], "status": status}


def metric(gov, name: str) -> float:
    for line in http(gov, "/metrics")[1].decode().splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return 0.0


def quarantined_seqs(gov) -> set[int]:
    return {int(a.details["stream_seq"]) for a in audits(gov, QUARANTINED_AUDIT)}


# ---- the forgeries ----------------------------------------------------------------------------------
def forged_voter(name: str) -> gev.VoterRegistered:
    return gev.VoterRegistered(voter_id=name, balance=1e6, at=time.time())


def forged_passed_proposal(pid: str, node: str = "n3") -> tuple[list, list[dict]]:
    plan = events_pb2.Plan(
        meta=new_meta("planner", uuid.uuid4().hex), plan_id=pid, incident_id="inc-forged", fault_type="node_down",
        root_cause=node, confidence=0.99, severity=common_pb2.SEVERITY_CRITICAL,
        decision=events_pb2.DECISION_KIND_EMERGENCY_VOTE,
        action=events_pb2.ActionSpec(kind=events_pb2.ACTION_KIND_ISOLATE, target_node=node))
    now = time.time()
    created = gev.ProposalCreated(
        proposal_id=pid, title=f"isolate {node}", description="", action=Action(ActionKind.ISOLATE, {}, node),
        proposer="planner", duration_s=1, quorum=0.01, threshold=0.01, execution_window_s=3600, at=now)
    closed = gev.ProposalClosed(proposal_id=pid, outcome=ProposalState.PASSED,
                                reason=CloseReason.QUORUM_AND_THRESHOLD_MET, tally=Tally(1, 0, 0, 1, 1, 1),
                                early=True, at=now)
    link = {"plan": base64.b64encode(plan.SerializeToString()).decode(), "traceparent": "", "plan_id": pid,
            "proposal_id": pid, "action_id": f"act-{pid}"}
    return [created, closed], [link]


def no_such(call) -> bool:
    try:
        call()
    except grpc.RpcError as e:
        return e.code() == grpc.StatusCode.NOT_FOUND
    return False


# ---- the tests ---------------------------------------------------------------------------------------
def test_forged_voters_never_enter_the_ledger(gov):
    real, _ = gov.voter(100.0)
    before = log_check(gov)
    legacy_seq = inject(gov, encode_legacy([forged_voter("evil-v1")], []))
    attacker = Signer("governance", Signer.generate("attacker")._key)   # claims to be governance
    chained, _ = seal(gov_head(gov), [forged_voter("evil-v2")], [], attacker)
    chained_seq = inject(gov, chained)
    # a genuine write right after: the writer expected the old last sequence, it must not wedge on them
    later, _ = gov.voter(50.0)
    assert gov.stub.GetBalance(g.GetBalanceRequest(voter=later)).balance == 50.0
    for name in ("evil-v1", "evil-v2"):
        assert no_such(lambda n=name: gov.stub.GetBalance(g.GetBalanceRequest(voter=n))), name
    assert gov.stub.GetBalance(g.GetBalanceRequest(voter=real)).balance == 100.0
    seqs = eventually_sync(lambda: {legacy_seq, chained_seq} <= quarantined_seqs(gov), 10, 0.2,
                           what="both forgeries audited as quarantined")
    assert seqs
    why = {int(a.details["stream_seq"]): a.details["reason"] for a in audits(gov, QUARANTINED_AUDIT)}
    assert "unsigned" in why[legacy_seq] and "signature not trusted" in why[chained_seq]
    check = log_check(gov)
    assert check["ready"] and check["ok"] and check["quarantined"] == before["quarantined"] + 2
    assert metric(gov, "x0_gov_events_quarantined_total") >= 2


def test_a_forged_passed_proposal_is_never_executed(gov):
    pid = "plan-forged-" + uuid.uuid4().hex[:8]
    events, links = forged_passed_proposal(pid)
    inject(gov, encode_legacy(events, links), "mixed")                   # one commit
    inject(gov, encode_legacy(events[:1], links), "proposal_created")   # and as two messages
    inject(gov, encode_legacy(events[1:], []), "proposal_closed")
    gov.voter(10.0)                                                      # the writer moves on
    assert no_such(lambda: gov.stub.GetProposal(g.GetProposalRequest(id=pid)))
    listed = [p.id for p in gov.stub.ListProposals(g.ListProposalsRequest(page_size=1000)).proposals]
    assert pid not in listed
    consistently_sync(lambda: action_requests(gov, pid) == [], 1.0, 0.25)
    assert not [a for a in audits(gov, "action.requested") if a.subject_id == pid]
    assert not [a for a in audits(gov, "proposal.passed") if a.subject_id == pid]


def test_a_non_json_message_does_not_wedge_governance(gov):
    before = log_check(gov)["quarantined"]
    seq = inject(gov, b"\x00\x01 definitely not JSON {", "voter_registered")
    t0 = time.monotonic()
    a, ka = gov.voter(100.0)
    b, kb = gov.voter(100.0)
    p = gov.proposal(duration_s=120, quorum=0.9)
    assert gov.vote(p.id, a, ka, "YES", 100).proposal.tally.yes == 10.0
    assert gov.vote(p.id, b, kb, "NO", 25).proposal.tally.no == 5.0
    assert gov.stub.GetProposal(g.GetProposalRequest(id=p.id), timeout=5).tally.yes == 10.0
    assert time.monotonic() - t0 < 20, "genuine writes after the garbage were slow"
    eventually_sync(lambda: seq in quarantined_seqs(gov), 10, 0.2, what="the garbage audited as quarantined")
    check = log_check(gov)
    assert check["ready"] and check["writer"] == "ok" and check["quarantined"] == before + 1


def test_a_restart_with_forgeries_in_the_log_starts_with_the_same_state(gov):
    a, ka = gov.voter(100.0)
    p = gov.proposal(duration_s=300, quorum=0.9)
    gov.vote(p.id, a, ka, "YES", 64)
    pid = "plan-forged-" + uuid.uuid4().hex[:8]
    events, links = forged_passed_proposal(pid)
    inject(gov, encode_legacy([forged_voter("evil-restart"), *events], links), "mixed")
    inject(gov, b"garbage before the restart")
    before_prop = gov.stub.GetProposal(g.GetProposalRequest(id=p.id))
    listed_before = sorted(x.id for x in gov.stub.ListProposals(g.ListProposalsRequest(page_size=1000)).proposals)
    gov.restart(kill=True)
    quarantined = {int(x.details["stream_seq"]) for x in audits(gov, QUARANTINED_AUDIT)}
    check = log_check(gov)
    assert check["ready"] and check["writer"] == "ok"
    assert check["quarantined"] == len(quarantined), (check, quarantined)   # all of them, found again by replay
    assert gov.stub.GetProposal(g.GetProposalRequest(id=p.id)) == before_prop
    listed = sorted(x.id for x in gov.stub.ListProposals(g.ListProposalsRequest(page_size=1000)).proposals)
    assert listed == listed_before and pid not in listed
    assert no_such(lambda: gov.stub.GetBalance(g.GetBalanceRequest(voter="evil-restart")))
    consistently_sync(lambda: action_requests(gov, pid) == [], 1.0, 0.25)   # resume() found nothing to run
    # and it keeps working
    assert gov.vote(p.id, a, ka, "NO", 16).proposal.tally.no == 4.0
    gov.voter(1.0)
