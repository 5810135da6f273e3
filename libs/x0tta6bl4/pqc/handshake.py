"""Mutually authenticated hybrid handshake (X25519+ML-KEM-768, Ed25519+ML-DSA-65).

Three messages::

    I -> R  HS1: initiator id, responder KEM key id, ephemeral hybrid KEM pk e_I,
                 ct1 = Encaps(R's static hybrid KEM key)
    R -> I  HS2: responder id, ct2 = Encaps(e_I), sig_R(transcript)
    I -> R  HS3: sig_I(transcript)

``transcript = SHA-256(ids, static KEM pk of R, e_I, ct1, ct2)`` and the
session keys are ``HKDF-SHA256(ikm = ss1 || ss2, salt = transcript)`` -- each
``ss`` itself being ``mlkem_ss || x25519_ss``. The static encapsulation
authenticates R implicitly, the ephemeral one gives forward secrecy, and both
sides hybrid-sign the transcript.
"""

from __future__ import annotations

from collections.abc import Callable

from ._encoding import pack, unpack
from .errors import HandshakeError, InvalidSignature, PQCError
from .identity import NodeIdentity, SpiffeId
from .kdf import SessionKeys, derive_session_keys, transcript_hash
from .keys import HybridKemPrivateKey, HybridKemPublicKey, HybridVerifyKey

__all__ = ["HandshakeInitiator", "HandshakeResponder"]

_HS1, _HS2, _HS3 = b"x0tta6bl4/hs1/v1", b"x0tta6bl4/hs2/v1", b"x0tta6bl4/hs3/v1"
_CTX_R, _CTX_I = b"x0tta6bl4/handshake/responder/v1", b"x0tta6bl4/handshake/initiator/v1"
VerifyKeyLookup = Callable[[str], HybridVerifyKey]


def _fields(msg: bytes, n: int, magic: bytes) -> list[bytes]:
    try:
        f = unpack(msg, n, what="handshake message", error=HandshakeError)
    except TypeError:
        raise HandshakeError("handshake message must be bytes") from None
    if f[0] != magic:
        raise HandshakeError(f"unexpected handshake message (wanted {magic.decode()})")
    return f


class HandshakeInitiator:
    def __init__(
        self,
        identity: NodeIdentity,
        peer_id: str,
        peer_kem_key: HybridKemPublicKey,
        peer_verify_key: HybridVerifyKey,
    ) -> None:
        self.identity = identity
        self.peer_id = str(SpiffeId.parse(peer_id))
        self._peer_kem, self._peer_vk = peer_kem_key, peer_verify_key
        self._eph: HybridKemPrivateKey | None = None
        self._ss1 = self._ct1 = b""
        self._done = False

    def start(self) -> bytes:
        if self._eph is not None:
            raise HandshakeError("handshake already started")
        self._eph = HybridKemPrivateKey.generate()
        self._ss1, self._ct1 = self._peer_kem.encapsulate()
        return pack(_HS1, self.identity.uri.encode(), self._peer_kem.key_id.encode(),
                    self._eph.public_key().public_bytes(), self._ct1)

    def finish(self, msg2: bytes) -> tuple[bytes, SessionKeys]:
        """Process HS2; return ``(HS3, session_keys)``."""
        if self._eph is None or self._done:
            raise HandshakeError("finish() called out of order")
        f = _fields(msg2, 4, _HS2)
        if f[1] != self.peer_id.encode():
            raise HandshakeError(f"HS2 comes from {f[1]!r:.80}, expected {self.peer_id}")
        try:
            ss2 = self._eph.decapsulate(f[2])
        except PQCError as exc:
            raise HandshakeError(f"HS2 ciphertext invalid: {exc}") from None
        th = transcript_hash(self.identity.uri.encode(), self.peer_id.encode(), self._peer_kem.public_bytes(),
                             self._eph.public_key().public_bytes(), self._ct1, f[2])
        try:
            self._peer_vk.verify(f[3], th, _CTX_R)
        except InvalidSignature as exc:
            raise HandshakeError(f"responder authentication failed: {exc}") from None
        keys = derive_session_keys(self._ss1 + ss2, th)
        self._done, self._eph, self._ss1 = True, None, b""
        return pack(_HS3, self.identity.sign(th, _CTX_I)), keys


class HandshakeResponder:
    def __init__(self, identity: NodeIdentity, lookup_verify_key: VerifyKeyLookup,
                 *, kem_keys: Callable[[str], NodeIdentity | None] | None = None) -> None:
        """``lookup_verify_key(spiffe_id)`` returns the initiator's verified key
        (raise a PQCError if unknown); ``kem_keys(key_id)`` may map KEM key ids
        to identities (e.g. :meth:`Keyring.find_kem`) to accept retiring keys."""
        self.identity = identity
        self._lookup = lookup_verify_key
        self._kem_keys = kem_keys
        self._pending: tuple[bytes, SessionKeys, HybridVerifyKey] | None = None
        self.peer_id: str | None = None

    def respond(self, msg1: bytes) -> bytes:
        if self._pending is not None:
            raise HandshakeError("respond() already called")
        f = _fields(msg1, 5, _HS1)
        try:
            peer = str(SpiffeId.parse(f[1].decode()))
        except (UnicodeDecodeError, PQCError):
            raise HandshakeError("HS1 carries an invalid initiator id") from None
        ident = self.identity
        if f[2] != ident.kem.key_id.encode():
            alt = self._kem_keys(f[2].decode(errors="replace")) if self._kem_keys else None
            if alt is None:
                raise HandshakeError(f"HS1 targets unknown KEM key {f[2]!r:.40}")
            ident = alt
        try:
            vk = self._lookup(peer)
            eph_pub = HybridKemPublicKey.from_bytes(f[3])
            ss1 = ident.kem.private.decapsulate(f[4])
        except PQCError as exc:
            raise HandshakeError(f"HS1 rejected: {exc}") from None
        ss2, ct2 = eph_pub.encapsulate()
        th = transcript_hash(peer.encode(), ident.uri.encode(), ident.kem.public_key.public_bytes(),
                             f[3], f[4], ct2)
        keys = derive_session_keys(ss1 + ss2, th)
        self._pending = (th, keys, vk)
        self.peer_id = peer
        return pack(_HS2, ident.uri.encode(), ct2, ident.sign(th, _CTX_R))

    def finish(self, msg3: bytes) -> SessionKeys:
        if self._pending is None:
            raise HandshakeError("finish() called before respond()")
        th, keys, vk = self._pending
        f = _fields(msg3, 2, _HS3)
        try:
            vk.verify(f[1], th, _CTX_I)
        except InvalidSignature as exc:
            raise HandshakeError(f"initiator authentication failed: {exc}") from None
        self._pending = None
        return keys
