"""The audit trail as a hash chain of signed protobuf events (no I/O).

Each service instance keeps one chain. Event ``n`` carries ``chain_seq = n``,
``prev_hash`` = the hash of event ``n-1`` (32 zero bytes for the first) and
``hash`` = SHA-256 over the deterministic encoding of the event with ``hash``,
``signature``, ``key_id`` and ``public_key`` cleared. ``signature`` is
ML-DSA-65 over ``hash``. ``verify_chains`` proves a trail has no gap and no edit.
"""
from __future__ import annotations

import hashlib
import uuid
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Protocol

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric import mldsa

from x0tta6bl4.ids import new_meta
from x0tta6bl4.v1 import events_pb2

GENESIS = bytes(32)


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
            ev.details[str(k)] = str(v)
        ev.hash = hashlib.sha256(canonical_bytes(ev)).digest()
        ev.signature = self.signer.sign(ev.hash)
        ev.key_id = self.signer.key_id
        ev.public_key = self.signer.public_bytes()
        self.seq += 1
        self.last_hash = ev.hash
        return ev


@dataclass
class ChainReport:
    chains: int = 0
    events: int = 0
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def verify_chains(events: Iterable[events_pb2.AuditEvent],
                  trusted_key: Callable[[str], bytes | None] | None = None) -> ChainReport:
    """Check every chain: contiguous sequence from 1, links, hashes, signatures.

    ``trusted_key(service)`` returns the pinned public key of a service (or None
    to accept the key pinned by the chain's first event).
    """
    report = ChainReport()
    by_chain: dict[str, list[events_pb2.AuditEvent]] = defaultdict(list)
    for ev in events:
        by_chain[ev.chain_id].append(ev)
    report.chains = len(by_chain)
    for chain_id, evs in by_chain.items():
        evs.sort(key=lambda e: e.chain_seq)
        prev = GENESIS
        expected = 1
        pinned = trusted_key(evs[0].service) if trusted_key else None
        pinned = pinned or evs[0].public_key
        for ev in evs:
            report.events += 1
            where = f"chain {chain_id} seq {ev.chain_seq}"
            if ev.chain_seq != expected:
                report.problems.append(f"{where}: gap, expected seq {expected}")
                expected = ev.chain_seq
            if ev.prev_hash != prev:
                report.problems.append(f"{where}: prev_hash does not link to the previous event")
            digest = hashlib.sha256(canonical_bytes(ev)).digest()
            if digest != ev.hash:
                report.problems.append(f"{where}: content was edited (hash mismatch)")
            if ev.public_key != pinned:
                report.problems.append(f"{where}: signed by an unexpected key {key_id_of(ev.public_key)}")
            try:
                mldsa.MLDSA65PublicKey.from_public_bytes(pinned).verify(ev.signature, ev.hash)
            except (InvalidSignature, ValueError):
                report.problems.append(f"{where}: bad signature")
            prev = ev.hash
            expected += 1
    return report
