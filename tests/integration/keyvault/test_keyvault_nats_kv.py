"""NATS request/reply (as the executor uses it), the signed records in the KV bucket
``keys``, rotation overlap and the audit trail, against a real keyvault process."""
from __future__ import annotations

import asyncio
import contextlib
import time

import pytest

from tests.integration.keyvault.conftest import certify_new
from x0tta6bl4.bus import subjects
from x0tta6bl4.bus.kvwatch import next_update, watch_bucket
from x0tta6bl4.bus.reader import kv_snapshot
from x0tta6bl4.keyvault import KeyDirectory, sign_attestation, verify_entry
from x0tta6bl4.keyvault.distribution import BUCKET
from x0tta6bl4.pqc import InvalidRecord, InvalidSignature, KeyRevoked, MLDSA65PublicKey, PQCError
from x0tta6bl4.v1 import events_pb2
from x0tta6bl4.v1 import keyvault_pb2 as pb


def rpc(method: str) -> str:
    return subjects.KEYVAULT_RPC.format(method=method)


def root_of(keyvault) -> MLDSA65PublicKey:
    return MLDSA65PublicKey.from_bytes(keyvault.stub.Info(pb.InfoRequest(), timeout=10).root_public_key)


def test_nats_request_reply_rotate_revoke(keyvault):
    for n in ("nx1", "nx2"):
        keyvault.stub.IssueIdentity(pb.IssueIdentityRequest(node_id=n), timeout=10)

    async def go(nc):
        r = await nc.request(rpc("Rotate"), pb.RotateRequest(node_ids=["nx1"]).SerializeToString(), timeout=10)
        assert not (r.headers or {}).get("X0-Error")
        out = pb.RotateResponse.FromString(r.data)
        assert [(x.node_id, x.generation) for x in out.records] == [("nx1", 2)]
        assert out.records[0].previous[0].retiring_until_unix == pytest.approx(time.time() + 30, abs=5)  # default
        revoke = pb.RevokeRequest(node_id="nx2", reason="isolated by executor")
        r = await nc.request(rpc("Revoke"), revoke.SerializeToString(), timeout=10)
        assert not (r.headers or {}).get("X0-Error")
        assert pb.KeyRecord.FromString(r.data).status == "revoked"
        errors = {}
        for method, req in [("Revoke", pb.RevokeRequest(node_id="ghost")),
                            ("Rotate", pb.RotateRequest(node_ids=["nx2"])),
                            ("Rotate", pb.RotateRequest(node_ids=["Not Valid"])),
                            ("ExportIdentity", pb.ExportIdentityRequest(node_id="nx1",
                                                                        recipient_kem_public_key=b"\0" * 1184)),
                            ("Frobnicate", pb.InfoRequest())]:
            r = await nc.request(rpc(method), req.SerializeToString(), timeout=10)
            errors[(method, r.headers["X0-Error-Code"])] = r.headers["X0-Error"]
            assert r.data == b""
        r = await nc.request(rpc("Rotate"), b"\xff\xff\xff", timeout=10)
        errors[("garbage", r.headers["X0-Error-Code"])] = r.headers["X0-Error"]
        info = pb.InfoResponse.FromString((await nc.request(rpc("Info"), b"", timeout=10)).data)
        assert info.backend and info.identities >= 1
        return errors

    errors = keyvault.nats(go)
    assert set(errors) == {("Revoke", "NOT_FOUND"), ("Rotate", "FAILED_PRECONDITION"), ("Rotate", "INVALID_ARGUMENT"),
                           ("ExportIdentity", "PERMISSION_DENIED"), ("Frobnicate", "UNIMPLEMENTED"),
                           ("garbage", "INVALID_ARGUMENT")}
    assert errors[("Revoke", "NOT_FOUND")].startswith("NOT_FOUND: ") and "ghost" in errors[("Revoke", "NOT_FOUND")]
    assert "revoked" in errors[("Rotate", "FAILED_PRECONDITION")]


def test_kv_records_verify_with_root_and_tampering_fails(keyvault):
    root = root_of(keyvault)
    rec = keyvault.stub.IssueIdentity(pb.IssueIdentityRequest(node_id="kv1"), timeout=10).record

    async def go(nc):
        kv = await nc.jetstream().key_value(BUCKET)
        assert (await kv.get("root")).value == root.public_bytes()
        return await kv_snapshot(nc.jetstream(), BUCKET)

    entries = keyvault.nats(go)
    for k in (f"key.{rec.sig_key_id}", f"key.{rec.kem_key_id}", "node.kv1.sig", "node.kv1.kem"):
        assert k in entries
    for k, v in entries.items():  # every entry in the bucket verifies with the root key
        verify_entry(k, v, root)
    v = verify_entry(f"key.{rec.sig_key_id}", entries[f"key.{rec.sig_key_id}"], root)
    assert v.record.spiffe_id == rec.spiffe_id and v.record.public_key == rec.ed25519_public_key + rec.mldsa_public_key
    # tampering: a flipped byte anywhere in the record or signature fails
    good = entries[f"key.{rec.sig_key_id}"]
    for pos in (60, len(good) // 2, len(good) - 10):
        bad = bytearray(good)
        bad[pos] ^= 0x01
        with pytest.raises(PQCError):
            verify_entry(f"key.{rec.sig_key_id}", bytes(bad), root)
    # a validly signed record under another key, or a foreign root
    with pytest.raises(InvalidRecord):
        verify_entry(f"key.{rec.kem_key_id}", good, root)
    with pytest.raises(InvalidRecord):
        verify_entry("node.other.sig", entries["node.kv1.sig"], root)
    from x0tta6bl4.pqc import KeyvaultRoot
    with pytest.raises(InvalidSignature):
        verify_entry(f"key.{rec.sig_key_id}", good, KeyvaultRoot.generate().public_key())


def test_rotation_overlap_retiring_then_retired_pushed_to_watchers(keyvault):
    """A node holding its own keys, rotated over NATS as the executor does: keyvault publishes the rotation request,
    the watcher (playing the node's mesh host) answers it by certifying the next generation and Rotate returns it.
    Overlap 1 s: old key listed as retiring and still in the KV, then retired and removed; a watcher (a node
    agent's KeyDirectory) gets every change without polling."""
    s = keyvault.stub
    old_ident, rec = certify_new(s, "ov")
    old_sig = rec.sig_key_id
    root = root_of(keyvault)

    async def go(nc):
        directory = KeyDirectory(root)
        w, initial = await watch_bucket(nc.jetstream(), BUCKET)
        for e in initial:
            with contextlib.suppress(KeyRevoked):
                directory.apply(e.key, e.value, deleted=e.operation in ("DEL", "PURGE"))
        assert directory.lookup(old_sig) is not None
        t0 = time.monotonic()
        rotate = asyncio.create_task(nc.request(rpc("Rotate"), pb.RotateRequest(
            node_ids=["ov"], overlap_s=1.0, wait_s=20).SerializeToString(), timeout=30))
        events: list = []

        async def pump(until):
            while not until():
                e = await next_update(w, timeout=5)
                if e is None:
                    continue
                events.append((round(time.monotonic() - t0, 3), e.key, e.operation))
                directory.apply(e.key, e.value, deleted=e.operation in ("DEL", "PURGE"))

        # the mesh host's part: the request arrives in the watch; generate generation 2 and certify it
        await pump(lambda: directory.rotation("ov") is not None)
        req = directory.rotation("ov")
        assert (req.from_generation, req.overlap_s) == (1, 1.0)
        new_ident, _ = await asyncio.to_thread(certify_new, s, "ov", req.from_generation + 1)
        rep = await rotate
        assert not (rep.headers or {}).get("X0-Error"), rep.headers
        reply = pb.RotateResponse.FromString(rep.data)
        new = reply.records[0]
        assert not reply.pending and new.generation == 2 and new.sig_key_id == new_ident.signing.key_id
        assert new.previous[0].status == "retiring" and new.previous[0].sig_key_id == old_sig
        await pump(lambda: directory.lookup(new.sig_key_id) is not None and directory.rotation("ov") is None)
        t_new = time.monotonic() - t0
        # overlap: both generations accepted, old one listed as retiring
        assert directory.lookup(old_sig) is not None
        listed = s.GetPublicKeys(pb.GetPublicKeysRequest(node_id="ov"), timeout=10)
        assert (listed.previous[0].sig_key_id, listed.previous[0].status) == (old_sig, "retiring")
        ch = b"overlap-challenge"
        assert s.Attest(pb.AttestRequest(node_id="ov", challenge=ch, signature=sign_attestation(old_ident, ch)),
                        timeout=10).valid
        assert directory.current("ov").key_id == new.sig_key_id
        await pump(lambda: directory.lookup(old_sig) is None)
        t_retired = time.monotonic() - t0
        await w.stop()
        return t_new, t_retired, events

    t_new, t_retired, events = keyvault.nats(go)
    # the new key reached the watcher while the old one was still accepted (checked inside go());
    # the old one went only after the 1 s overlap (the upper bound is slack for a loaded CI machine)
    assert t_new < t_retired
    assert 0.9 <= t_retired < 6.0, events
    listed = s.GetPublicKeys(pb.GetPublicKeysRequest(node_id="ov"), timeout=10)
    assert (listed.previous[0].sig_key_id, listed.previous[0].status) == (old_sig, "retired")
    ch = b"after-overlap"
    a = s.Attest(pb.AttestRequest(node_id="ov", challenge=ch, signature=sign_attestation(old_ident, ch)), timeout=10)
    assert not a.valid


def test_revocation_reaches_watchers_and_audit_trail(keyvault):
    s = keyvault.stub
    rec = s.IssueIdentity(pb.IssueIdentityRequest(node_id="au"), timeout=10).record
    s.Rotate(pb.RotateRequest(node_ids=["au"], overlap_s=60), timeout=30)
    s.Revoke(pb.RevokeRequest(node_id="au", reason="audit test"), timeout=10)
    root = root_of(keyvault)

    async def go(nc):
        directory = KeyDirectory(root)
        w, initial = await watch_bucket(nc.jetstream(), BUCKET)
        for e in initial:
            with contextlib.suppress(KeyRevoked):
                directory.apply(e.key, e.value, deleted=e.operation in ("DEL", "PURGE"))
        await w.stop()
        js = nc.jetstream()
        audits = {}
        for ev in ("identity.issued", "key.rotation.started", "key.rotated", "key.rotation.published",
                   "identity.revoked"):
            m = await js.get_last_msg("AUDIT", subjects.audit("keyvault", ev))
            audits[ev] = events_pb2.AuditEvent.FromString(m.data)
        return directory, audits

    directory, audits = keyvault.nats(go)
    assert directory.is_revoked(rec.sig_key_id) and directory.lookup(rec.sig_key_id) is None
    assert directory.current("au").revoked
    revoked = audits["identity.revoked"]
    assert revoked.subject_id == "au" and revoked.details["reason"] == "audit test"
    assert audits["key.rotated"].subject_id == "au" and audits["key.rotated"].details["au"].startswith("gen=2 ")
    assert audits["identity.issued"].service == "keyvault"
