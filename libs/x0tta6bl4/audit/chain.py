"""The audit trail as a hash chain of signed protobuf events (no I/O).

Each service instance keeps one chain. Event ``n`` carries ``chain_seq = n``,
``prev_hash`` = the hash of event ``n-1`` (32 zero bytes for the first) and
``hash`` = SHA-256 over :func:`canonical_bytes`: the deterministic protobuf encoding
(``SerializeToString(deterministic=True)``: fields in field-number order, fields at
their default value left out, map entries sorted by key) of the event with ``hash``,
``signature``, ``key_id`` and ``public_key`` (fields 9-12) cleared - so it covers
``meta``, ``service``, ``event_type``, ``subject_id``, ``details``, ``chain_id``,
``chain_seq``, ``prev_hash`` and ``trace_id`` (fields 1-8 and 13). Events are published
with the same deterministic encoding, so the canonical bytes are also the published
bytes with the records of fields 9-12 removed. ``signature`` is pure ML-DSA-65
(FIPS 204, empty context: ``trust.CONTEXTS["audit"]`` is empty) over the 32 ``hash``
bytes, by a service's key for the role ``audit`` or an edge node's signing key;
``key_id`` names the signing key and ``public_key`` carries it (informational only: a
verifier never trusts the key an event brings).

Details (``map<string, string>``) are typed by :func:`detail_value`: a string is stored as
it is, any other value as its JSON text; docs/audit-events.md lists every event type and
the type of each of its details (:mod:`x0tta6bl4.audit.types`).

Who may sign what (:func:`trusted_keys`): a service's chain is signed by that
service's signing key, which must be in the trust bundle (configuration, read-only
everywhere) with the ``audit`` role and that service as its owner. An edge node's
chain (service ``edge``) is signed by the ML-DSA-65 half of the node's signing key,
which must have a keyvault-signed public-key record (the ``keys`` bucket), checked
against a keyvault root public key the verifier was configured with; with no
pinned root such a chain is reported *unverified*, never trusted.

:func:`verify_chains` checks every event on its own (content hash, signature by a
trusted key) and then every chain's order (no gap, every link), reports each
problem with its kind (:data:`KINDS`) and keeps verifying the rest.
"""
from __future__ import annotations

import enum
import hashlib
import json
import math
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric import mldsa
from google.protobuf.message import DecodeError

from x0tta6bl4.ids import new_meta
from x0tta6bl4.trust import ROLE_AUDIT, TrustBundle, TrustError
from x0tta6bl4.trust import Signer as ServiceSigner
from x0tta6bl4.v1 import events_pb2

if TYPE_CHECKING:
    from x0tta6bl4.keyvault.distribution import KeyDirectory
    from x0tta6bl4.pqc import NodeIdentity

GENESIS = bytes(32)
EDGE_SERVICE = "edge"          # audit.edge.<event>: edge nodes' offline events, published on reconnect

# the kinds of problem a verification reports, worst first
GARBAGE = "garbage"            # not an audit event at all (does not parse, fields missing)
EDITED = "edited"              # content does not match its hash
FORGED = "forged"              # signature does not verify under the trusted key
UNKNOWN_KEY = "unknown_key"    # signed by a key not trusted for that service
BROKEN_LINK = "broken_link"    # prev_hash is not the previous event's hash
GAP = "gap"                    # sequence numbers missing
DUPLICATE = "duplicate"        # a second event with a sequence number already taken
KINDS = (GARBAGE, EDITED, FORGED, UNKNOWN_KEY, BROKEN_LINK, GAP, DUPLICATE)


class Signer(Protocol):
    key_id: str

    def sign(self, data: bytes) -> bytes: ...

    def public_bytes(self) -> bytes: ...


def key_id_of(public_key: bytes) -> str:
    return hashlib.sha256(public_key).hexdigest()[:16]


class MLDSASigner:
    """An ML-DSA-65 signer; the private key stays inside."""

    def __init__(self, private_key: mldsa.MLDSA65PrivateKey | None = None):
        self._key = private_key or mldsa.MLDSA65PrivateKey.generate()
        self._pub = self._key.public_key().public_bytes_raw()
        self.key_id = key_id_of(self._pub)

    @classmethod
    def from_seed(cls, seed: bytes) -> MLDSASigner:
        return cls(mldsa.MLDSA65PrivateKey.from_seed_bytes(seed))

    def seed_bytes_unsafe(self) -> bytes:
        return self._key.private_bytes_raw()

    def sign(self, data: bytes) -> bytes:
        return self._key.sign(data)

    def public_bytes(self) -> bytes:
        return self._pub

    def __repr__(self) -> str:
        return f"MLDSASigner(key_id={self.key_id})"


class ServiceAuditSigner:
    """A service's signing key (:class:`x0tta6bl4.trust.Signer`) signing its audit chain (role ``audit``)."""

    def __init__(self, signer: ServiceSigner):
        self._signer = signer
        self.key_id = signer.key_id

    def sign(self, data: bytes) -> bytes:
        return self._signer.sign(ROLE_AUDIT, data)

    def public_bytes(self) -> bytes:
        return self._signer.public_key

    def __repr__(self) -> str:
        return f"ServiceAuditSigner({self._signer.owner!r}, key_id={self.key_id})"


class NodeAuditSigner:
    """An edge node signs its chain with the ML-DSA-65 half of its signing key (pure FIPS 204 over the event
    hash, as every chain). ``key_id`` is the id of the whole (hybrid) signing key: the id of its public-key
    record, by which a verifier finds the keyvault-signed record (:func:`keyvault_key`)."""

    def __init__(self, identity: NodeIdentity):
        self._key = identity.signing.private.mldsa
        self.key_id = identity.signing.key_id
        self._pub = identity.signing.public_key.mldsa.public_bytes()

    def sign(self, data: bytes) -> bytes:
        return self._key.sign(data)

    def public_bytes(self) -> bytes:
        return self._pub

    def __repr__(self) -> str:
        return f"NodeAuditSigner(key_id={self.key_id})"


def _jsonable(v: object) -> object:
    if isinstance(v, enum.Enum):
        return _jsonable(v.value)
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, Mapping):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    if isinstance(v, (set, frozenset)):
        return sorted((_jsonable(x) for x in v), key=str)
    if isinstance(v, (bytes, bytearray)):
        return bytes(v).hex()
    if v is None or isinstance(v, (str, bool, int, float)):
        return v
    return str(v)


def detail_value(v: object) -> str:
    """One audit detail as stored: a string as it is (a str enum: its value), anything else as JSON text
    (``true``, ``null``, ``3``, ``0.5``, ``["a"]``, ``{"k":1}``: sorted keys, no spaces; NaN and infinities
    become ``null``, bytes their hex, other objects their str())."""
    if isinstance(v, enum.Enum) and isinstance(v.value, str):
        return v.value
    if isinstance(v, str):
        return str.__str__(v)
    return json.dumps(_jsonable(v), sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def canonical_bytes(ev: events_pb2.AuditEvent) -> bytes:
    c = events_pb2.AuditEvent()
    c.CopyFrom(ev)
    c.ClearField("hash")
    c.ClearField("signature")
    c.ClearField("key_id")
    c.ClearField("public_key")
    return c.SerializeToString(deterministic=True)


@dataclass
class AuditChain:
    """Builds the next event of one chain."""

    service: str
    signer: Signer
    chain_id: str = ""
    seq: int = 0
    last_hash: bytes = GENESIS

    def __post_init__(self) -> None:
        if not self.chain_id:
            self.chain_id = f"{self.service}-{uuid.uuid4().hex[:12]}"

    def next(self, event_type: str, subject_id: str = "", details: Mapping[str, object] | None = None,
             cycle_id: str = "", trace_id: str = "") -> events_pb2.AuditEvent:
        ev = events_pb2.AuditEvent(
            meta=new_meta(self.service, cycle_id),
            service=self.service,
            event_type=event_type,
            subject_id=subject_id,
            chain_id=self.chain_id,
            chain_seq=self.seq + 1,
            prev_hash=self.last_hash,
            trace_id=trace_id,
        )
        for k, v in (details or {}).items():
            ev.details[str(k)] = detail_value(v)
        ev.hash = hashlib.sha256(canonical_bytes(ev)).digest()
        ev.signature = self.signer.sign(ev.hash)
        ev.key_id = self.signer.key_id
        ev.public_key = self.signer.public_bytes()
        self.seq += 1
        self.last_hash = ev.hash
        return ev


# ---- which keys are trusted ---------------------------------------------------------------------------
class UntrustedKey(Exception):
    """The key that signed an event is not trusted for the event's service; str() says why."""


class Unverifiable(Exception):
    """The verifier has nothing to check this event's key against (e.g. no pinned keyvault root)."""


KeyLookup = Callable[[events_pb2.AuditEvent], bytes]
"""The trusted ML-DSA-65 public key that must have signed an event, or UntrustedKey / Unverifiable."""

NO_KEYVAULT_ROOT = "no pinned keyvault root"


def bundle_key(bundle: TrustBundle, ev: events_pb2.AuditEvent) -> bytes:
    """The key of ``ev.service`` in the trust bundle that ``ev.key_id`` names (role ``audit``)."""
    try:
        k = bundle.find(ev.key_id)
    except TrustError:
        raise UntrustedKey(f"key {ev.key_id or '(none)'} is not in the trust bundle") from None
    if k.owner != ev.service:
        raise UntrustedKey(f"key {k.key_id} belongs to {k.owner}, not to {ev.service}")
    if ROLE_AUDIT not in k.roles:
        raise UntrustedKey(f"key {k.key_id} of {k.owner} is not trusted to sign audit events")
    return k.public_key


def keyvault_key(directory: KeyDirectory, ev: events_pb2.AuditEvent) -> bytes:
    """The ML-DSA-65 half of the edge node's signing key named by ``ev.key_id``, from a keyvault-signed
    record (``directory`` holds only records verified against the pinned keyvault root)."""
    from x0tta6bl4.pqc import HybridVerifyKey, KeyPurpose, SpiffeId
    rec = directory.lookup(ev.key_id)
    if rec is None:
        why = "is revoked" if directory.is_revoked(ev.key_id) else "has no keyvault-signed record"
        raise UntrustedKey(f"key {ev.key_id or '(none)'} {why}")
    if rec.purpose != KeyPurpose.SIGNING:
        raise UntrustedKey(f"key {rec.key_id} is not a signing key")
    node = SpiffeId.parse(rec.spiffe_id).node_id
    publisher = ev.details.get("published_by", "")
    if node != publisher:
        raise UntrustedKey(f"key {rec.key_id} is node {node}'s, the events were published by {publisher or '?'}")
    return HybridVerifyKey.from_bytes(rec.public_key).mldsa.public_bytes()


def trusted_keys(bundle: TrustBundle, keyvault: KeyDirectory | None = None,
                 unverified: str = NO_KEYVAULT_ROOT) -> KeyLookup:
    """Services' chains against the trust bundle; edge chains against keyvault-signed records (``keyvault``
    is fed from the ``keys`` bucket and verifies against a root pinned by configuration; None: no pinned
    root, edge chains are reported ``unverified`` with that reason)."""
    def lookup(ev: events_pb2.AuditEvent) -> bytes:
        if ev.service == EDGE_SERVICE:
            if keyvault is None:
                raise Unverifiable(unverified or NO_KEYVAULT_ROOT)
            return keyvault_key(keyvault, ev)
        return bundle_key(bundle, ev)
    return lookup


# ---- reading and verifying a trail -----------------------------------------------------------------------
def parse_event(data: bytes) -> events_pb2.AuditEvent:
    """Bytes from ``audit.>`` as an audit event, or ValueError naming what is wrong with them."""
    try:
        ev = events_pb2.AuditEvent.FromString(data)
    except DecodeError as e:
        raise ValueError(f"does not parse as an AuditEvent ({e})") from None
    missing = [f for f in ("service", "event_type", "chain_id", "hash", "signature") if not getattr(ev, f)]
    if missing:
        raise ValueError(f"not an audit event: {', '.join(missing)} missing")
    if ev.chain_seq < 1:
        raise ValueError("not an audit event: chain_seq 0")
    if len(ev.hash) != 32 or len(ev.prev_hash) != 32:
        raise ValueError("not an audit event: hash or prev_hash is not 32 bytes")
    return ev


EXAMPLES = 3


@dataclass
class ChainResult:
    """What the verification found in one chain (or, with ``chain_id`` "", among unreadable entries)."""

    chain_id: str
    service: str = ""
    events: int = 0
    verified: int = 0                   # events with valid content, a trusted signature and a good link
    unverified: str = ""                # why signatures could not be checked against a trusted key
    found: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))

    def add(self, kind: str, text: str) -> None:
        self.found[kind].append(text)

    @property
    def ok(self) -> bool:
        return not self.found

    @property
    def counts(self) -> dict[str, int]:
        return {k: len(self.found[k]) for k in KINDS if self.found.get(k)}

    def examples(self, kind: str, n: int = EXAMPLES) -> list[str]:
        return self.found.get(kind, [])[:n]

    def summary(self) -> str:
        """One line: the counts per kind with the first examples of each."""
        parts = [f"{kind} {count} (" + "; ".join(self.examples(kind)) + (", ..." if count > EXAMPLES else "") + ")"
                 for kind, count in self.counts.items()]
        return ", ".join(parts)

    def to_dict(self) -> dict[str, object]:
        return {"chain_id": self.chain_id, "service": self.service, "events": self.events,
                "verified": self.verified, "unverified": self.unverified, "counts": self.counts,
                "examples": {k: self.examples(k) for k in self.counts}}


@dataclass
class TrailReport:
    results: dict[str, ChainResult] = field(default_factory=dict)       # by chain id
    unreadable: ChainResult = field(default_factory=lambda: ChainResult(""))

    @property
    def chains(self) -> int:
        return len(self.results)

    @property
    def events(self) -> int:
        return sum(r.events for r in self.results.values()) + self.unreadable.events

    @property
    def verified(self) -> int:
        return sum(r.verified for r in self.results.values())

    @property
    def bad(self) -> list[ChainResult]:
        return [r for r in [self.unreadable, *self.results.values()] if not r.ok]

    @property
    def unverified(self) -> list[ChainResult]:
        return [r for r in self.results.values() if r.unverified]

    @property
    def counts(self) -> dict[str, int]:
        total: Counter[str] = Counter()
        for r in [self.unreadable, *self.results.values()]:
            total.update(r.counts)
        return {k: total[k] for k in KINDS if total[k]}

    @property
    def problems(self) -> list[str]:
        """Every problem, one line each (``chain <id> <kind>: seq <n>: <what>``)."""
        out = [f"{GARBAGE}: {p}" for p in self.unreadable.found.get(GARBAGE, [])]
        for r in self.results.values():
            for kind in KINDS:
                out += [f"chain {r.chain_id} {kind}: {p}" for p in r.found.get(kind, [])]
        return out

    @property
    def ok(self) -> bool:
        """No problem found (chains left unverified are listed in :attr:`unverified`, not problems)."""
        return not self.bad

    def to_dict(self) -> dict[str, object]:
        return {"ok": self.ok, "events": self.events, "chains": self.chains, "verified": self.verified,
                "counts": self.counts, "unreadable": self.unreadable.to_dict(),
                "results": [r.to_dict() for r in self.results.values()]}


def _signature_ok(public_key: bytes, ev: events_pb2.AuditEvent) -> bool:
    try:
        mldsa.MLDSA65PublicKey.from_public_bytes(public_key).verify(ev.signature, ev.hash)
        return True
    except (InvalidSignature, ValueError):
        return False


def verify_chains(events: Iterable[events_pb2.AuditEvent], keys: KeyLookup | None = None,
                  garbage: Iterable[str] = ()) -> TrailReport:
    """Check every event and every chain; report each problem and go on.

    ``keys`` names the trusted key of each event (:func:`trusted_keys`). Without it (or when it raises
    :class:`Unverifiable` for a chain) a chain's signatures are checked only against the key its first event
    carries, and the chain is reported unverified: that proves no edit by a careless hand, not authorship.
    ``garbage`` are descriptions of entries that were not audit events at all (see :func:`parse_event`).
    """
    report = TrailReport()
    for g in garbage:
        report.unreadable.events += 1
        report.unreadable.add(GARBAGE, g)
    by_chain: dict[str, list[events_pb2.AuditEvent]] = defaultdict(list)
    for ev in events:
        by_chain[ev.chain_id].append(ev)
    for chain_id, evs in by_chain.items():
        res = report.results[chain_id] = ChainResult(chain_id, evs[0].service, len(evs))
        first_key = min(evs, key=lambda e: e.chain_seq).public_key
        checked: list[tuple[events_pb2.AuditEvent, bool]] = []
        for ev in evs:
            where = f"seq {ev.chain_seq}"
            authentic = True
            if hashlib.sha256(canonical_bytes(ev)).digest() != ev.hash:
                res.add(EDITED, f"{where}: content does not match its hash (edited)")
                authentic = False
            if ev.service != res.service:
                res.add(FORGED, f"{where}: claims service {ev.service!r} in a chain of {res.service!r}")
                authentic = False
            try:
                if keys is None:
                    raise Unverifiable("no trusted keys given")
                public_key = keys(ev)
            except UntrustedKey as e:
                res.add(UNKNOWN_KEY, f"{where}: {e}")
                checked.append((ev, False))
                continue
            except Unverifiable as e:
                res.unverified = str(e)
                public_key = first_key
            if not _signature_ok(public_key, ev):
                res.add(FORGED, f"{where}: bad signature for key {ev.key_id or key_id_of(public_key)}")
                authentic = False
            checked.append((ev, authentic))
        # the order: authentic events first among equal sequence numbers, so an injected copy is the odd one out
        checked.sort(key=lambda c: (c[0].chain_seq, not c[1]))
        prev, expected = GENESIS, 1
        for ev, authentic in checked:
            seq = ev.chain_seq
            if seq < expected:
                if authentic:
                    res.add(DUPLICATE, f"seq {seq}: a second signed event with this sequence number")
                continue    # an injected or repeated event does not move the chain
            linked = True
            if seq > expected:
                res.add(GAP, f"seq {seq}: events {expected}..{seq - 1} are missing" if seq - 1 > expected
                        else f"seq {seq}: event {expected} is missing")
            elif ev.prev_hash != prev:
                res.add(BROKEN_LINK, f"seq {seq}: prev_hash is not the hash of event {seq - 1}"
                        if seq > 1 else f"seq {seq}: the first event does not start from the genesis hash")
                linked = False
            prev, expected = ev.hash, seq + 1
            if authentic and linked:
                res.verified += 1
    return report
