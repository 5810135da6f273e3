"""The policy engine (x0tta6bl4.policy): who may call which keyvault and governance method, decided from the
caller's SPIFFE ID and the request; the audit sampler; the NATS path agrees with the permission table."""
from __future__ import annotations

import pytest

from x0tta6bl4.bus import permissions
from x0tta6bl4.policy import (
    GOVERNANCE,
    KEYVAULT,
    RULES,
    AuditSampler,
    Decision,
    PolicyEngine,
    PolicyError,
    parse_principal,
)
from x0tta6bl4.v1 import governance_pb2 as g
from x0tta6bl4.v1 import keyvault_pb2 as pb

TD = "x0tta6bl4.mesh"
OP = f"spiffe://{TD}/operator/alice"
EXECUTOR = f"spiffe://{TD}/service/executor"
GOV = f"spiffe://{TD}/service/governance"
H1 = f"spiffe://{TD}/host/h1"
N0 = f"spiffe://{TD}/node/n0"


@pytest.fixture
def engine() -> PolicyEngine:
    return PolicyEngine(TD, assignments=lambda: {"h1": {"n0", "n1"}, "h2": {"n5"}})


def kv(method: str) -> str:
    return f"/{KEYVAULT}/{method}"


def test_principals_parse_and_foreign_or_malformed_ids_are_refused():
    p = parse_principal(H1, TD)
    assert (p.kind, p.name, p.label) == ("host", "h1", "host h1")
    for bad, why in [("", "no SPIFFE ID"), ("https://x0tta6bl4.mesh/host/h1", "not a SPIFFE ID"),
                     ("spiffe://evil.mesh/operator/alice", "not in trust domain"),
                     (f"spiffe://{TD}/admin/alice", "expected"), (f"spiffe://{TD}/node/a/b", "expected")]:
        with pytest.raises(PolicyError, match=why):
            parse_principal(bad, TD)


def test_a_node_reads_only_its_own_records(engine):
    assert engine.decide(N0, kv("GetPublicKeys"), pb.GetPublicKeysRequest(node_id="n0")).allowed
    d = engine.decide(N0, kv("GetPublicKeys"), pb.GetPublicKeysRequest(node_id="n1"))
    assert not d.allowed and "only its own records" in d.reason and "n1" in d.reason
    assert engine.decide(N0, kv("CertifyKeys"), pb.CertifyKeysRequest(node_id="n0")).allowed
    d = engine.decide(N0, kv("CertifyKeys"), pb.CertifyKeysRequest(node_id="n1"))
    assert not d.allowed and "n1" in d.reason
    assert not engine.decide(N0, kv("ListIdentities"), pb.ListIdentitiesRequest()).allowed


def test_a_mesh_host_acts_only_for_its_assigned_nodes(engine):
    ok = engine.decide(H1, kv("CertifyKeys"), pb.CertifyKeysRequest(node_id="n1"))
    assert ok.allowed and ok.reason == "host h1: its assigned nodes"
    d = engine.decide(H1, kv("CertifyKeys"), pb.CertifyKeysRequest(node_id="n5"))
    assert not d.allowed and "n0, n1" in d.reason and "not n5" in d.reason
    assert engine.decide(H1, kv("GetPublicKeys"), pb.GetPublicKeysRequest(node_id="n1")).allowed
    # a host certifies the keys it generated; it enrols no custodial identity
    assert not engine.decide(H1, kv("IssueIdentity"), pb.IssueIdentityRequest(node_id="n1")).allowed
    d = engine.decide(f"spiffe://{TD}/host/h3", kv("CertifyKeys"), pb.CertifyKeysRequest(node_id="n0"))
    assert not d.allowed and "no nodes" in d.reason            # a host nobody assigned anything to
    assert not engine.decide(H1, kv("Rotate"), pb.RotateRequest(node_ids=["n0"])).allowed


def test_private_keys_only_through_export_by_an_operator(engine):
    """Nobody gets private keys but an operator provisioning an offline edge node (ExportIdentity)."""
    req = pb.ExportIdentityRequest(node_id="n0", recipient_kem_public_key=b"k")
    assert engine.decide(OP, kv("ExportIdentity"), req).allowed
    for other in (N0, H1, EXECUTOR, GOV):
        d = engine.decide(other, kv("ExportIdentity"), req)
        assert not d.allowed and "ExportIdentity" in d.reason, other
    for gone in ("GetPrivateBundle", "GetPrivateBundles"):
        d = engine.decide(OP, kv(gone), None)
        assert not d.allowed and "no policy rule" in d.reason


def test_issue_rotate_revoke_need_an_operator_or_the_executor(engine):
    reqs = {"IssueIdentity": pb.IssueIdentityRequest(node_id="n7"), "Rotate": pb.RotateRequest(all=True),
            "Revoke": pb.RevokeRequest(node_id="n7")}
    for m, req in reqs.items():
        assert engine.decide(OP, kv(m), req).allowed
        assert engine.decide(EXECUTOR, kv(m), req).allowed
        for other in (GOV, f"spiffe://{TD}/service/planner", N0, f"spiffe://{TD}/node/n7"):
            d = engine.decide(other, kv(m), req)
            assert not d.allowed and m in d.reason, (other, m, d)
    d = engine.decide(H1, kv("Rotate"), pb.RotateRequest(all=True))
    assert not d.allowed


def test_governance_calls(engine):
    vote = g.CastVoteRequest(proposal_id="p", voter=N0)
    assert engine.decide(N0, f"{GOVERNANCE}/CastVote", vote).allowed
    d = engine.decide(f"spiffe://{TD}/node/n1", f"{GOVERNANCE}/CastVote", vote)
    assert not d.allowed and "only as spiffe://x0tta6bl4.mesh/node/n1" in d.reason
    assert engine.decide(OP, f"{GOVERNANCE}/CastVote", g.CastVoteRequest(voter="alice")).allowed   # relays
    assert not engine.decide(H1, f"{GOVERNANCE}/CastVote", vote).allowed
    assert engine.decide(N0, f"{GOVERNANCE}/CreateProposal", g.CreateProposalRequest(proposer=N0)).allowed
    assert not engine.decide(N0, f"{GOVERNANCE}/CreateProposal", g.CreateProposalRequest(proposer=OP)).allowed
    assert engine.decide(OP, f"{GOVERNANCE}/RegisterVoter", g.RegisterVoterRequest()).allowed
    for who in (N0, GOV, H1):
        assert not engine.decide(who, f"{GOVERNANCE}/RegisterVoter", g.RegisterVoterRequest()).allowed
    for who in (OP, GOV, N0, H1):
        assert engine.decide(who, f"{GOVERNANCE}/ListProposals", g.ListProposalsRequest()).allowed


def test_default_deny_and_infrastructure(engine):
    d = engine.decide(OP, "/x0tta6bl4.v1.Keyvault/ExportEverything", None)
    assert not d.allowed and "no policy rule" in d.reason
    h = engine.decide(N0, "/grpc.health.v1.Health/Check", None)
    assert h.allowed and not h.audit                   # decided, not audited
    assert not engine.decide("spiffe://evil.mesh/operator/alice", kv("Info"), pb.InfoRequest()).allowed


def test_every_rule_names_a_real_method():
    services = {KEYVAULT: pb.DESCRIPTOR.services_by_name["Keyvault"],
                GOVERNANCE: g.DESCRIPTOR.services_by_name["Governance"]}
    for method in RULES:
        svc, name = method.split("/")
        if svc in services:
            assert name in services[svc].methods_by_name, method
    for svc, desc in services.items():             # and every method of the two services has a rule
        assert {f"{svc}/{m}" for m in desc.methods_by_name} <= set(RULES)


def test_every_bus_identity_allowed_to_publish_a_keyvault_method_is_allowed_by_the_policy(engine):
    from services.keyvault.rpc import bus_callers
    for method in pb.DESCRIPTOR.services_by_name["Keyvault"].methods_by_name:
        for caller in bus_callers(method, TD):
            req = getattr(pb, f"{method}Request", None)
            req = req() if req is not None else None
            if method in ("Rotate",):
                req = pb.RotateRequest(node_ids=["n0"])
            if method in ("Revoke", "IssueIdentity", "GetPublicKeys", "CertifyKeys", "ExportIdentity"):
                req = getattr(pb, f"{method}Request")(node_id="n0")
            assert engine.decide(caller, f"{KEYVAULT}/{method}", req).allowed, (method, caller)
    # and the executor is among the NATS callers of Rotate and Revoke, a mesh host is among none
    assert EXECUTOR in bus_callers("Rotate", TD) and EXECUTOR in bus_callers("Revoke", TD)
    assert not any("/host/" in c for m in ("Rotate", "ExportIdentity") for c in bus_callers(m, TD))
    assert permissions.OPERATOR in {c.rsplit("/", 1)[-1] for c in bus_callers("Info", TD)}


def test_sampler_keeps_denials_and_writes_and_counts_left_out_reads():
    t = [100.0]
    s = AuditSampler(reads_per_s=2, clock=lambda: t[0])
    read = Decision(True, "ok", "x/Info", OP, True, True)
    write = Decision(True, "ok", "x/Rotate", OP, True, False)
    deny = Decision(False, "no", "x/Info", OP, True, False)
    assert [s.admit(read) for _ in range(5)] == [(True, 0), (True, 0), (False, 0), (False, 0), (False, 0)]
    assert all(s.admit(write) == (True, 0) for _ in range(10))
    assert all(s.admit(deny) == (True, 0) for _ in range(10))
    t[0] += 1.01
    assert s.admit(read) == (True, 3)                  # the three left out are counted in the next one
    assert s.admit(Decision(True, "ok", "h/Check", OP, False, True)) == (False, 0)   # infrastructure
    other = Decision(True, "ok", "x/Info", N0, True, True)
    assert s.admit(other) == (True, 0)                 # per caller
