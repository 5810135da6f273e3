"""Transcript-bound key derivation for the hybrid KEM.

Follows the X25519MLKEM768 pattern of TLS 1.3: the hybrid shared secrets are
concatenated (``mlkem_ss || x25519_ss`` per KEM exchange) and fed as IKM into
HKDF-SHA256; the salt is the SHA-256 transcript hash over every public key and
ciphertext of the exchange, so a change to any of them yields unrelated keys.
Two 32-byte AES-256-GCM traffic secrets are produced, one per direction.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from enum import Enum

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from ._encoding import pack, to_bytes

__all__ = ["SESSION_KEY_SIZE", "Role", "SessionKeys", "derive_session_keys", "transcript_hash"]

SESSION_KEY_SIZE = 32
_TRANSCRIPT_LABEL = b"x0tta6bl4/hybrid-kem/transcript/v1"
_KDF_LABEL = b"x0tta6bl4/hybrid-kem/session-keys/v1"


class Role(str, Enum):
    INITIATOR = "initiator"
    RESPONDER = "responder"


def transcript_hash(*parts: bytes) -> bytes:
    """SHA-256 over the length-prefixed ``parts`` (unambiguous concatenation)."""
    return hashlib.sha256(pack(_TRANSCRIPT_LABEL, *(to_bytes(p, "transcript part") for p in parts))).digest()


@dataclass(frozen=True, repr=False, eq=False)
class SessionKeys:
    """Per-direction traffic secrets. ``repr`` never shows key material."""

    initiator_to_responder: bytes
    responder_to_initiator: bytes
    transcript: bytes

    def for_role(self, role: Role | str) -> tuple[bytes, bytes]:
        """Return ``(send_secret, recv_secret)`` for ``role``."""
        role = Role(role)
        if role is Role.INITIATOR:
            return self.initiator_to_responder, self.responder_to_initiator
        return self.responder_to_initiator, self.initiator_to_responder

    def __repr__(self) -> str:
        return f"<SessionKeys transcript={self.transcript.hex()[:16]}… (secret)>"


def derive_session_keys(shared_secret: bytes, transcript: bytes, *, context: bytes = b"") -> SessionKeys:
    """HKDF-SHA256(ikm=shared_secret, salt=transcript, info=label||context) -> 2x32 bytes.

    ``transcript`` should be :func:`transcript_hash` over the public keys and
    ciphertexts; ``shared_secret`` the concatenation of the hybrid secrets.
    """
    shared_secret = to_bytes(shared_secret, "shared secret")
    transcript = to_bytes(transcript, "transcript")
    if len(shared_secret) < 32:
        raise ValueError(f"shared secret must be at least 32 bytes, got {len(shared_secret)}")
    okm = HKDF(
        algorithm=hashes.SHA256(),
        length=2 * SESSION_KEY_SIZE,
        salt=transcript,
        info=_KDF_LABEL + to_bytes(context, "context"),
    ).derive(shared_secret)
    return SessionKeys(okm[:SESSION_KEY_SIZE], okm[SESSION_KEY_SIZE:], transcript)
