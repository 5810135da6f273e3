"""Every RPC and every error code of the governance service, over a real gRPC channel
to a real service process backed by a real nats-server."""
from __future__ import annotations

import math
import queue
import threading

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase
from testkit import eventually_sync

from x0tta6bl4.audit.chain import verify_chains
from x0tta6bl4.v1 import events_pb2
from x0tta6bl4.v1 import governance_pb2 as g

C = grpc.StatusCode


def test_health_and_reflection(gov):
    h = health_pb2_grpc.HealthStub(gov.channel)
    for name in ("", "x0tta6bl4.v1.Governance"):
        assert h.Check(health_pb2.HealthCheckRequest(service=name)).status == health_pb2.HealthCheckResponse.SERVING
    db = ProtoReflectionDescriptorDatabase(gov.channel)
    services = db.get_services()
    assert "x0tta6bl4.v1.Governance" in services and "grpc.health.v1.Health" in services
    methods = {m.name for m in db.FindFileContainingSymbol("x0tta6bl4.v1.Governance").service[0].method}
    assert {"CreateProposal", "CastVote", "GetProposal", "ListProposals", "CancelProposal", "WatchProposals",
            "RegisterVoter", "GetBalance"} <= methods


def test_ledger(gov):
    name, key = gov.voter(250.0)
    v = gov.stub.GetBalance(g.GetBalanceRequest(voter=name))
    assert v.voter == name and v.balance == 250.0 and len(v.key_id) == 16
    code, msg = gov.error(gov.stub.RegisterVoter, g.RegisterVoterRequest(
        voter=name, balance=1, public_key=key.public_key().public_bytes()), metadata=gov.admin)
    assert code == C.ALREADY_EXISTS and "already registered" in msg
    assert gov.error(gov.stub.GetBalance, g.GetBalanceRequest(voter="nobody"))[0] == C.NOT_FOUND
    code, msg = gov.error(gov.stub.RegisterVoter, g.RegisterVoterRequest(voter="x", balance=1), metadata=gov.admin)
    assert code == C.INVALID_ARGUMENT and "spiffe://" in msg     # no key given: must be a keyvault identity
    code, msg = gov.error(gov.stub.RegisterVoter, g.RegisterVoterRequest(voter="x", balance=1, public_key=b"k" * 10),
                          metadata=gov.admin)
    assert code == C.INVALID_ARGUMENT and "ML-DSA-65" in msg
    pk = key.public_key().public_bytes()
    for bal in (0, -5, math.inf, math.nan):
        assert gov.error(gov.stub.RegisterVoter, g.RegisterVoterRequest(voter="y", balance=bal, public_key=pk),
                         metadata=gov.admin)[0] == C.INVALID_ARGUMENT


@pytest.mark.parametrize("field,value,needle", [
    ("title", "", "title"), ("title", "x" * 201, "title"), ("quorum", 0.0, "quorum"), ("quorum", 1.5, "quorum"),
    ("threshold", 0.0, "threshold"), ("duration_s", 0.0, "duration_s"), ("duration_s", -1.0, "duration_s"),
    ("duration_s", 8 * 86400.0, "duration_s"), ("duration_s", math.inf, "duration_s"), ("proposer", "", "proposer"),
])
def test_create_invalid_argument(gov, field, value, needle):
    gov.voter()
    args = dict(title="ok", duration_s=60.0, quorum=0.5, threshold=0.5, proposer="alice")
    args[field] = value
    code, msg = gov.error(gov.proposal, **args)
    assert code == C.INVALID_ARGUMENT and needle in msg


def test_create_get_list_cancel(gov):
    gov.voter()
    code, msg = gov.error(gov.stub.CreateProposal, g.CreateProposalRequest(title="t", proposer="a", duration_s=5,
                                                                           quorum=.5, threshold=.5))
    assert code == C.INVALID_ARGUMENT and "action" in msg
    p = gov.proposal(title="  deploy v2  ", description="why", request_id="req-1")
    assert p.state == g.PROPOSAL_STATE_ACTIVE and p.title == "deploy v2" and p.tally.eligible > 0
    assert p.action.kind == events_pb2.ACTION_KIND_REROUTE and p.action.target_node == "n1"
    assert gov.proposal(title="deploy v2", description="why", request_id="req-1").id == p.id  # idempotent
    code, msg = gov.error(gov.proposal, title="other", request_id="req-1")
    assert code == C.ALREADY_EXISTS and "req-1" in msg
    assert gov.stub.GetProposal(g.GetProposalRequest(id=p.id)) == p
    code, msg = gov.error(gov.stub.GetProposal, g.GetProposalRequest(id="nope"))
    assert code == C.NOT_FOUND and "nope" in msg
    # a cancel needs proof: without the admin token (alice is not a ledger identity) it is refused
    code, msg = gov.error(gov.stub.CancelProposal, g.CancelProposalRequest(id=p.id, proposer="alice"))
    assert code == C.UNAUTHENTICATED and "admin token" in msg
    code, msg = gov.error(gov.stub.CancelProposal, g.CancelProposalRequest(id=p.id, proposer="mallory"),
                          metadata=gov.admin)
    assert code == C.PERMISSION_DENIED and "alice" in msg
    assert gov.error(gov.stub.CancelProposal, g.CancelProposalRequest(id="nope", proposer="alice"),
                     metadata=gov.admin)[0] == C.NOT_FOUND
    c = gov.stub.CancelProposal(g.CancelProposalRequest(id=p.id, proposer="alice"), metadata=gov.admin)
    assert c.state == g.PROPOSAL_STATE_CANCELED and c.close_reason == "CANCELED_BY_PROPOSER"
    code, msg = gov.error(gov.stub.CancelProposal, g.CancelProposalRequest(id=p.id, proposer="alice"),
                          metadata=gov.admin)
    assert code == C.FAILED_PRECONDITION
    # listing: filter and paging
    ids = [gov.proposal(title=f"page {i}").id for i in range(5)]
    active = gov.stub.ListProposals(g.ListProposalsRequest(state=g.PROPOSAL_STATE_ACTIVE, page_size=1000))
    assert set(ids) <= {x.id for x in active.proposals}
    assert all(x.state == g.PROPOSAL_STATE_ACTIVE for x in active.proposals)
    canceled = gov.stub.ListProposals(g.ListProposalsRequest(state=g.PROPOSAL_STATE_CANCELED))
    assert p.id in {x.id for x in canceled.proposals}
    seen, token = [], ""
    while True:
        page = gov.stub.ListProposals(g.ListProposalsRequest(page_size=2, page_token=token))
        assert len(page.proposals) <= 2
        seen += [x.id for x in page.proposals]
        token = page.next_page_token
        if not token:
            break
    assert len(seen) == len(set(seen)) and set(ids) | {p.id} <= set(seen)
    assert gov.error(gov.stub.ListProposals, g.ListProposalsRequest(page_token="garbage!"))[0] == C.INVALID_ARGUMENT


def test_votes_signatures_and_errors(gov):
    alice, ka = gov.voter(100.0)
    _bob, kb = gov.voter(100.0)
    p = gov.proposal(duration_s=60, quorum=0.01)
    # bad signature: signed for other tokens / with another key / garbage
    code, msg = gov.error(gov.vote, p.id, alice, ka, tokens=50, sign_tokens=49)
    assert code == C.UNAUTHENTICATED and "signature" in msg
    assert gov.error(gov.vote, p.id, alice, kb)[0] == C.UNAUTHENTICATED
    req = gov.vote_request(p.id, alice, ka)
    req.signature = b"\x00" * len(req.signature)
    assert gov.error(gov.stub.CastVote, req)[0] == C.UNAUTHENTICATED
    code, msg = gov.error(gov.vote, p.id, "spiffe://x0tta6bl4.mesh/voter/stranger", ka)
    assert code == C.UNAUTHENTICATED and "not a registered identity" in msg
    # arguments
    for tokens in (-1.0, 0.0, math.inf, math.nan):
        assert gov.error(gov.vote, p.id, alice, ka, tokens=tokens)[0] == C.INVALID_ARGUMENT
    assert gov.error(gov.vote, p.id, alice, ka, nonce=b"short")[0] == C.INVALID_ARGUMENT
    req = gov.vote_request(p.id, alice, ka)
    req.choice = g.VOTE_CHOICE_UNSPECIFIED
    assert gov.error(gov.stub.CastVote, req)[0] == C.INVALID_ARGUMENT
    # state
    code, msg = gov.error(gov.vote, p.id, alice, ka, tokens=101)
    assert code == C.FAILED_PRECONDITION and "balance" in msg
    assert gov.error(gov.vote, "no-such-proposal", alice, ka)[0] == C.NOT_FOUND
    # a good vote, retried with the same id: applied once
    first = gov.vote_request(p.id, alice, ka, "YES", 64, vote_id="alice-vote-1")
    r1 = gov.stub.CastVote(first)
    assert r1.weight == 8.0 and not r1.duplicate and r1.proposal.tally.yes == 8.0
    r2 = gov.stub.CastVote(first)  # a client retry: the same request again
    assert r2.duplicate and r2.vote_id == "alice-vote-1" and r2.proposal.tally.yes == 8.0
    assert r2.proposal.tally.voters == 1
    # same id, other content
    assert gov.error(gov.vote, p.id, alice, ka, "NO", 64, vote_id="alice-vote-1")[0] == C.ALREADY_EXISTS
    # change of mind: the latest vote replaces the earlier one
    r3 = gov.vote(p.id, alice, ka, "NO", 25)
    assert r3.proposal.tally.yes == 0 and r3.proposal.tally.no == 5.0 and r3.proposal.tally.voters == 1
    # voter registered after the proposal: not eligible
    late, kl = gov.voter(100.0)
    code, msg = gov.error(gov.vote, p.id, late, kl)
    assert code == C.FAILED_PRECONDITION and "eligible" in msg


def test_vote_on_closed_proposal(gov):
    alice, ka = gov.voter(100.0)
    p = gov.proposal(duration_s=0.5)
    closed = eventually_sync(lambda: (q := gov.stub.GetProposal(g.GetProposalRequest(id=p.id))).state
                             != g.PROPOSAL_STATE_ACTIVE and q, 10, 0.1, what="the proposal closes after 0.5 s")
    assert closed.state == g.PROPOSAL_STATE_REJECTED and closed.close_reason == "QUORUM_NOT_REACHED"
    code, msg = gov.error(gov.vote, p.id, alice, ka)
    assert code == C.FAILED_PRECONDITION and "REJECTED" in msg


def test_watch_proposals(gov):
    gov.voter()
    events: queue.Queue = queue.Queue()
    call = gov.stub.WatchProposals(g.WatchProposalsRequest())

    def pump():
        try:
            for ev in call:
                events.put(ev)
        except grpc.RpcError:
            pass
    threading.Thread(target=pump, daemon=True).start()

    # the watch is core NATS (events before the server subscribed are not replayed): probe proposals until
    # one comes through the watch, then the server has subscribed
    def probe_seen():
        while not events.empty():
            if events.get_nowait().proposal.title == "watch probe":
                return True
        probe = gov.proposal(title="watch probe", proposer="probe")
        gov.stub.CancelProposal(g.CancelProposalRequest(id=probe.id, proposer="probe"), metadata=gov.admin)
        return False
    eventually_sync(probe_seen, 10, 0.2)
    p = gov.proposal(title="watched")
    gov.stub.CancelProposal(g.CancelProposalRequest(id=p.id, proposer="alice"), metadata=gov.admin)
    got = []

    def both_events():
        while not events.empty():
            if (ev := events.get_nowait()).proposal.id == p.id:
                got.append(ev)
        return len(got) >= 2
    try:
        eventually_sync(both_events, 10, 0.05)
    finally:
        call.cancel()
    assert [e.kind for e in got] == ["created", "canceled"]
    assert got[1].proposal.state == g.PROPOSAL_STATE_CANCELED and got[0].meta.event_id


def test_trace_context_from_metadata(gov):
    from x0tta6bl4.telemetry.tracing import load_spans
    trace_id = "4bf92f3577b34da6a3ce929d0e0e4736"
    md = (("traceparent", f"00-{trace_id}-00f067aa0ba902b7-01"),)
    gov.stub.ListProposals(g.ListProposalsRequest(), metadata=md)
    eventually_sync(lambda: [s for s in load_spans(gov.stack.data_dir) if s.get("name") == "governance.ListProposals"
                             and trace_id in str(s)], 15, 0.2,
                    what="a governance.ListProposals span in the caller's trace")


def test_audit_chain_verifies_and_detects_tampering(gov):
    gov.voter()
    gov.proposal(title="audited")

    def audited():
        evs = [ev for _, ev in gov.read_stream("AUDIT", "audit.governance.>", events_pb2.AuditEvent)]
        types = {e.event_type for e in evs}
        assert {"service.started", "voter.registered", "proposal.created", "vote.cast"} <= types, types
        assert any(e.event_type == "proposal.created" and e.details.get("title") == "audited" for e in evs)
        return evs
    evs = eventually_sync(audited, 10, 0.2)
    report = verify_chains(evs)
    assert report.ok, report.problems
    created = next(e for e in evs if e.event_type == "proposal.created" and e.details.get("title") == "audited")
    created.details["title"] = "edited"
    report = verify_chains(evs)
    assert not report.ok and any("edited" in p for p in report.problems)
    evs.remove(created)
    chain = sorted((e for e in evs if e.chain_id == created.chain_id), key=lambda e: e.chain_seq)
    evs.remove(chain[1])  # a deleted event in the middle: a gap
    assert any("gap" in p for p in verify_chains(evs).problems)


def test_a_proposer_identity_cancels_with_its_signature(gov):
    import secrets

    from x0tta6bl4.governance import cancel_signing_payload
    name, key = gov.voter()
    p = gov.proposal(title="mine", proposer=name)

    def signed(k, pid=p.id, proposer=name, nonce=None):
        nonce = nonce if nonce is not None else secrets.token_bytes(16)
        return g.CancelProposalRequest(id=pid, proposer=proposer, nonce=nonce,
                                       signature=k.sign(cancel_signing_payload(pid, proposer, nonce)))
    other_name, other_key = gov.voter()
    code, msg = gov.error(gov.stub.CancelProposal, signed(other_key))          # someone else's key
    assert code == C.UNAUTHENTICATED and "does not verify" in msg
    code, msg = gov.error(gov.stub.CancelProposal, signed(other_key, proposer=other_name))
    assert code == C.PERMISSION_DENIED                                          # a real identity, not the proposer
    code, msg = gov.error(gov.stub.CancelProposal, signed(key, nonce=b"short"))
    assert code == C.INVALID_ARGUMENT and "nonce" in msg
    code, msg = gov.error(gov.stub.CancelProposal, signed(key, proposer="planner"))
    assert code == C.UNAUTHENTICATED and "not a ledger identity" in msg
    c = gov.stub.CancelProposal(signed(key))
    assert c.state == g.PROPOSAL_STATE_CANCELED


def test_create_needs_the_proposers_signature_or_the_admin_token(gov):
    import secrets

    from x0tta6bl4.governance import Action, proposal_signing_payload
    name, key = gov.voter()
    other_name, other_key = gov.voter()
    spec = events_pb2.ActionSpec(kind=events_pb2.ACTION_KIND_REROUTE, target_node="n3", params={"via": "n4"})

    def signed(k, proposer=name, nonce=None, title="signed reroute", **kw):
        nonce = nonce if nonce is not None else secrets.token_bytes(16)
        req = g.CreateProposalRequest(title=title, description="d", action=spec, proposer=proposer, duration_s=60,
                                      quorum=0.5, threshold=0.5, nonce=nonce, **kw)
        req.signature = k.sign(proposal_signing_payload(
            title=title, description="d", action=Action(kind="reroute", target_node="n3", params={"via": "n4"}),
            proposer=proposer, duration_s=60, quorum=0.5, threshold=0.5, execution_window_s=req.execution_window_s,
            request_id=req.request_id, nonce=nonce))
        return req

    # neither a signature nor the token: refused, saying what would do
    unsigned = g.CreateProposalRequest(title="t", action=spec, proposer="alice", duration_s=60, quorum=.5,
                                       threshold=.5)
    code, msg = gov.error(gov.stub.CreateProposal, unsigned)
    assert code == C.UNAUTHENTICATED and "admin token" in msg and "signature" in msg
    code, msg = gov.error(gov.stub.CreateProposal, unsigned, metadata=(("authorization", "Bearer " + "x" * 40),))
    assert code == C.PERMISSION_DENIED
    assert gov.stub.CreateProposal(unsigned, metadata=gov.admin).proposer == "alice"   # an operator, by token
    # the proposer's own key: accepted without any token
    req = signed(key)
    p = gov.stub.CreateProposal(req)
    assert (p.proposer, p.title, p.state) == (name, "signed reroute", g.PROPOSAL_STATE_ACTIVE)
    assert dict(p.action.params) == {"via": "n4"}
    assert gov.stub.CreateProposal(req).id == p.id        # the same signed request again: one proposal
    assert gov.stub.CreateProposal(signed(key)).id != p.id   # a new nonce: a new proposal
    # a field changed after signing, another identity's key, a name that is no ledger identity
    tampered = signed(key)
    tampered.title = "signed isolate"
    code, msg = gov.error(gov.stub.CreateProposal, tampered)
    assert code == C.UNAUTHENTICATED and "does not verify" in msg
    tampered = signed(key)
    tampered.action.params["via"] = "n9"
    assert gov.error(gov.stub.CreateProposal, tampered)[0] == C.UNAUTHENTICATED
    code, msg = gov.error(gov.stub.CreateProposal, signed(other_key))
    assert code == C.UNAUTHENTICATED and name in msg
    code, msg = gov.error(gov.stub.CreateProposal, signed(key, proposer="planner"))
    assert code == C.UNAUTHENTICATED and "not a ledger identity" in msg
    code, msg = gov.error(gov.stub.CreateProposal, signed(key, nonce=b"short"))
    assert code == C.INVALID_ARGUMENT and "nonce" in msg
    # a signed proposal's own rules are still checked
    code, msg = gov.error(gov.stub.CreateProposal, signed(key, title=""))
    assert code == C.INVALID_ARGUMENT and "title" in msg
    # one proposer may keep at most 20 proposals ACTIVE (X0TTA6BL4_MAX_ACTIVE_PER_PROPOSER)
    active = len([x for x in gov.stub.ListProposals(g.ListProposalsRequest(
        state=g.PROPOSAL_STATE_ACTIVE, page_size=1000)).proposals if x.proposer == name])
    for i in range(20 - active):
        gov.stub.CreateProposal(signed(key, title=f"mine {i}"))
    code, msg = gov.error(gov.stub.CreateProposal, signed(key, title="one too many"))
    assert code == C.RESOURCE_EXHAUSTED and "already has 20 active proposals" in msg
    assert gov.stub.CreateProposal(req).id == p.id              # a retry is still answered
    assert gov.stub.CreateProposal(signed(other_key, proposer=other_name)).proposer == other_name
