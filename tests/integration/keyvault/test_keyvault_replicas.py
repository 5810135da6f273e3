"""Several keyvault replicas with separate data dirs (as on separate machines) on one
nats-server serve one set of identities: the shared state is the JetStream bucket
``keyvault`` (sealed under the master key, compare-and-set writes)."""
from __future__ import annotations

import os
import threading

import grpc
import pytest
from testkit import eventually_sync

from tests.integration.keyvault.conftest import certify_new, export
from x0tta6bl4.bus import subjects
from x0tta6bl4.bus.reader import kv_snapshot
from x0tta6bl4.keyvault import sign_attestation, verify_entry
from x0tta6bl4.keyvault.distribution import BUCKET as KEYS_BUCKET
from x0tta6bl4.pqc import MLDSA65PublicKey, NodeIdentity
from x0tta6bl4.v1 import keyvault_pb2 as pb

STATE_BUCKET = "keyvault"


def snapshot(stub) -> dict:
    out = {}
    for r in stub.ListIdentities(pb.ListIdentitiesRequest(include_revoked=True), timeout=10).records:
        out[r.node_id] = (r.generation, r.status, r.sig_key_id, r.kem_key_id, r.revocation_reason,
                          tuple((p.generation, p.status, p.sig_key_id) for p in r.previous))
    return out


def attest(stub, node: str, ident: NodeIdentity) -> pb.AttestResponse:
    ch = os.urandom(24)
    return stub.Attest(pb.AttestRequest(node_id=node, challenge=ch, signature=sign_attestation(ident, ch)), timeout=10)


def bucket(kv, name: str) -> dict[str, bytes]:
    async def go(nc):
        return await kv_snapshot(nc.jetstream(), name)
    return kv.nats(go)


def check_keys_bucket(kv, stub) -> None:
    """The public bucket holds exactly what node agents need: every node's current records, the
    accepted (active, retiring) keys and no other key.* entry of a known identity."""
    info = stub.Info(pb.InfoRequest(), timeout=10)
    root = MLDSA65PublicKey.from_bytes(info.root_public_key)
    es = bucket(kv, KEYS_BUCKET)
    accepted, known = set(), set()
    for r in stub.ListIdentities(pb.ListIdentitiesRequest(include_revoked=True), timeout=10).records:
        for g in [r, *r.previous]:
            known |= {g.sig_key_id}
            if g.status in ("active", "retiring"):
                accepted |= {g.sig_key_id, g.kem_key_id}
        assert verify_entry(f"node.{r.node_id}.sig", es[f"node.{r.node_id}.sig"], root).record.key_id == r.sig_key_id
    in_bucket = {k[4:] for k in es if k.startswith("key.")}
    assert accepted <= in_bucket
    assert not ((in_bucket - accepted) & known), "a retired or revoked key is still published"
    for k, v in es.items():
        verify_entry(k, v, root)


def settled(check):
    """``check`` as a condition for eventually_sync: the bucket is eventually consistent across replicas,
    so a record not there yet (KeyError) or a KV listing that timed out under load means "not yet"."""
    def run() -> bool:
        try:
            check()
        except (KeyError, TimeoutError) as e:
            raise AssertionError(f"not yet: {e!r}") from e
        return True
    return run


@pytest.fixture
def master_env():
    return {"X0TTA6BL4_MASTER_KEY": os.urandom(32).hex()}


def test_two_replicas_separate_dirs_share_every_identity(replicas, master_env):
    a, b = replicas("a", master_env), replicas("b", master_env)
    assert a.data_dir != b.data_dir
    ia = a.stub.Info(pb.InfoRequest(), timeout=10)
    assert ia.root_public_key == b.stub.Info(pb.InfoRequest(), timeout=10).root_public_key  # one root
    # certify (keys generated here) through A, read and attest through B
    ident, rec = certify_new(a.stub, "n1")
    got = b.stub.GetPublicKeys(pb.GetPublicKeysRequest(node_id="n1"), timeout=10)
    assert (got.sig_key_id, got.kem_key_id, got.generation) == (rec.sig_key_id, rec.kem_key_id, 1)
    assert attest(b.stub, "n1", ident).valid
    with pytest.raises(grpc.RpcError) as ei:
        b.stub.IssueIdentity(pb.IssueIdentityRequest(node_id="n1"), timeout=10)
    assert ei.value.code() == grpc.StatusCode.ALREADY_EXISTS
    # rotate through B: a request (n1 holds its keys) that A serves too; the node answers it through A
    rot = b.stub.Rotate(pb.RotateRequest(node_ids=["n1"], overlap_s=600, wait_s=-1), timeout=30)
    assert list(rot.pending) == ["n1"] and rot.records[0].status == "rotation_pending"
    assert a.stub.GetPublicKeys(pb.GetPublicKeysRequest(node_id="n1"), timeout=10).signed_rotation_request
    new_ident, _ = certify_new(a.stub, "n1", 2)
    gb = b.stub.GetPublicKeys(pb.GetPublicKeysRequest(node_id="n1"), timeout=10)
    assert (gb.generation, gb.sig_key_id) == (2, new_ident.signing.key_id) and gb.previous[0].status == "retiring"
    assert not gb.signed_rotation_request and gb.previous[0].retiring_until_unix > rec.not_before_unix + 500
    assert attest(b.stub, "n1", new_ident).valid and attest(b.stub, "n1", ident).valid  # overlap: both accepted
    # request ids are shared: a retry through the other replica does not rotate again
    b.stub.IssueIdentity(pb.IssueIdentityRequest(node_id="n2"), timeout=10)
    assert a.stub.Rotate(pb.RotateRequest(node_ids=["n2"], request_id="req-1"), timeout=30).records[0].generation == 2
    assert b.stub.Rotate(pb.RotateRequest(node_ids=["n2"], request_id="req-1"), timeout=30).records[0].generation == 2
    # revoke through A: B reports it revoked and refuses to rotate it
    a.stub.Revoke(pb.RevokeRequest(node_id="n1", reason="stolen"), timeout=10)
    gb = b.stub.GetPublicKeys(pb.GetPublicKeysRequest(node_id="n1"), timeout=10)
    assert gb.status == "revoked" and gb.revocation_reason == "stolen"
    with pytest.raises(grpc.RpcError) as ei:
        b.stub.Rotate(pb.RotateRequest(node_ids=["n1"]), timeout=10)
    assert ei.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    res = attest(b.stub, "n1", new_ident)
    assert not res.valid and "revoked" in res.reason
    assert snapshot(a.stub) == snapshot(b.stub)
    # NATS request/reply (queue group over both replicas) sees the same state
    async def via_nats(nc):
        out = []
        for _ in range(6):
            rep = await nc.request(subjects.KEYVAULT_RPC.format(method="GetPublicKeys"),
                                   pb.GetPublicKeysRequest(node_id="n2").SerializeToString(), timeout=10)
            out.append(pb.KeyRecord.FromString(rep.data).generation)
        return out
    assert a.nats(via_nats) == [2] * 6
    check_keys_bucket(a, a.stub)
    # the shared state never holds a private key in the clear
    state = bucket(a, STATE_BUCKET)
    assert set(state) == {"root", "requests", "node.n1", "node.n2"}
    held = export(b.stub, "n2")             # the custodial n2's keys, as keyvault held them (sealed)
    assert held.generation == 2
    for v in state.values():
        assert v[:4] == b"X0KS"
        for secret in (ident.export_private_unsafe(), new_ident.export_private_unsafe(), held.export_private_unsafe()):
            for i in range(0, len(secret) - 32, 32):
                assert secret[i:i + 32] not in v
        assert b'"node_id"' not in v and b"spiffe://" not in v and b'"private"' not in v   # no metadata either


def test_concurrent_rotations_through_two_replicas_do_not_fork(replicas, master_env):
    a, b = replicas("a", master_env), replicas("b", master_env)
    nodes = [f"c{i}" for i in range(6)]
    for n in nodes:
        a.stub.IssueIdentity(pb.IssueIdentityRequest(node_id=n), timeout=10)
    rounds, replies, errors = 3, [], []

    def worker(stub):
        for _ in range(rounds):
            try:
                replies.append(stub.Rotate(pb.RotateRequest(node_ids=nodes, overlap_s=600), timeout=60))
            except grpc.RpcError as e:  # pragma: no cover - reported below
                errors.append(e)
    ts = [threading.Thread(target=worker, args=(s,)) for s in (a.stub, b.stub)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(120)
    assert not errors, [e.details() for e in errors]
    sa, sb = snapshot(a.stub), snapshot(b.stub)
    assert sa == sb
    # every rotation applied once, in one chain: generation 1 + all rotations, keys from the replies
    for n in nodes:
        assert sa[n][0] == 1 + 2 * rounds, (n, sa[n])
        chain = {(r.generation, r.sig_key_id) for rep in replies for r in rep.records if r.node_id == n}
        assert len(chain) == 2 * rounds and len({g for g, _ in chain}) == 2 * rounds  # no generation twice
        assert (sa[n][0], sa[n][2]) in chain
    assert export(b.stub, "c0").signing.key_id == sa["c0"][2]      # the private keys match the chain's head
    check_keys_bucket(a, a.stub)
    assert "lost to another replica" in a.log_text() + b.log_text()  # the race did happen


def test_kill9_mid_rotation_restart_and_a_new_empty_replica(replicas, master_env):
    a, b = replicas("a", master_env), replicas("b", master_env)
    nodes = [f"k{i}" for i in range(30)]
    for n in nodes:
        a.stub.IssueIdentity(pb.IssueIdentityRequest(node_id=n), timeout=10)
    a.stub.Revoke(pb.RevokeRequest(node_id="k29", reason="gone"), timeout=10)
    before = snapshot(a.stub)
    # kill -9 B while it rotates everything: once it has committed an identity (B writes its local copy
    # right after its compare-and-set, before publishing the records)
    local = b.data_dir / "keyvault"
    eventually_sync(lambda: (local / "node-k29.key").exists(), what="B has its local copy of k29")
    seen = {f.name: f.stat().st_mtime_ns for f in local.glob("node-k*.key")}
    fut = b.stub.Rotate.future(pb.RotateRequest(all=True, overlap_s=600), timeout=30)
    eventually_sync(lambda: any(f.stat().st_mtime_ns != seen.get(f.name) for f in local.glob("node-k*.key")
                                if f.name != "node-k29.key"), interval=0.002, what="B committed a rotation")
    sp = b.stack.procs[0]
    b.stack.stop_service(sp, kill=True)
    with pytest.raises(grpc.RpcError):
        fut.result()
    after = snapshot(a.stub)
    assert set(after) == set(before)
    for n in nodes[:-1]:   # each identity before or after its rotation, never in between
        assert after[n] == before[n] or (after[n][0] == 2 and after[n][5][0][2] == before[n][2]), n
    for n in nodes[1:-1]:  # and the private keys keyvault holds are that generation's (k0 stays custodial)
        ident = export(a.stub, n)
        assert ident.generation == after[n][0] and attest(a.stub, n, ident).valid
    assert after["k29"][1] == "revoked"
    # A repairs the public records of changes B committed but may not have published
    eventually_sync(settled(lambda: check_keys_bucket(a, a.stub)), timeout=8, interval=0.3)
    # B restarts with its (older) local copies: the bucket is the truth
    b.restart(kill=True)
    assert snapshot(b.stub) == after
    assert not list(b.data_dir.joinpath("keyvault").glob(".*.tmp"))
    eventually_sync(settled(lambda: check_keys_bucket(b, b.stub)), timeout=8, interval=0.3)  # B's start repaired it
    # a brand-new replica with an empty data dir serves every identity and keeps local encrypted copies
    c = replicas("c", master_env)
    assert snapshot(c.stub) == after
    rec = c.stub.Rotate(pb.RotateRequest(node_ids=["k0"]), timeout=30).records[0]
    assert a.stub.GetPublicKeys(pb.GetPublicKeysRequest(node_id="k0"), timeout=10).sig_key_id == rec.sig_key_id
    eventually_sync(lambda: len(list(c.data_dir.joinpath("keyvault").glob("node-*.key"))) >= 30, timeout=5,
                    what="C keeps a local copy of every identity")
    files = list(c.data_dir.joinpath("keyvault").glob("*.key"))
    assert len([f for f in files if f.name.startswith("node-")]) == 30
    assert all(f.stat().st_mode & 0o777 == 0o600 and f.read_bytes()[:4] == b"X0KS" for f in files)


def test_a_replica_with_another_master_key_is_refused_clearly(replicas, master_env):
    a = replicas("a", master_env)
    a.stub.IssueIdentity(pb.IssueIdentityRequest(node_id="w1"), timeout=10)
    wrong = os.urandom(32).hex()
    bad = replicas("bad", {"X0TTA6BL4_MASTER_KEY": wrong}, wait=False)
    sp = bad.stack.procs[0]
    assert sp.proc.wait(30) == 2
    out = sp.log_file.read_text()
    assert "different master key" in out and "JetStream bucket 'keyvault'" in out
    assert "every keyvault replica needs the same master key" in out
    assert "Traceback" not in out and wrong not in out
    # nothing was overwritten: A still serves w1 and a restart with the right key works
    assert a.stub.GetPublicKeys(pb.GetPublicKeysRequest(node_id="w1"), timeout=10).generation == 1
