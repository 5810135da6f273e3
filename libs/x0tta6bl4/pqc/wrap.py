"""Wrapping a node's private bundle to a recipient's ML-KEM-768 key (offline edge provisioning).

Keyvault hands a custodial identity's private keys out only this way (``ExportIdentity``): encrypted to the
ML-KEM-768 encapsulation key of whoever provisions the edge node, so the bundle is never in the clear outside
keyvault and the recipient's machine. Pure code, no I/O.

Recipient key pair: an ML-KEM-768 key (:func:`recipient_keygen`): private = the 64-byte FIPS 203 seed
``d || z``, public = the 1184-byte encapsulation key; its key id is :func:`~x0tta6bl4.pqc.key_id` of the
public key (first 16 hex chars of its SHA-256).

Byte layout of a wrapped bundle (``u32be(len) || bytes`` per field, as everywhere in this package)::

    pack(b"x0tta6bl4/wrapped-identity/v1",
         node_id (UTF-8), u64be(generation), recipient_key_id (16 ASCII hex),
         kem_ciphertext (1088 B, ML-KEM-768), nonce (12 B), sealed (bundle + 16 B GCM tag))

    ss, kem_ciphertext = ML-KEM-768.Encaps(recipient public key)
    key  = HKDF-SHA256(ikm=ss, salt=SHA-256(pack(recipient public key, kem_ciphertext)),
                       info=pack(b"x0tta6bl4/wrap/aes-256-gcm/v1", node_id, u64be(generation), recipient_key_id),
                       length=32)
    aad  = pack(b"x0tta6bl4/wrapped-identity/v1", node_id, u64be(generation), recipient_key_id, kem_ciphertext)
    sealed = AES-256-GCM(key).encrypt(nonce, bundle, aad)

The AAD binds the node id, the generation and the recipient key id (and the KEM ciphertext), so a header
changed in transit, or a bundle unwrapped with another recipient key, fails (:class:`DecryptionError`). The
bundle is :meth:`NodeIdentity.export_private_unsafe`'s format (what ``meshctl keys issue --private-out``
writes).
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from ._encoding import from_u64, pack, to_bytes, u64, unpack
from .backend import MLKEM768_CIPHERTEXT_SIZE, MLKEM768_PUBLIC_KEY_SIZE
from .errors import DecryptionError, InvalidKey, InvalidRecord
from .identity import validate_node_id
from .keys import MLKEM768PrivateKey, MLKEM768PublicKey, key_id

__all__ = ["WRAP_MAGIC", "WrappedBundle", "recipient_key_id", "recipient_keygen", "unwrap_bundle", "wrap_bundle"]

WRAP_MAGIC = b"x0tta6bl4/wrapped-identity/v1"
_KDF_INFO = b"x0tta6bl4/wrap/aes-256-gcm/v1"
NONCE_SIZE = 12


@dataclass(frozen=True)
class WrappedBundle:
    """A wrapped private bundle (see the module's byte layout)."""

    node_id: str
    generation: int
    recipient_key_id: str
    kem_ciphertext: bytes = field(repr=False)
    nonce: bytes = field(repr=False)
    sealed: bytes = field(repr=False)

    def header(self) -> bytes:
        """The AAD: everything but the nonce and the sealed bundle."""
        return pack(WRAP_MAGIC, self.node_id.encode(), u64(self.generation), self.recipient_key_id.encode(),
                    self.kem_ciphertext)

    def to_bytes(self) -> bytes:
        return pack(WRAP_MAGIC, self.node_id.encode(), u64(self.generation), self.recipient_key_id.encode(),
                    self.kem_ciphertext, self.nonce, self.sealed)

    @classmethod
    def from_bytes(cls, data: bytes) -> WrappedBundle:
        f = unpack(to_bytes(data, "wrapped bundle"), 7, what="wrapped bundle", error=InvalidRecord)
        if f[0] != WRAP_MAGIC:
            raise InvalidRecord("not a wrapped bundle (bad magic or version)")
        try:
            node_id, kid = f[1].decode(), f[3].decode()
        except UnicodeDecodeError:
            raise InvalidRecord("wrapped bundle: node id or recipient key id is not UTF-8") from None
        validate_node_id(node_id)
        if len(f[4]) != MLKEM768_CIPHERTEXT_SIZE or len(f[5]) != NONCE_SIZE or len(f[6]) < 16:
            raise InvalidRecord("wrapped bundle: bad KEM ciphertext, nonce or sealed length")
        return cls(node_id, from_u64(f[2], what="generation", error=InvalidRecord), kid, f[4], f[5], f[6])


def recipient_keygen() -> tuple[bytes, bytes]:
    """A new recipient key pair: (private 64-byte seed, public 1184-byte encapsulation key)."""
    k = MLKEM768PrivateKey.generate()
    return k.private_bytes_unsafe(), k.public_key().public_bytes()


def recipient_key_id(public_key: bytes) -> str:
    return key_id(_public(public_key).public_bytes())


def _public(public_key: bytes | MLKEM768PublicKey) -> MLKEM768PublicKey:
    if isinstance(public_key, MLKEM768PublicKey):
        return public_key
    data = to_bytes(public_key, "recipient key")
    if len(data) != MLKEM768_PUBLIC_KEY_SIZE:
        raise InvalidKey(f"the recipient key must be an ML-KEM-768 encapsulation (public) key of "
                         f"{MLKEM768_PUBLIC_KEY_SIZE} bytes, got {len(data)}")
    return MLKEM768PublicKey.from_bytes(data)


def _key(ss: bytes, public: bytes, w: WrappedBundle) -> bytes:
    salt = hashlib.sha256(pack(public, w.kem_ciphertext)).digest()
    info = pack(_KDF_INFO, w.node_id.encode(), u64(w.generation), w.recipient_key_id.encode())
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=salt, info=info).derive(ss)


def wrap_bundle(bundle: bytes, recipient: bytes | MLKEM768PublicKey, node_id: str, generation: int) -> bytes:
    """``bundle`` encrypted to ``recipient`` (see the module's layout); InvalidKey for a bad recipient key."""
    pub = _public(recipient)
    validate_node_id(node_id)
    ss, ct = pub.encapsulate()
    w = WrappedBundle(node_id, int(generation), pub.key_id, ct, os.urandom(NONCE_SIZE), b"")
    sealed = AESGCM(_key(ss, pub.public_bytes(), w)).encrypt(w.nonce, to_bytes(bundle, "bundle"), w.header())
    return WrappedBundle(w.node_id, w.generation, w.recipient_key_id, ct, w.nonce, sealed).to_bytes()


def unwrap_bundle(data: bytes, recipient: bytes | MLKEM768PrivateKey) -> tuple[WrappedBundle, bytes]:
    """(header, private bundle) of a wrapped bundle, with the recipient's private key (or its 64-byte seed).
    InvalidRecord for something that is not a wrapped bundle; DecryptionError when it was wrapped to another
    key or changed in transit."""
    w = WrappedBundle.from_bytes(data)
    priv = recipient if isinstance(recipient, MLKEM768PrivateKey) else \
        MLKEM768PrivateKey.from_private_bytes(to_bytes(recipient, "recipient private key"))
    pub = priv.public_key()
    if pub.key_id != w.recipient_key_id:
        raise DecryptionError(f"the bundle was wrapped to recipient key {w.recipient_key_id}, not to this key "
                              f"({pub.key_id})")
    ss = priv.decapsulate(w.kem_ciphertext)
    try:
        bundle = AESGCM(_key(ss, pub.public_bytes(), w)).decrypt(w.nonce, w.sealed, w.header())
    except InvalidTag:
        raise DecryptionError("the wrapped bundle does not decrypt: changed in transit or not for this key") \
            from None
    return w, bundle
