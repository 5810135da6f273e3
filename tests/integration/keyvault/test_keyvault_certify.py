"""CSR-style certification (issue #17): a node's private keys never leave it. The mesh host generates the
node's keys, keyvault certifies the public halves on proof of possession. Real nats-server + keyvault process,
mutual TLS with SVIDs from the stack's CA, the policy on every call; the bytes of every reply and of the
``keys`` bucket are checked for the private keys."""
from __future__ import annotations

import os
import time

import grpc
import pytest
from testkit import eventually_sync

from tests.integration.keyvault.conftest import stub_as
from x0tta6bl4.bus.reader import read_all
from x0tta6bl4.keyvault import certify as cert
from x0tta6bl4.pqc import MLDSA65PublicKey, NodeIdentity, PublicKeyRecord, verify_signed
from x0tta6bl4.v1 import events_pb2
from x0tta6bl4.v1 import keyvault_pb2 as pb

TD = "x0tta6bl4.mesh"
C = grpc.StatusCode


def request(ident: NodeIdentity, *, nonce: bytes | None = None, now: float | None = None, overlap_s: float = 0.0,
            proof_by: NodeIdentity | None = None) -> pb.CertifyKeysRequest:
    r = cert.certify_request(ident, nonce or os.urandom(16), now)
    proof = r.proof if proof_by is None else cert.certify_request(proof_by, r.nonce, r.timestamp).proof
    return pb.CertifyKeysRequest(node_id=r.node_id, signing_public_key=r.signing_public_key,
                                 kem_public_key=r.kem_public_key, nonce=r.nonce, timestamp_unix=r.timestamp,
                                 proof=proof, overlap_s=overlap_s)


def error(fn, req) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as ei:
        fn(req, timeout=10)
    return ei.value.code(), ei.value.details()


def secrets_of(ident: NodeIdentity) -> list[bytes]:
    return [ident.signing.private.private_bytes_unsafe(), ident.kem.private.private_bytes_unsafe(),
            ident.export_private_unsafe()]


def test_a_host_certifies_keys_it_generated_and_keyvault_never_holds_them(fresh_keyvault):
    kv = fresh_keyvault()
    kv.stack.add_mesh_host("h1", ["c1", "c2"])
    h1 = stub_as(kv, "host", "h1")
    g1 = NodeIdentity.generate(TD, "c1", now=time.time(), generation=1)
    r1 = h1.CertifyKeys(request(g1), timeout=30)
    assert (r1.node_id, r1.generation, r1.sig_key_id, r1.kem_key_id) == ("c1", 1, g1.signing.key_id, g1.kem.key_id)
    info = kv.stub.Info(pb.InfoRequest(), timeout=10)
    rec = verify_signed(r1.signed_sig_record, MLDSA65PublicKey.from_bytes(info.root_public_key))
    assert isinstance(rec, PublicKeyRecord) and rec.key_id == g1.signing.key_id and rec.generation == 1

    # keyvault holds no private key of c1: nothing to export (and a host may not export at all), nothing
    # private in replies or in the bucket
    export = pb.ExportIdentityRequest(node_id="c1", recipient_kem_public_key=b"\0" * 1184)
    code, msg = error(h1.ExportIdentity, export)
    assert code == C.PERMISSION_DENIED and "ExportIdentity" in msg
    code, msg = error(kv.stub.ExportIdentity, export)
    assert code == C.FAILED_PRECONDITION and "holds no private key" in msg
    assert not r1.custodial

    # rotation: the host generates the next generation and keyvault certifies it; the old one retires
    g2 = NodeIdentity.generate(TD, "c1", now=time.time(), generation=2)
    r2 = h1.CertifyKeys(request(g2, overlap_s=60), timeout=30)
    assert (r2.generation, r2.sig_key_id) == (2, g2.signing.key_id)
    assert [(p.generation, p.status, p.sig_key_id) for p in r2.previous][:1] == [(1, "retiring", g1.signing.key_id)]
    again = h1.CertifyKeys(request(g2, overlap_s=60), timeout=30)     # a retry changes nothing
    assert (again.generation, again.sig_key_id) == (2, g2.signing.key_id)

    replies = [r1.SerializeToString(), r2.SerializeToString(), again.SerializeToString(),
               kv.stub.GetPublicKeys(pb.GetPublicKeysRequest(node_id="c1"), timeout=10).SerializeToString(),
               kv.stub.ListIdentities(pb.ListIdentitiesRequest(include_revoked=True), timeout=10).SerializeToString()]

    async def bucket(nc):
        store = await nc.jetstream().key_value("keys")
        return [(await store.get(k)).value for k in await store.keys()]
    values = kv.nats(bucket)
    assert any(g2.signing.public_key.public_bytes() in v for v in values)   # the public halves are published
    for secret in secrets_of(g1) + secrets_of(g2):
        assert not any(secret in b for b in replies + values)

    # refusals: proof by another key, a replayed request, a stale request, another host's node
    other = NodeIdentity.generate(TD, "c2", now=time.time(), generation=1)
    g3 = NodeIdentity.generate(TD, "c1", now=time.time(), generation=3)
    code, msg = error(h1.CertifyKeys, request(g3, proof_by=other))
    assert code == C.PERMISSION_DENIED and "proof of possession" in msg
    replay = request(g3)
    assert h1.CertifyKeys(replay, timeout=30).generation == 3
    code, msg = error(h1.CertifyKeys, replay)
    assert code == C.PERMISSION_DENIED and "nonce already used" in msg
    g4 = NodeIdentity.generate(TD, "c1", now=time.time(), generation=4)
    code, msg = error(h1.CertifyKeys, request(g4, now=time.time() - 3600))
    assert code == C.PERMISSION_DENIED and "clock" in msg
    kv.stack.add_mesh_host("h2", ["d1"])
    h2 = stub_as(kv, "host", "h2")
    code, msg = error(h2.CertifyKeys, request(NodeIdentity.generate(TD, "c1", now=time.time(), generation=4)))
    assert code == C.PERMISSION_DENIED and "not c1" in msg
    bad = request(NodeIdentity.generate(TD, "c2", now=time.time(), generation=1))
    bad.kem_public_key = b"short"
    code, msg = error(h1.CertifyKeys, bad)
    assert code == C.INVALID_ARGUMENT and "kem_public_key" in msg
    assert kv.stub.GetPublicKeys(pb.GetPublicKeysRequest(node_id="c1"), timeout=10).generation == 3

    # audited: each certification, each refusal with its reason
    def audit():
        evs = kv.nats(lambda nc: read_all(nc.jetstream(), "audit.>"))
        evs = [events_pb2.AuditEvent.FromString(m.data) for m in evs]
        done = [e for e in evs if e.event_type == "key.certified" and e.subject_id == "c1"]
        refused = [e for e in evs if e.event_type == "key.certify.refused"]
        return (done, refused) if len(done) == 3 and len(refused) >= 3 else None
    done, refused = eventually_sync(audit, 15, 0.2, what="the certifications and refusals audited")
    assert [e.details["generation"] for e in done] == ["1", "2", "3"]
    assert all(e.details["private_held_by_keyvault"] == "false" for e in done)
    reasons = " | ".join(e.details["reason"] for e in refused)
    assert "proof of possession" in reasons and "nonce" in reasons and "clock" in reasons
