"""The trust bundle: which signing keys speak for which service, pinned by configuration (no I/O but
:meth:`TrustBundle.load`).

A leaked bus credential must not be enough to forge an approval, a vote or an audit entry, so everything
that changes the mesh or records history is signed (ML-DSA-65, FIPS 204) by a key the bus never carries
a secret of: each service has a signing key (its seed file, readable by that service alone) and every
process is given the bundle of their *public* keys with the roles each may play. The bundle is written
once by ``meshctl secrets init`` (or by the operator's own tooling) and mounted read-only everywhere.

Roles:

- ``approve``: may sign the approval of an action (planner: auto-approved plans; governance: passed
  proposals). The executor carries out nothing else.
- ``audit``: signs its own audit chain (every service).
- ``govlog``: signs the governance event log (governance).

Every signature carries a FIPS 204 context naming what it signs (:data:`CONTEXTS`), so a signature made for
one purpose never verifies for another.
"""
from __future__ import annotations

import hashlib
import json
import pathlib
from collections.abc import Iterable
from dataclasses import dataclass, field

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric import mldsa

ROLE_APPROVE, ROLE_AUDIT, ROLE_GOVLOG = "approve", "audit", "govlog"
ROLES: dict[str, tuple[str, ...]] = {
    "planner": (ROLE_APPROVE, ROLE_AUDIT),
    "governance": (ROLE_APPROVE, ROLE_AUDIT, ROLE_GOVLOG),
    "executor": (ROLE_AUDIT,),
    "monitor": (ROLE_AUDIT,),
    "analyzer": (ROLE_AUDIT,),
    "keyvault": (ROLE_AUDIT,),
}
"""The roles each service's key is trusted for in a bundle made by ``meshctl secrets init``."""

CONTEXTS = {
    ROLE_APPROVE: b"x0tta6bl4/approval/v1",
    ROLE_AUDIT: b"",                       # audit events sign their SHA-256 hash (see audit/chain.py)
    ROLE_GOVLOG: b"x0tta6bl4/gov-event/v1",
}
BUNDLE_VERSION = 1


class TrustError(Exception):
    """A signature, key or bundle cannot be trusted. str() names why."""


def key_id_of(public_key: bytes) -> str:
    """The key id of an ML-DSA-65 public key: the first 16 hex digits of its SHA-256 (as audit chains)."""
    return hashlib.sha256(public_key).hexdigest()[:16]


@dataclass(frozen=True)
class TrustedKey:
    owner: str                          # the service (or identity) the key speaks for
    public_key: bytes = field(repr=False)
    roles: tuple[str, ...]

    @property
    def key_id(self) -> str:
        return key_id_of(self.public_key)

    def verify(self, role: str, data: bytes, signature: bytes) -> None:
        """Raise :class:`TrustError` unless ``signature`` is this key's over ``data`` for ``role``."""
        if role not in self.roles:
            raise TrustError(f"key {self.key_id} of {self.owner} is not trusted to {role}")
        try:
            mldsa.MLDSA65PublicKey.from_public_bytes(self.public_key).verify(signature, data, CONTEXTS[role] or None)
        except (InvalidSignature, ValueError):
            raise TrustError(f"bad {role} signature for key {self.key_id} of {self.owner}") from None


@dataclass(frozen=True)
class TrustBundle:
    trust_domain: str
    keys: tuple[TrustedKey, ...] = ()

    def __post_init__(self) -> None:
        for k in self.keys:
            if len(k.public_key) != 1952:
                raise TrustError(f"key of {k.owner!r}: not an ML-DSA-65 public key ({len(k.public_key)} bytes)")
            unknown = set(k.roles) - set(CONTEXTS)
            if unknown:
                raise TrustError(f"key of {k.owner!r}: unknown roles {sorted(unknown)}")

    def find(self, key_id: str) -> TrustedKey:
        for k in self.keys:
            if k.key_id == key_id:
                return k
        raise TrustError(f"key {key_id!r} is not in the trust bundle")

    def keys_of(self, owner: str) -> list[TrustedKey]:
        return [k for k in self.keys if k.owner == owner]

    def verify(self, role: str, key_id: str, data: bytes, signature: bytes, *,
               owners: Iterable[str] | None = None) -> TrustedKey:
        """The trusted key that signed ``data`` for ``role`` (only keys of ``owners`` when given), or
        :class:`TrustError` naming what is wrong."""
        k = self.find(key_id)
        allowed = set(owners) if owners is not None else None
        if allowed is not None and k.owner not in allowed:
            raise TrustError(f"key {key_id} belongs to {k.owner}, not to {' or '.join(sorted(allowed))}")
        k.verify(role, data, signature)
        return k

    # ---- files ---------------------------------------------------------------------------------------
    def to_json(self) -> str:
        return json.dumps({"version": BUNDLE_VERSION, "trust_domain": self.trust_domain,
                           "keys": [{"owner": k.owner, "key_id": k.key_id, "roles": list(k.roles),
                                     "ml_dsa_65": k.public_key.hex()} for k in self.keys]}, indent=2) + "\n"

    @classmethod
    def from_json(cls, text: str, where: str = "trust bundle") -> TrustBundle:
        try:
            data = json.loads(text)
            if data.get("version") != BUNDLE_VERSION:
                raise TrustError(f"{where}: version {data.get('version')!r}, expected {BUNDLE_VERSION}")
            keys = []
            for i, k in enumerate(data["keys"]):
                tk = TrustedKey(str(k["owner"]), bytes.fromhex(k["ml_dsa_65"]), tuple(k["roles"]))
                if k.get("key_id") not in (None, tk.key_id):
                    raise TrustError(f"{where}: keys[{i}] key_id {k['key_id']!r} does not match its key")
                keys.append(tk)
            return cls(str(data["trust_domain"]), tuple(keys))
        except TrustError:
            raise
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            raise TrustError(f"{where}: malformed ({type(e).__name__}: {e})") from None

    @classmethod
    def load(cls, path: str | pathlib.Path) -> TrustBundle:
        p = pathlib.Path(path)
        try:
            text = p.read_text()
        except OSError as e:
            raise TrustError(f"trust bundle {str(p)!r}: cannot read ({e.strerror})") from None
        return cls.from_json(text, f"trust bundle {str(p)!r}")


class Signer:
    """A service's ML-DSA-65 signing key (the seed stays inside)."""

    def __init__(self, owner: str, key: mldsa.MLDSA65PrivateKey):
        self.owner = owner
        self._key = key
        self.public_key = key.public_key().public_bytes_raw()
        self.key_id = key_id_of(self.public_key)

    @classmethod
    def generate(cls, owner: str) -> Signer:
        return cls(owner, mldsa.MLDSA65PrivateKey.generate())

    @classmethod
    def from_seed(cls, owner: str, seed: bytes) -> Signer:
        try:
            return cls(owner, mldsa.MLDSA65PrivateKey.from_seed_bytes(seed))
        except ValueError as e:
            raise TrustError(f"signing key of {owner}: not an ML-DSA-65 seed ({e})") from None

    @classmethod
    def load(cls, owner: str, path: str | pathlib.Path) -> Signer:
        p = pathlib.Path(path)
        try:
            seed = p.read_bytes()
        except OSError as e:
            raise TrustError(f"signing key {str(p)!r}: cannot read ({e.strerror})") from None
        return cls.from_seed(owner, seed)

    def seed_bytes_unsafe(self) -> bytes:
        return self._key.private_bytes_raw()

    def sign(self, role: str, data: bytes) -> bytes:
        return self._key.sign(data, CONTEXTS[role] or None)

    def trusted(self, roles: Iterable[str] | None = None) -> TrustedKey:
        return TrustedKey(self.owner, self.public_key, tuple(roles if roles is not None else ROLES[self.owner]))

    def __repr__(self) -> str:
        return f"Signer({self.owner!r}, key_id={self.key_id!r})"
