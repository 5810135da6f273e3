"""Private keys never leave the node (issue #17), against a real keyvault process over gRPC with mutual TLS and a
real (secured) nats-server:

* rotating a node that holds its own keys is a request: keyvault publishes ``rot.<node>`` (root-signed) in the
  ``keys`` bucket; the test plays the node's mesh host (watches the bucket as the host's bus identity, generates
  the next generation, certifies it with its host SVID) and Rotate returns the new records; the request is gone;
* a request nobody answers within the wait comes back ``rotation_pending``, audited, and stays published;
* a repeated request id is idempotent;
* the only way out for private keys is ExportIdentity: an operator, a custodial identity, wrapped to an ML-KEM-768
  recipient key, once; and neither the ``keys`` bucket nor keyvault's (unsealed) state ever holds private material
  of a certified node."""
from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import time

import grpc
import pytest
from testkit import eventually_sync

from tests.integration.keyvault.conftest import TD, certify_new, certify_pb, start_keyvault, stub_as
from x0tta6bl4.bus.kvwatch import next_update, watch_bucket
from x0tta6bl4.bus.reader import kv_snapshot, read_all
from x0tta6bl4.keyvault import KeyDirectory, sign_attestation
from x0tta6bl4.keyvault.distribution import BUCKET, rot_key
from x0tta6bl4.keyvault.shared import BUCKET as STATE_BUCKET
from x0tta6bl4.keyvault.shared import unseal
from x0tta6bl4.pqc import KeyRevoked, MasterKey, MLDSA65PublicKey, NodeIdentity, recipient_keygen, unwrap_bundle
from x0tta6bl4.v1 import events_pb2
from x0tta6bl4.v1 import keyvault_pb2 as pb

C = grpc.StatusCode
WAIT_S = 4.0                   # keyvault's default wait in this module (X0TTA6BL4_ROTATION_WAIT_S)


@pytest.fixture(scope="module")
def kv(tmp_path_factory):
    k = start_keyvault(tmp_path_factory.mktemp("kvrot"), {"X0TTA6BL4_ROTATION_WAIT_S": str(WAIT_S)})
    k.stack.add_mesh_host("h1", ["r1", "r2", "r3", "p1"])
    k.stack.add_mesh_host("h2", ["q1"])
    yield k
    for ch in [k.channel, *k.extra_channels]:
        ch.close()
    k.stack.stop()


def error(fn, req) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as ei:
        fn(req, timeout=30)
    return ei.value.code(), ei.value.details()


def root(kv) -> MLDSA65PublicKey:
    return MLDSA65PublicKey.from_bytes(kv.stub.Info(pb.InfoRequest(), timeout=10).root_public_key)


def audit(kv, event: str) -> list[events_pb2.AuditEvent]:
    evs = kv.nats(lambda nc: read_all(nc.jetstream(), "audit.>"))
    return [e for e in (events_pb2.AuditEvent.FromString(m.data) for m in evs) if e.event_type == event]


def bucket(kv, name: str) -> dict[str, bytes]:
    return kv.nats(lambda nc: kv_snapshot(nc.jetstream(), name))


def state_entry(kv, node: str) -> dict:
    """keyvault's shared-state entry of ``node``, unsealed with the deployment's master key."""
    mk = MasterKey.from_file(kv.data_dir / "keys" / "keyvault-master.key")
    return json.loads(unseal(mk, f"node.{node}", bucket(kv, STATE_BUCKET)[f"node.{node}"]))


class Host:
    """The mesh host's part, in a thread: watch the ``keys`` bucket as the host's bus identity; for every rotation
    request of one of ``nodes`` from the generation it holds, generate the next one and certify it (host SVID)."""

    def __init__(self, kv, host: str, nodes: dict[str, NodeIdentity]) -> None:
        self.kv, self.host, self.held = kv, host, nodes
        self.stub = stub_as(kv, "host", host)
        self.answered: list = []
        self.stop = False

    async def run(self) -> None:
        nc = await self.kv.stack.connect(f"mesh-host-{self.host}")
        try:
            directory = KeyDirectory(root(self.kv))
            w, initial = await watch_bucket(nc.jetstream(), BUCKET)
            for e in initial:
                with contextlib.suppress(KeyRevoked):
                    directory.apply(e.key, e.value, deleted=e.operation in ("DEL", "PURGE"))
            while not self.stop:
                for node, req in directory.rotations().items():
                    ident = self.held.get(node)
                    if ident is not None and req.from_generation == ident.generation:
                        new = NodeIdentity.generate(TD, node, now=time.time(), generation=ident.generation + 1)
                        self.held[node] = new          # "persisted" before certifying, as the host does
                        await asyncio.to_thread(certify_with, self.stub, new)
                        self.answered.append(req)
                e = await next_update(w, timeout=0.2)
                if e is not None:
                    with contextlib.suppress(KeyRevoked):
                        directory.apply(e.key, e.value, deleted=e.operation in ("DEL", "PURGE"))
            await w.stop()
        finally:
            await nc.close()


def certify_with(stub, ident: NodeIdentity) -> pb.KeyRecord:
    return stub.CertifyKeys(certify_pb(ident), timeout=30)


def test_a_rotation_request_is_answered_by_the_host_and_rotate_returns_the_new_records(kv):
    h1 = stub_as(kv, "host", "h1")
    held = {n: certify_new(h1, n)[0] for n in ("r1", "r2")}
    kv.stub.IssueIdentity(pb.IssueIdentityRequest(node_id="op-rot"), timeout=30)    # custodial: keyvault rotates
    host = Host(kv, "h1", dict(held))

    async def both():
        task = asyncio.create_task(host.run())
        try:
            t0 = time.monotonic()
            out = await asyncio.to_thread(kv.stub.Rotate, pb.RotateRequest(
                node_ids=["r1", "r2", "op-rot"], overlap_s=45, request_id="rq-roundtrip"), timeout=60)
            return out, time.monotonic() - t0
        finally:
            host.stop = True
            await task
    out, took = asyncio.run(both())
    assert not out.pending and took < WAIT_S, (list(out.pending), took)
    got = {r.node_id: r for r in out.records}
    for n in ("r1", "r2"):
        assert (got[n].generation, got[n].status, got[n].sig_key_id) == (2, "active", host.held[n].signing.key_id)
        assert got[n].previous[0].sig_key_id == held[n].signing.key_id and got[n].previous[0].status == "retiring"
        assert not got[n].custodial and not got[n].signed_rotation_request
    assert got["op-rot"].generation == 2 and got["op-rot"].custodial
    assert sorted((r.node_id, r.from_generation, r.overlap_s, r.request_id) for r in host.answered) == \
        [("r1", 1, 45.0, "rq-roundtrip"), ("r2", 1, 45.0, "rq-roundtrip")]
    # the request's overlap applied; the requests are gone from the bucket; the new keys attest
    assert got["r1"].previous[0].retiring_until_unix == pytest.approx(time.time() + 45, abs=15)
    keys = bucket(kv, BUCKET)
    assert rot_key("r1") not in keys and rot_key("r2") not in keys
    ch = b"after the rotation"
    assert kv.stub.Attest(pb.AttestRequest(node_id="r1", challenge=ch,
                                           signature=sign_attestation(host.held["r1"], ch)), timeout=10).valid
    # the same request again: nothing is requested or rotated twice; the current records come back
    again = kv.stub.Rotate(pb.RotateRequest(node_ids=["r1", "r2", "op-rot"], request_id="rq-roundtrip"), timeout=60)
    assert [(r.node_id, r.generation) for r in again.records] == [("r1", 2), ("r2", 2), ("op-rot", 2)]
    assert not again.pending and rot_key("r1") not in bucket(kv, BUCKET)

    def audited():
        req = [e for e in audit(kv, "key.rotation.requested") if "rq-roundtrip" in str(dict(e.details))]
        cert = [e for e in audit(kv, "key.certified") if e.details.get("rotation_request") == "rq-roundtrip"]
        return (req, cert) if len(cert) == 2 else None
    req, cert = eventually_sync(audited, 15, 0.2, what="the rotation requested and answered, audited")
    assert {e.subject_id for e in cert} == {"r1", "r2"}
    assert len(req) == 1 and req[0].subject_id == "2 nodes" and "from_gen=1" in req[0].details["r1"]
    # keyvault never held a private key of r1/r2: not in the bucket, not in its (unsealed) state
    secrets = [i.export_private_unsafe() for i in [*held.values(), *host.held.values()]]
    secrets += [i.signing.private.private_bytes_unsafe() for i in [*held.values(), *host.held.values()]]
    values = list(bucket(kv, BUCKET).values())
    for n in ("r1", "r2"):
        st = state_entry(kv, n)
        assert st["current"]["private"] is None and st["retiring"]["private"] is None
        values.append(json.dumps(st).encode())
    for secret in secrets:
        assert not any(secret in v or base64.b64encode(secret)[:40] in v for v in values)


def test_a_rotation_nobody_answers_stays_pending_and_is_audited(kv):
    h1 = stub_as(kv, "host", "h1")
    ident, _ = certify_new(h1, "p1")
    t0 = time.monotonic()
    out = kv.stub.Rotate(pb.RotateRequest(node_ids=["p1"], overlap_s=20), timeout=60)      # keyvault's default wait
    took = time.monotonic() - t0
    assert WAIT_S - 0.5 <= took < WAIT_S + 10, took
    [r] = out.records
    assert list(out.pending) == ["p1"] and r.status == "rotation_pending" and r.generation == 1
    assert r.sig_key_id == ident.signing.key_id and r.signed_rotation_request
    assert rot_key("p1") in bucket(kv, BUCKET)
    eventually_sync(lambda: [e for e in audit(kv, "key.rotation.pending") if e.subject_id == "p1"], 15, 0.2,
                    what="the pending rotation audited")
    # a negative wait returns at once, and a second Rotate adds no second request
    t0 = time.monotonic()
    out = kv.stub.Rotate(pb.RotateRequest(node_ids=["p1"], wait_s=-1), timeout=30)
    assert list(out.pending) == ["p1"] and time.monotonic() - t0 < WAIT_S
    # the host answers later (its next generation, the request's overlap); the request is withdrawn
    _, rec = certify_new(h1, "p1", 2)
    assert rec.generation == 2 and not rec.signed_rotation_request
    assert rot_key("p1") not in bucket(kv, BUCKET)
    assert rec.previous[0].retiring_until_unix == pytest.approx(time.time() + 20, abs=15)
    code, msg = error(kv.stub.Rotate, pb.RotateRequest(node_ids=["p1"], wait_s=1000))
    assert code == C.INVALID_ARGUMENT and "wait_s must be at most 300" in msg


def test_export_is_wrapped_single_use_operator_only_and_audited(kv):
    s = kv.stub
    s.IssueIdentity(pb.IssueIdentityRequest(node_id="edge-x"), timeout=30)
    s.IssueIdentity(pb.IssueIdentityRequest(node_id="q1"), timeout=30)
    priv, pub = recipient_keygen()
    req = pb.ExportIdentityRequest(node_id="edge-x", recipient_kem_public_key=pub)
    # nobody but an operator: not a mesh host (even for its own node), not the node, not a service
    for kind, name, node in (("host", "h2", "q1"), ("node", "edge-x", "edge-x"), ("service", "executor", "edge-x")):
        code, msg = error(stub_as(kv, kind, name).ExportIdentity,
                          pb.ExportIdentityRequest(node_id=node, recipient_kem_public_key=pub))
        assert code == C.PERMISSION_DENIED and "ExportIdentity" in msg, (kind, msg)
    r = s.ExportIdentity(req, timeout=30)
    head, bundle = unwrap_bundle(r.wrapped_bundle, priv)
    ident = NodeIdentity.import_private(bundle)
    assert (head.node_id, head.generation, head.recipient_key_id) == ("edge-x", 1, r.recipient_key_id)
    assert ident.signing.key_id == r.record.sig_key_id and not r.record.custodial and r.exported_at_unix > 0
    ch = b"provisioned offline"
    assert s.Attest(pb.AttestRequest(node_id="edge-x", challenge=ch, signature=sign_attestation(ident, ch)),
                    timeout=10).valid
    # single use: the second export is refused naming when; keyvault's state no longer holds the keys
    code, msg = error(s.ExportIdentity, req)
    assert code == C.FAILED_PRECONDITION and "already exported at" in msg and "single use" in msg
    assert state_entry(kv, "edge-x")["current"]["private"] is None
    assert bundle not in r.SerializeToString() and ident.signing.private.private_bytes_unsafe() not in \
        r.wrapped_bundle
    # a certified identity has nothing to export; a bad recipient key is named
    h1 = stub_as(kv, "host", "h1")
    certify_new(h1, "r3")
    code, msg = error(s.ExportIdentity, pb.ExportIdentityRequest(node_id="r3", recipient_kem_public_key=pub))
    assert code == C.FAILED_PRECONDITION and "holds no private key" in msg
    code, msg = error(s.ExportIdentity, pb.ExportIdentityRequest(node_id="q1", recipient_kem_public_key=b"x" * 10))
    assert code == C.INVALID_ARGUMENT and "recipient_kem_public_key" in msg and "1184" in msg
    # now node-held: a rotation of edge-x is a request
    out = s.Rotate(pb.RotateRequest(node_ids=["edge-x"], wait_s=-1), timeout=30)
    assert list(out.pending) == ["edge-x"]

    def audited():
        done = [e for e in audit(kv, "identity.private_exported") if e.subject_id == "edge-x"]
        refused = [e for e in audit(kv, "identity.export.refused")]
        denied = [e for e in audit(kv, "policy.denied") if e.details.get("method", "").endswith("/ExportIdentity")]
        return (done, refused, denied) if done and len(refused) >= 2 and len(denied) >= 3 else None
    done, refused, denied = eventually_sync(audited, 15, 0.2, what="exports, refusals and denials audited")
    assert len(done) == 1 and done[0].details["recipient_key_id"] == r.recipient_key_id
    text = " ".join(str(dict(e.details)) for e in done + refused + denied)
    assert pub.hex()[:32] not in text and bundle.hex()[:32] not in text
    assert any("single use" in e.details["reason"] for e in refused)
