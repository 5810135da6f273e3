"""The keyvault domain: registry of node identities, rotation with an overlap
window, revocation, attestation. Pure logic, no I/O: the service persists what
the domain plans (the clock is injected).

State machine of one key generation::

    active --rotate--> retiring --overlap elapsed (retire) / next rotate--> retired
       \\________________________\\__revoke__> revoked

A node has exactly one ``active`` generation (or a ``revoked`` one once the node
is revoked) and at most one ``retiring`` generation. Every generation keeps its
two root-signed public-key records (signing, KEM); private keys are kept only
for ``active`` and ``retiring`` generations and dropped when a generation is
retired or revoked.

Custodial and node-held identities: keyvault holds the private keys of an identity
it generated (``IssueIdentity``: *custodial*, ``Entry.custodial``) until they are
exported once for offline provisioning (``plan_export``); it never holds those of an
identity whose keys the node (or its mesh host) generated and keyvault certified
(``plan_certify``), nor of an exported one (*node-held*). Keyvault rotates a custodial
identity itself (``plan_rotate``); for a node-held one it can only ask the holder
(``plan_request_rotation``: a root-signed rotation request, ``Entry.rotation``,
published as ``rot.<node>``), which the certification of the next generation clears.

Replication (several keyvault replicas, one shared state): :class:`Vault` is a
cache of entries, each tagged with the revision of the shared store it was read
at (``revisions``). Changes are *planned* (``plan_issue``, ``plan_rotate``,
``plan_revoke``, ``plan_retire``) on copies without touching the cache; the
caller writes the new entry only if the stored revision is still the one the
plan started from (compare-and-set), then calls :meth:`Vault.learn`. A replica
that loses the race learns the winner's entry and plans again, so every change
applies to the latest state (no fork). ``learn`` ignores anything older than
what the cache holds. Entries carry a ``version`` counting their changes.

Serialized form (sealed by the caller before it leaves the process): one JSON
document per node (:meth:`Vault.encode_entry`) holding the private exports and
signed records, and the recent rotate request ids.
"""
from __future__ import annotations

import base64
import builtins
import copy
import dataclasses
import json
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from x0tta6bl4.pqc import (
    InvalidIdentity,
    KeyPurpose,
    KeyvaultRoot,
    MLDSA65PublicKey,
    NodeIdentity,
    PQCError,
    PublicKeyRecord,
    RotationRequestRecord,
    SignedRecord,
    SpiffeId,
    key_id,
    records_for_identity,
    validate_node_id,
)
from x0tta6bl4.pqc.backend import MLDSA65_SIGNATURE_SIZE, Backend
from x0tta6bl4.pqc.keys import HYBRID_SIGNATURE_SIZE

from .errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound

__all__ = [
    "ACTIVE",
    "ATTEST_CONTEXT",
    "DEFAULT_OVERLAP_S",
    "MAX_OVERLAP_S",
    "RETIRED",
    "RETIRING",
    "REVOKED",
    "ROTATION_PENDING",
    "AttestResult",
    "Entry",
    "Generation",
    "Retirement",
    "RotationStep",
    "Vault",
    "check_node_id",
    "sign_attestation",
]

ROTATION_PENDING = "rotation_pending"

ACTIVE, RETIRING, RETIRED, REVOKED = "active", "retiring", "retired", "revoked"
ATTEST_CONTEXT = b"x0tta6bl4/attest/v1"
DEFAULT_OVERLAP_S = 30.0
MAX_OVERLAP_S = 7 * 86400.0
MAX_CHALLENGE = 4096
MAX_REASON = 1024
KEEP_RETIRED = 4           # retired generations kept per node (public records only)
KEEP_REQUESTS = 256        # rotate request ids remembered (idempotent retries)
Clock = Callable[[], float]


def check_node_id(node_id: str) -> str:
    """Validate a node id (``^[a-z0-9][a-z0-9-]{0,62}$``) or raise InvalidArgument."""
    try:
        return validate_node_id(node_id)
    except InvalidIdentity as e:
        raise InvalidArgument(str(e)) from None


def sign_attestation(identity: NodeIdentity, challenge: bytes, *, hybrid: bool = False) -> bytes:
    """What a node sends to Attest: its ML-DSA-65 (or hybrid) signature over the challenge."""
    if hybrid:
        return identity.signing.private.sign(challenge, ATTEST_CONTEXT)
    return identity.signing.private.mldsa.sign(challenge, ATTEST_CONTEXT)


def _b64(b: bytes | None) -> str | None:
    return None if b is None else base64.b64encode(b).decode()


def _unb64(s: str | None) -> bytes | None:
    return None if s is None else base64.b64decode(s)


def _public_record(signed: bytes) -> PublicKeyRecord:
    rec = SignedRecord.from_bytes(signed).record()
    if not isinstance(rec, PublicKeyRecord):
        raise ValueError(f"a generation holds a {type(rec).__name__}, not a public-key record")
    return rec


@dataclass
class Generation:
    """One generation of a node's keys (signing + KEM)."""

    generation: int
    signed_sig: bytes                       # SignedRecord wire form (signing key)
    signed_kem: bytes                       # SignedRecord wire form (KEM key)
    status: str = ACTIVE
    identity: NodeIdentity | None = None    # private keys; None once retired/revoked
    retiring_until: float = 0.0
    retired_at: int = 0
    exported_at: int = 0                    # unix time its private keys were exported (then destroyed here)
    exported_to: str = ""                   # key id of the recipient ML-KEM-768 key they were wrapped to
    sig_record: PublicKeyRecord = field(init=False, repr=False)
    kem_record: PublicKeyRecord = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.sig_record = _public_record(self.signed_sig)
        self.kem_record = _public_record(self.signed_kem)

    @property
    def sig_key_id(self) -> str:
        return self.sig_record.key_id

    @property
    def kem_key_id(self) -> str:
        return self.kem_record.key_id

    @property
    def key_ids(self) -> tuple[str, str]:
        return self.sig_key_id, self.kem_key_id

    def to_json(self) -> dict:
        return {"generation": self.generation, "status": self.status,
                "signed_sig": _b64(self.signed_sig), "signed_kem": _b64(self.signed_kem),
                "retiring_until": self.retiring_until, "retired_at": self.retired_at,
                "exported_at": self.exported_at, "exported_to": self.exported_to,
                "private": _b64(self.identity.export_private_unsafe()) if self.identity else None}

    @classmethod
    def from_json(cls, d: dict, backend: Backend | None) -> Generation:
        priv = _unb64(d.get("private"))
        ident = NodeIdentity.import_private(priv, backend=backend) if priv else None
        return cls(int(d["generation"]), base64.b64decode(d["signed_sig"]), base64.b64decode(d["signed_kem"]),
                   d["status"], ident, float(d.get("retiring_until", 0.0)), int(d.get("retired_at", 0)),
                   int(d.get("exported_at", 0)), str(d.get("exported_to", "")))


@dataclass
class Entry:
    """A node identity: its current generation, the retiring one, history, revocation."""

    node_id: str
    spiffe_id: str
    created_at: int
    current: Generation
    retiring: Generation | None = None
    retired: list[Generation] = field(default_factory=list)   # newest first
    revoked_at: int = 0
    revocation_reason: str = ""
    revocations: dict[str, bytes] = field(default_factory=dict)  # key id -> signed RevocationRecord
    version: int = 1                   # number of changes (issue = 1); grows by one per change
    rotation: bytes | None = None      # pending rotation request: signed RotationRequestRecord (node-held keys)

    def clone(self) -> Entry:
        """A copy to change without touching this one (key objects and records are shared: immutable)."""
        return dataclasses.replace(self, current=copy.copy(self.current),
                                   retiring=copy.copy(self.retiring) if self.retiring else None,
                                   retired=[copy.copy(g) for g in self.retired], revocations=dict(self.revocations))

    @property
    def revoked(self) -> bool:
        return self.revoked_at > 0

    @property
    def generation(self) -> int:
        return self.current.generation

    @property
    def custodial(self) -> bool:
        """Keyvault holds the current generation's private keys (it generated them and never exported them)."""
        return self.current.identity is not None

    def rotation_request(self) -> RotationRequestRecord | None:
        """The pending rotation request (still to be answered by a newer certified generation), else None."""
        if self.rotation is None or self.revoked:
            return None
        rec = SignedRecord.from_bytes(self.rotation).record()
        if not isinstance(rec, RotationRequestRecord) or rec.from_generation != self.generation:
            return None
        return rec

    def previous(self) -> list[Generation]:
        return ([self.retiring] if self.retiring else []) + list(self.retired)

    def accepted(self, now: float | None = None) -> list[Generation]:
        """Generations whose keys peers accept (active first, then retiring while
        its overlap window lasts; ``now`` None = regardless of the deadline)."""
        if self.revoked:
            return []
        r = self.retiring
        if r is not None and (now is None or now < r.retiring_until):
            return [self.current, r]
        return [self.current]

    def to_json(self) -> dict:
        return {"v": 1, "node_id": self.node_id, "spiffe_id": self.spiffe_id, "created_at": self.created_at,
                "current": self.current.to_json(),
                "retiring": self.retiring.to_json() if self.retiring else None,
                "retired": [g.to_json() for g in self.retired],
                "revoked_at": self.revoked_at, "revocation_reason": self.revocation_reason,
                "revocations": {k: _b64(v) for k, v in self.revocations.items()}, "version": self.version,
                "rotation": _b64(self.rotation)}

    @classmethod
    def from_json(cls, d: dict, backend: Backend | None) -> Entry:
        return cls(d["node_id"], d["spiffe_id"], int(d["created_at"]), Generation.from_json(d["current"], backend),
                   Generation.from_json(d["retiring"], backend) if d.get("retiring") else None,
                   [Generation.from_json(g, backend) for g in d.get("retired", [])],
                   int(d.get("revoked_at", 0)), d.get("revocation_reason", ""),
                   {k: base64.b64decode(v) for k, v in d.get("revocations", {}).items()}, int(d.get("version", 1)),
                   _unb64(d.get("rotation")))


@dataclass(frozen=True)
class RotationStep:
    node_id: str
    old: Generation            # now retiring
    new: Generation            # now active
    retired_early: Generation | None   # a generation still retiring that this rotation retired at once
    entry: Entry | None = None         # the node's entry after the rotation


@dataclass(frozen=True)
class Retirement:
    node_id: str
    generation: Generation
    entry: Entry | None = None         # the node's entry after the retirement


@dataclass(frozen=True)
class AttestResult:
    valid: bool
    reason: str
    key_id: str = ""
    generation: int = 0
    status: str = ""


class Vault:
    """A cache of identities (each at a store revision) and the changes planned on it."""

    def __init__(self, root: KeyvaultRoot, trust_domain: str, *, clock: Clock = time.time,
                 validity_s: int = 90 * 86400, default_overlap_s: float = DEFAULT_OVERLAP_S,
                 backend: Backend | None = None) -> None:
        self.root = root
        self.trust_domain = trust_domain
        self.clock = clock
        self.validity_s = int(validity_s)
        self.default_overlap_s = float(default_overlap_s)
        self.backend = backend
        self.entries: dict[str, Entry] = {}
        self.revisions: dict[str, int] = {}       # node id -> store revision of the cached entry
        self.requests: dict[str, list[str]] = {}  # rotate request id -> target node ids
        self.requests_revision = 0

    @property
    def root_public(self) -> MLDSA65PublicKey:
        return self.root.public_key()

    @property
    def root_key_id(self) -> str:
        return self.root.key_id

    # ---- serialized form ------------------------------------------------------------
    @staticmethod
    def encode_entry(e: Entry) -> bytes:
        return json.dumps(e.to_json(), separators=(",", ":")).encode()

    def decode_entry(self, data: bytes) -> Entry:
        return Entry.from_json(json.loads(data), self.backend)

    @staticmethod
    def encode_requests(requests: dict[str, list[str]]) -> bytes:
        return json.dumps(requests, separators=(",", ":")).encode()

    @staticmethod
    def decode_requests(data: bytes) -> dict[str, list[str]]:
        d = json.loads(data)
        return {str(k): [str(n) for n in v] for k, v in d.items()}

    # ---- the cache ------------------------------------------------------------------
    def revision(self, node_id: str) -> int:
        """Store revision of the cached entry (0: none cached, i.e. create it)."""
        return self.revisions.get(node_id, 0)

    def learn(self, node_id: str, entry: Entry | None, revision: int) -> bool:
        """Take ``entry`` (None: deleted) read or written at store ``revision`` unless the cache
        already holds that revision or a newer one. Returns whether the cache changed."""
        if revision <= self.revisions.get(node_id, 0):
            return False
        self.revisions[node_id] = revision
        if entry is None:
            self.entries.pop(node_id, None)
        else:
            self.entries[node_id] = entry
        return True

    def learn_requests(self, requests: dict[str, list[str]], revision: int) -> bool:
        if revision <= self.requests_revision:
            return False
        self.requests, self.requests_revision = requests, revision
        return True

    # ---- queries --------------------------------------------------------------------
    def get(self, node_id: str) -> Entry:
        check_node_id(node_id)
        e = self.entries.get(node_id)
        if e is None:
            raise NotFound(f"no identity for node {node_id!r} (issue one first)")
        return e

    def list(self, include_revoked: bool = False) -> list[Entry]:
        return [self.entries[k] for k in sorted(self.entries) if include_revoked or not self.entries[k].revoked]

    def _sign_generation(self, ident: NodeIdentity) -> Generation:
        sig, kem = records_for_identity(ident)
        return Generation(ident.generation, self.root.sign(sig).to_bytes(), self.root.sign(kem).to_bytes(),
                          ACTIVE, ident)

    # ---- issue ----------------------------------------------------------------------
    def plan_issue(self, node_id: str) -> Entry:
        """A new identity for ``node_id`` (not yet in the cache: store it, then learn it)."""
        check_node_id(node_id)
        if node_id in self.entries:
            e = self.entries[node_id]
            state = "revoked; node ids are never reused" if e.revoked else f"at generation {e.generation}"
            raise AlreadyExists(f"node {node_id!r} already has an identity ({state})")
        now = self.clock()
        ident = NodeIdentity.generate(self.trust_domain, node_id, now=now, validity_seconds=self.validity_s,
                                      generation=1, backend=self.backend)
        return Entry(node_id, str(SpiffeId(self.trust_domain, node_id)), int(now), self._sign_generation(ident))

    # ---- rotation -------------------------------------------------------------------
    def resolve_targets(self, node_ids: Iterable[str], all_nodes: bool) -> builtins.list[str]:
        ids = list(dict.fromkeys(node_ids))
        if all_nodes and ids:
            raise InvalidArgument("give node ids or all=true, not both")
        if all_nodes:
            return [e.node_id for e in self.list()]
        if not ids:
            raise InvalidArgument("no nodes to rotate: give node ids or all=true")
        for n in ids:
            e = self.get(n)
            if e.revoked:
                raise FailedPrecondition(f"node {n!r} is revoked and cannot be rotated")
        return ids

    def check_overlap(self, overlap_s: float | None) -> float:
        if overlap_s is None or overlap_s == 0:
            return self.default_overlap_s
        if not (0 < overlap_s <= MAX_OVERLAP_S):  # also rejects NaN
            raise InvalidArgument(f"overlap_s must be in (0, {MAX_OVERLAP_S:g}] seconds (0 = default "
                                  f"{self.default_overlap_s:g} s), got {overlap_s!r}")
        return float(overlap_s)

    def check_request_id(self, request_id: str) -> None:
        if len(request_id) > 128:
            raise InvalidArgument("request_id longer than 128 characters")

    def done_request(self, request_id: str) -> builtins.list[str] | None:
        """Targets of an already handled rotate request (None: not seen)."""
        if not request_id or request_id not in self.requests:
            return None
        return [n for n in self.requests[request_id] if n in self.entries]

    def with_request(self, request_id: str, targets: builtins.list[str]) -> dict[str, builtins.list[str]]:
        """The request log with ``request_id`` added (oldest dropped past KEEP_REQUESTS)."""
        out = dict(self.requests)
        out[request_id] = list(targets)
        while len(out) > KEEP_REQUESTS:
            out.pop(next(iter(out)))
        return out

    def plan_rotate(self, node_id: str, overlap_s: float) -> RotationStep:
        """The node's entry after one rotation (``step.entry``); the cache is not changed."""
        cur = self.get(node_id)
        if cur.revoked:
            raise FailedPrecondition(f"node {node_id!r} is revoked and cannot be rotated")
        if not cur.custodial:
            raise FailedPrecondition(f"node {node_id!r} holds its own keys: keyvault cannot generate them; "
                                     f"request the rotation (the node certifies its next generation)")
        e = cur.clone()
        e.rotation = None
        now = self.clock()
        early = None
        if e.retiring is not None:
            early = self._retire(e, int(now))
        ident = NodeIdentity.generate(self.trust_domain, node_id, now=now, validity_seconds=self.validity_s,
                                      generation=e.generation + 1, backend=self.backend)
        new = self._sign_generation(ident)
        old = e.current
        old.status, old.retiring_until = RETIRING, now + overlap_s
        e.retiring, e.current = old, new
        e.version += 1
        return RotationStep(node_id, old, new, early, e)

    def plan_request_rotation(self, node_id: str, overlap_s: float, request_id: str) -> Entry | None:
        """The node's entry with a root-signed rotation request for its current generation (a node-held identity:
        the node generates and certifies the next one, which clears the request). None when a request from the
        current generation is pending already (it stands, with its own request id and overlap)."""
        cur = self.get(node_id)
        if cur.revoked:
            raise FailedPrecondition(f"node {node_id!r} is revoked and cannot be rotated")
        if cur.rotation_request() is not None:
            return None
        rec = RotationRequestRecord(node_id, cur.generation, overlap_s, request_id, int(self.clock()))
        e = cur.clone()
        e.rotation = self.root.sign(rec).to_bytes()
        e.version += 1
        return e

    def plan_export(self, node_id: str, recipient_key_id: str) -> tuple[Entry, NodeIdentity]:
        """The entry once the current generation's private keys are exported (single use): keyvault's copies of
        every private key of the node are destroyed, the generation is node-held from then on. Returns the new
        entry and the identity to hand out (wrapped by the caller)."""
        cur = self.get(node_id)
        if cur.revoked:
            raise FailedPrecondition(f"node {node_id!r} is revoked; its private keys were destroyed")
        g = cur.current
        if g.identity is None:
            if g.exported_at:
                when = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(g.exported_at))
                raise FailedPrecondition(f"generation {g.generation} of {node_id!r} was already exported at {when} "
                                         f"(to recipient key {g.exported_to}); export is single use and keyvault "
                                         f"destroyed its copy")
            raise FailedPrecondition(f"node {node_id!r} generated its own keys (certified by keyvault): keyvault "
                                     f"holds no private key of it to export")
        ident = g.identity
        e = cur.clone()
        e.current.identity, e.current.exported_at, e.current.exported_to = None, max(int(self.clock()), 1), \
            recipient_key_id
        if e.retiring is not None:
            e.retiring.identity = None
        e.version += 1
        return e, ident

    def plan_certify(self, node_id: str, signing_public_key: bytes, kem_public_key: bytes,
                     overlap_s: float) -> tuple[Entry | None, Entry, RotationStep | None]:
        """The node's entry with public keys it generated itself as its new active generation (the root signs
        their records; keyvault holds no private key of it): a new identity at generation 1, or the next
        generation with the old one retiring for ``overlap_s``. (prev, new entry, the rotation step or None).
        The proof of possession is checked before (:mod:`.certify`). Certifying the current keys again
        changes nothing (a retry)."""
        check_node_id(node_id)
        cur = self.entries.get(node_id)
        if cur is not None and cur.revoked:
            raise FailedPrecondition(f"node {node_id!r} is revoked; node ids are never reused")
        kid = key_id(bytes(signing_public_key))
        if cur is not None and cur.current.sig_key_id == kid:
            return cur, cur, None
        if cur is not None and kid in {g.sig_key_id for g in cur.previous()}:
            raise FailedPrecondition(f"key {kid} was an earlier generation of {node_id!r}: generate new keys")
        now = self.clock()
        gen = cur.generation + 1 if cur is not None else 1
        spiffe = str(SpiffeId(self.trust_domain, node_id))
        recs = [PublicKeyRecord(spiffe_id=spiffe, purpose=p, public_key=bytes(pk), not_before=int(now),
                                not_after=int(now) + self.validity_s, generation=gen)
                for p, pk in ((KeyPurpose.SIGNING, signing_public_key), (KeyPurpose.KEM, kem_public_key))]
        new = Generation(gen, self.root.sign(recs[0]).to_bytes(), self.root.sign(recs[1]).to_bytes(), ACTIVE, None)
        if cur is None:
            return None, Entry(node_id, spiffe, int(now), new), None
        e = cur.clone()
        e.rotation = None                     # a newer generation answers any pending rotation request
        early = self._retire(e, int(now)) if e.retiring is not None else None
        old = e.current
        old.status, old.retiring_until = RETIRING, now + overlap_s
        e.retiring, e.current = old, new
        e.version += 1
        return cur, e, RotationStep(node_id, old, new, early, e)

    @staticmethod
    def _retire(e: Entry, now: int) -> Generation:
        g = e.retiring
        assert g is not None
        g.status, g.retired_at, g.identity = RETIRED, now, None
        e.retired.insert(0, g)
        del e.retired[KEEP_RETIRED:]
        e.retiring = None
        return g

    def next_deadline(self) -> float | None:
        ds = [e.retiring.retiring_until for e in self.entries.values() if e.retiring]
        return min(ds) if ds else None

    def due(self) -> builtins.list[str]:
        """Nodes whose retiring generation's overlap window has passed."""
        now = self.clock()
        return sorted(n for n, e in self.entries.items() if e.retiring is not None and now >= e.retiring.retiring_until)

    def plan_retire(self, node_id: str) -> Retirement | None:
        """The entry with its retiring generation retired, if its window has passed (else None)."""
        cur = self.entries.get(node_id)
        now = self.clock()
        if cur is None or cur.retiring is None or now < cur.retiring.retiring_until:
            return None
        e = cur.clone()
        g = self._retire(e, int(now))
        e.version += 1
        return Retirement(node_id, g, e)

    # ---- revocation -----------------------------------------------------------------
    def plan_revoke(self, node_id: str, reason: str = "") -> Entry | None:
        """The entry with every key revoked (None: revoked already, nothing to change)."""
        if len(reason) > MAX_REASON:
            raise InvalidArgument(f"reason longer than {MAX_REASON} characters")
        cur = self.get(node_id)
        if cur.revoked:
            return None
        e = cur.clone()
        now = int(self.clock())
        gens = [e.current] + ([e.retiring] if e.retiring else [])
        for g in gens:
            for rec in (g.sig_record, g.kem_record):
                e.revocations[rec.key_id] = self.root.revoke(rec, at=now, reason=reason).to_bytes()
            g.status, g.identity = REVOKED, None
            g.retired_at = now
        c = e.current
        e.current = Generation(c.generation,
                               self.root.sign(dataclasses.replace(c.sig_record, revoked=True)).to_bytes(),
                               self.root.sign(dataclasses.replace(c.kem_record, revoked=True)).to_bytes(),
                               REVOKED, None, 0.0, now)
        if e.retiring is not None:
            e.retired.insert(0, e.retiring)
            e.retiring = None
        e.revoked_at, e.revocation_reason = max(now, 1), reason
        e.rotation = None
        e.version += 1
        return e

    # ---- attestation ----------------------------------------------------------------
    def attest(self, node_id: str, challenge: bytes, signature: bytes) -> AttestResult:
        """Check a challenge signed by the node (pure ML-DSA-65 or hybrid, context ATTEST_CONTEXT)
        with its active key or, during the overlap window, its retiring key."""
        if not challenge:
            raise InvalidArgument("challenge is empty")
        if len(challenge) > MAX_CHALLENGE:
            raise InvalidArgument(f"challenge longer than {MAX_CHALLENGE} bytes")
        if not signature:
            raise InvalidArgument("signature is empty")
        e = self.get(node_id)
        if e.revoked:
            return AttestResult(False, f"node {node_id} is revoked ({e.revocation_reason or 'no reason given'})",
                                e.current.sig_key_id, e.generation, REVOKED)
        if len(signature) not in (MLDSA65_SIGNATURE_SIZE, HYBRID_SIGNATURE_SIZE):
            return AttestResult(False, f"signature must be {MLDSA65_SIGNATURE_SIZE} bytes (ML-DSA-65) or "
                                       f"{HYBRID_SIGNATURE_SIZE} bytes (Ed25519+ML-DSA-65), got {len(signature)}")
        now = self.clock()
        for g in e.accepted(now):
            vk = g.sig_record.verify_key()
            try:
                if len(signature) == MLDSA65_SIGNATURE_SIZE:
                    vk.mldsa.verify(signature, challenge, ATTEST_CONTEXT)
                else:
                    vk.verify(signature, challenge, ATTEST_CONTEXT)
            except PQCError:
                continue
            return AttestResult(True, f"signed by {g.status} key of generation {g.generation}", g.sig_key_id,
                                g.generation, g.status)
        gens = ", ".join(f"gen {g.generation} ({g.status})" for g in e.accepted(now))
        return AttestResult(False, f"signature does not verify under any accepted key of {node_id} ({gens})")
