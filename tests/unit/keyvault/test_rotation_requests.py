"""Rotation requests for node-held identities (issue #17): keyvault cannot generate the keys of a node that
holds its own, so it publishes a root-signed request ``rot.<node>`` that the holder answers by certifying its
next generation. The record format, the KeyDirectory view of it and the vault's plans. No I/O."""
from __future__ import annotations

import pytest

from x0tta6bl4.keyvault import FailedPrecondition, KeyDirectory, Vault
from x0tta6bl4.keyvault.distribution import entry_all, entry_changes, entry_kv, rot_key, verify_entry
from x0tta6bl4.pqc import (
    InvalidRecord,
    InvalidSignature,
    KeyvaultRoot,
    NodeIdentity,
    RotationRequestRecord,
    SignedRecord,
    verify_record,
    verify_signed,
)


class Clock:
    t = 1_700_000_000.0

    def __call__(self) -> float:
        return self.t


@pytest.fixture(scope="module")
def root() -> KeyvaultRoot:
    return KeyvaultRoot.generate()


def certified(v: Vault, node: str, gen: int, overlap_s: float = 30.0):
    """The node's mesh host generated generation ``gen`` and keyvault certified it (learned at once)."""
    ident = NodeIdentity.generate("mesh", node, now=v.clock(), generation=gen)
    _, new, _ = v.plan_certify(node, ident.signing.public_key.public_bytes(), ident.kem.public_key.public_bytes(),
                                  overlap_s)
    v.learn(node, new, v.revision(node) + 1)
    return new


def test_the_record_round_trips_and_is_signed_under_its_own_context(root):
    rec = RotationRequestRecord("n1", 3, 12.5, "req-1", 1_700_000_000)
    assert RotationRequestRecord.from_canonical_bytes(rec.canonical_bytes()) == rec
    signed = root.sign(rec)
    assert signed.kind == "rotation"
    assert verify_signed(signed.to_bytes(), root.public_key()) == rec
    # the root signed with the context x0tta6bl4/keyvault/rotation/v1: the same bytes do not verify as another kind
    root.public_key().verify(signed.signature, signed.body, b"x0tta6bl4/keyvault/rotation/v1")
    forged = SignedRecord("pubkey", signed.body, signed.signer_key_id, signed.signature)
    with pytest.raises((InvalidSignature, InvalidRecord)):
        verify_signed(forged.to_bytes(), root.public_key())
    with pytest.raises(InvalidRecord, match="expected a public-key record"):
        verify_record(signed, root.public_key())
    with pytest.raises(InvalidSignature):
        verify_signed(signed.to_bytes(), KeyvaultRoot.generate().public_key())


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"node_id": "Bad Id"}, "invalid node id"),
    ({"from_generation": 0}, "from_generation"),
    ({"overlap_s": 0}, "overlap_s"),
    ({"overlap_s": float("nan")}, "overlap_s"),
    ({"overlap_s": 8 * 86400}, "overlap_s"),
    ({"request_id": ""}, "request_id"),
    ({"request_id": "x" * 129}, "request_id"),
])
def test_a_malformed_request_is_refused_naming_the_field(kwargs, message):
    args = {"node_id": "n1", "from_generation": 1, "overlap_s": 30.0, "request_id": "r", "requested_at": 1, **kwargs}
    with pytest.raises(InvalidRecord, match=message):
        RotationRequestRecord(**args)


def test_key_directory_follows_rot_entries(root):
    d = KeyDirectory(root.public_key())
    rec = RotationRequestRecord("n1", 2, 45.0, "abc", 1_700_000_000)
    value = root.sign(rec).to_bytes()
    v = d.apply(rot_key("n1"), value)
    assert v is not None and v.kind == "rotation" and v.rotation == rec
    assert (v.rotation.node_id, v.rotation.from_generation, v.rotation.overlap_s, v.rotation.request_id) == \
        ("n1", 2, 45.0, "abc")
    assert d.rotation("n1") == rec and d.rotations() == {"n1": rec} and d.rotation("n2") is None
    assert d.apply(rot_key("n1"), None, deleted=True) is None
    assert d.rotation("n1") is None                         # deleted: no request
    # a request copied under another node's key, or signed by another root, is refused
    with pytest.raises(InvalidRecord, match="rotation request of node n2"):
        d.apply(rot_key("n2"), value)
    with pytest.raises(InvalidSignature):
        d.apply(rot_key("n1"), KeyvaultRoot.generate().sign(rec).to_bytes())
    assert d.rotations() == {}
    # a public-key record under rot.<node> is refused too
    e = Vault(root, "mesh", clock=Clock()).plan_issue("n1")
    with pytest.raises(InvalidRecord, match="rotation request of node n1"):
        verify_entry(rot_key("n1"), e.current.signed_sig, root.public_key())


def test_request_is_published_while_pending_and_cleared_by_the_next_certification(root):
    v = Vault(root, "mesh", clock=Clock())
    e1 = certified(v, "h1", 1)
    assert not e1.custodial and e1.rotation_request() is None
    with pytest.raises(FailedPrecondition, match="holds its own keys"):
        v.plan_rotate("h1", 30)                             # keyvault cannot generate a node-held identity's keys
    req = v.plan_request_rotation("h1", 20.0, "r-7")
    assert req is not None and v.get("h1").rotation is None  # planned on a copy
    rec = req.rotation_request()
    assert rec is not None and (rec.node_id, rec.from_generation, rec.overlap_s, rec.request_id) == ("h1", 1, 20.0,
                                                                                                     "r-7")
    puts, dels = entry_changes(e1, req)
    assert set(puts) == {rot_key("h1")} and dels == []
    assert verify_entry(rot_key("h1"), puts[rot_key("h1")], root.public_key()).rotation == rec
    v.learn("h1", req, v.revision("h1") + 1)
    assert v.plan_request_rotation("h1", 99.0, "r-8") is None      # one request per generation: it stands
    # round trip through the serialized form (the shared state)
    assert v.decode_entry(v.encode_entry(req)).rotation_request() == rec
    # the holder certifies generation 2: the request is answered and its rot.* entry deleted
    e2 = certified(v, "h1", 2)
    assert e2.generation == 2 and e2.rotation is None and e2.rotation_request() is None
    puts, dels = entry_changes(req, e2)
    assert rot_key("h1") in dels and rot_key("h1") not in puts
    assert rot_key("h1") in entry_all(e2)[1] and rot_key("h1") not in entry_kv(e2)
    # a revoked node has no pending request either
    v.learn("h1", v.plan_request_rotation("h1", 20.0, "r-9"), v.revision("h1") + 1)
    assert rot_key("h1") in entry_kv(v.get("h1"))
    revoked = v.plan_revoke("h1", "lost")
    assert revoked is not None and rot_key("h1") not in entry_kv(revoked)
    v.learn("h1", revoked, v.revision("h1") + 1)
    with pytest.raises(FailedPrecondition, match="revoked"):
        v.plan_request_rotation("h1", 20.0, "r-10")


def test_a_custodial_identity_exported_once_becomes_node_held(root):
    v = Vault(root, "mesh", clock=Clock())
    e = v.plan_issue("edge1")
    v.learn("edge1", e, 1)
    assert e.custodial
    new, ident = v.plan_export("edge1", "0123456789abcdef")
    assert ident.signing.key_id == e.current.sig_key_id and v.get("edge1").custodial   # plan: cache unchanged
    assert not new.custodial and new.current.exported_at == int(Clock.t) and new.current.exported_to == \
        "0123456789abcdef"
    assert '"private":null' in v.encode_entry(new).decode()
    assert ident.export_private_unsafe() not in v.encode_entry(new)
    v.learn("edge1", new, 2)
    with pytest.raises(FailedPrecondition, match=r"already exported at .* single use"):
        v.plan_export("edge1", "fedcba9876543210")
    with pytest.raises(FailedPrecondition, match="holds its own keys"):
        v.plan_rotate("edge1", 30)
    assert v.plan_request_rotation("edge1", 30, "r") is not None
    certified(v, "c1", 1)
    with pytest.raises(FailedPrecondition, match="holds no private key"):
        v.plan_export("c1", "0123456789abcdef")
