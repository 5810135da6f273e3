"""Public-key records signed by the keyvault root (ML-DSA-65).

Canonical encoding (deterministic, so any node can re-verify a record it got
over the mesh): ``pack(magic, kind, fields...)`` with u32 length prefixes,
integers as u64 big-endian, strings UTF-8, booleans one byte. The root signs
the canonical body with the FIPS 204 context ``x0tta6bl4/keyvault/<kind>/v1``.
Kinds: ``pubkey`` (:class:`PublicKeyRecord`), ``revocation`` (:class:`RevocationRecord`),
``rotation`` (:class:`RotationRequestRecord`).

Wire form of a signed record: ``pack(b"x0tta6bl4/signed-record/v1", kind,
body, signer_key_id, signature)``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field

from ._encoding import from_u64, pack, to_bytes, u64, unpack
from .backend import Backend
from .errors import InvalidRecord, InvalidSignature, KeyExpired, KeyRevoked, PQCError
from .identity import KeyPurpose, NodeIdentity, SpiffeId, validate_node_id
from .keys import (
    HYBRID_KEM_PUBLIC_KEY_SIZE,
    HYBRID_SIG_PUBLIC_KEY_SIZE,
    HybridKemPublicKey,
    HybridVerifyKey,
    MLDSA65PrivateKey,
    MLDSA65PublicKey,
)
from .keys import (
    key_id as compute_key_id,
)

__all__ = [
    "KeyvaultRoot",
    "PublicKeyRecord",
    "RecordVerifier",
    "RevocationRecord",
    "RotationRequestRecord",
    "SignedRecord",
    "records_for_identity",
    "verify_record",
    "verify_signed",
]

_MAGIC = b"x0tta6bl4/keyvault-record/v1"
_SIGNED_MAGIC = b"x0tta6bl4/signed-record/v1"
KIND_PUBKEY = "pubkey"
KIND_REVOCATION = "revocation"
KIND_ROTATION = "rotation"
KINDS = (KIND_PUBKEY, KIND_REVOCATION, KIND_ROTATION)
MAX_REQUEST_ID = 128
MAX_OVERLAP_MS = 7 * 86400 * 1000
_PK_SIZES = {KeyPurpose.SIGNING: HYBRID_SIG_PUBLIC_KEY_SIZE, KeyPurpose.KEM: HYBRID_KEM_PUBLIC_KEY_SIZE}


def _context(kind: str) -> bytes:
    return f"x0tta6bl4/keyvault/{kind}/v1".encode()


def _s(b: bytes, what: str) -> str:
    try:
        return b.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidRecord(f"{what} is not valid UTF-8") from None


def _i(b: bytes, what: str) -> int:
    return from_u64(b, what=what, error=InvalidRecord)


@dataclass(frozen=True)
class PublicKeyRecord:
    spiffe_id: str
    purpose: KeyPurpose
    public_key: bytes = field(repr=False)
    not_before: int
    not_after: int
    generation: int
    revoked: bool = False
    key_id: str = ""
    algorithm: str = ""

    def __post_init__(self) -> None:
        try:
            SpiffeId.parse(self.spiffe_id)
            purpose = KeyPurpose(self.purpose)
        except (ValueError, PQCError) as exc:
            raise InvalidRecord(f"public-key record: {exc}") from None
        object.__setattr__(self, "purpose", purpose)
        pk = to_bytes(self.public_key, "public key")
        object.__setattr__(self, "public_key", pk)
        if len(pk) != _PK_SIZES[purpose]:
            raise InvalidRecord(f"{purpose.value} public key must be {_PK_SIZES[purpose]} bytes, got {len(pk)}")
        kid = compute_key_id(pk)
        if self.key_id and self.key_id != kid:
            raise InvalidRecord(f"key id {self.key_id!r} does not match public key (expected {kid})")
        object.__setattr__(self, "key_id", kid)
        if self.algorithm and self.algorithm != purpose.algorithm:
            raise InvalidRecord(f"algorithm {self.algorithm!r} does not match purpose {purpose.value}")
        object.__setattr__(self, "algorithm", purpose.algorithm)
        if not (0 <= self.not_before < self.not_after < 2**63):
            raise InvalidRecord("record validity must satisfy 0 <= not_before < not_after")

    def canonical_bytes(self) -> bytes:
        return pack(
            _MAGIC, KIND_PUBKEY.encode(), self.spiffe_id.encode(), self.purpose.value.encode(),
            self.algorithm.encode(), self.key_id.encode(), self.public_key, u64(self.not_before),
            u64(self.not_after), u64(self.generation), b"\x01" if self.revoked else b"\x00",
        )

    @classmethod
    def from_canonical_bytes(cls, data: bytes) -> PublicKeyRecord:
        f = unpack(to_bytes(data, "record"), 11, what="public-key record", error=InvalidRecord)
        if f[0] != _MAGIC or f[1] != KIND_PUBKEY.encode():
            raise InvalidRecord("public-key record: bad magic or kind")
        if f[10] not in (b"\x00", b"\x01"):
            raise InvalidRecord("public-key record: bad revoked flag")
        rec = cls(
            spiffe_id=_s(f[2], "spiffe id"), purpose=_purpose(f[3]), public_key=f[6], not_before=_i(f[7], "not_before"),
            not_after=_i(f[8], "not_after"), generation=_i(f[9], "generation"), revoked=f[10] == b"\x01",
            key_id=_s(f[5], "key id"), algorithm=_s(f[4], "algorithm"),
        )
        if rec.canonical_bytes() != bytes(data):
            raise InvalidRecord("public-key record is not in canonical form")
        return rec

    def verify_key(self) -> HybridVerifyKey:
        if self.purpose is not KeyPurpose.SIGNING:
            raise InvalidRecord(f"record {self.key_id} holds a KEM key, not a signing key")
        return HybridVerifyKey.from_bytes(self.public_key)

    def kem_key(self) -> HybridKemPublicKey:
        if self.purpose is not KeyPurpose.KEM:
            raise InvalidRecord(f"record {self.key_id} holds a signing key, not a KEM key")
        return HybridKemPublicKey.from_bytes(self.public_key)


def _purpose(b: bytes) -> KeyPurpose:
    try:
        return KeyPurpose(_s(b, "purpose"))
    except ValueError:
        raise InvalidRecord(f"public-key record: unknown purpose {b!r:.40}") from None


@dataclass(frozen=True)
class RevocationRecord:
    spiffe_id: str
    key_id: str
    revoked_at: int
    reason: str = ""

    def __post_init__(self) -> None:
        SpiffeId.parse(self.spiffe_id)
        if len(self.key_id) != 16 or any(c not in "0123456789abcdef" for c in self.key_id):
            raise InvalidRecord(f"revocation: key id {self.key_id!r} is not 16 lowercase hex chars")
        if len(self.reason) > 1024:
            raise InvalidRecord("revocation: reason longer than 1024 chars")

    def canonical_bytes(self) -> bytes:
        return pack(_MAGIC, KIND_REVOCATION.encode(), self.spiffe_id.encode(), self.key_id.encode(),
                    u64(self.revoked_at), self.reason.encode())

    @classmethod
    def from_canonical_bytes(cls, data: bytes) -> RevocationRecord:
        f = unpack(to_bytes(data, "record"), 6, what="revocation record", error=InvalidRecord)
        if f[0] != _MAGIC or f[1] != KIND_REVOCATION.encode():
            raise InvalidRecord("revocation record: bad magic or kind")
        return cls(_s(f[2], "spiffe id"), _s(f[3], "key id"), _i(f[4], "revoked_at"), _s(f[5], "reason"))


@dataclass(frozen=True)
class RotationRequestRecord:
    """Keyvault asks the holder of a node's keys (the node or its mesh host) to rotate them: generate the next
    generation and have it certified (``CertifyKeys``). Published under ``rot.<node_id>`` in the ``keys`` bucket
    while pending; deleted once a generation newer than ``from_generation`` is certified.

    Canonical body: ``pack(b"x0tta6bl4/keyvault-record/v1", b"rotation", node_id, u64(from_generation),
    u64(overlap_ms), request_id, u64(requested_at))`` (``overlap_s`` travels as whole milliseconds,
    ``requested_at`` as unix seconds); signed with the FIPS 204 context ``x0tta6bl4/keyvault/rotation/v1``.
    """

    node_id: str
    from_generation: int            # the generation to replace (the node's current one when requested)
    overlap_s: float                # how long the replaced generation stays accepted after the new one
    request_id: str                 # the Rotate call's request id (one is made up when the caller gave none)
    requested_at: int               # unix seconds

    def __post_init__(self) -> None:
        try:
            validate_node_id(self.node_id)
        except PQCError as exc:
            raise InvalidRecord(f"rotation request: {exc}") from None
        if not (1 <= int(self.from_generation) < 2**32):
            raise InvalidRecord(f"rotation request: from_generation must be >= 1, got {self.from_generation!r}")
        ms = round(float(self.overlap_s) * 1000) if math.isfinite(self.overlap_s) else -1
        if not (0 < ms <= MAX_OVERLAP_MS):
            raise InvalidRecord(f"rotation request: overlap_s must be in (0, {MAX_OVERLAP_MS // 1000}] seconds, "
                                f"got {self.overlap_s!r}")
        object.__setattr__(self, "overlap_s", ms / 1000)
        if not self.request_id or len(self.request_id) > MAX_REQUEST_ID:
            raise InvalidRecord(f"rotation request: request_id must be 1..{MAX_REQUEST_ID} characters")
        if not (0 <= int(self.requested_at) < 2**63):
            raise InvalidRecord("rotation request: requested_at out of range")
        object.__setattr__(self, "from_generation", int(self.from_generation))
        object.__setattr__(self, "requested_at", int(self.requested_at))

    @property
    def overlap_ms(self) -> int:
        return round(self.overlap_s * 1000)

    def canonical_bytes(self) -> bytes:
        return pack(_MAGIC, KIND_ROTATION.encode(), self.node_id.encode(), u64(self.from_generation),
                    u64(self.overlap_ms), self.request_id.encode(), u64(self.requested_at))

    @classmethod
    def from_canonical_bytes(cls, data: bytes) -> RotationRequestRecord:
        f = unpack(to_bytes(data, "record"), 7, what="rotation request record", error=InvalidRecord)
        if f[0] != _MAGIC or f[1] != KIND_ROTATION.encode():
            raise InvalidRecord("rotation request record: bad magic or kind")
        rec = cls(_s(f[2], "node id"), _i(f[3], "from_generation"), _i(f[4], "overlap_ms") / 1000,
                  _s(f[5], "request id"), _i(f[6], "requested_at"))
        if rec.canonical_bytes() != bytes(data):
            raise InvalidRecord("rotation request record is not in canonical form")
        return rec


Record = PublicKeyRecord | RevocationRecord | RotationRequestRecord
_KIND_OF = {PublicKeyRecord: KIND_PUBKEY, RevocationRecord: KIND_REVOCATION, RotationRequestRecord: KIND_ROTATION}


@dataclass(frozen=True)
class SignedRecord:
    kind: str
    body: bytes = field(repr=False)
    signer_key_id: str
    signature: bytes = field(repr=False)

    def to_bytes(self) -> bytes:
        return pack(_SIGNED_MAGIC, self.kind.encode(), self.body, self.signer_key_id.encode(), self.signature)

    @classmethod
    def from_bytes(cls, data: bytes) -> SignedRecord:
        f = unpack(to_bytes(data, "signed record"), 5, what="signed record", error=InvalidRecord)
        if f[0] != _SIGNED_MAGIC:
            raise InvalidRecord("signed record: bad magic/version")
        kind = _s(f[1], "kind")
        if kind not in KINDS:
            raise InvalidRecord(f"signed record: unknown kind {kind!r}")
        return cls(kind, f[2], _s(f[3], "signer key id"), f[4])

    def record(self) -> Record:
        """Parse the body *without* verifying it (use :func:`verify_record`)."""
        if self.kind == KIND_PUBKEY:
            return PublicKeyRecord.from_canonical_bytes(self.body)
        if self.kind == KIND_ROTATION:
            return RotationRequestRecord.from_canonical_bytes(self.body)
        return RevocationRecord.from_canonical_bytes(self.body)


class KeyvaultRoot:
    """The keyvault root signing key (ML-DSA-65)."""

    __slots__ = ("_key",)

    def __init__(self, key: MLDSA65PrivateKey) -> None:
        self._key = key

    @classmethod
    def generate(cls, *, backend: Backend | None = None) -> KeyvaultRoot:
        return cls(MLDSA65PrivateKey.generate(backend=backend))

    @property
    def private_key(self) -> MLDSA65PrivateKey:
        return self._key

    def public_key(self) -> MLDSA65PublicKey:
        return self._key.public_key()

    @property
    def key_id(self) -> str:
        return self._key.public_key().key_id

    def sign(self, record: Record) -> SignedRecord:
        kind = _KIND_OF[type(record)]
        body = record.canonical_bytes()
        return SignedRecord(kind, body, self.key_id, self._key.sign(body, _context(kind)))

    def revoke(self, record: PublicKeyRecord, *, at: int, reason: str = "") -> SignedRecord:
        return self.sign(RevocationRecord(record.spiffe_id, record.key_id, int(at), reason))

    def __repr__(self) -> str:
        return f"<KeyvaultRoot ML-DSA-65 key_id={self.key_id}>"


def _verify_signed(signed: SignedRecord | bytes, root: MLDSA65PublicKey) -> tuple[SignedRecord, Record]:
    if not isinstance(signed, SignedRecord):
        signed = SignedRecord.from_bytes(signed)
    if signed.signer_key_id != root.key_id:
        raise InvalidSignature(
            f"record signed by key {signed.signer_key_id!r}, not the keyvault root {root.key_id}"
        )
    root.verify(signed.signature, signed.body, _context(signed.kind))
    return signed, signed.record()


def verify_signed(signed: SignedRecord | bytes, root: MLDSA65PublicKey) -> Record:
    """Verify the root signature only; return the record (public-key, revocation or rotation request)
    without checking its revoked flag or validity (use :func:`verify_record` for that)."""
    return _verify_signed(signed, root)[1]


def verify_record(
    signed: SignedRecord | bytes,
    root: MLDSA65PublicKey,
    *,
    now: float | None = None,
    revoked_key_ids: Iterable[str] = (),
) -> PublicKeyRecord:
    """Verify a signed public-key record; return it or raise a :class:`PQCError`.

    Raises InvalidSignature (bad/foreign signature), InvalidRecord (malformed or
    not a public-key record), KeyRevoked (flag set or key id in
    ``revoked_key_ids``), KeyExpired (``now`` outside validity).
    """
    _, rec = _verify_signed(signed, root)
    if not isinstance(rec, PublicKeyRecord):
        raise InvalidRecord(f"expected a public-key record, got a {type(rec).__name__}")
    if rec.revoked or rec.key_id in set(revoked_key_ids):
        raise KeyRevoked(f"key {rec.key_id} of {rec.spiffe_id} is revoked")
    if now is not None and not (rec.not_before <= now < rec.not_after):
        raise KeyExpired(f"key {rec.key_id} valid in [{rec.not_before}, {rec.not_after}), now {int(now)}")
    return rec


class RecordVerifier:
    """Verifies records against a root key and remembers verified revocations."""

    def __init__(self, root: MLDSA65PublicKey) -> None:
        self.root = root
        self._revoked: dict[str, RevocationRecord] = {}

    def add_revocation(self, signed: SignedRecord | bytes) -> RevocationRecord:
        _, rec = _verify_signed(signed, self.root)
        if not isinstance(rec, RevocationRecord):
            raise InvalidRecord("expected a revocation record")
        self._revoked[rec.key_id] = rec
        return rec

    def is_revoked(self, key_id: str) -> bool:
        return key_id in self._revoked

    def verify(self, signed: SignedRecord | bytes, *, now: float | None = None) -> PublicKeyRecord:
        return verify_record(signed, self.root, now=now, revoked_key_ids=self._revoked)


def records_for_identity(identity: NodeIdentity) -> list[PublicKeyRecord]:
    """Unsigned public-key records (signing, KEM) describing ``identity``."""
    out = []
    for k in (identity.signing, identity.kem):
        out.append(PublicKeyRecord(
            spiffe_id=identity.uri, purpose=k.purpose, public_key=k.public_key.public_bytes(),
            not_before=k.not_before, not_after=k.not_after, generation=k.generation,
        ))
    return out
