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
from x0tta6bl4.keyvault import certify as cert
from x0tta6bl4.keyvault import distribution as dist
from x0tta6bl4.keyvault.errors import PermissionDenied
from x0tta6bl4.keyvault.service import VIA_NATS, KeyvaultService
from x0tta6bl4.keyvault.shared import BUCKET as STATE_BUCKET
from x0tta6bl4.keyvault.shared import SharedState, StateError
from x0tta6bl4.pqc import MasterKey, NodeIdentity, RevocationRecord, recipient_keygen, unwrap_bundle
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


def held(svc: KeyvaultService, node: str) -> NodeIdentity:
    """The private keys keyvault holds for a custodial identity (read from its state, as only a test may)."""
    ident = svc.vault.get(node).current.identity
    assert ident is not None
    return ident


async def certify(svc: KeyvaultService, node: str, gen: int, overlap_s: float = 0.0) -> NodeIdentity:
    """What a mesh host does: generate the node's generation ``gen`` itself and have keyvault certify it."""
    ident = NodeIdentity.generate("mesh", node, now=svc.vault.clock(), generation=gen)
    await svc.certify(cert.certify_request(ident, os.urandom(16), svc.vault.clock()), overlap_s)
    return ident


async def test_issue_stores_sealed_state_publishes_signed_records_and_audits(bus, svc):
    e = await svc.issue("n1")
    ident = held(svc, "n1")
    bundle = ident.export_private_unsafe()
    assert (e.node_id, e.generation, ident.generation) == ("n1", 1, 1) and e.custodial
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
    assert a.subject_id == "n1" and a.details["custodial"] is True and a.details["via"] == "grpc"
    assert a.details["sig_key_id"] == e.current.sig_key_id
    assert (await attest(svc, "n1", ident)).valid
    with pytest.raises(AlreadyExists, match="'n1' already has an identity"):
        await svc.issue("n1")
    assert len(bus.audited("identity.issued")) == 1


async def test_private_keys_never_leave_over_nats(bus, svc):
    await svc.issue("n1", via=VIA_NATS)
    _, pub = recipient_keygen()
    with pytest.raises(PermissionDenied, match="only exported over gRPC"):
        await svc.export_identity("n1", pub, via=VIA_NATS)
    assert not bus.audited("identity.private_exported") and svc.vault.get("n1").custodial


async def test_rotate_keeps_the_old_key_for_the_overlap_then_retires_it(bus, svc, wall):
    await svc.issue("n1")
    old = held(svc, "n1")
    e1 = svc.vault.get("n1")
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
    await svc.issue("n1")
    ident = held(svc, "n1")
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
    assert not (await attest(svc, "n1", ident)).valid
    # revoking again changes nothing; a revoked node cannot be rotated nor exported, its id never reused
    assert (await svc.revoke("n1", "again")).revocation_reason == "compromised"
    assert len(bus.audited("identity.revoked")) == 1
    with pytest.raises(FailedPrecondition, match="revoked"):
        await svc.rotate(["n1"])
    with pytest.raises(FailedPrecondition, match="private keys were destroyed"):
        await svc.export_identity("n1", recipient_keygen()[1])
    with pytest.raises(AlreadyExists, match="never reused"):
        await svc.issue("n1")


async def test_export_is_wrapped_single_use_audited_and_custodial_only(bus, svc, wall):
    await svc.issue("edge1")
    ident = held(svc, "edge1")
    priv, pub = recipient_keygen()
    e, wrapped, kid = await svc.export_identity("edge1", pub)
    head, bundle = unwrap_bundle(wrapped, priv)
    assert bundle == ident.export_private_unsafe() and (head.node_id, head.generation, head.recipient_key_id) == \
        ("edge1", 1, kid)
    assert NodeIdentity.import_private(bundle).signing.key_id == e.current.sig_key_id
    # keyvault destroyed its copy: the state holds no private key of edge1 any more; the records stay
    assert not e.custodial and e.current.exported_at == int(wall.t) and e.current.exported_to == kid
    stored = svc.state.decode("edge1", bus.kv(STATE_BUCKET).value("node.edge1"))
    assert stored.current.identity is None and stored.to_json()["current"]["private"] is None
    assert directory(bus, svc).lookup(e.current.sig_key_id) is not None
    [a] = bus.audited("identity.private_exported")
    assert a.subject_id == "edge1" and a.details["recipient_key_id"] == kid and a.details["generation"] == 1
    assert all(bundle.hex()[:64] not in str(v) and pub.hex()[:64] not in str(v) for v in a.details.values())
    # single use: a second export is refused, naming when and to whom it went
    with pytest.raises(FailedPrecondition, match=rf"already exported at .* \(to recipient key {kid}\); export is "
                                                 r"single use"):
        await svc.export_identity("edge1", recipient_keygen()[1])
    # a node-held identity (keys certified, never held) cannot be exported; a bad recipient key is named
    await certify(svc, "c1", 1)
    with pytest.raises(FailedPrecondition, match="holds no private key"):
        await svc.export_identity("c1", pub)
    await svc.issue("edge2")
    with pytest.raises(InvalidArgument, match=r"recipient_kem_public_key: .* 1184 bytes, got 5"):
        await svc.export_identity("edge2", b"short")
    assert svc.vault.get("edge2").custodial
    assert len(bus.audited("identity.private_exported")) == 1
    refused = bus.audited("identity.export.refused")
    assert [r.subject_id for r in refused] == ["edge1", "c1"] and "single use" in refused[0].details["reason"]
    # once exported the identity is node-held: a rotation is a request to the holder
    [after] = await svc.rotate(["edge1"], wait_s=-1)
    assert after.generation == 1 and after.rotation_request() is not None


async def test_node_held_rotation_is_a_request_the_holder_answers(bus, svc, wall):
    """keyvault cannot generate a certified node's keys: Rotate publishes rot.<node>, the holder (here the test,
    playing the mesh host) generates and certifies the next generation, Rotate returns the new records."""
    g1 = await certify(svc, "h1", 1)
    await svc.issue("op-a")                                   # custodial: rotated by keyvault at once
    keys = bus.kv(dist.BUCKET)
    seen: list = []

    async def host() -> NodeIdentity:
        while dist.rot_key("h1") not in keys.snapshot():
            await asyncio.sleep(0.01)
        v = directory(bus, svc).apply(dist.rot_key("h1"), keys.value(dist.rot_key("h1")))
        seen.append(v.rotation)
        return await certify(svc, "h1", v.rotation.from_generation + 1)   # overlap 0: the request's
    task = asyncio.create_task(host())
    out = await svc.rotate(["h1", "op-a"], overlap_s=45, request_id="rq-1", wait_s=5)
    g2 = await task
    [req] = seen
    assert (req.node_id, req.from_generation, req.overlap_s, req.request_id) == ("h1", 1, 45.0, "rq-1")
    assert [(e.node_id, e.generation) for e in out] == [("h1", 2), ("op-a", 2)]
    h1 = out[0]
    assert h1.current.sig_key_id == g2.signing.key_id and not h1.custodial and h1.rotation_request() is None
    assert h1.retiring.sig_key_id == g1.signing.key_id and h1.retiring.retiring_until == wall.t + 45
    assert dist.rot_key("h1") not in keys.snapshot()          # answered: the request is deleted
    [requested] = bus.audited("key.rotation.requested")
    assert requested.subject_id == "h1" and "from_gen=1" in requested.details["h1"] and "rq-1" in \
        requested.details["h1"]
    [rotated] = bus.audited("key.rotated")
    assert rotated.subject_id == "op-a"
    assert [c.details["rotation_request"] for c in bus.audited("key.certified")] == ["-", "rq-1"]
    assert not bus.audited("key.rotation.pending")
    # the same request id again: nothing rotates or is requested again, the current records come back
    again = await svc.rotate(["h1", "op-a"], request_id="rq-1", wait_s=5)
    assert [(e.node_id, e.generation) for e in again] == [("h1", 2), ("op-a", 2)]
    assert len(bus.audited("key.rotation.requested")) == 1 and dist.rot_key("h1") not in keys.snapshot()
    # no private key of h1 anywhere in keyvault's state or the public bucket
    secrets = [g.signing.private.private_bytes_unsafe() for g in (g1, g2)] + [g.export_private_unsafe()
                                                                             for g in (g1, g2)]
    state = svc.state.decode("h1", bus.kv(STATE_BUCKET).value("node.h1"))
    assert all(g.identity is None for g in [state.current, *state.previous()])
    plain = svc.vault.encode_entry(state)
    assert not any(s in plain or any(s in v for v in keys.snapshot().values()) for s in secrets)


async def test_a_rotation_not_certified_in_time_stays_pending(bus, svc, wall):
    await certify(svc, "h1", 1)
    await certify(svc, "h2", 1)
    out = await svc.rotate([], all_nodes=True, overlap_s=20, request_id="rq-2", wait_s=0.3)
    assert [(e.node_id, e.generation) for e in out] == [("h1", 1), ("h2", 1)]
    assert all(e.rotation_request().request_id == "rq-2" for e in out)
    [pending] = bus.audited("key.rotation.pending")
    assert pending.subject_id == "2 nodes" and "from_gen=1" in pending.details["h1"]
    reply = (await KeyvaultApi(svc).Rotate(pb.RotateRequest(node_ids=["h1"], wait_s=-1), "grpc"))
    assert list(reply.pending) == ["h1"] and reply.records[0].status == "rotation_pending"
    assert reply.records[0].signed_rotation_request
    # a second Rotate while it is pending adds no request (the first one stands, with its own id)
    assert bus.kv(dist.BUCKET).value(dist.rot_key("h1")) == svc.vault.get("h1").rotation
    assert len(bus.audited("key.rotation.requested")) == 1
    # the holder answers later; the request's overlap applies; the request is gone from the bucket
    await certify(svc, "h1", 2)
    e = svc.vault.get("h1")
    assert e.generation == 2 and e.retiring.retiring_until == wall.t + 20 and e.rotation_request() is None
    assert dist.rot_key("h1") not in bus.kv(dist.BUCKET).snapshot()
    assert dist.rot_key("h2") in bus.kv(dist.BUCKET).snapshot()
    # the request survives a new replica (it is in the shared state), and a revocation withdraws it
    other = await replica(bus, svc.state.mk, wall)
    assert (await other.public_keys("h2")).rotation_request().request_id == "rq-2"
    await other.revoke("h2", "lost")
    assert dist.rot_key("h2") not in bus.kv(dist.BUCKET).snapshot()
    with pytest.raises(InvalidArgument, match="wait_s must be at most 300"):
        await svc.rotate(["h1"], wait_s=301)


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
    assert [o.details["root_created"] for o in bus.audited("keyvault.opened")] == [True, False]
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
    e = await svc.issue("n1")
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
    _, pub = recipient_keygen()
    for label, method, req in [("export", "ExportIdentity", pb.ExportIdentityRequest(node_id="r1",
                                                                                      recipient_kem_public_key=pub)),
                               ("removed", "GetPrivateBundle", pb.GetPublicKeysRequest(node_id="r1")),
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
        "export": "PERMISSION_DENIED", "removed": "UNIMPLEMENTED", "unknown node": "NOT_FOUND",
        "bad id": "INVALID_ARGUMENT", "no such method": "UNIMPLEMENTED", "garbage": "INVALID_ARGUMENT"}
    assert "'ghost'" in errors["unknown node"][1] and "known: IssueIdentity" in errors["no such method"][1]
    assert "not a valid RotateRequest" in errors["garbage"][1]
    assert svc.vault.get("r1").custodial                         # nothing exported over NATS
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
