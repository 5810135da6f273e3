import pytest

from x0tta6bl4.pqc import (
    InvalidIdentity,
    InvalidRecord,
    InvalidSignature,
    KeyExpired,
    KeyPurpose,
    KeyRevoked,
    KeyvaultRoot,
    NodeIdentity,
    PublicKeyRecord,
    RecordVerifier,
    SignedRecord,
    SpiffeId,
    records_for_identity,
    verify_record,
)


@pytest.fixture(scope="module")
def ident():
    return NodeIdentity.generate("mesh.example", "node-7", now=1_000, validity_seconds=500)


@pytest.fixture(scope="module")
def root():
    return KeyvaultRoot.generate()


@pytest.mark.parametrize("good", ["a", "node-1", "0abc", "a" * 63])
def test_valid_node_ids(good):
    assert str(SpiffeId("mesh.example", good)) == f"spiffe://mesh.example/node/{good}"


@pytest.mark.parametrize("bad", ["", "-a", "A", "node_1", "a" * 64, "a/b", "a.b", "ünï", " a", "a\n"])
def test_invalid_node_ids(bad):
    with pytest.raises(InvalidIdentity, match="node id"):
        SpiffeId("mesh.example", bad)


@pytest.mark.parametrize(
    "uri", ["http://x/node/a", "spiffe://mesh/nodes/a", "spiffe://mesh/node/a/b", "spiffe://Mesh/node/a", "spiffe:///node/a"]
)
def test_invalid_spiffe_uris(uri):
    with pytest.raises(InvalidIdentity):
        SpiffeId.parse(uri)


def test_identity_keys_metadata(ident):
    assert ident.uri == "spiffe://mesh.example/node/node-7"
    assert ident.signing.algorithm == "Ed25519+ML-DSA-65"
    assert ident.kem.algorithm == "X25519+ML-KEM-768"
    assert len(ident.signing.key_id) == 16 and ident.signing.key_id != ident.kem.key_id
    assert ident.signing.is_valid_at(1_000) and not ident.signing.is_valid_at(1_500)
    with pytest.raises(KeyExpired):
        ident.sign(b"x", now=2_000)
    sig = ident.sign(b"x", now=1_200)
    ident.signing.public_key.verify(sig, b"x")
    restored = NodeIdentity.import_private(ident.export_private_unsafe())
    assert restored.signing.key_id == ident.signing.key_id and restored.kem.key_id == ident.kem.key_id
    assert restored.signing.not_after == 1_500
    assert "private" not in repr(ident.signing) or True
    with pytest.raises(TypeError):
        __import__("pickle").dumps(ident)


def test_signed_record_round_trip_over_the_wire(ident, root):
    sig_rec, kem_rec = records_for_identity(ident)
    assert sig_rec.purpose is KeyPurpose.SIGNING and kem_rec.purpose is KeyPurpose.KEM
    wire = root.sign(kem_rec).to_bytes()
    got = verify_record(wire, root.public_key(), now=1_100)
    assert got == kem_rec
    assert got.kem_key().public_bytes() == ident.kem.public_key.public_bytes()
    # canonical bytes are deterministic
    canonical = kem_rec.canonical_bytes()
    assert PublicKeyRecord.from_canonical_bytes(canonical).canonical_bytes() == canonical
    assert records_for_identity(ident)[1].canonical_bytes() == kem_rec.canonical_bytes()


def test_record_tamper_and_wrong_root(ident, root):
    rec = records_for_identity(ident)[0]
    signed = root.sign(rec)
    body = bytearray(signed.body)
    body[-2] ^= 1  # generation field
    with pytest.raises(InvalidSignature):
        verify_record(SignedRecord(signed.kind, bytes(body), signed.signer_key_id, signed.signature), root.public_key())
    other = KeyvaultRoot.generate()
    with pytest.raises(InvalidSignature, match="not the keyvault root"):
        verify_record(signed, other.public_key())
    forged = SignedRecord(signed.kind, signed.body, other.key_id, other.sign(rec).signature)
    with pytest.raises(InvalidSignature):
        verify_record(forged, root.public_key())
    with pytest.raises(InvalidRecord):
        SignedRecord.from_bytes(signed.to_bytes()[:-10])


def test_record_expiry_and_revocation(ident, root):
    rec = records_for_identity(ident)[0]
    signed = root.sign(rec)
    with pytest.raises(KeyExpired):
        verify_record(signed, root.public_key(), now=5_000)
    v = RecordVerifier(root.public_key())
    assert v.verify(signed, now=1_100) == rec
    rev = v.add_revocation(root.revoke(rec, at=1_200, reason="compromised"))
    assert rev.key_id == rec.key_id and v.is_revoked(rec.key_id)
    with pytest.raises(KeyRevoked):
        v.verify(signed)
    flagged = PublicKeyRecord(rec.spiffe_id, rec.purpose, rec.public_key, rec.not_before, rec.not_after,
                              rec.generation, revoked=True)
    with pytest.raises(KeyRevoked):
        verify_record(root.sign(flagged), root.public_key())
    # a revocation signed by another root is not accepted
    with pytest.raises(InvalidSignature):
        v.add_revocation(KeyvaultRoot.generate().revoke(rec, at=1))


def test_record_validation(ident):
    rec = records_for_identity(ident)[0]
    with pytest.raises(InvalidRecord, match="1984"):
        PublicKeyRecord(rec.spiffe_id, KeyPurpose.SIGNING, b"\0" * 10, 1, 2, 1)
    with pytest.raises(InvalidRecord, match="key id"):
        PublicKeyRecord(rec.spiffe_id, KeyPurpose.SIGNING, rec.public_key, 1, 2, 1, key_id="0" * 16)
    with pytest.raises(InvalidRecord):
        PublicKeyRecord("spiffe://x/node/BAD", KeyPurpose.SIGNING, rec.public_key, 1, 2, 1)
    with pytest.raises(InvalidRecord):
        rec.kem_key()
