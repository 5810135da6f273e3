"""kill -9 and restart loses nothing; the master key never reaches the logs."""
from __future__ import annotations

import base64
import os

import grpc
import pytest
from testkit import eventually_sync

from tests.integration.keyvault.conftest import export
from x0tta6bl4.bus.reader import kv_snapshot
from x0tta6bl4.keyvault import sign_attestation, verify_entry
from x0tta6bl4.keyvault.distribution import BUCKET
from x0tta6bl4.pqc import MLDSA65PublicKey
from x0tta6bl4.v1 import keyvault_pb2 as pb


def snapshot(stub):
    out = {}
    for r in stub.ListIdentities(pb.ListIdentitiesRequest(include_revoked=True), timeout=10).records:
        out[r.node_id] = (r.generation, r.status, r.sig_key_id, r.kem_key_id, r.revocation_reason,
                          tuple((p.generation, p.status, p.sig_key_id) for p in r.previous))
    return out


def test_kill9_restart_keeps_identities_generations_revocations(fresh_keyvault):
    kv = fresh_keyvault()
    s = kv.stub
    # generated master key file: 0600, announced once, never logged
    mk_file = kv.data_dir / "keys" / "keyvault-master.key"
    assert mk_file.stat().st_mode & 0o777 == 0o600
    for i in range(6):
        s.IssueIdentity(pb.IssueIdentityRequest(node_id=f"k{i}"), timeout=10)
    s.Rotate(pb.RotateRequest(node_ids=["k0", "k1"], overlap_s=3600), timeout=30)
    s.Rotate(pb.RotateRequest(node_ids=["k1"], overlap_s=3600), timeout=30)
    s.Rotate(pb.RotateRequest(node_ids=["k3"], overlap_s=1), timeout=30)   # retires while keyvault is down
    s.Revoke(pb.RevokeRequest(node_id="k2", reason="stolen"), timeout=10)
    info = s.Info(pb.InfoRequest(), timeout=10)
    before = snapshot(s)

    kv.restart(kill=True)
    # k3's 1 s overlap ended while keyvault was down or just after: retired on the next tick
    eventually_sync(lambda: snapshot(kv.stub)["k3"][5][0][1] == "retired", what="k3's old generation retired")
    after = snapshot(kv.stub)
    info2 = kv.stub.Info(pb.InfoRequest(), timeout=10)
    assert info2.root_public_key == info.root_public_key  # same root: old records still verify
    assert set(after) == set(before)
    for n in ("k0", "k1", "k2", "k4", "k5"):
        assert after[n] == before[n], n
    assert after["k1"][0] == 3 and after["k0"][5][0][1] == "retiring" and after["k2"][1] == "revoked"
    assert after["k3"][:3] == before["k3"][:3] and after["k3"][5][0][1] == "retired"
    # private keys survived: export (wrapped) and attest with a never-rotated node's keys and a rotated one's
    ch = os.urandom(16)
    ident = export(kv.stub, "k4")
    assert kv.stub.Attest(pb.AttestRequest(node_id="k4", challenge=ch, signature=sign_attestation(ident, ch)),
                          timeout=10).valid
    assert export(kv.stub, "k1").generation == 3
    with pytest.raises(grpc.RpcError) as ei:
        kv.stub.Rotate(pb.RotateRequest(node_ids=["k2"]), timeout=10)
    assert ei.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    # rotation continues from the persisted generation
    assert kv.stub.Rotate(pb.RotateRequest(node_ids=["k0"]), timeout=30).records[0].generation == 3
    # the KV still verifies against the same root, revocations included
    root = MLDSA65PublicKey.from_bytes(info.root_public_key)

    async def entries(nc):
        return await kv_snapshot(nc.jetstream(), BUCKET)

    es = kv.nats(entries)
    revs = [k for k in es if k.startswith("rev.")]
    assert len(revs) == 2 and all(verify_entry(k, es[k], root).kind == "revocation" for k in revs)
    for k, v in es.items():
        if k.startswith("key."):
            verify_entry(k, v, root)
    assert verify_entry("node.k2.sig", es["node.k2.sig"], root).record.revoked  # current record, flagged
    # logs: the generated key was announced once, its value never logged
    log = kv.log_text()
    key_hex = mk_file.read_text().strip()
    raw = bytes.fromhex(key_hex)
    for form in (key_hex, key_hex.upper(), base64.b64encode(raw).decode(), base64.urlsafe_b64encode(raw).decode()):
        assert form not in log
    assert log.count("generated a new master key file") == 1
    assert "master key from file" in log


def test_master_key_from_env_never_logged_and_wrong_key_refused(fresh_keyvault):
    raw = os.urandom(32)
    b64 = base64.b64encode(raw).decode()
    kv = fresh_keyvault(env={"X0TTA6BL4_MASTER_KEY": b64, "X0TTA6BL4_LOG_LEVEL": "DEBUG"}, name="envkey")
    for n in ("e1", "e2"):
        kv.stub.IssueIdentity(pb.IssueIdentityRequest(node_id=n), timeout=10)
    assert not (kv.data_dir / "keys" / "keyvault-master.key").exists()
    # the keystore holds no plaintext: no private bundle (its magic), no record on disk while keyvault holds
    # e1's and e2's keys; once e1 is exported its keys are gone from the disk too
    bundle = export(kv.stub, "e1").export_private_unsafe()
    for f in (kv.data_dir / "keyvault").iterdir():
        data = f.read_bytes()
        assert b"x0tta6bl4/node-identity/private/v1" not in data and b"spiffe://" not in data
        assert bundle[40:80] not in data and f.stat().st_mode & 0o777 == 0o600
    # restart with a wrong master key: refused with one clear line, nothing overwritten
    sp = next(p for p in kv.stack.procs if p.name == "keyvault")
    kv.stack.stop_service(sp, kill=True)
    kv.stack.env["X0TTA6BL4_MASTER_KEY"] = os.urandom(32).hex()
    sp = kv.stack.start_service("keyvault")
    assert sp.proc.wait(30) == 2
    out = sp.log_file.read_text()
    assert "different master key" in out and "Traceback" not in out.split("generated")[-1]
    log = kv.log_text()
    for form in (b64, raw.hex(), kv.stack.env["X0TTA6BL4_MASTER_KEY"]):
        assert form not in log
    assert "master key from X0TTA6BL4_MASTER_KEY" in log
