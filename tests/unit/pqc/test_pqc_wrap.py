"""A private bundle wrapped to a recipient's ML-KEM-768 key (keyvault ExportIdentity, offline provisioning):
the documented byte layout, the AAD binding node id, generation and recipient key id, refusals."""
from __future__ import annotations

import hashlib
import time

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from x0tta6bl4.pqc import (
    DecryptionError,
    InvalidKey,
    InvalidRecord,
    MLKEM768PrivateKey,
    NodeIdentity,
    key_id,
    recipient_keygen,
    unwrap_bundle,
    wrap_bundle,
)
from x0tta6bl4.pqc._encoding import pack, u64, unpack
from x0tta6bl4.pqc.wrap import WRAP_MAGIC, WrappedBundle


@pytest.fixture(scope="module")
def ident() -> NodeIdentity:
    return NodeIdentity.generate("mesh", "edge1", now=time.time(), generation=3)


def test_wrap_unwrap_round_trip(ident):
    priv, pub = recipient_keygen()
    assert (len(priv), len(pub)) == (64, 1184)
    bundle = ident.export_private_unsafe()
    data = wrap_bundle(bundle, pub, "edge1", 3)
    assert bundle not in data and ident.signing.private.private_bytes_unsafe()[:32] not in data
    head, out = unwrap_bundle(data, priv)
    assert out == bundle and (head.node_id, head.generation, head.recipient_key_id) == ("edge1", 3, key_id(pub))
    assert NodeIdentity.import_private(out).signing.key_id == ident.signing.key_id
    assert unwrap_bundle(data, MLKEM768PrivateKey.from_private_bytes(priv))[1] == bundle
    assert wrap_bundle(bundle, pub, "edge1", 3) != data                      # a fresh encapsulation each time


def test_the_layout_is_as_documented(ident):
    """Re-derive the key and open the AES-256-GCM box by hand from the documented layout."""
    priv, pub = recipient_keygen()
    bundle = ident.export_private_unsafe()
    f = unpack(wrap_bundle(bundle, pub, "edge1", 3), 7, what="t", error=InvalidRecord)
    magic, node, gen, kid, ct, nonce, sealed = f
    assert (magic, node, gen, kid) == (WRAP_MAGIC, b"edge1", u64(3), key_id(pub).encode())
    assert (len(ct), len(nonce), len(sealed)) == (1088, 12, len(bundle) + 16)
    ss = MLKEM768PrivateKey.from_private_bytes(priv).decapsulate(ct)
    key = HKDF(algorithm=hashes.SHA256(), length=32, salt=hashlib.sha256(pack(pub, ct)).digest(),
               info=pack(b"x0tta6bl4/wrap/aes-256-gcm/v1", node, gen, kid)).derive(ss)
    assert AESGCM(key).decrypt(nonce, sealed, pack(WRAP_MAGIC, node, gen, kid, ct)) == bundle


def test_another_recipient_or_a_changed_header_does_not_unwrap(ident):
    priv, pub = recipient_keygen()
    other, _ = recipient_keygen()
    data = wrap_bundle(ident.export_private_unsafe(), pub, "edge1", 3)
    with pytest.raises(DecryptionError, match=f"wrapped to recipient key {key_id(pub)}, not to this key"):
        unwrap_bundle(data, other)
    w = WrappedBundle.from_bytes(data)
    for changed in (WrappedBundle("edge2", w.generation, w.recipient_key_id, w.kem_ciphertext, w.nonce, w.sealed),
                    WrappedBundle(w.node_id, 4, w.recipient_key_id, w.kem_ciphertext, w.nonce, w.sealed),
                    WrappedBundle(w.node_id, w.generation, w.recipient_key_id, w.kem_ciphertext, w.nonce,
                                  w.sealed[:-1] + bytes([w.sealed[-1] ^ 1]))):
        with pytest.raises(DecryptionError, match="does not decrypt"):
            unwrap_bundle(changed.to_bytes(), priv)
    # the recipient key id in the header is bound too: relabelled, it no longer names this key
    relabelled = WrappedBundle(w.node_id, w.generation, "0" * 16, w.kem_ciphertext, w.nonce, w.sealed)
    with pytest.raises(DecryptionError, match="wrapped to recipient key 0000000000000000"):
        unwrap_bundle(relabelled.to_bytes(), priv)


def test_bad_input_is_named(ident):
    _, pub = recipient_keygen()
    with pytest.raises(InvalidKey, match=r"ML-KEM-768 encapsulation .* 1184 bytes, got 32"):
        wrap_bundle(b"x", b"\0" * 32, "edge1", 1)
    with pytest.raises(InvalidRecord, match="not a wrapped bundle"):
        unwrap_bundle(pack(b"something else", b"", b"", b"", b"", b"", b""), b"\0" * 64)
    with pytest.raises(InvalidRecord, match="wrapped bundle"):
        unwrap_bundle(b"garbage", b"\0" * 64)
    with pytest.raises(InvalidKey, match="64-byte seed"):
        unwrap_bundle(wrap_bundle(b"x", pub, "edge1", 1), b"short")
