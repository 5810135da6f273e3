"""The keyvault application service on in-memory ports: the shared state and the public ``keys`` bucket
are MemoryKV buckets of the in-memory bus, the audit trail is the bus's, the clock is injected.
No nats-server, no process: each use case in milliseconds (key generation included)."""
from __future__ import annotations

import asyncio
import logging
import os

import pytest

from services.keyvault import rpc
from services.keyvault.api import KeyvaultApi
from x0tta6bl4.bus import subjects
from x0tta6bl4.bus.memory import TestBus
from x0tta6bl4.keyvault import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    KeyDirectory,
    NotFound,
    sign_attestation,
    verify_entry,
)
from x0tta6bl4.keyvault import distribution as dist
from x0tta6bl4.keyvault.errors import PermissionDenied
from x0tta6bl4.keyvault.service import VIA_NATS, KeyvaultService
from x0tta6bl4.keyvault.shared import BUCKET as STATE_BUCKET
from x0tta6bl4.keyvault.shared import SharedState, StateError
from x0tta6bl4.pqc import MasterKey, NodeIdentity, RevocationRecord
from x0tta6bl4.v1 import keyvault_pb2 as pb


class Clock:
    def __init__(self, t: float) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


@pytest.fixture(scope="module")
def mk() -> MasterKey:
    return MasterKey.generate()


@pytest.fixture
def wall() -> Clock:
    return Clock(1_700_000_000.0)


@pytest.fixture
def mono() -> Clock:
    return Clock(100.0)


@pytest.fixture
def bus() -> TestBus:
    return TestBus(service="keyvault")


async def replica(bus: TestBus, mk: MasterKey, wall: Clock, mono: Clock | None = None) -> KeyvaultService:
    """One keyvault replica: its own cache of the shared bucket, the same buckets and audit trail."""
    state, created = await SharedState.open(bus.kv(STATE_BUCKET), mk, "mesh", clock=wall, default_overlap_s=30)
    svc = KeyvaultService(state, bus.kv(dist.BUCKET), bus.context().audit, monotonic=mono or Clock(0.0))
    await svc.opened(created, 0)          # as at start-up: the keys bucket gets the root and every record
    return svc


@pytest.fixture
async def svc(bus, mk, wall, mono) -> KeyvaultService:
    return await replica(bus, mk, wall, mono)


def directory(bus: TestBus, svc: KeyvaultService) -> KeyDirectory:
    """A node agent's view of the keys bucket (every record verified against the root)."""
    d = KeyDirectory(svc.vault.root_public)
    for k, v in bus.kv(dist.BUCKET).snapshot().items():
        d.apply(k, v)
    return d


def attest(svc: KeyvaultService, node: str, ident: NodeIdentity):
    ch = os.urandom(32)
    return svc.attest(node, ch, sign_attestation(ident, ch))


async def test_issue_stores_sealed_state_publishes_signed_records_and_audits(bus, svc):
    e, bundle = await svc.issue("n1", return_private=True)
    ident = NodeIdentity.import_private(bundle)
    assert (e.node_id, e.generation, ident.generation) == ("n1", 1, 1)
    assert ident.signing.key_id == e.current.sig_key_id
    keys = bus.kv(dist.BUCKET).snapshot()
    assert set(keys) == {"root", f"key.{e.current.sig_key_id}", f"key.{e.current.kem_key_id}",
                         "node.n1.sig", "node.n1.kem"}
    for k, v in keys.items():                     # every public record verifies with the root key
        verify_entry(k, v, svc.vault.root_public)
    sealed = bus.kv(STATE_BUCKET).value("node.n1")
    # the shared state is sealed: no key material and no readable record in it (a 2-byte id like "n1"
    # turns up in random ciphertext by chance, so look for the private keys' bytes and the SPIFFE id)
    assert sealed is not None and bundle not in sealed
    assert ident.signing.private.private_bytes_unsafe()[:32] not in sealed
    assert b"spiffe://" not in sealed and b"node/n1" not in sealed
    [a] = bus.audited("identity.issued")
    assert a.subject_id == "n1" and a.details["private_returned"] == "True" and a.details["via"] == "grpc"
    assert a.details["sig_key_id"] == e.current.sig_key_id
    assert (await attest(svc, "n1", ident)).valid
    with pytest.raises(AlreadyExists, match="'n1' already has an identity"):
        await svc.issue("n1")
    assert len(bus.audited("identity.issued")) == 1


async def test_private_keys_never_leave_over_nats(bus, svc):
    with pytest.raises(PermissionDenied, match="only returned over gRPC"):
        await svc.issue("n1", return_private=True, via=VIA_NATS)
    assert bus.kv(STATE_BUCKET).value("node.n1") is None and not bus.audited("identity.issued")
    await svc.issue("n1", via=VIA_NATS)
    with pytest.raises(PermissionDenied):
        await svc.private_bundles(["n1"], via=VIA_NATS)
    assert not bus.audited("identity.private_exported")


async def test_rotate_keeps_the_old_key_for_the_overlap_then_retires_it(bus, svc, wall):
    e1, b1 = await svc.issue("n1", return_private=True)
    await svc.issue("n2")
    old_sig = e1.current.sig_key_id
    [e] = await svc.rotate(["n1"], overlap_s=60)
    assert e.generation == 2 and e.retiring is not None and e.retiring.generation == 1
    assert e.retiring.retiring_until == wall.t + 60 and e.retiring.status == "retiring"
    assert svc.vault.get("n2").generation == 1                    # only the node asked for
    d = directory(bus, svc)
    assert d.lookup(old_sig) is not None and d.lookup(e.current.sig_key_id) is not None   # both accepted
    assert d.current("n1").key_id == e.current.sig_key_id
    [rot] = bus.audited("key.rotated")
    assert rot.subject_id == "n1" and rot.details["n1"].startswith("gen=2 ") and "retiring=1" in rot.details["n1"]
    old = NodeIdentity.import_private(b1)
    r = await attest(svc, "n1", old)
    assert r.valid and r.status == "retiring"
    # before the deadline nothing retires; after it, the old generation does and its keys leave the bucket
    wall.t += 59
    assert await svc.retire_due() == 0 and f"key.{old_sig}" in bus.kv(dist.BUCKET).snapshot()
    wall.t += 2
    assert await svc.retire_due() == 1
    assert f"key.{old_sig}" not in bus.kv(dist.BUCKET).snapshot()
    assert directory(bus, svc).lookup(old_sig) is None
    [ret] = bus.audited("key.retired")
    assert ret.subject_id == "n1" and ret.details["why"] == "overlap window elapsed"
    assert svc.vault.get("n1").retired[0].status == "retired" and svc.vault.get("n1").retiring is None
    assert not (await attest(svc, "n1", old)).valid
    assert await svc.retire_due() == 0                            # nothing left to do


async def test_rotate_all_default_overlap_request_id_and_early_retirement(bus, svc, wall):
    for n in ("a1", "a2", "a3"):
        await svc.issue(n)
    await svc.revoke("a3", "lost")
    out = await svc.rotate([], all_nodes=True, request_id="r-1")
    assert [(e.node_id, e.generation) for e in out] == [("a1", 2), ("a2", 2)]     # revoked nodes are skipped
    assert out[0].retiring.retiring_until == wall.t + 30                          # the default overlap
    again = await svc.rotate([], all_nodes=True, request_id="r-1")                # a retried request: no-op
    assert [(e.node_id, e.generation) for e in again] == [("a1", 2), ("a2", 2)]
    assert len(bus.audited("key.rotation.published")) == 1
    await svc.rotate(["a1"], overlap_s=60)                        # again during the overlap: gen 1 retires now
    [early] = bus.audited("key.retired")
    assert early.details["why"] == "rotated again during its overlap" and early.details["a1"].startswith("gen=1 ")
    assert svc.vault.get("a1").retiring.generation == 2


async def test_revoke_publishes_revocation_records(bus, svc):
    e, bundle = await svc.issue("n1", return_private=True)
    [e] = await svc.rotate(["n1"], overlap_s=600)
    key_ids = [*e.current.key_ids, *e.retiring.key_ids]
    r = await svc.revoke("n1", "compromised")
    assert r.revoked and r.revocation_reason == "compromised" and set(r.revocations) == set(key_ids)
    keys = bus.kv(dist.BUCKET).snapshot()
    for kid in key_ids:
        assert f"key.{kid}" not in keys
        rec = verify_entry(f"rev.{kid}", keys[f"rev.{kid}"], svc.vault.root_public).record
        assert isinstance(rec, RevocationRecord) and rec.key_id == kid and rec.reason == "compromised"
    d = directory(bus, svc)
    assert all(d.is_revoked(k) and d.lookup(k) is None for k in key_ids) and d.current("n1").revoked
    [a] = bus.audited("identity.revoked")
    assert a.subject_id == "n1" and a.details["key_ids"] == ",".join(sorted(key_ids))
    assert not (await attest(svc, "n1", NodeIdentity.import_private(bundle))).valid
    # revoking again changes nothing; a revoked node cannot be rotated nor exported, its id never reused
    assert (await svc.revoke("n1", "again")).revocation_reason == "compromised"
    assert len(bus.audited("identity.revoked")) == 1
    with pytest.raises(FailedPrecondition, match="revoked"):
        await svc.rotate(["n1"])
    with pytest.raises(FailedPrecondition, match="private keys were destroyed"):
        await svc.private_bundles(["n1"])
    with pytest.raises(AlreadyExists, match="never reused"):
        await svc.issue("n1")


async def test_bundle_export_is_audited_all_or_nothing(bus, svc):
    for n in ("b1", "b2"):
        await svc.issue(n)
    out = await svc.private_bundles(["b2", "b1"])
    assert [e.node_id for e, _ in out] == ["b2", "b1"]
    assert [NodeIdentity.import_private(b).signing.key_id for _, b in out] == \
        [svc.vault.get("b2").current.sig_key_id, svc.vault.get("b1").current.sig_key_id]
    [a] = bus.audited("identity.private_exported")
    assert a.subject_id == "2 nodes" and a.details["via"] == "grpc"
    assert a.details["b1"] == f"gen=1 sig={svc.vault.get('b1').current.sig_key_id} " \
                              f"kem={svc.vault.get('b1').current.kem_key_id}"
    with pytest.raises(NotFound, match="'ghost'"):
        await svc.private_bundles(["b1", "ghost"])
    with pytest.raises(InvalidArgument, match="node_ids is empty"):
        await svc.private_bundles([])
    with pytest.raises(InvalidArgument, match="repeats 'b1'"):
        await svc.private_bundles(["b1", "b2", "b1"])
    with pytest.raises(InvalidArgument, match="1001 node_ids, at most 1000"):
        await svc.private_bundles([f"x{i}" for i in range(1001)])
    assert len(bus.audited("identity.private_exported")) == 1      # failed calls exported nothing


@pytest.mark.parametrize(("call", "message"), [
    (lambda s: s.issue("Not Valid"), "node id"),
    (lambda s: s.rotate(["n1"], overlap_s=-1), "overlap_s must be in"),
    (lambda s: s.rotate(["n1"], overlap_s=float("nan")), "overlap_s must be in"),
    (lambda s: s.rotate(["n1"], all_nodes=True), "not both"),
    (lambda s: s.rotate([]), "no nodes to rotate"),
    (lambda s: s.rotate(["n1"], request_id="x" * 129), "request_id longer than 128"),
    (lambda s: s.rotate(["bad id"]), "node id"),
    (lambda s: s.revoke("n1", "r" * 1025), "reason longer than 1024"),
    (lambda s: s.attest("n1", b"", b"sig"), "challenge is empty"),
    (lambda s: s.attest("n1", b"c", b""), "signature is empty"),
])
async def test_bad_input_is_a_clear_error_and_changes_nothing(bus, svc, call, message):
    await svc.issue("n1")
    before = bus.kv(STATE_BUCKET).snapshot(), bus.kv(dist.BUCKET).snapshot()
    with pytest.raises(InvalidArgument, match=message):
        await call(svc)
    assert (bus.kv(STATE_BUCKET).snapshot(), bus.kv(dist.BUCKET).snapshot()) == before
    assert not bus.audited("key.rotation.started")


async def test_unknown_node_is_not_found_naming_it(svc):
    for call in (svc.public_keys("ghost"), svc.revoke("ghost"), svc.rotate(["ghost"])):
        with pytest.raises(NotFound, match="no identity for node 'ghost'"):
            await call


async def test_info_and_list(bus, svc):
    for n in ("l1", "l2"):
        await svc.issue(n)
    await svc.revoke("l2")
    info = await svc.info()
    assert info.identities == 1 and info.kv_bucket == dist.BUCKET and info.default_overlap_s == 30
    assert info.root_public_key == svc.vault.root_public.public_bytes() == bus.kv(dist.BUCKET).value("root")
    assert [e.node_id for e in await svc.list_identities()] == ["l1"]
    assert [e.node_id for e in await svc.list_identities(include_revoked=True)] == ["l1", "l2"]


async def test_replicas_share_the_state_and_a_lost_race_is_planned_again(bus, mk, wall, caplog):
    a, b = await replica(bus, mk, wall), await replica(bus, mk, wall)
    assert a.vault.root_key_id == b.vault.root_key_id                  # one root, created once
    assert [o.details["root_created"] for o in bus.audited("keyvault.opened")] == ["True", "False"]
    await a.issue("n1")
    assert (await b.public_keys("n1")).generation == 1                 # B reads what A wrote
    caplog.set_level(logging.INFO, "x0tta6bl4.keyvault")
    ra, rb = await asyncio.gather(a.rotate(["n1"], overlap_s=600), b.rotate(["n1"], overlap_s=600))
    gens = sorted([ra[0].generation, rb[0].generation])
    assert gens == [2, 3]                                  # one chain: the loser rotated the winner's entry
    final = (await a.public_keys("n1"))
    assert final.generation == 3 and (await b.public_keys("n1")).current.sig_key_id == final.current.sig_key_id
    assert final.retired[0].generation == 1 and final.retiring.generation == 2
    assert "lost to another replica" in caplog.text
    d = directory(bus, a)
    assert d.current("n1").key_id == final.current.sig_key_id and d.lookup(final.retiring.sig_key_id) is not None


async def test_a_change_another_replica_did_not_publish_is_repaired(bus, mk, wall):
    mono = Clock(0.0)
    a, b = await replica(bus, mk, wall), await replica(bus, mk, wall, mono)
    await a.issue("n1")
    await b.public_keys("n1")
    # A commits a rotation to the shared state and dies before publishing its records
    res = await a.state.mutate(["n1"], lambda n: a.vault.plan_rotate(n, 600), lambda st: st.entry)
    new = res["n1"][0].entry
    assert f"key.{new.current.sig_key_id}" not in bus.kv(dist.BUCKET).snapshot()
    await b.list_identities()                              # B learns the change (not its own write)
    assert await b.repair_records() == 0                   # checked only REPAIR_AFTER_S later
    mono.t += 2.5
    assert await b.repair_records() == 1
    keys = bus.kv(dist.BUCKET).snapshot()
    assert f"key.{new.current.sig_key_id}" in keys and keys["node.n1.sig"] == new.current.signed_sig
    assert await b.repair_records() == 0


async def test_resync_restores_the_bucket_and_leaves_unknown_keys(bus, svc):
    e, _ = await svc.issue("n1")
    keys = bus.kv(dist.BUCKET)
    await keys.delete(f"key.{e.current.sig_key_id}")
    await keys.put("node.n1.kem", b"tampered")
    await keys.put("key.someone-else", b"written by a newer replica")
    assert await svc.resync() == 2
    snap = keys.snapshot()
    assert snap[f"key.{e.current.sig_key_id}"] == e.current.signed_sig and snap["node.n1.kem"] == e.current.signed_kem
    assert "key.someone-else" in snap
    assert await svc.resync() == 0


async def test_another_master_key_is_refused_naming_it(bus, mk, wall):
    await replica(bus, mk, wall)
    with pytest.raises(StateError, match=r"different master key.*every keyvault replica needs the same master key"):
        await SharedState.open(bus.kv(STATE_BUCKET), MasterKey.generate(), "mesh", clock=wall)


# ---- the NATS request/reply routing (no broker: the reply it would send) --------------------------------
async def test_rpc_replies_and_errors_carry_the_status_code(svc):
    api = KeyvaultApi(svc)

    async def ask(method: str, req, max_payload: int = 1 << 20):
        data = req if isinstance(req, bytes) else req.SerializeToString()
        return await rpc.answer(api, subjects.keyvault_rpc(method), data, max_payload)

    data, headers = await ask("IssueIdentity", pb.IssueIdentityRequest(node_id="r1"))
    assert headers is None and pb.IssueIdentityResponse.FromString(data).record.node_id == "r1"
    errors = {}
    for label, method, req in [("private", "IssueIdentity", pb.IssueIdentityRequest(node_id="r2", return_private=True)),
                               ("export", "GetPrivateBundle", pb.GetPrivateBundleRequest(node_id="r1")),
                               ("unknown node", "Revoke", pb.RevokeRequest(node_id="ghost")),
                               ("bad id", "Rotate", pb.RotateRequest(node_ids=["Not Valid"])),
                               ("no such method", "Frobnicate", pb.InfoRequest()),
                               ("garbage", "Rotate", b"\xff\xff\xff")]:
        data, headers = await ask(method, req)
        assert data == b""
        code = headers[subjects.HEADER_ERROR_CODE]
        assert headers[subjects.HEADER_ERROR].startswith(f"{code}: ")
        errors[label] = (code, headers[subjects.HEADER_ERROR])
    assert {k: c for k, (c, _) in errors.items()} == {
        "private": "PERMISSION_DENIED", "export": "PERMISSION_DENIED", "unknown node": "NOT_FOUND",
        "bad id": "INVALID_ARGUMENT", "no such method": "UNIMPLEMENTED", "garbage": "INVALID_ARGUMENT"}
    assert "'ghost'" in errors["unknown node"][1] and "known: IssueIdentity" in errors["no such method"][1]
    assert "not a valid RotateRequest" in errors["garbage"][1]
    assert not svc.vault.entries.get("r2")                       # nothing issued for the refused request
    # a reply too big for one NATS message goes without key material
    for n in ("r3", "r4"):
        await svc.issue(n)
    full, headers = await ask("ListIdentities", pb.ListIdentitiesRequest())
    assert headers is None
    data, headers = await ask("ListIdentities", pb.ListIdentitiesRequest(), max_payload=len(full) + 1000)
    assert headers == {subjects.HEADER_SLIM: "1"}
    out = pb.ListIdentitiesResponse.FromString(data)
    assert [r.node_id for r in out.records] == ["r1", "r3", "r4"] and not any(r.mldsa_public_key for r in out.records)
    data, headers = await ask("ListIdentities", pb.ListIdentitiesRequest(), max_payload=4096 + 10)
    assert data == b"" and "exceeds the NATS max payload" in headers[subjects.HEADER_ERROR]
