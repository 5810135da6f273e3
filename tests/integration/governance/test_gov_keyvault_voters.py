"""Voters are keyvault identities, and only the ledger admin mints voting power.

Real nats-server, real keyvault and governance processes, real gRPC; the CLI runs as a subprocess
(meshctl) against the same stack."""
from __future__ import annotations

import json
import os
import pathlib
import secrets
import stat
import subprocess
import sys

import grpc
import pytest

from tests.integration.keyvault.conftest import certify_new
from x0tta6bl4.governance import Action, proposal_signing_payload, vote_signing_payload
from x0tta6bl4.pqc import MLDSA65PrivateKey
from x0tta6bl4.pqc import key_id as pqc_key_id
from x0tta6bl4.runtime.locate import ADMIN_TOKEN_FILE, admin_metadata
from x0tta6bl4.v1 import events_pb2
from x0tta6bl4.v1 import governance_pb2 as g
from x0tta6bl4.v1 import keyvault_pb2 as kpb

C = grpc.StatusCode
TD = "x0tta6bl4.mesh"


@pytest.fixture(scope="module")
def stack(kv_gov_stack):
    return kv_gov_stack


@pytest.fixture(scope="module")
def stubs(kv_gov_stubs):
    return kv_gov_stubs


def _err(fn, *a, **kw):
    with pytest.raises(grpc.RpcError) as ei:
        fn(*a, **kw)
    return ei.value.code(), ei.value.details()


def _signed_vote(pid, voter, key, choice="YES", tokens=25.0):
    nonce = secrets.token_bytes(16)
    return g.CastVoteRequest(proposal_id=pid, voter=voter, choice=g.VoteChoice.Value("VOTE_CHOICE_" + choice),
                             tokens=tokens, nonce=nonce,
                             signature=key.sign(vote_signing_payload(pid, voter, choice, tokens, nonce)))


def _proposal(gov, proposer: str, key):
    """A proposal signed by a ledger identity's key (no admin token)."""
    nonce = secrets.token_bytes(16)
    req = g.CreateProposalRequest(
        title="kv voters", action=events_pb2.ActionSpec(kind=events_pb2.ACTION_KIND_CONFIG_CHANGE),
        proposer=proposer, duration_s=600, quorum=0.9, threshold=0.5, nonce=nonce)
    req.signature = key.sign(proposal_signing_payload(
        title=req.title, description="", action=Action(kind="config_change"), proposer=proposer, duration_s=600,
        quorum=0.9, threshold=0.5, execution_window_s=0, request_id="", nonce=nonce))
    return gov.CreateProposal(req)


def test_register_voter_needs_the_admin_token(stack, stubs):
    gov, _ = stubs
    path = stack.data_dir / ADMIN_TOKEN_FILE
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    token = path.read_text().strip()
    assert len(token) >= 40
    assert token not in (stack.data_dir / "logs" / "governance-0.log").read_text()   # never logged
    pk = MLDSA65PrivateKey.generate().public_key().public_bytes()
    req = g.RegisterVoterRequest(voter="spiffe://x0tta6bl4.mesh/voter/nobody", balance=1e9, public_key=pk)
    code, msg = _err(gov.RegisterVoter, req)
    assert code == C.UNAUTHENTICATED and "authorization: Bearer" in msg and ADMIN_TOKEN_FILE in msg
    code, msg = _err(gov.RegisterVoter, req, metadata=(("authorization", "Bearer " + "x" * 43),))
    assert code == C.PERMISSION_DENIED and "does not match" in msg
    code, msg = _err(gov.RegisterVoter, req, metadata=(("authorization", token),))
    assert code == C.UNAUTHENTICATED and "Bearer" in msg
    # nothing was minted by the refused calls
    assert _err(gov.GetBalance, g.GetBalanceRequest(voter=req.voter))[0] == C.NOT_FOUND
    v = gov.RegisterVoter(req, metadata=admin_metadata(directory=stack.data_dir))
    assert v.balance == 1e9


def test_voter_key_comes_from_keyvault_and_signs_votes(stack, stubs):
    gov, kv = stubs
    admin = admin_metadata(directory=stack.data_dir)
    ident, _ = certify_new(kv, "op-alice")     # the voter's keys generated here, certified by keyvault
    voter = f"spiffe://{TD}/node/op-alice"
    assert str(ident.uri) == voter
    mldsa = ident.signing.private.mldsa
    v = gov.RegisterVoter(g.RegisterVoterRequest(voter=voter, balance=100), metadata=admin)   # no public_key
    assert v.key_id == pqc_key_id(mldsa.public_key().public_bytes())
    # one identity, one ledger entry
    code, _ = _err(gov.RegisterVoter, g.RegisterVoterRequest(voter=voter, balance=5), metadata=admin)
    assert code == C.ALREADY_EXISTS

    p = _proposal(gov, voter, mldsa)          # a keyvault identity opens a proposal with its own key
    assert p.proposer == voter
    r = gov.CastVote(_signed_vote(p.id, voter, mldsa))
    assert r.weight == 5.0 and r.proposal.tally.voters == 1
    code, _msg = _err(gov.CastVote, _signed_vote(p.id, voter, MLDSA65PrivateKey.generate()))
    assert code == C.UNAUTHENTICATED


def test_ledger_follows_a_keyvault_key_rotation(stack, stubs):
    gov, kv = stubs
    admin = admin_metadata(directory=stack.data_dir)
    old = certify_new(kv, "op-dave")[0].signing.private.mldsa
    voter = f"spiffe://{TD}/node/op-dave"
    gov.RegisterVoter(g.RegisterVoterRequest(voter=voter, balance=100), metadata=admin)
    new = certify_new(kv, "op-dave", 2, overlap_s=1.0)[0].signing.private.mldsa     # the holder rotates
    assert new.public_key().public_bytes() != old.public_key().public_bytes()
    # a proposal signed under the rotated key: the service finds keyvault's new root-signed record and records it
    p = _proposal(gov, voter, new)
    assert gov.GetBalance(g.GetBalanceRequest(voter=voter)).key_id == pqc_key_id(new.public_key().public_bytes())
    r = gov.CastVote(_signed_vote(p.id, voter, new, tokens=9.0))
    assert r.weight == 3.0
    assert gov.GetBalance(g.GetBalanceRequest(voter=voter)).key_id == pqc_key_id(new.public_key().public_bytes())
    # the retired key no longer votes, and a random key never did
    assert _err(gov.CastVote, _signed_vote(p.id, voter, old))[0] == C.UNAUTHENTICATED
    assert _err(gov.CastVote, _signed_vote(p.id, voter, MLDSA65PrivateKey.generate()))[0] == C.UNAUTHENTICATED


def test_unknown_revoked_and_malformed_identities_are_refused(stack, stubs):
    gov, kv = stubs
    admin = admin_metadata(directory=stack.data_dir)
    code, msg = _err(gov.RegisterVoter, g.RegisterVoterRequest(voter=f"spiffe://{TD}/node/ghost", balance=1),
                     metadata=admin)
    assert code == C.NOT_FOUND and "keyvault has no identity" in msg
    code, msg = _err(gov.RegisterVoter, g.RegisterVoterRequest(voter="bob", balance=1), metadata=admin)
    assert code == C.INVALID_ARGUMENT and "spiffe://" in msg
    kv.IssueIdentity(kpb.IssueIdentityRequest(node_id="op-mallory"))
    kv.Revoke(kpb.RevokeRequest(node_id="op-mallory", reason="test"))
    code, msg = _err(gov.RegisterVoter, g.RegisterVoterRequest(voter=f"spiffe://{TD}/node/op-mallory", balance=1),
                     metadata=admin)
    assert code == C.FAILED_PRECONDITION and "revoked" in msg


def test_cli_registers_a_keyvault_identity_and_votes_with_its_bundle(stack, stubs, tmp_path):
    gov, _kv = stubs
    env = dict(os.environ, X0TTA6BL4_DATA_DIR=str(stack.data_dir), X0TTA6BL4_GOV_ADDR=stack.grpc_addr("governance"),
               X0TTA6BL4_KEYVAULT_ADDR=stack.grpc_addr("keyvault"), X0TTA6BL4_NATS_URL=stack.url)
    meshctl = [str(pathlib.Path(sys.executable).parent / "meshctl")]
    bundle = tmp_path / "carol.bundle"

    def run(*args):
        return subprocess.run([*meshctl, *args], env=env, capture_output=True, text=True, timeout=60)
    r = run("keys", "issue", "op-carol", "--private-out", str(bundle))
    assert r.returncode == 0, r.stderr
    voter = f"spiffe://{TD}/node/op-carol"
    r = run("gov", "register", voter, "--balance", "64")           # admin token found in the data dir
    assert r.returncode == 0, r.stderr
    assert "balance=64" in r.stdout
    # the identity opens a proposal signed with its keyvault bundle (no admin token needed)
    r = subprocess.run([*meshctl, "gov", "create", "--title", "carol's change", "--duration", "600", "--quorum", "0.9",
                        "--proposer", voter, "--key", str(bundle), "--json"],
                       env=dict(env, X0TTA6BL4_DATA_DIR=str(tmp_path), **stack.identity_env("operator")),
                       capture_output=True, text=True, timeout=60)   # elsewhere: the operator's bus credentials
    assert r.returncode == 0, r.stderr
    p = gov.GetProposal(g.GetProposalRequest(id=json.loads(r.stdout)["id"]))
    assert (p.proposer, p.title) == (voter, "carol's change")
    r = run("gov", "vote", p.id, "--voter", voter, "--choice", "no", "--tokens", "16", "--key", str(bundle))
    assert r.returncode == 0, r.stderr
    assert "weight=4" in r.stdout
    # without the token the CLI says what is missing, in one line
    r = subprocess.run([*meshctl, "gov", "register", f"spiffe://{TD}/node/op-x", "--balance", "1"],
                       env=dict(env, X0TTA6BL4_DATA_DIR=str(tmp_path), **stack.identity_env("operator")),
                       capture_output=True, text=True, timeout=60)   # elsewhere: the operator's bus credentials
    assert r.returncode != 0 and "UNAUTHENTICATED" in (r.stdout + r.stderr) and "Traceback" not in r.stderr
