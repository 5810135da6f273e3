"""Node identities: SPIFFE-style ids plus hybrid signing and KEM keys.

``spiffe://<trust-domain>/node/<node-id>``; the node id must match
``^[a-z0-9][a-z0-9-]{0,62}$`` and the trust domain is a lowercase DNS-like
name of at most 255 characters. An identity owns

* a signing key: Ed25519 + ML-DSA-65 (:class:`~.keys.HybridSigningKey`), and
* a KEM key: X25519 + ML-KEM-768 (:class:`~.keys.HybridKemPrivateKey`),

each with key id, algorithm and ``not_before``/``not_after`` (UNIX seconds).
Time is always passed in by the caller (no hidden clock).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import Enum
from typing import Any, Generic, TypeVar

from ._encoding import from_u64, pack, to_bytes, u64, unpack
from .backend import Backend
from .errors import InvalidIdentity, InvalidKey, KeyExpired
from .keys import HYBRID_KEM_ALGORITHM, HYBRID_SIG_ALGORITHM, HybridKemPrivateKey, HybridSigningKey

K = TypeVar("K", HybridSigningKey, HybridKemPrivateKey)

__all__ = [
    "DEFAULT_VALIDITY_SECONDS",
    "NODE_ID_PATTERN",
    "TRUST_DOMAIN_PATTERN",
    "IdentityKey",
    "KeyPurpose",
    "NodeIdentity",
    "SpiffeId",
    "validate_node_id",
    "validate_trust_domain",
]

NODE_ID_PATTERN = re.compile(r"[a-z0-9][a-z0-9-]{0,62}")
TRUST_DOMAIN_PATTERN = re.compile(r"[a-z0-9](?:[a-z0-9._-]{0,253}[a-z0-9])?")
DEFAULT_VALIDITY_SECONDS = 90 * 24 * 3600
_EXPORT_MAGIC = b"x0tta6bl4/node-identity/private/v1"


def validate_node_id(node_id: str) -> str:
    if not isinstance(node_id, str) or len(node_id) > 63 or not NODE_ID_PATTERN.fullmatch(node_id):
        raise InvalidIdentity(
            f"invalid node id {node_id!r:.80}: must match ^[a-z0-9][a-z0-9-]{{0,62}}$ (lowercase, <= 63 chars)"
        )
    return node_id


def validate_trust_domain(domain: str) -> str:
    if not isinstance(domain, str) or len(domain) > 255 or not TRUST_DOMAIN_PATTERN.fullmatch(domain):
        raise InvalidIdentity(
            f"invalid trust domain {domain!r:.80}: lowercase letters, digits, '.', '-', '_' (<= 255 chars)"
        )
    return domain


class KeyPurpose(str, Enum):
    SIGNING = "signing"
    KEM = "kem"

    @property
    def algorithm(self) -> str:
        return HYBRID_SIG_ALGORITHM if self is KeyPurpose.SIGNING else HYBRID_KEM_ALGORITHM


@dataclass(frozen=True, order=True)
class SpiffeId:
    trust_domain: str
    node_id: str

    def __post_init__(self) -> None:
        validate_trust_domain(self.trust_domain)
        validate_node_id(self.node_id)

    @classmethod
    def parse(cls, uri: str) -> SpiffeId:
        if not isinstance(uri, str) or len(uri) > 400 or not uri.startswith("spiffe://"):
            raise InvalidIdentity(f"invalid SPIFFE id {uri!r:.80}: must start with spiffe://")
        parts = uri[len("spiffe://") :].split("/")
        if len(parts) != 3 or parts[1] != "node":
            raise InvalidIdentity(f"invalid SPIFFE id {uri!r:.80}: expected spiffe://<trust-domain>/node/<node-id>")
        return cls(parts[0], parts[2])

    def __str__(self) -> str:
        return f"spiffe://{self.trust_domain}/node/{self.node_id}"


class IdentityKey(Generic[K]):
    """A private key plus its metadata. ``repr`` shows metadata only."""

    __slots__ = ("generation", "not_after", "not_before", "private", "purpose")
    private: K

    def __init__(
        self,
        purpose: KeyPurpose,
        private: K,
        not_before: int,
        not_after: int,
        generation: int,
    ) -> None:
        want = HybridSigningKey if purpose is KeyPurpose.SIGNING else HybridKemPrivateKey
        if not isinstance(private, want):
            raise InvalidKey(f"{purpose.value} key must be a {want.__name__}")
        if not_after <= not_before:
            raise ValueError("not_after must be later than not_before")
        self.purpose, self.private = purpose, private
        self.not_before, self.not_after, self.generation = int(not_before), int(not_after), int(generation)

    @property
    def algorithm(self) -> str:
        return self.purpose.algorithm

    @property
    def public_key(self):  # HybridVerifyKey | HybridKemPublicKey
        return self.private.public_key()

    @property
    def key_id(self) -> str:
        return self.private.public_key().key_id

    def is_valid_at(self, now: float) -> bool:
        return self.not_before <= now < self.not_after

    def check_valid(self, now: float) -> None:
        if not self.is_valid_at(now):
            raise KeyExpired(
                f"{self.purpose.value} key {self.key_id} is valid only in "
                f"[{self.not_before}, {self.not_after}), now {int(now)}"
            )

    def __repr__(self) -> str:
        return (
            f"<IdentityKey {self.purpose.value} {self.algorithm} key_id={self.key_id} "
            f"gen={self.generation} valid=[{self.not_before},{self.not_after})>"
        )


class NodeIdentity:
    """A node's SPIFFE id with one generation of signing and KEM keys."""

    __slots__ = ("kem", "signing", "spiffe_id")

    def __init__(self, spiffe_id: SpiffeId, signing: IdentityKey[HybridSigningKey],
                 kem: IdentityKey[HybridKemPrivateKey]) -> None:
        if signing.purpose is not KeyPurpose.SIGNING or kem.purpose is not KeyPurpose.KEM:
            raise InvalidKey("identity needs one signing key and one KEM key")
        self.spiffe_id, self.signing, self.kem = spiffe_id, signing, kem

    @classmethod
    def generate(
        cls,
        trust_domain: str,
        node_id: str,
        *,
        now: float,
        validity_seconds: int = DEFAULT_VALIDITY_SECONDS,
        generation: int = 1,
        backend: Backend | None = None,
    ) -> NodeIdentity:
        sid = SpiffeId(trust_domain, node_id)
        nb, na = int(now), int(now) + int(validity_seconds)
        return cls(
            sid,
            IdentityKey(KeyPurpose.SIGNING, HybridSigningKey.generate(backend=backend), nb, na, generation),
            IdentityKey(KeyPurpose.KEM, HybridKemPrivateKey.generate(backend=backend), nb, na, generation),
        )

    @property
    def generation(self) -> int:
        return self.signing.generation

    @property
    def uri(self) -> str:
        return str(self.spiffe_id)

    def sign(self, data: bytes, context: bytes = b"", *, now: float | None = None) -> bytes:
        """Hybrid-sign ``data``; when ``now`` is given, refuse outside validity."""
        if now is not None:
            self.signing.check_valid(now)
        return self.signing.private.sign(data, context)

    def __repr__(self) -> str:
        return f"<NodeIdentity {self.uri} gen={self.generation} sig={self.signing.key_id} kem={self.kem.key_id}>"

    def __reduce__(self):
        raise TypeError("NodeIdentity cannot be pickled; use export_private_unsafe()")

    # -- explicit private export (used by the keystore) --------------------
    def export_private_unsafe(self) -> bytes:
        """Serialize *including private keys*. Only store it encrypted."""
        fields = [_EXPORT_MAGIC, self.spiffe_id.trust_domain.encode(), self.spiffe_id.node_id.encode()]
        for k in (self.signing, self.kem):
            fields += [k.purpose.value.encode(), k.private.private_bytes_unsafe(),
                       u64(k.not_before), u64(k.not_after), u64(k.generation)]
        return pack(*fields)

    @classmethod
    def import_private(cls, data: bytes, *, backend: Backend | None = None) -> NodeIdentity:
        f = unpack(to_bytes(data, "identity export"), 13, what="identity export", error=InvalidKey)
        if f[0] != _EXPORT_MAGIC:
            raise InvalidKey("identity export: bad magic/version")
        try:
            sid = SpiffeId(f[1].decode(), f[2].decode())
        except UnicodeDecodeError:
            raise InvalidKey("identity export: SPIFFE id is not UTF-8") from None
        keys: list[IdentityKey[Any]] = []
        slots: tuple[tuple[KeyPurpose, type[HybridSigningKey] | type[HybridKemPrivateKey]], ...] = (
            (KeyPurpose.SIGNING, HybridSigningKey), (KeyPurpose.KEM, HybridKemPrivateKey))
        for i, (purpose, ctor) in enumerate(slots):
            base = 3 + 5 * i
            if f[base] != purpose.value.encode():
                raise InvalidKey(f"identity export: expected {purpose.value} key in slot {i}")
            priv = ctor.from_private_bytes(f[base + 1], backend=backend)
            nb, na, gen = (from_u64(f[base + j], what="identity export", error=InvalidKey) for j in (2, 3, 4))
            keys.append(IdentityKey(purpose, priv, nb, na, gen))
        return cls(sid, keys[0], keys[1])
