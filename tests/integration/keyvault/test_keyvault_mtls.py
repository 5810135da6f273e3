"""Mutual TLS with X.509 SVIDs and the policy on every call, against real keyvault and governance processes on
a secured bus (nkeys, TLS, permissions).

* who has no SVID of the deployment CA (anonymous, another CA, expired) gets no connection to either service;
* an SVID is had only for one's own bus identity (the subject keyvault.svid.<identity> is the attestation);
* a mesh host's SVID reads only its own nodes' bundles; issue / rotate / revoke need an operator or the
  executor; every decision is audited (policy.allowed / policy.denied with method and caller);
* short-lived SVIDs (20 s here) are renewed at half-life and served without a restart while calls go on;
* the handshake negotiates the post-quantum hybrid X25519MLKEM768 (recorded per call in the audit trail);
* governance refuses a keyvault root that does not match its pinned fingerprint.
"""
from __future__ import annotations

import asyncio
import pathlib
import socket
import ssl
import tempfile
import time

import grpc
import pytest
from cryptography import x509
from testkit import eventually, eventually_sync, violations

from tests.integration.keyvault.conftest import TD, certify_new, certify_pb, svid_for
from x0tta6bl4.bus import subjects
from x0tta6bl4.keyvault.svid import SvidIssuer, spiffe_id, spiffe_id_of
from x0tta6bl4.pqc import NodeIdentity
from x0tta6bl4.rpc import svid as svids
from x0tta6bl4.runtime.secrets import make_ca
from x0tta6bl4.runtime.stack import Stack
from x0tta6bl4.v1 import events_pb2
from x0tta6bl4.v1 import governance_pb2 as g
from x0tta6bl4.v1 import governance_pb2_grpc as gg
from x0tta6bl4.v1 import keyvault_pb2 as pb
from x0tta6bl4.v1 import keyvault_pb2_grpc as kg

C = grpc.StatusCode
TTL_S = 20


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    st = Stack(tmp_path_factory.mktemp("mtls"), services=("keyvault", "governance"), secure=True,
               env={"X0TTA6BL4_SVID_TTL_S": str(TTL_S)})
    st.start(90)
    st.add_mesh_host("h1", ["a0", "a1"])
    st.add_mesh_host("h2", ["b0"])
    op = kg.KeyvaultStub(svids.secure_channel(st.grpc_addr("keyvault"), svid_for(st), "keyvault", TD))
    for n in ("a0", "a1", "b0"):
        op.IssueIdentity(pb.IssueIdentityRequest(node_id=n), timeout=20)
    yield st
    st.stop()
    assert not [v for v in violations(st) if "keyvault.svid" not in v], "a legitimate flow was refused"


def kv_stub(stack: Stack, svid: svids.Svid) -> kg.KeyvaultStub:
    return kg.KeyvaultStub(svids.secure_channel(stack.grpc_addr("keyvault"), svid, "keyvault", TD))


def error(call, *a, **kw) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as ei:
        call(*a, timeout=10, **kw)
    return ei.value.code(), ei.value.details()


def audited(stack: Stack, service: str, event: str) -> list[events_pb2.AuditEvent]:
    async def go():
        nc = await stack.connect()
        try:
            js = nc.jetstream()
            sub = await js.subscribe(subjects.audit(service, event), ordered_consumer=True)
            out = []
            while True:
                try:
                    m = await sub.next_msg(timeout=1.0)
                except TimeoutError:
                    return out
                out.append(events_pb2.AuditEvent.FromString(m.data))
                if m.metadata.num_pending == 0:
                    return out
        finally:
            await nc.close()
    return asyncio.run(go())


def peer_certificate(addr: str, svid: svids.Svid) -> tuple[x509.Certificate, str]:
    """The server's certificate from a fresh TLS handshake (Python's OpenSSL, ALPN h2) and the TLS version."""
    host, port = addr.rsplit(":", 1)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.load_verify_locations(cadata=svid.bundle.decode())
    with tempfile.TemporaryDirectory() as d:        # ssl loads a client certificate from files only
        key, cert = pathlib.Path(d, "k.pem"), pathlib.Path(d, "c.pem")
        key.write_bytes(svid.key)
        cert.write_bytes(svid.certificate)
        ctx.load_cert_chain(cert, key)
    ctx.set_alpn_protocols(["h2"])
    with socket.create_connection((host, int(port)), timeout=10) as raw, \
            ctx.wrap_socket(raw, server_hostname=f"keyvault.{TD}") as tls:
        return x509.load_der_x509_certificate(tls.getpeercert(binary_form=True)), tls.version() or ""


# ---- who gets a connection -------------------------------------------------------------------------------
def test_anonymous_wrong_ca_and_expired_clients_get_no_connection(stack):
    for service in ("keyvault", "governance"):
        addr = stack.grpc_addr(service)
        bundle = svid_for(stack).bundle
        attempts = {
            "plaintext": grpc.insecure_channel(addr),
            "TLS without a client SVID": grpc.secure_channel(addr, grpc.ssl_channel_credentials(bundle),
                                                             svids.channel_options(service, TD)),
        }
        rogue_key, rogue_ca = make_ca(TD)
        rogue = svids.obtain_local(SvidIssuer(rogue_key, rogue_ca, TD), spiffe_id(TD, "operator", "mallory"))
        rogue = svids.Svid(rogue.spiffe_id, rogue.key, rogue.certificate, bundle, rogue.not_before, rogue.not_after)
        attempts["an SVID from another CA"] = svids.secure_channel(addr, rogue, service, TD)
        assert stack.secrets is not None
        past = SvidIssuer.load(stack.secrets.ca_key, stack.secrets.ca_cert, TD, ttl_s=60,
                               clock=lambda: time.time() - 3600)
        expired = svids.obtain_local(past, spiffe_id(TD, "operator", "late"))
        attempts["an expired SVID"] = svids.secure_channel(addr, expired, service, TD)
        for what, ch in attempts.items():
            stub = kg.KeyvaultStub(ch) if service == "keyvault" else gg.GovernanceStub(ch)
            call = stub.Info if service == "keyvault" else stub.ListProposals
            req = pb.InfoRequest() if service == "keyvault" else g.ListProposalsRequest()
            code, _ = error(call, req)
            assert code == C.UNAVAILABLE, (service, what, code)     # refused in the handshake
            ch.close()
        ok = kv_stub(stack, svid_for(stack)) if service == "keyvault" else \
            gg.GovernanceStub(svids.secure_channel(addr, svid_for(stack), service, TD))
        assert (ok.Info(pb.InfoRequest(), timeout=10) if service == "keyvault"
                else ok.ListProposals(g.ListProposalsRequest(), timeout=10)) is not None


def test_a_client_refuses_a_server_that_is_not_the_service_it_called(stack):
    # governance's address, but the client asks for keyvault: governance's SVID names governance.<td>
    ch = svids.secure_channel(stack.grpc_addr("governance"), svid_for(stack), "keyvault", TD)
    code, _ = error(kg.KeyvaultStub(ch).Info, pb.InfoRequest())
    assert code == C.UNAVAILABLE
    ch.close()


def test_an_svid_is_issued_only_for_ones_own_bus_identity(stack):
    async def go():
        nc = await stack.connect("mesh-host-h1")
        try:
            mine = await svids.obtain_over_bus(nc, "mesh-host-h1")
            with pytest.raises(svids.SvidError):          # the bus does not let h1 publish keyvault.svid.<h2>
                await svids.obtain_over_bus(nc, "mesh-host-h2", timeout_s=2)
            return mine
        finally:
            await nc.close()
    mine = asyncio.run(go())
    assert mine.spiffe_id == f"spiffe://{TD}/host/h1" and mine.not_after - mine.not_before <= TTL_S * 1.1 + 1
    assert any("keyvault.svid.mesh-host-h2" in v for v in violations(stack))
    issued = [e for e in audited(stack, "keyvault", "svid.issued") if e.subject_id == mine.spiffe_id]
    assert issued and issued[-1].details["identity"] == "mesh-host-h1" and issued[-1].details["bus_secured"] == "true"


# ---- the policy -------------------------------------------------------------------------------------------
def host_svid(stack: Stack, host: str) -> svids.Svid:
    async def go():
        nc = await stack.connect(f"mesh-host-{host}")
        try:
            return await svids.obtain_over_bus(nc, f"mesh-host-{host}")
        finally:
            await nc.close()
    return asyncio.run(go())


def test_a_mesh_host_certifies_only_its_own_nodes_keys_and_exports_nothing(stack):
    h1 = kv_stub(stack, host_svid(stack, "h1"))
    ident, _ = certify_new(h1, "a0", 2, overlap_s=30)         # the host generated a0's next generation
    assert h1.GetPublicKeys(pb.GetPublicKeysRequest(node_id="a0"), timeout=10).sig_key_id == ident.signing.key_id
    req = certify_pb(NodeIdentity.generate(TD, "b0", now=time.time(), generation=2))
    code, msg = error(h1.CertifyKeys, req)
    assert code == C.PERMISSION_DENIED and "host h1 may act only for its nodes (a0, a1); not b0" in msg
    code, msg = error(h1.ExportIdentity, pb.ExportIdentityRequest(node_id="a1", recipient_kem_public_key=b"k"))
    assert code == C.PERMISSION_DENIED and "may not call ExportIdentity" in msg
    node = kv_stub(stack, svid_for(stack, "node", "a0"))
    assert node.GetPublicKeys(pb.GetPublicKeysRequest(node_id="a0"), timeout=10).node_id == "a0"
    code, msg = error(node.GetPublicKeys, pb.GetPublicKeysRequest(node_id="a1"))
    assert code == C.PERMISSION_DENIED and "only its own records" in msg
    denied = audited(stack, "keyvault", "policy.denied")
    mine = {e.details["method"]: e for e in denied if e.subject_id == f"spiffe://{TD}/host/h1"}
    assert {"x0tta6bl4.v1.Keyvault/CertifyKeys", "x0tta6bl4.v1.Keyvault/ExportIdentity"} <= set(mine)
    assert all(e.details["caller"] == f"spiffe://{TD}/host/h1" for e in mine.values())
    assert "not b0" in mine["x0tta6bl4.v1.Keyvault/CertifyKeys"].details["reason"]

    def allowed_audited():              # allowed calls are audited off the call's path: wait for it
        return [e for e in audited(stack, "keyvault", "policy.allowed")
                if e.details.get("method") == "x0tta6bl4.v1.Keyvault/CertifyKeys"
                and e.subject_id == f"spiffe://{TD}/host/h1"]
    allowed = eventually_sync(allowed_audited, 15, 0.2, what="the allowed CertifyKeys audited")
    assert allowed[-1].details["reason"] == "host h1: its assigned nodes"


def test_issue_rotate_revoke_without_the_role_are_denied_and_audited(stack):
    calls = {"IssueIdentity": pb.IssueIdentityRequest(node_id="zz"), "Rotate": pb.RotateRequest(node_ids=["a0"]),
             "Revoke": pb.RevokeRequest(node_id="a0", reason="x")}
    callers = {"host": host_svid(stack, "h1"), "node": svid_for(stack, "node", "a0"),
               "governance": svid_for(stack, "service", "governance")}
    for who, svid in callers.items():
        stub = kv_stub(stack, svid)
        for method, req in calls.items():
            code, msg = error(getattr(stub, method), req)
            assert code == C.PERMISSION_DENIED and method in msg, (who, method, msg)
    ops = kv_stub(stack, svid_for(stack))                     # the operator may
    assert ops.Rotate(pb.RotateRequest(node_ids=["a1"], overlap_s=30), timeout=20).records[0].generation == 2
    ex = kv_stub(stack, svid_for(stack, "service", "executor"))   # so may the executor
    assert ex.Revoke(pb.RevokeRequest(node_id="b0", reason="compromised"), timeout=20).revoked

    def all_denials_in_the_trail():
        denied = {(e.details["caller"], e.details["method"].rsplit("/", 1)[-1])
                  for e in audited(stack, "keyvault", "policy.denied")}
        return {(svid.spiffe_id, m) for svid in callers.values() for m in calls} <= denied
    eventually_sync(all_denials_in_the_trail, 15, 0.2, what="nine denials audited by keyvault")


def test_governance_decides_and_audits_every_call(stack):
    addr = stack.grpc_addr("governance")
    node = gg.GovernanceStub(svids.secure_channel(addr, svid_for(stack, "node", "a0"), "governance", TD))
    code, msg = error(node.RegisterVoter, g.RegisterVoterRequest(voter=f"spiffe://{TD}/node/a0", balance=1e6))
    assert code == C.PERMISSION_DENIED and "RegisterVoter" in msg
    code, msg = error(node.CastVote, g.CastVoteRequest(proposal_id="p", voter=f"spiffe://{TD}/node/a1"))
    assert code == C.PERMISSION_DENIED and "only as spiffe://x0tta6bl4.mesh/node/a0" in msg
    assert node.ListProposals(g.ListProposalsRequest(), timeout=10) is not None

    def audited_both():
        denied = {e.details["method"] for e in audited(stack, "governance", "policy.denied")
                  if e.subject_id == f"spiffe://{TD}/node/a0"}
        return {"x0tta6bl4.v1.Governance/RegisterVoter", "x0tta6bl4.v1.Governance/CastVote"} <= denied
    eventually_sync(audited_both, 15, 0.2, what="governance audits its denials")


# ---- post-quantum key exchange ------------------------------------------------------------------------------
def test_grpc_handshakes_negotiate_the_pq_hybrid_and_a_classical_client_falls_back(stack):
    kv_stub(stack, svid_for(stack, "operator", "pq")).Info(pb.InfoRequest(), timeout=10)

    def recorded():
        evs = [e for e in audited(stack, "keyvault", "policy.allowed")
               if e.subject_id == f"spiffe://{TD}/operator/pq"]
        return evs and evs[-1]
    ev = eventually_sync(recorded, 15, 0.2, what="the Info call audited")
    assert ev.details["tls_group"] == "X25519MLKEM768"        # gRPC's BoringSSL, both ends
    cert, version = peer_certificate(stack.grpc_addr("keyvault"), svid_for(stack))   # OpenSSL 3.0: no ML-KEM
    assert version == "TLSv1.3" and spiffe_id_of(cert) == f"spiffe://{TD}/service/keyvault"


# ---- renewal without restart ------------------------------------------------------------------------------------
def test_short_lived_svids_are_renewed_at_half_life_and_served_without_restart(stack):
    pids = {sp.name: sp.proc.pid for sp in stack.procs}
    kv_addr, gov_addr = stack.grpc_addr("keyvault"), stack.grpc_addr("governance")
    first_kv, _ = peer_certificate(kv_addr, svid_for(stack))
    first_gov, _ = peer_certificate(gov_addr, svid_for(stack))
    life = (first_kv.not_valid_after_utc - first_kv.not_valid_before_utc).total_seconds()
    assert life <= TTL_S * 1.1 + 1                              # 20 s (+ the backdating of not_before)

    async def go():
        nc = await stack.connect()
        # the client renews too: its own 20 s SVID from keyvault over the bus, channels re-created on renewal
        me = svids.SvidSource(lambda: svids.obtain_over_bus(nc, "operator"), name="test-client")
        await me.start()
        kv = svids.RenewingChannel(kv_addr, me, "keyvault", TD)
        gov = svids.RenewingChannel(gov_addr, me, "governance", TD)
        kstub, gstub = kv.stub(kg.KeyvaultStub), gov.stub(gg.GovernanceStub)
        calls = failures = 0
        renewed = {"kv": False, "gov": False}
        try:
            async def call_and_check():
                nonlocal calls, failures
                try:
                    await kstub.Info(pb.InfoRequest(), timeout=5)
                    await gstub.ListProposals(g.ListProposalsRequest(), timeout=5)
                    calls += 1
                except grpc.aio.AioRpcError as e:
                    failures += 1
                    raise AssertionError(f"a call failed during renewal: {e.code().name} {e.details()}") from e
                kv_now, _ = await asyncio.to_thread(peer_certificate, kv_addr, me.current)
                gov_now, _ = await asyncio.to_thread(peer_certificate, gov_addr, me.current)
                renewed["kv"] |= kv_now.serial_number != first_kv.serial_number and \
                    kv_now.not_valid_after_utc > first_kv.not_valid_after_utc
                renewed["gov"] |= gov_now.serial_number != first_gov.serial_number and \
                    gov_now.not_valid_after_utc > first_gov.not_valid_after_utc
                return renewed["kv"] and renewed["gov"] and me.renewals >= 1
            await eventually(call_and_check, 3 * TTL_S, 0.5, what="both servers and the client renewed")
            # past the first SVIDs' end: still serving, no restart
            await eventually(lambda: time.time() > first_kv.not_valid_after_utc.timestamp() + 1, 2 * TTL_S, 0.5)
            await call_and_check()
        finally:
            await kv.close()
            await gov.close()
            await me.stop()
            await nc.close()
        return calls, failures, kv.channels_made
    calls, failures, made = asyncio.run(go())
    assert failures == 0 and calls >= 3 and made >= 2
    assert {sp.name: sp.proc.pid for sp in stack.procs} == pids      # nothing restarted


# ---- the pinned keyvault root --------------------------------------------------------------------------------
def test_governance_refuses_a_keyvault_root_that_does_not_match_its_pin(stack):
    from x0tta6bl4.keyvault import pin
    from x0tta6bl4.pqc import MLDSA65PrivateKey
    rogue_fp = pin.fingerprint(MLDSA65PrivateKey.generate().public_key())
    stack.env["X0TTA6BL4_KEYVAULT_ROOT_FINGERPRINT"] = rogue_fp   # this replica pins another root
    try:
        sp = stack.start_service("governance", 1)
        stack.wait_ready(60)
    finally:
        del stack.env["X0TTA6BL4_KEYVAULT_ROOT_FINGERPRINT"]
    gov = gg.GovernanceStub(svids.secure_channel(f"127.0.0.1:{sp.grpc_port}", svid_for(stack), "governance", TD))
    admin = (("authorization", f"Bearer {(stack.data_dir / 'governance-admin.token').read_text().strip()}"),)
    code, msg = error(gov.RegisterVoter, g.RegisterVoterRequest(voter=f"spiffe://{TD}/node/a0", balance=5),
                      metadata=admin)
    assert code == C.FAILED_PRECONDITION and "keyvault root refused" in msg and rogue_fp in msg
    # the replica with the right pin takes the same identity
    good = gg.GovernanceStub(svids.secure_channel(stack.grpc_addr("governance"), svid_for(stack), "governance", TD))
    assert good.RegisterVoter(g.RegisterVoterRequest(voter=f"spiffe://{TD}/node/a0", balance=5), metadata=admin,
                              timeout=20).key_id
    stack.stop_service(sp)
