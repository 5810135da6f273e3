"""Governance follows keyvault revocations: within a second of a revocation the identity's votes, proposals and
cancels are refused (PERMISSION_DENIED naming the revocation, audited); other voters are unaffected.

Real nats-server, keyvault and governance processes, mutual-TLS gRPC as an operator (the revocation goes through
keyvault's policy with the operator's SVID)."""
from __future__ import annotations

import asyncio
import secrets
import time

import grpc
import pytest
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from testkit import eventually_sync, scaled

from tests.integration.keyvault.conftest import certify_new
from x0tta6bl4.bus import subjects
from x0tta6bl4.bus.codec import decode
from x0tta6bl4.bus.connection import NatsCredentials, connect_once
from x0tta6bl4.governance import Action, cancel_signing_payload, proposal_signing_payload, vote_signing_payload
from x0tta6bl4.runtime.locate import admin_metadata
from x0tta6bl4.v1 import events_pb2
from x0tta6bl4.v1 import governance_pb2 as g
from x0tta6bl4.v1 import keyvault_pb2 as kpb

C = grpc.StatusCode
TD = "x0tta6bl4.mesh"
REFUSED_AUDIT = "identity.revoked_refused"


@pytest.fixture(scope="module")
def stack(kv_gov_stack):
    return kv_gov_stack


@pytest.fixture(scope="module")
def stubs(kv_gov_stubs):
    return kv_gov_stubs


def _voter(gov, kv, stack, node_id: str):
    key = certify_new(kv, node_id)[0].signing.private.mldsa     # keys generated here, certified by keyvault
    voter = f"spiffe://{TD}/node/{node_id}"
    gov.RegisterVoter(g.RegisterVoterRequest(voter=voter, balance=400),
                      metadata=admin_metadata(directory=stack.data_dir))
    return voter, key


def _vote(pid, voter, key, tokens=4.0):
    nonce = secrets.token_bytes(16)
    return g.CastVoteRequest(proposal_id=pid, voter=voter, choice=g.VOTE_CHOICE_YES, tokens=tokens, nonce=nonce,
                             signature=key.sign(vote_signing_payload(pid, voter, "YES", tokens, nonce)))


def _proposal(proposer, key, title="rev"):
    nonce = secrets.token_bytes(16)
    req = g.CreateProposalRequest(title=title, action=events_pb2.ActionSpec(kind=events_pb2.ACTION_KIND_CONFIG_CHANGE),
                                  proposer=proposer, duration_s=600, quorum=0.9, threshold=0.5, nonce=nonce)
    req.signature = key.sign(proposal_signing_payload(
        title=title, description="", action=Action(kind="config_change"), proposer=proposer, duration_s=600,
        quorum=0.9, threshold=0.5, execution_window_s=0, request_id="", nonce=nonce))
    return req


def _cancel(pid, proposer, key):
    nonce = secrets.token_bytes(16)
    return g.CancelProposalRequest(id=pid, proposer=proposer, nonce=nonce,
                                   signature=key.sign(cancel_signing_payload(pid, proposer, nonce)))


def _code(fn, req) -> tuple[grpc.StatusCode, str]:
    try:
        fn(req)
    except grpc.RpcError as e:
        return e.code(), e.details()
    return C.OK, ""


def _audits(stack) -> list[events_pb2.AuditEvent]:
    async def go():
        creds = NatsCredentials.in_secrets(stack.secrets.root, "operator") if stack.bus_secured else None
        nc = await connect_once(stack.url, "test-operator", creds=creds)
        try:
            js = nc.jetstream()
            sub = await js.pull_subscribe(subjects.audit("governance", REFUSED_AUDIT), stream=subjects.STREAM_AUDIT,
                                          config=ConsumerConfig(deliver_policy=DeliverPolicy.ALL,
                                                                ack_policy=AckPolicy.NONE, inactive_threshold=10))
            out = []
            while True:
                try:
                    msgs = await sub.fetch(256, timeout=0.5)
                except TimeoutError:
                    return out
                out += [decode(events_pb2.AuditEvent, m.data) for m in msgs]
                if msgs[-1].metadata.num_pending == 0:
                    return out
        finally:
            await nc.close()
    return asyncio.run(go())


def test_a_revoked_voter_is_refused_within_a_second_and_others_are_not(stack, stubs):
    gov, kv = stubs
    mallory, mkey = _voter(gov, kv, stack, "rev-mallory")
    alice, akey = _voter(gov, kv, stack, "rev-alice")
    # before the revocation mallory proposes and votes like anyone
    own = gov.CreateProposal(_proposal(mallory, mkey, "mallory's"))
    other = gov.CreateProposal(_proposal(alice, akey, "alice's"))
    assert gov.CastVote(_vote(other.id, mallory, mkey)).weight == 2.0

    revoked = kv.Revoke(kpb.RevokeRequest(node_id="rev-mallory", reason="key stolen (test)"))
    t_revoked = time.monotonic()

    def refused():
        code, msg = _code(gov.CastVote, _vote(own.id, mallory, mkey))
        assert code == C.PERMISSION_DENIED, (code, msg)
        return msg
    msg = eventually_sync(refused, timeout=1.0, interval=0.02, what="a revoked voter's CastVote refused")
    took = time.monotonic() - t_revoked
    assert took < scaled(1.0), took
    assert "revoked" in msg and mallory in msg and "key stolen (test)" in msg
    assert revoked.sig_key_id and revoked.sig_key_id in msg, (revoked.sig_key_id, msg)

    # proposals and cancels of the revoked identity are refused too, naming the revocation
    code, msg = _code(gov.CreateProposal, _proposal(mallory, mkey, "after revocation"))
    assert code == C.PERMISSION_DENIED and "revoked" in msg and "key stolen (test)" in msg
    code, msg = _code(gov.CancelProposal, _cancel(own.id, mallory, mkey))
    assert code == C.PERMISSION_DENIED and "revoked" in msg
    # ... even with the ledger admin token acting for it
    req = g.CancelProposalRequest(id=own.id, proposer=mallory)
    try:
        gov.CancelProposal(req, metadata=admin_metadata(directory=stack.data_dir))
        raise AssertionError("a cancel for a revoked proposer went through with the admin token")
    except grpc.RpcError as e:
        assert e.code() == C.PERMISSION_DENIED and "revoked" in e.details()
    # nothing the revoked identity sent changed the ledger
    assert gov.GetProposal(g.GetProposalRequest(id=own.id)).state == g.PROPOSAL_STATE_ACTIVE
    assert gov.GetProposal(g.GetProposalRequest(id=own.id)).tally.voters == 0

    # the other voter is unaffected: votes, proposes and cancels its own proposal
    assert gov.CastVote(_vote(own.id, alice, akey)).weight == 2.0
    fresh = gov.CreateProposal(_proposal(alice, akey, "alice's second"))
    assert gov.CancelProposal(_cancel(fresh.id, alice, akey)).state == g.PROPOSAL_STATE_CANCELED

    # every refusal is in governance's audit chain with the reason
    def audited():
        evs = [a for a in _audits(stack) if a.subject_id == mallory]
        methods = {a.details["method"] for a in evs}
        assert {"CastVote", "CreateProposal", "CancelProposal"} <= methods, methods
        assert all("revoked" in a.details["reason"] for a in evs)
        return True
    eventually_sync(audited, timeout=10)
