"""Safe key objects for ML-KEM-768, ML-DSA-65 and their classical hybrids.

Design rules (pyca/cryptography style over the hazardous :mod:`.backend`):

* Public keys, ciphertexts and signatures use the raw FIPS 203/204 (and RFC
  7748/8032) encodings; lengths are checked *before* any backend call and a
  wrong length raises :class:`~.errors.InvalidKey` / :class:`~.errors.DecryptionError`
  / :class:`~.errors.InvalidSignature` naming the expected size.
* Private keys never appear in ``repr`` and are only exported through the
  explicitly named :meth:`private_bytes_unsafe`.
* Hybrid encodings: KEM public key ``mlkem_ek(1184) || x25519(32)``; KEM
  ciphertext ``mlkem_ct(1088) || x25519_ephemeral(32)`` (X25519MLKEM768 order);
  signature public key ``ed25519(32) || mldsa(1952)``; signature
  ``ed25519_sig(64) || mldsa_sig(3309)``. Both hybrid components sign the same
  domain-separated message, and both must verify.
"""

from __future__ import annotations

import hashlib
import hmac
from typing import Any

from cryptography.exceptions import InvalidSignature as _CInvalidSignature
from cryptography.hazmat.primitives.asymmetric import ed25519, x25519

from . import backend as _b
from ._encoding import to_bytes
from .backend import Backend, get_backend
from .errors import DecryptionError, InvalidKey, InvalidSignature

__all__ = [
    "HYBRID_KEM_ALGORITHM",
    "HYBRID_KEM_CIPHERTEXT_SIZE",
    "HYBRID_KEM_PUBLIC_KEY_SIZE",
    "HYBRID_SIGNATURE_SIZE",
    "HYBRID_SIG_ALGORITHM",
    "HYBRID_SIG_PUBLIC_KEY_SIZE",
    "HybridKemPrivateKey",
    "HybridKemPublicKey",
    "HybridSigningKey",
    "HybridVerifyKey",
    "MLDSA65PrivateKey",
    "MLDSA65PublicKey",
    "MLKEM768PrivateKey",
    "MLKEM768PublicKey",
    "key_id",
]

HYBRID_KEM_ALGORITHM = "X25519+ML-KEM-768"
HYBRID_SIG_ALGORITHM = "Ed25519+ML-DSA-65"
X25519_SIZE = 32
ED25519_PUBLIC_SIZE = 32
ED25519_SIGNATURE_SIZE = 64
HYBRID_KEM_PUBLIC_KEY_SIZE = _b.MLKEM768_PUBLIC_KEY_SIZE + X25519_SIZE
HYBRID_KEM_CIPHERTEXT_SIZE = _b.MLKEM768_CIPHERTEXT_SIZE + X25519_SIZE
HYBRID_SIG_PUBLIC_KEY_SIZE = ED25519_PUBLIC_SIZE + _b.MLDSA65_PUBLIC_KEY_SIZE
HYBRID_SIGNATURE_SIZE = ED25519_SIGNATURE_SIZE + _b.MLDSA65_SIGNATURE_SIZE
_HYBRID_SIG_LABEL = b"x0tta6bl4/hybrid-sig/Ed25519+ML-DSA-65/v1"


def key_id(public_bytes: bytes) -> str:
    """Key id: first 16 hex characters of SHA-256 over the public key encoding."""
    return hashlib.sha256(public_bytes).hexdigest()[:16]


def _check_len(data: bytes, want: int, what: str, error: type = InvalidKey) -> None:
    if len(data) != want:
        raise error(f"{what} must be {want} bytes, got {len(data)}")


def _check_context(context: bytes) -> bytes:
    context = to_bytes(context, "context")
    if len(context) > _b.MAX_CONTEXT:
        raise ValueError(f"context must be at most {_b.MAX_CONTEXT} bytes, got {len(context)}")
    return context


class _Public:
    """Common behaviour of public keys: bytes identity, equality, key id."""

    __slots__ = ("_backend", "_handle", "_kid", "_raw")
    algorithm: str = ""
    _raw: bytes
    _handle: Any
    _backend: Backend
    _kid: str | None

    def public_bytes(self) -> bytes:
        """Raw standard encoding of the public key."""
        return self._raw

    @property
    def key_id(self) -> str:
        kid = self._kid
        if kid is None:
            kid = self._kid = key_id(self._raw)
        return kid

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and hmac.compare_digest(self._raw, other._raw)

    def __hash__(self) -> int:
        return hash((type(self).__name__, self._raw))

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.algorithm} key_id={self.key_id}>"


class _Private:
    __slots__ = ()
    algorithm: str = ""

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.algorithm} key_id={self.public_key().key_id} (private)>"  # type: ignore[attr-defined]

    def __reduce__(self) -> Any:  # refuse accidental pickling of secrets
        raise TypeError(f"{type(self).__name__} cannot be pickled; use private_bytes_unsafe()")


# ---------------------------------------------------------------------------
# ML-KEM-768
# ---------------------------------------------------------------------------


class MLKEM768PublicKey(_Public):
    algorithm = "ML-KEM-768"
    SIZE = _b.MLKEM768_PUBLIC_KEY_SIZE

    def __init__(self, raw: bytes, handle: Any, backend: Backend) -> None:
        self._raw, self._handle, self._backend, self._kid = raw, handle, backend, None

    @classmethod
    def from_bytes(cls, data: bytes, *, backend: Backend | None = None) -> MLKEM768PublicKey:
        data = to_bytes(data, "ML-KEM-768 public key")
        _check_len(data, cls.SIZE, "ML-KEM-768 public key (encapsulation key)")
        be = backend or get_backend()
        return cls(data, be.mlkem768_load_public(data), be)

    def encapsulate(self) -> tuple[bytes, bytes]:
        """Return ``(shared_secret[32], ciphertext[1088])``."""
        return self._backend.mlkem768_encapsulate(self._handle)


class MLKEM768PrivateKey(_Private):
    __slots__ = ("_backend", "_handle", "_pub")
    algorithm = "ML-KEM-768"

    def __init__(self, handle: Any, backend: Backend) -> None:
        self._handle, self._backend = handle, backend
        self._pub: MLKEM768PublicKey | None = None  # built lazily: keygen should not pay for public-key parsing

    @classmethod
    def generate(cls, *, backend: Backend | None = None) -> MLKEM768PrivateKey:
        be = backend or get_backend()
        return cls(be.mlkem768_generate(), be)

    @classmethod
    def from_private_bytes(cls, data: bytes, *, backend: Backend | None = None) -> MLKEM768PrivateKey:
        """Load a private key (64-byte FIPS 203 seed ``d || z`` for the default backend)."""
        data = to_bytes(data, "ML-KEM-768 private key")
        be = backend or get_backend()
        return cls(be.mlkem768_load_private(data), be)

    def public_key(self) -> MLKEM768PublicKey:
        pub = self._pub
        if pub is None:
            raw = self._backend.mlkem768_public_bytes(self._handle)
            pub = self._pub = MLKEM768PublicKey(raw, self._backend.mlkem768_load_public(raw), self._backend)
        return pub

    def decapsulate(self, ciphertext: bytes) -> bytes:
        ciphertext = to_bytes(ciphertext, "ML-KEM-768 ciphertext")
        _check_len(ciphertext, _b.MLKEM768_CIPHERTEXT_SIZE, "ML-KEM-768 ciphertext", DecryptionError)
        return self._backend.mlkem768_decapsulate(self._handle, ciphertext)

    def private_bytes_unsafe(self) -> bytes:
        """Export the raw private key (seed form). Handle as a secret."""
        return self._backend.mlkem768_private_bytes(self._handle)


# ---------------------------------------------------------------------------
# ML-DSA-65
# ---------------------------------------------------------------------------


class MLDSA65PublicKey(_Public):
    algorithm = "ML-DSA-65"
    SIZE = _b.MLDSA65_PUBLIC_KEY_SIZE

    def __init__(self, raw: bytes, handle: Any, backend: Backend) -> None:
        self._raw, self._handle, self._backend, self._kid = raw, handle, backend, None

    @classmethod
    def from_bytes(cls, data: bytes, *, backend: Backend | None = None) -> MLDSA65PublicKey:
        data = to_bytes(data, "ML-DSA-65 public key")
        _check_len(data, cls.SIZE, "ML-DSA-65 public key")
        be = backend or get_backend()
        return cls(data, be.mldsa65_load_public(data), be)

    def verify(self, signature: bytes, data: bytes, context: bytes = b"") -> None:
        """Verify a FIPS 204 (pure, ``ctx``-bound) signature; raise InvalidSignature."""
        signature = to_bytes(signature, "ML-DSA-65 signature")
        _check_len(signature, _b.MLDSA65_SIGNATURE_SIZE, "ML-DSA-65 signature", InvalidSignature)
        if not self._backend.mldsa65_verify(
            self._handle, signature, to_bytes(data, "data"), _check_context(context)
        ):
            raise InvalidSignature(f"ML-DSA-65 signature does not verify under key {self.key_id}")


class MLDSA65PrivateKey(_Private):
    __slots__ = ("_backend", "_handle", "_pub")
    algorithm = "ML-DSA-65"

    def __init__(self, handle: Any, backend: Backend) -> None:
        self._handle, self._backend = handle, backend
        self._pub: MLDSA65PublicKey | None = None  # built lazily: keygen should not pay for public-key parsing

    @classmethod
    def generate(cls, *, backend: Backend | None = None) -> MLDSA65PrivateKey:
        be = backend or get_backend()
        return cls(be.mldsa65_generate(), be)

    @classmethod
    def from_private_bytes(cls, data: bytes, *, backend: Backend | None = None) -> MLDSA65PrivateKey:
        """Load a private key (32-byte FIPS 204 seed ``xi`` for the default backend)."""
        data = to_bytes(data, "ML-DSA-65 private key")
        be = backend or get_backend()
        return cls(be.mldsa65_load_private(data), be)

    def public_key(self) -> MLDSA65PublicKey:
        pub = self._pub
        if pub is None:
            raw = self._backend.mldsa65_public_bytes(self._handle)
            pub = self._pub = MLDSA65PublicKey(raw, self._backend.mldsa65_load_public(raw), self._backend)
        return pub

    def sign(self, data: bytes, context: bytes = b"") -> bytes:
        """FIPS 204 ML-DSA.Sign (hedged) with context string ``context`` (<= 255 bytes)."""
        return self._backend.mldsa65_sign(self._handle, to_bytes(data, "data"), _check_context(context))

    def private_bytes_unsafe(self) -> bytes:
        """Export the raw private key (seed form). Handle as a secret."""
        return self._backend.mldsa65_private_bytes(self._handle)


# ---------------------------------------------------------------------------
# Hybrid KEM: X25519 + ML-KEM-768
# ---------------------------------------------------------------------------


class HybridKemPublicKey(_Public):
    algorithm = HYBRID_KEM_ALGORITHM
    SIZE = HYBRID_KEM_PUBLIC_KEY_SIZE

    def __init__(self, mlkem: MLKEM768PublicKey, x: x25519.X25519PublicKey) -> None:
        self._handle = (mlkem, x)
        self._backend = mlkem._backend
        self._raw = mlkem.public_bytes() + x.public_bytes_raw()
        self._kid = None

    @classmethod
    def from_bytes(cls, data: bytes, *, backend: Backend | None = None) -> HybridKemPublicKey:
        data = to_bytes(data, "hybrid KEM public key")
        _check_len(data, cls.SIZE, f"{HYBRID_KEM_ALGORITHM} public key")
        n = _b.MLKEM768_PUBLIC_KEY_SIZE
        mlkem = MLKEM768PublicKey.from_bytes(data[:n], backend=backend)
        return cls(mlkem, x25519.X25519PublicKey.from_public_bytes(data[n:]))

    @property
    def mlkem(self) -> MLKEM768PublicKey:
        return self._handle[0]

    def encapsulate(self) -> tuple[bytes, bytes]:
        """Return ``(combined_secret[64], ciphertext[1120])``.

        ``combined_secret = mlkem_ss || x25519_ss`` (X25519MLKEM768 order). It is
        *input keying material*: derive keys from it with
        :func:`x0tta6bl4.pqc.kdf.derive_session_keys`, never use it directly.
        """
        mlkem_pub, x_pub = self._handle
        ss_pq, ct_pq = mlkem_pub.encapsulate()
        eph = x25519.X25519PrivateKey.generate()
        ss_x = eph.exchange(x_pub)
        return ss_pq + ss_x, ct_pq + eph.public_key().public_bytes_raw()


class HybridKemPrivateKey(_Private):
    __slots__ = ("_mlkem", "_pub", "_x")
    algorithm = HYBRID_KEM_ALGORITHM
    PRIVATE_SEED_SIZE = _b.MLKEM768_SEED_SIZE + X25519_SIZE

    def __init__(self, mlkem: MLKEM768PrivateKey, x: x25519.X25519PrivateKey) -> None:
        self._mlkem, self._x = mlkem, x
        self._pub = HybridKemPublicKey(mlkem.public_key(), x.public_key())

    @classmethod
    def generate(cls, *, backend: Backend | None = None) -> HybridKemPrivateKey:
        return cls(MLKEM768PrivateKey.generate(backend=backend), x25519.X25519PrivateKey.generate())

    @classmethod
    def from_private_bytes(cls, data: bytes, *, backend: Backend | None = None) -> HybridKemPrivateKey:
        """Inverse of :meth:`private_bytes_unsafe` (``mlkem_priv || x25519_priv[32]``)."""
        data = to_bytes(data, "hybrid KEM private key")
        if len(data) <= X25519_SIZE:
            raise InvalidKey(f"{HYBRID_KEM_ALGORITHM} private key is too short ({len(data)} bytes)")
        return cls(
            MLKEM768PrivateKey.from_private_bytes(data[:-X25519_SIZE], backend=backend),
            x25519.X25519PrivateKey.from_private_bytes(data[-X25519_SIZE:]),
        )

    def public_key(self) -> HybridKemPublicKey:
        return self._pub

    def decapsulate(self, ciphertext: bytes) -> bytes:
        """Return the 64-byte combined secret for a 1120-byte hybrid ciphertext."""
        ciphertext = to_bytes(ciphertext, "hybrid KEM ciphertext")
        _check_len(ciphertext, HYBRID_KEM_CIPHERTEXT_SIZE, f"{HYBRID_KEM_ALGORITHM} ciphertext", DecryptionError)
        n = _b.MLKEM768_CIPHERTEXT_SIZE
        ss_pq = self._mlkem.decapsulate(ciphertext[:n])
        try:
            ss_x = self._x.exchange(x25519.X25519PublicKey.from_public_bytes(ciphertext[n:]))
        except ValueError:  # all-zero shared secret (small-order point)
            raise DecryptionError("hybrid KEM ciphertext has an invalid X25519 share") from None
        return ss_pq + ss_x

    def private_bytes_unsafe(self) -> bytes:
        from cryptography.hazmat.primitives import serialization as s

        xb = self._x.private_bytes(s.Encoding.Raw, s.PrivateFormat.Raw, s.NoEncryption())
        return self._mlkem.private_bytes_unsafe() + xb


# ---------------------------------------------------------------------------
# Hybrid signatures: Ed25519 + ML-DSA-65
# ---------------------------------------------------------------------------


def _hybrid_message(data: bytes, context: bytes) -> bytes:
    # Domain-separated M' so neither component signature is valid on its own
    # for the plain message (no stripping into a standalone signature).
    return _HYBRID_SIG_LABEL + bytes([len(context)]) + context + data


class HybridVerifyKey(_Public):
    algorithm = HYBRID_SIG_ALGORITHM
    SIZE = HYBRID_SIG_PUBLIC_KEY_SIZE

    def __init__(self, ed: ed25519.Ed25519PublicKey, mldsa: MLDSA65PublicKey) -> None:
        self._handle = (ed, mldsa)
        self._backend = mldsa._backend
        self._raw = ed.public_bytes_raw() + mldsa.public_bytes()
        self._kid = None

    @classmethod
    def from_bytes(cls, data: bytes, *, backend: Backend | None = None) -> HybridVerifyKey:
        data = to_bytes(data, "hybrid verify key")
        _check_len(data, cls.SIZE, f"{HYBRID_SIG_ALGORITHM} public key")
        try:
            ed = ed25519.Ed25519PublicKey.from_public_bytes(data[:ED25519_PUBLIC_SIZE])
        except ValueError as exc:
            raise InvalidKey(f"Ed25519 public key rejected: {exc}") from None
        return cls(ed, MLDSA65PublicKey.from_bytes(data[ED25519_PUBLIC_SIZE:], backend=backend))

    @property
    def mldsa(self) -> MLDSA65PublicKey:
        return self._handle[1]

    def verify(self, signature: bytes, data: bytes, context: bytes = b"") -> None:
        """Raise InvalidSignature unless *both* Ed25519 and ML-DSA-65 verify."""
        signature = to_bytes(signature, "hybrid signature")
        _check_len(signature, HYBRID_SIGNATURE_SIZE, f"{HYBRID_SIG_ALGORITHM} signature", InvalidSignature)
        context = _check_context(context)
        msg = _hybrid_message(to_bytes(data, "data"), context)
        ed, mldsa = self._handle
        ok_ed = True
        try:
            ed.verify(signature[:ED25519_SIGNATURE_SIZE], msg)
        except _CInvalidSignature:
            ok_ed = False
        ok_pq = self._backend.mldsa65_verify(mldsa._handle, signature[ED25519_SIGNATURE_SIZE:], msg, context)
        if not (ok_ed and ok_pq):
            bad = [n for n, ok in (("Ed25519", ok_ed), ("ML-DSA-65", ok_pq)) if not ok]
            raise InvalidSignature(
                f"hybrid signature does not verify under key {self.key_id}: {' and '.join(bad)} failed"
            )


class HybridSigningKey(_Private):
    __slots__ = ("_ed", "_mldsa", "_pub")
    algorithm = HYBRID_SIG_ALGORITHM

    def __init__(self, ed: ed25519.Ed25519PrivateKey, mldsa: MLDSA65PrivateKey) -> None:
        self._ed, self._mldsa = ed, mldsa
        self._pub = HybridVerifyKey(ed.public_key(), mldsa.public_key())

    @classmethod
    def generate(cls, *, backend: Backend | None = None) -> HybridSigningKey:
        return cls(ed25519.Ed25519PrivateKey.generate(), MLDSA65PrivateKey.generate(backend=backend))

    @classmethod
    def from_private_bytes(cls, data: bytes, *, backend: Backend | None = None) -> HybridSigningKey:
        """Inverse of :meth:`private_bytes_unsafe` (``ed25519_priv[32] || mldsa_priv``)."""
        data = to_bytes(data, "hybrid signing key")
        if len(data) <= 32:
            raise InvalidKey(f"{HYBRID_SIG_ALGORITHM} private key is too short ({len(data)} bytes)")
        return cls(
            ed25519.Ed25519PrivateKey.from_private_bytes(data[:32]),
            MLDSA65PrivateKey.from_private_bytes(data[32:], backend=backend),
        )

    def public_key(self) -> HybridVerifyKey:
        return self._pub

    @property
    def mldsa(self) -> MLDSA65PrivateKey:
        """The ML-DSA-65 half, for pure FIPS 204 signatures (e.g. keyvault attestation)."""
        return self._mldsa

    def sign(self, data: bytes, context: bytes = b"") -> bytes:
        context = _check_context(context)
        msg = _hybrid_message(to_bytes(data, "data"), context)
        return self._ed.sign(msg) + self._mldsa.sign(msg, context)

    def private_bytes_unsafe(self) -> bytes:
        from cryptography.hazmat.primitives import serialization as s

        edb = self._ed.private_bytes(s.Encoding.Raw, s.PrivateFormat.Raw, s.NoEncryption())
        return edb + self._mldsa.private_bytes_unsafe()
