"""Error hierarchy of :mod:`x0tta6bl4.pqc`.

Every failure raised on purpose by this package derives from :class:`PQCError`,
so callers can catch one type; the subclasses say *what* is wrong and the
message names the offending object (never secret material).
"""

from __future__ import annotations

__all__ = [
    "BackendUnavailable",
    "CorruptKeystore",
    "DecryptionError",
    "HandshakeError",
    "InvalidIdentity",
    "InvalidKey",
    "InvalidRecord",
    "InvalidSignature",
    "KeyExpired",
    "KeyRevoked",
    "KeystoreError",
    "PQCError",
    "RekeyRequired",
    "ReplayError",
    "WrongMasterKey",
]


class PQCError(Exception):
    """Base class of every error raised by the PQC library."""


class BackendUnavailable(PQCError):
    """The requested crypto backend is not installed or lacks an algorithm."""


class InvalidKey(PQCError):
    """A key has the wrong length, encoding or algorithm."""


class InvalidSignature(PQCError):
    """A signature is malformed or does not verify."""


class DecryptionError(PQCError):
    """A ciphertext/frame is truncated, malformed, tampered with or keyed wrongly."""


class ReplayError(DecryptionError):
    """A frame's sequence number was already seen or is older than the window."""


class RekeyRequired(PQCError):
    """A key reached its usage limit and must be replaced before further use."""


class InvalidIdentity(PQCError):
    """A node id, trust domain or SPIFFE id is malformed."""


class InvalidRecord(PQCError):
    """A public-key record is malformed or inconsistent."""


class KeyExpired(PQCError):
    """A key or record is outside its not_before/not_after validity window."""


class KeyRevoked(PQCError):
    """A key was revoked by the keyvault."""


class KeystoreError(PQCError):
    """The encrypted keystore cannot be read or written."""


class WrongMasterKey(KeystoreError):
    """The keystore entry was written under a different master key."""


class CorruptKeystore(KeystoreError):
    """A keystore file is truncated or was modified."""


class HandshakeError(PQCError):
    """A hybrid handshake message is malformed, unexpected or unauthenticated."""
