"""Distribution of root-signed key records through the JetStream KV bucket ``keys``.

Keys of the bucket (every value is bytes; ``SignedRecord`` = the wire form of
:class:`x0tta6bl4.pqc.records.SignedRecord`, i.e. ``pack(b"x0tta6bl4/signed-record/v1",
kind, body, signer_key_id, signature)`` with u32 big-endian length prefixes; the
body is the canonical record, signed by the keyvault root ML-DSA-65 key with the
FIPS 204 context ``x0tta6bl4/keyvault/<kind>/v1``):

``root``                   raw ML-DSA-65 public key of the keyvault root (1952 bytes).
                           Informational: agents should pin the root key out of band
                           (``meshctl keys info`` / ``Info.root_public_key``).
``key.<key-id>``           SignedRecord(kind ``pubkey``) of every key peers must accept
                           now: the active generation and, during an overlap window,
                           the retiring one. Deleted when the key is retired or revoked.
``rev.<key-id>``           SignedRecord(kind ``revocation``) for every revoked key (kept).
``node.<node-id>.sig``     SignedRecord(kind ``pubkey``) of the node's current signing key
``node.<node-id>.kem``     ... and of its current KEM key (revoked flag set once revoked).
``rot.<node-id>``          SignedRecord(kind ``rotation``, a :class:`~x0tta6bl4.pqc.RotationRequestRecord`:
                           node_id, from_generation, overlap_s, request_id, requested_at; FIPS 204
                           context ``x0tta6bl4/keyvault/rotation/v1``): keyvault asks the holder of the
                           node's keys (the node or its mesh host) to generate the next generation and
                           certify it (``CertifyKeys``, with ``overlap_s``). Present only while pending:
                           deleted when a generation newer than ``from_generation`` is certified (or the
                           node is revoked), so a deleted (or absent) ``rot.<node-id>`` means "no request".

A node agent watches ``key.>`` and ``rev.>`` (or ``>``) and feeds every entry into a
:class:`KeyDirectory`, which verifies it and answers "which key is ``key_id``, and
may I accept it?" (and, for ``rot.*``, "is a rotation of node X requested?":
:meth:`KeyDirectory.rotation`). Nothing here does I/O.
"""
from __future__ import annotations

from dataclasses import dataclass

from x0tta6bl4.pqc import (
    InvalidRecord,
    KeyRevoked,
    MLDSA65PublicKey,
    PublicKeyRecord,
    RevocationRecord,
    RotationRequestRecord,
    SpiffeId,
    verify_signed,
)
from x0tta6bl4.pqc.identity import KeyPurpose

from .vault import Entry, Vault

__all__ = [
    "BUCKET",
    "BUCKET_DOC",
    "BUCKET_HISTORY",
    "MANAGED_PREFIXES",
    "ROOT_KEY",
    "KeyDirectory",
    "VerifiedEntry",
    "desired_state",
    "entry_all",
    "entry_changes",
    "entry_kv",
    "key_key",
    "node_key",
    "rev_key",
    "rot_key",
    "verify_entry",
]

BUCKET = "keys"
BUCKET_HISTORY = 1
BUCKET_DOC = "root-signed public-key and revocation records (keyvault -> node agents)"
ROOT_KEY = "root"
MANAGED_PREFIXES = ("key.", "rev.", "node.", "rot.")
_REMOVABLE = ("key.", "rot.")      # entries keyvault deletes when they no longer hold (rev.* and node.* stay)
_PURPOSE_TOKEN = {KeyPurpose.SIGNING: "sig", KeyPurpose.KEM: "kem"}


def key_key(key_id: str) -> str:
    return f"key.{key_id}"


def rev_key(key_id: str) -> str:
    return f"rev.{key_id}"


def node_key(node_id: str, purpose: str) -> str:
    return f"node.{node_id}.{purpose}"


def rot_key(node_id: str) -> str:
    """The key of the node's pending rotation request."""
    return f"rot.{node_id}"


def entry_kv(e: Entry) -> dict[str, bytes]:
    """The KV entries describing one identity."""
    out = {node_key(e.node_id, "sig"): e.current.signed_sig, node_key(e.node_id, "kem"): e.current.signed_kem}
    for g in e.accepted():
        out[key_key(g.sig_key_id)] = g.signed_sig
        out[key_key(g.kem_key_id)] = g.signed_kem
    for kid, signed in e.revocations.items():
        out[rev_key(kid)] = signed
    if e.rotation_request() is not None and e.rotation is not None:
        out[rot_key(e.node_id)] = e.rotation
    return out


def entry_changes(prev: Entry | None, new: Entry) -> tuple[dict[str, bytes], list[str]]:
    """What to write to the bucket when an identity goes from ``prev`` (None: new) to ``new``:
    the entries to put (new or changed) and the ``key.*`` (no longer accepted) and ``rot.*`` (request answered)
    entries to delete."""
    want = entry_kv(new)
    had = entry_kv(prev) if prev is not None else {}
    puts = {k: v for k, v in want.items() if had.get(k) != v}
    return puts, [k for k in had if k.startswith(_REMOVABLE) and k not in want]


def entry_all(e: Entry) -> tuple[dict[str, bytes], list[str]]:
    """Every entry of the identity, and a delete for every ``key.*`` of its generations no
    longer accepted and for its ``rot.*`` when no rotation is pending (to repair the bucket
    whatever it holds; deletes of absent keys are harmless)."""
    want = entry_kv(e)
    gone = [g for g in [e.current, *e.previous()] if key_key(g.sig_key_id) not in want]
    dels = [key_key(kid) for g in gone for kid in g.key_ids]
    if rot_key(e.node_id) not in want:
        dels.append(rot_key(e.node_id))
    return want, dels


def desired_state(vault: Vault) -> dict[str, bytes]:
    """Every KV entry the bucket should hold for the vault's current state."""
    out = {ROOT_KEY: vault.root_public.public_bytes()}
    for e in vault.list(include_revoked=True):
        out.update(entry_kv(e))
    return out


@dataclass(frozen=True)
class VerifiedEntry:
    key: str
    kind: str                                     # "pubkey" | "revocation" | "rotation" | "root"
    record: PublicKeyRecord | RevocationRecord | RotationRequestRecord | None

    @property
    def rotation(self) -> RotationRequestRecord | None:
        """For a ``rot.<node>`` entry, the verified request (``node_id``, ``from_generation``, ``overlap_s``,
        ``request_id``, ``requested_at``); None for every other kind."""
        return self.record if isinstance(self.record, RotationRequestRecord) else None


def verify_entry(key: str, value: bytes, root: MLDSA65PublicKey) -> VerifiedEntry:
    """Verify one KV entry against the pinned root public key.

    Checks the root signature *and* that the record belongs under ``key`` (a
    validly signed record copied under another key is rejected). Raises
    :class:`~x0tta6bl4.pqc.PQCError` (InvalidSignature, InvalidRecord, KeyRevoked).
    A ``key.*`` entry whose record carries the revoked flag raises KeyRevoked.
    """
    if key == ROOT_KEY:
        if bytes(value) != root.public_bytes():
            raise InvalidRecord("KV root key differs from the pinned keyvault root key")
        return VerifiedEntry(key, "root", None)
    rec = verify_signed(value, root)
    parts = key.split(".")
    if parts[0] == "key" and len(parts) == 2:
        if not isinstance(rec, PublicKeyRecord) or rec.key_id != parts[1]:
            raise InvalidRecord(f"KV entry {key!r} does not hold the public-key record of key {parts[1]}")
        if rec.revoked:
            raise KeyRevoked(f"key {rec.key_id} of {rec.spiffe_id} is revoked")
        return VerifiedEntry(key, "pubkey", rec)
    if parts[0] == "rev" and len(parts) == 2:
        if not isinstance(rec, RevocationRecord) or rec.key_id != parts[1]:
            raise InvalidRecord(f"KV entry {key!r} does not hold the revocation of key {parts[1]}")
        return VerifiedEntry(key, "revocation", rec)
    if parts[0] == "node" and len(parts) == 3:
        if (not isinstance(rec, PublicKeyRecord) or SpiffeId.parse(rec.spiffe_id).node_id != parts[1]
                or _PURPOSE_TOKEN[rec.purpose] != parts[2]):
            raise InvalidRecord(f"KV entry {key!r} does not hold the {parts[2]} record of node {parts[1]}")
        return VerifiedEntry(key, "pubkey", rec)
    if parts[0] == "rot" and len(parts) == 2:
        if not isinstance(rec, RotationRequestRecord) or rec.node_id != parts[1]:
            raise InvalidRecord(f"KV entry {key!r} does not hold the rotation request of node {parts[1]}")
        return VerifiedEntry(key, "rotation", rec)
    raise InvalidRecord(f"unknown KV key {key!r} in bucket {BUCKET!r}")


class KeyDirectory:
    """A node agent's view of the mesh's keys, fed from the ``keys`` bucket.

        directory = KeyDirectory(pinned_root)
        watcher, initial = await watch_bucket(js, "keys")   # x0tta6bl4.bus.kvwatch
        for e in initial:                                   # then next_update(watcher, ...)
            directory.apply(e.key, e.value, deleted=e.operation in ("DEL", "PURGE"))
        rec = directory.lookup(key_id)               # None: unknown, retired or revoked
        rec.verify_key().verify(sig, data, context)  # then check the signature

        req = directory.rotation(node_id)           # a pending rotation request for the node, else None

    ``apply`` raises PQCError for an entry that does not verify (count it, drop it). It returns the
    verified entry (None for a deletion); for ``rot.<node>`` its ``.rotation`` is the request.
    """

    def __init__(self, root: MLDSA65PublicKey) -> None:
        self.root = root
        self._keys: dict[str, PublicKeyRecord] = {}
        self._revoked: dict[str, RevocationRecord] = {}
        self._nodes: dict[tuple[str, str], PublicKeyRecord] = {}
        self._rotations: dict[str, RotationRequestRecord] = {}

    def apply(self, key: str, value: bytes | None, *, deleted: bool = False) -> VerifiedEntry | None:
        parts = key.split(".")
        if deleted or not value:
            if parts[0] == "key" and len(parts) == 2:
                self._keys.pop(parts[1], None)     # retired (or revoked: rev.* arrives too)
            elif parts[0] == "rot" and len(parts) == 2:
                self._rotations.pop(parts[1], None)   # answered (or withdrawn): no request
            return None
        v = verify_entry(key, value, self.root)
        rec = v.record
        if isinstance(rec, RotationRequestRecord):
            self._rotations[rec.node_id] = rec
        elif isinstance(rec, RevocationRecord):
            self._revoked[rec.key_id] = rec
            self._keys.pop(rec.key_id, None)
        elif isinstance(rec, PublicKeyRecord) and parts[0] == "key":
            if rec.key_id not in self._revoked:
                self._keys[rec.key_id] = rec
        elif isinstance(rec, PublicKeyRecord):
            self._nodes[(parts[1], parts[2])] = rec
        return v

    def lookup(self, key_id: str) -> PublicKeyRecord | None:
        """The record of an accepted key (active or retiring), else None."""
        if key_id in self._revoked:
            return None
        return self._keys.get(key_id)

    def is_revoked(self, key_id: str) -> bool:
        return key_id in self._revoked

    def current(self, node_id: str, purpose: str = "sig") -> PublicKeyRecord | None:
        """The node's current record (``purpose`` "sig" or "kem"), revoked or not."""
        return self._nodes.get((node_id, purpose))

    def rotation(self, node_id: str) -> RotationRequestRecord | None:
        """The node's pending rotation request (from ``rot.<node>``), else None. The holder rotates when
        ``from_generation`` is its current generation; an older one is already answered."""
        return self._rotations.get(node_id)

    def rotations(self) -> dict[str, RotationRequestRecord]:
        """Every pending rotation request, by node id."""
        return dict(self._rotations)

    def accepted_key_ids(self) -> set[str]:
        return set(self._keys) - set(self._revoked)

    def accepted_records(self, node_id: str) -> list[PublicKeyRecord]:
        """Accepted (active or retiring, not revoked) records of one node, newest generation first."""
        recs = [r for kid, r in self._keys.items()
                if kid not in self._revoked and SpiffeId.parse(r.spiffe_id).node_id == node_id]
        return sorted(recs, key=lambda r: -r.generation)
