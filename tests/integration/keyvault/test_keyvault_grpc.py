"""Every keyvault RPC over real gRPC against a real keyvault process."""
from __future__ import annotations

import os
import time

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from tests.integration.keyvault.conftest import certify_new
from x0tta6bl4.keyvault import sign_attestation
from x0tta6bl4.pqc import MLDSA65PublicKey, NodeIdentity, backend_info, verify_record
from x0tta6bl4.v1 import keyvault_pb2 as pb


def code_of(fn, *a, **kw) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as ei:
        fn(*a, timeout=10, **kw)
    return ei.value.code(), ei.value.details()


def test_info_health_reflection(keyvault):
    info = keyvault.stub.Info(pb.InfoRequest(), timeout=10)
    b = backend_info()
    assert (info.backend, info.backend_version) == (b.name, b.version)
    assert list(info.algorithms) == ["ML-KEM-768", "ML-DSA-65"]
    assert len(info.root_public_key) == 1952
    assert MLDSA65PublicKey.from_bytes(info.root_public_key).key_id == info.root_key_id
    assert info.kv_bucket == "keys" and info.default_overlap_s == 30
    h = health_pb2_grpc.HealthStub(keyvault.channel)
    for svc in ("", "x0tta6bl4.v1.Keyvault"):
        status = h.Check(health_pb2.HealthCheckRequest(service=svc), timeout=5).status
        assert status == health_pb2.HealthCheckResponse.SERVING
    refl = reflection_pb2_grpc.ServerReflectionStub(keyvault.channel)
    resp = next(refl.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=5))
    names = {s.name for s in resp.list_services_response.service}
    assert {"x0tta6bl4.v1.Keyvault", "grpc.health.v1.Health"} <= names


def test_issue_get_list_and_errors(keyvault):
    s = keyvault.stub
    r = s.IssueIdentity(pb.IssueIdentityRequest(node_id="alpha"), timeout=10)
    rec = r.record
    assert rec.spiffe_id == "spiffe://x0tta6bl4.mesh/node/alpha" and rec.generation == 1 and rec.status == "active"
    assert rec.custodial and not rec.exported_at_unix     # keyvault generated the keys and keeps them
    assert len(rec.mldsa_public_key) == 1952 and len(rec.ed25519_public_key) == 32
    assert len(rec.mlkem_public_key) == 1184 and len(rec.x25519_public_key) == 32
    assert rec.not_after_unix > rec.not_before_unix
    # the record is signed by the root key
    root = MLDSA65PublicKey.from_bytes(s.Info(pb.InfoRequest(), timeout=10).root_public_key)
    assert verify_record(rec.signed_sig_record, root).key_id == rec.sig_key_id
    assert verify_record(rec.signed_kem_record, root).key_id == rec.kem_key_id
    got = s.GetPublicKeys(pb.GetPublicKeysRequest(node_id="alpha"), timeout=10)
    assert got.sig_key_id == rec.sig_key_id and got.kem_key_id == rec.kem_key_id
    assert "alpha" in {x.node_id for x in s.ListIdentities(pb.ListIdentitiesRequest(), timeout=10).records}

    c, msg = code_of(s.IssueIdentity, pb.IssueIdentityRequest(node_id="alpha"))
    assert c == grpc.StatusCode.ALREADY_EXISTS and "alpha" in msg
    for bad in ("Bad_Node", "", "-x", "a" * 64, "a.b", "a/b", "spiffe://x/node/y"):
        c, msg = code_of(s.IssueIdentity, pb.IssueIdentityRequest(node_id=bad))
        assert c == grpc.StatusCode.INVALID_ARGUMENT, bad
        assert "invalid node id" in msg
    c, msg = code_of(s.GetPublicKeys, pb.GetPublicKeysRequest(node_id="UPPER"))
    assert c == grpc.StatusCode.INVALID_ARGUMENT
    c, msg = code_of(s.GetPublicKeys, pb.GetPublicKeysRequest(node_id="nobody"))
    assert c == grpc.StatusCode.NOT_FOUND and "nobody" in msg
    c, _ = code_of(s.Revoke, pb.RevokeRequest(node_id="nobody"))
    assert c == grpc.StatusCode.NOT_FOUND
    c, _ = code_of(s.Attest, pb.AttestRequest(node_id="Bad!", challenge=b"x", signature=b"y"))
    assert c == grpc.StatusCode.INVALID_ARGUMENT


def test_rotate_set_and_all_and_errors(keyvault):
    s = keyvault.stub
    for n in ("r1", "r2", "r3"):
        s.IssueIdentity(pb.IssueIdentityRequest(node_id=n), timeout=10)
    before = {n: s.GetPublicKeys(pb.GetPublicKeysRequest(node_id=n), timeout=10) for n in ("r1", "r2", "r3")}
    out = s.Rotate(pb.RotateRequest(node_ids=["r1", "r2"], overlap_s=60), timeout=30)
    assert {r.node_id: r.generation for r in out.records} == {"r1": 2, "r2": 2}
    for r in out.records:
        assert r.status == "active" and r.sig_key_id != before[r.node_id].sig_key_id
        assert r.previous[0].status == "retiring" and r.previous[0].sig_key_id == before[r.node_id].sig_key_id
        assert r.previous[0].retiring_until_unix == pytest.approx(time.time() + 60, abs=5)
    assert s.GetPublicKeys(pb.GetPublicKeysRequest(node_id="r3"), timeout=10).generation == 1
    # idempotent retry with a request id
    a = s.Rotate(pb.RotateRequest(node_ids=["r3"], request_id="req-1"), timeout=30)
    b = s.Rotate(pb.RotateRequest(node_ids=["r3"], request_id="req-1"), timeout=30)
    assert a.records[0].generation == b.records[0].generation == 2
    # all
    out = s.Rotate(pb.RotateRequest(all=True, overlap_s=60), timeout=30)
    gens = {r.node_id: r.generation for r in out.records}
    assert gens["r1"] == 3 and gens["r3"] == 3
    # rotating again during an overlap retires the previous retiring generation at once
    r1 = s.GetPublicKeys(pb.GetPublicKeysRequest(node_id="r1"), timeout=10)
    assert [(p.generation, p.status) for p in r1.previous][:2] == [(2, "retiring"), (1, "retired")]
    # errors
    c, msg = code_of(s.Rotate, pb.RotateRequest())
    assert c == grpc.StatusCode.INVALID_ARGUMENT and "all" in msg
    c, _ = code_of(s.Rotate, pb.RotateRequest(node_ids=["r1", "ghost"]))
    assert c == grpc.StatusCode.NOT_FOUND
    assert s.GetPublicKeys(pb.GetPublicKeysRequest(node_id="r1"), timeout=10).generation == 3  # nothing half-done
    c, _ = code_of(s.Rotate, pb.RotateRequest(node_ids=["r1"], overlap_s=-1))
    assert c == grpc.StatusCode.INVALID_ARGUMENT
    c, _ = code_of(s.Rotate, pb.RotateRequest(node_ids=["Bad"]))
    assert c == grpc.StatusCode.INVALID_ARGUMENT


def test_revoke(keyvault):
    s = keyvault.stub
    s.IssueIdentity(pb.IssueIdentityRequest(node_id="rv"), timeout=10)
    s.Rotate(pb.RotateRequest(node_ids=["rv"], overlap_s=60), timeout=30)
    r = s.Revoke(pb.RevokeRequest(node_id="rv", reason="compromised"), timeout=10)
    assert r.revoked and r.status == "revoked" and r.revocation_reason == "compromised" and r.revoked_at_unix > 0
    assert r.previous[0].status == "revoked"  # the retiring generation is revoked too
    again = s.Revoke(pb.RevokeRequest(node_id="rv", reason="other"), timeout=10)  # idempotent
    assert again.revocation_reason == "compromised"
    assert "rv" not in {x.node_id for x in s.ListIdentities(pb.ListIdentitiesRequest(), timeout=10).records}
    everyone = s.ListIdentities(pb.ListIdentitiesRequest(include_revoked=True), timeout=10).records
    assert "rv" in {x.node_id for x in everyone}
    c, msg = code_of(s.Rotate, pb.RotateRequest(node_ids=["rv"]))
    assert c == grpc.StatusCode.FAILED_PRECONDITION and "revoked" in msg
    c, _ = code_of(s.IssueIdentity, pb.IssueIdentityRequest(node_id="rv"))
    assert c == grpc.StatusCode.ALREADY_EXISTS
    c, _ = code_of(s.ExportIdentity, pb.ExportIdentityRequest(node_id="rv", recipient_kem_public_key=b"\0" * 1184))
    assert c == grpc.StatusCode.FAILED_PRECONDITION
    out = s.Rotate(pb.RotateRequest(all=True, overlap_s=60), timeout=30)  # all skips revoked nodes
    assert "rv" not in {x.node_id for x in out.records}


def test_attest_good_and_bad(keyvault):
    s = keyvault.stub
    ident, rec = certify_new(s, "at")              # keys generated here, certified by keyvault
    r = pb.IssueIdentityResponse(record=rec)
    assert ident.signing.key_id == r.record.sig_key_id and not rec.custodial
    ch = os.urandom(32)
    ok = s.Attest(pb.AttestRequest(node_id="at", challenge=ch, signature=sign_attestation(ident, ch)), timeout=10)
    assert ok.valid and ok.key_id == r.record.sig_key_id and ok.generation == 1 and ok.status == "active"
    ok = s.Attest(pb.AttestRequest(node_id="at", challenge=ch, signature=sign_attestation(ident, ch, hybrid=True)),
                  timeout=10)
    assert ok.valid
    # bad: signature over another challenge, a flipped bit, wrong size, another node's key
    sig = bytearray(sign_attestation(ident, ch))
    other = pb.AttestRequest(node_id="at", challenge=os.urandom(32), signature=bytes(sig))
    assert not s.Attest(other, timeout=10).valid
    sig[100] ^= 1
    bad = s.Attest(pb.AttestRequest(node_id="at", challenge=ch, signature=bytes(sig)), timeout=10)
    assert not bad.valid and "does not verify" in bad.reason
    bad = s.Attest(pb.AttestRequest(node_id="at", challenge=ch, signature=b"\x00" * 100), timeout=10)
    assert not bad.valid and "3309" in bad.reason
    other = NodeIdentity.generate("x0tta6bl4.mesh", "at", now=time.time())
    assert not s.Attest(pb.AttestRequest(node_id="at", challenge=ch, signature=sign_attestation(other, ch)),
                        timeout=10).valid
    c, _ = code_of(s.Attest, pb.AttestRequest(node_id="at", challenge=b"", signature=bytes(sig)))
    assert c == grpc.StatusCode.INVALID_ARGUMENT
    # after a rotation (the node certifies its next generation): the new key is active, the old one accepted
    # while retiring
    new, _ = certify_new(s, "at", 2, overlap_s=60)
    assert new.generation == 2
    a = s.Attest(pb.AttestRequest(node_id="at", challenge=ch, signature=sign_attestation(new, ch)), timeout=10)
    assert a.valid and a.generation == 2 and a.status == "active"
    a = s.Attest(pb.AttestRequest(node_id="at", challenge=ch, signature=sign_attestation(ident, ch)), timeout=10)
    assert a.valid and a.generation == 1 and a.status == "retiring"
    s.Revoke(pb.RevokeRequest(node_id="at", reason="test"), timeout=10)
    a = s.Attest(pb.AttestRequest(node_id="at", challenge=ch, signature=sign_attestation(new, ch)), timeout=10)
    assert not a.valid and "revoked" in a.reason


def test_cli_keys(keyvault, tmp_path, monkeypatch):
    import typer
    from typer.testing import CliRunner

    from x0tta6bl4.cli.keys import keys_app

    app = typer.Typer()
    app.add_typer(keys_app, name="keys")
    monkeypatch.setenv("X0TTA6BL4_DATA_DIR", str(keyvault.data_dir))   # meshctl finds the stack's CA there
    run = lambda *a: CliRunner().invoke(app, ["keys", *a, "--keyvault", keyvault.addr])  # noqa: E731
    run_plain = lambda *a: CliRunner().invoke(app, ["keys", *a])  # noqa: E731   (offline commands)
    flat = lambda r: " ".join(r.output.split())  # noqa: E731   (rich wraps long lines)
    r = run("info")
    assert r.exit_code == 0 and backend_info().name in r.output and "ML-DSA-65" in r.output
    bundle = tmp_path / "cli-node.key"
    r = run("issue", "cli-node", "--private-out", str(bundle))       # generated here, certified by keyvault
    assert r.exit_code == 0, r.output
    assert bundle.stat().st_mode & 0o777 == 0o600 and "keyvault holds no copy" in flat(r)
    ident = NodeIdentity.import_private(bundle.read_bytes())
    assert keyvault.stub.GetPublicKeys(pb.GetPublicKeysRequest(node_id="cli-node"),
                                       timeout=10).sig_key_id == ident.signing.key_id
    r = run("issue", "cli-node", "--private-out", str(bundle))
    assert r.exit_code == 1 and "exists; refusing to overwrite" in flat(r)
    r = run("issue", "cli-revoked", "--private-out", str(tmp_path / "x.key"))
    assert r.exit_code == 0 and run("revoke", "cli-revoked").exit_code == 0
    r = run("issue", "cli-revoked", "--private-out", str(tmp_path / "y.key"))      # refused: no stray key file
    assert r.exit_code == 1 and "FAILED_PRECONDITION" in flat(r) and not (tmp_path / "y.key").exists()
    r = run("attest", "cli-node", "--identity", str(bundle))
    assert r.exit_code == 0 and "valid" in r.output
    # the node holds its keys: keyvault asks it to rotate (nobody answers here: pending)
    r = run("rotate", "cli-node", "--overlap", "60", "--wait", "-1")
    assert r.exit_code == 0 and "rotation pending" in flat(r) and "cli-node" in flat(r), r.output
    # a custodial identity rotates at once
    r = run("issue", "cli-cust")
    assert r.exit_code == 0 and "custodial" in flat(r)
    assert run("rotate", "cli-cust", "--overlap", "60").exit_code == 0
    r = run("show", "cli-cust")
    assert r.exit_code == 0 and "retiring" in r.output
    assert run("list").exit_code == 0
    # offline edge provisioning: recipient key pair, export wrapped (once), unwrap, the bundle attests
    rkey = tmp_path / "edge.key"
    r = run_plain("recipient-keygen", str(rkey))
    assert r.exit_code == 0 and rkey.stat().st_mode & 0o777 == 0o600 and len(rkey.with_suffix(".pub").read_bytes()) \
        == 1184, r.output
    wrapped = tmp_path / "cli-cust.wrapped"
    r = run("export", "cli-cust", "--recipient", str(rkey.with_suffix(".pub")), "--out", str(wrapped))
    assert r.exit_code == 0 and "single use" in flat(r), r.output
    unwrapped = tmp_path / "cli-cust.bundle"
    r = run_plain("unwrap", str(wrapped), "--recipient-key", str(rkey), "--out", str(unwrapped))
    assert r.exit_code == 0 and unwrapped.stat().st_mode & 0o777 == 0o600, r.output
    r = run("attest", "cli-cust", "--identity", str(unwrapped))
    assert r.exit_code == 0 and "valid" in r.output
    r = run("export", "cli-cust", "--recipient", str(rkey.with_suffix(".pub")), "--out", str(tmp_path / "again"))
    assert r.exit_code == 1 and "already exported" in flat(r) and not (tmp_path / "again").exists()
    other = tmp_path / "other.key"
    assert run_plain("recipient-keygen", str(other)).exit_code == 0
    r = run_plain("unwrap", str(wrapped), "--recipient-key", str(other), "--out", str(tmp_path / "z"))
    assert r.exit_code == 1 and "cannot unwrap" in flat(r) and "Traceback" not in r.output
    r = run("revoke", "cli-node", "--reason", "cli test")
    assert r.exit_code == 0 and "revoked" in r.output
    r = run("show", "NOPE")
    assert r.exit_code == 1 and "INVALID_ARGUMENT" in r.output and "Traceback" not in r.output
    r = CliRunner().invoke(app, ["keys", "info", "--keyvault", "127.0.0.1:1"])
    assert r.exit_code == 1 and "cannot reach keyvault" in r.output and "Traceback" not in r.output
