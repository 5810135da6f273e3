"""The governance event log, signed and hash-chained (pure: no I/O).

A *record* is what the governance writer stores as one message: the events of one group commit and their
service records (links from a proposal to the plan that caused it). Records form a chain: each names its
position and the hash of the record before it, and is signed by the governance log key (role
``govlog`` of :mod:`x0tta6bl4.trust`). Replay (:class:`LogReplay`) applies a record only when it is
well-formed, unaltered, signed by a key the trust bundle trusts for ``govlog`` and the next link of the
chain; anything else is *quarantined* (reported with its reason, never applied), and the chain goes on
from the last valid record, so a forged or garbage message neither enters the state nor breaks the chain
of the genuine records written after it.

Wire format (one message, UTF-8)::

    <header JSON> "\\n" <body>

    header = {"v": 2, "seq": <int>, "prev": <hex>, "hash": <hex>, "key_id": <str>, "sig": <base64>}
    body   = {"events": [event_to_dict(e), ...], "links": [{...}, ...]}          (JSON, no newline)
             optionally with "legacy": {"records": <int>, "sha256": <hex>}       (see Migration)

* ``seq``: the record's position in the chain (1, 2, 3 ...; counts valid records only, not stream
  sequences: foreign messages also take stream sequences, and an archived stream restored elsewhere
  is renumbered).
* ``prev``: the ``hash`` of record ``seq - 1`` (64 zero hex digits for record 1).
* ``hash``: SHA-256 of the canonical encoding::

      field(b"x0tta6bl4/gov-log/v2") || uint64_be(seq) || field(prev) || field(key_id) || field(body)

      field(x) = uint32_be(len(x)) || x;  prev = the 32 raw hash bytes;  key_id = UTF-8;
      body = the exact body bytes of the message (after the first newline; never re-encoded)

* ``sig``: ML-DSA-65 (FIPS 204) signature over the 32 raw ``hash`` bytes with the ``govlog`` context
  (``trust.CONTEXTS``), by the key ``key_id`` (the first 16 hex digits of SHA-256 of its public key).

Verification order (the first failure is the quarantine reason): header, hash, signature, chain link,
body. The writer keeps the chain head of the last *valid* record and appends after it.

Migration: the log written before this format (``{"v": 1, "events": [...], "links": [...]}``, unsigned)
cannot be verified. Replay keeps such *legacy* records found before the first signed record aside
(:attr:`LogReplay.legacy`, not applied). The service refuses to start on a log that has legacy records and
no signed record unless the operator accepts them once (setting ``gov_adopt_legacy_log``): then the
legacy records are applied and the first signed record seals them, carrying ``"legacy": {"records": N,
"sha256": legacy_digest(...)}``; later replays apply the legacy prefix only when it matches that seal. A
legacy-format record after a signed one, or a prefix no signed record seals, is quarantined.
"""
from __future__ import annotations

import base64
import binascii
import hashlib
import json
import struct
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from .events import GovernanceEvent, event_from_dict, event_to_dict

__all__ = [
    "GENESIS",
    "HASH_DOMAIN",
    "LEGACY_VERSION",
    "LOG_VERSION",
    "OWNERS",
    "ROLE",
    "Applied",
    "Head",
    "LegacyRecord",
    "LegacySeal",
    "LogError",
    "LogReplay",
    "LogSigner",
    "LogVerifier",
    "Quarantined",
    "Record",
    "decode_legacy",
    "encode_body",
    "encode_legacy",
    "legacy_digest",
    "open_record",
    "record_hash",
    "seal",
]

LOG_VERSION = 2
LEGACY_VERSION = 1
HASH_DOMAIN = b"x0tta6bl4/gov-log/v2"
LEGACY_DOMAIN = b"x0tta6bl4/gov-log-legacy/v1"
ROLE = "govlog"                  # x0tta6bl4.trust.ROLE_GOVLOG (not imported: the domain names no key store)
OWNERS = ("governance",)         # whose govlog keys may sign the log
_HEADER_KEYS = {"v", "seq", "prev", "hash", "key_id", "sig"}


class LogError(ValueError):
    """A message is not a valid next record of the log. ``str()`` is the quarantine reason."""


class LogSigner(Protocol):
    """What signs records (``x0tta6bl4.trust.Signer``)."""

    @property
    def key_id(self) -> str: ...

    def sign(self, role: str, data: bytes) -> bytes: ...


class LogVerifier(Protocol):
    """What checks a record's signature (``x0tta6bl4.trust.TrustBundle``): returns anything, raises an
    exception naming why the signature is not trusted."""

    def verify(self, role: str, key_id: str, data: bytes, signature: bytes, *,
               owners: Iterable[str] | None = None) -> Any: ...


@dataclass(frozen=True)
class Head:
    """The end of the valid chain: the last valid record's position and hash."""

    seq: int
    hash: bytes

    def __repr__(self) -> str:
        return f"Head({self.seq}, {self.hash.hex()[:16]})"


GENESIS = Head(0, bytes(32))


@dataclass(frozen=True)
class LegacySeal:
    """What the first signed record says about the unsigned (v1) records before it."""

    records: int
    sha256: bytes


@dataclass(frozen=True)
class Record:
    """A verified (or just sealed) record."""

    seq: int
    prev: bytes
    hash: bytes
    key_id: str
    signature: bytes = field(repr=False)
    events: tuple[GovernanceEvent, ...]
    links: tuple[dict, ...]
    legacy: LegacySeal | None = None

    @property
    def head(self) -> Head:
        return Head(self.seq, self.hash)


@dataclass(frozen=True)
class LegacyRecord:
    """An unsigned v1 record kept aside by replay (not applied)."""

    stream_seq: int
    data: bytes = field(repr=False)
    events: tuple[GovernanceEvent, ...]
    links: tuple[dict, ...]


@dataclass(frozen=True)
class Applied:
    """Replay's verdict: apply these events and links (``record_seq`` 0 for adopted legacy records)."""

    stream_seq: int
    record_seq: int
    events: tuple[GovernanceEvent, ...]
    links: tuple[dict, ...]


@dataclass(frozen=True)
class Quarantined:
    """Replay's verdict: the message at ``stream_seq`` is not applied, because ``reason``."""

    stream_seq: int
    reason: str


# ---- encoding ------------------------------------------------------------------------------------------
def _field(data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + data


def record_hash(seq: int, prev: bytes, key_id: str, body: bytes) -> bytes:
    """SHA-256 of the canonical encoding of a record (see the module docstring)."""
    if not 0 < seq < 2 ** 64:
        raise LogError(f"record position {seq} out of range")
    return hashlib.sha256(_field(HASH_DOMAIN) + struct.pack(">Q", seq) + _field(prev)
                          + _field(key_id.encode()) + _field(body)).digest()


def _json(value: Any) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False).encode()


def encode_body(events: Sequence[GovernanceEvent], links: Sequence[Mapping[str, Any]],
                legacy: LegacySeal | None = None) -> bytes:
    doc: dict[str, Any] = {"events": [event_to_dict(e) for e in events], "links": [dict(lk) for lk in links]}
    if legacy is not None:
        doc["legacy"] = {"records": legacy.records, "sha256": legacy.sha256.hex()}
    return _json(doc)


def seal(head: Head, events: Sequence[GovernanceEvent], links: Sequence[Mapping[str, Any]], signer: LogSigner,
         legacy: LegacySeal | None = None) -> tuple[bytes, Record]:
    """The message of the record after ``head`` (and the record itself)."""
    body = encode_body(events, links, legacy)
    seq = head.seq + 1
    digest = record_hash(seq, head.hash, signer.key_id, body)
    sig = signer.sign(ROLE, digest)
    header = {"v": LOG_VERSION, "seq": seq, "prev": head.hash.hex(), "hash": digest.hex(),
              "key_id": signer.key_id, "sig": base64.b64encode(sig).decode()}
    record = Record(seq, head.hash, digest, signer.key_id, sig, tuple(events),
                    tuple(dict(lk) for lk in links), legacy)
    return _json(header) + b"\n" + body, record


# ---- decoding ------------------------------------------------------------------------------------------
def _short(e: Exception) -> str:
    text = str(e)
    return f"{type(e).__name__}: {text[:200]}"


def _decode_events(raw: Any) -> tuple[tuple[GovernanceEvent, ...], tuple[dict, ...]]:
    """events and links of a body document (v1 or v2), or LogError."""
    if not isinstance(raw, dict):
        raise LogError("body is not a JSON object")
    events, links = raw.get("events"), raw.get("links", [])
    if not isinstance(events, list) or not isinstance(links, list):
        raise LogError("body: 'events' and 'links' must be lists")
    try:
        decoded = tuple(event_from_dict(d) for d in events)
    except Exception as e:  # noqa: BLE001 - untrusted input: any failure to decode is the reason
        raise LogError(f"undecodable event: {_short(e)}") from None
    for i, lk in enumerate(links):
        if not isinstance(lk, dict) or not isinstance(lk.get("proposal_id"), str) \
                or not isinstance(lk.get("action_id", ""), str):
            raise LogError(f"body: links[{i}] is not a link (proposal_id and action_id strings)")
    return decoded, tuple(links)


def _header(data: bytes) -> tuple[dict, bytes]:
    head, sep, body = data.partition(b"\n")
    if not sep:
        raise LogError("not a log record: no header line")
    try:
        header = json.loads(head)
    except (ValueError, UnicodeDecodeError) as e:
        raise LogError(f"not a log record: header is not JSON ({_short(e)})") from None
    if not isinstance(header, dict):
        raise LogError("not a log record: header is not a JSON object")
    if header.get("v") != LOG_VERSION:
        raise LogError(f"unsupported log record version {header.get('v')!r} (expected {LOG_VERSION})")
    if set(header) != _HEADER_KEYS:
        raise LogError(f"header fields {sorted(header)}, expected {sorted(_HEADER_KEYS)}")
    if not isinstance(header["seq"], int) or isinstance(header["seq"], bool) \
            or not all(isinstance(header[k], str) for k in ("prev", "hash", "key_id", "sig")):
        raise LogError("header: seq must be an integer; prev, hash, key_id and sig strings")
    return header, body


def open_record(data: bytes, head: Head, verifier: LogVerifier) -> Record:
    """The record ``data`` if it is valid and the next link after ``head``; LogError names what is wrong."""
    header, body = _header(data)
    seq = header["seq"]
    try:
        prev = bytes.fromhex(header["prev"])
        claimed = bytes.fromhex(header["hash"])
        sig = base64.b64decode(header["sig"], validate=True)
    except (ValueError, binascii.Error) as e:
        raise LogError(f"header: bad hex or base64 ({_short(e)})") from None
    if len(prev) != 32 or len(claimed) != 32:
        raise LogError("header: prev and hash must be 32-byte SHA-256 digests")
    digest = record_hash(seq, prev, header["key_id"], body)
    if digest != claimed:
        raise LogError(f"record {seq}: hash mismatch (the record was altered)")
    try:
        verifier.verify(ROLE, header["key_id"], digest, sig, owners=OWNERS)
    except Exception as e:  # noqa: BLE001 - whatever the verifier raises is the reason (TrustError)
        raise LogError(f"record {seq}: signature not trusted: {e}") from None
    if seq <= head.seq:
        raise LogError(f"record {seq} replayed or out of order: the log is already at record {head.seq}")
    if seq > head.seq + 1:
        raise LogError(f"record {seq} does not follow record {head.seq}: records missing in between")
    if prev != head.hash:
        raise LogError(f"record {seq} does not link to record {head.seq} (prev {prev.hex()[:16]}, "
                       f"expected {head.hash.hex()[:16]})")
    try:
        doc = json.loads(body)
    except (ValueError, UnicodeDecodeError) as e:
        raise LogError(f"record {seq}: body is not JSON ({_short(e)})") from None
    events, links = _decode_events(doc)
    legacy = None
    if "legacy" in doc:
        raw = doc["legacy"]
        try:
            legacy = LegacySeal(int(raw["records"]), bytes.fromhex(raw["sha256"]))
        except (ValueError, KeyError, TypeError) as e:
            raise LogError(f"record {seq}: bad legacy seal ({_short(e)})") from None
    return Record(seq, prev, digest, header["key_id"], sig, events, links, legacy)


def encode_legacy(events: Sequence[GovernanceEvent], links: Sequence[Mapping[str, Any]]) -> bytes:
    """A record in the unsigned v1 format (the log before signing; tests and migration tools)."""
    return json.dumps({"v": LEGACY_VERSION, "events": [event_to_dict(e) for e in events],
                       "links": [dict(lk) for lk in links]}, separators=(",", ":")).encode()


def decode_legacy(data: bytes) -> tuple[tuple[GovernanceEvent, ...], tuple[dict, ...]] | None:
    """The events and links of an unsigned v1 record; None if ``data`` is not in the v1 format at all;
    LogError if it claims v1 but does not decode."""
    if not data.startswith(b"{"):
        return None
    try:
        doc = json.loads(data)
    except (ValueError, UnicodeDecodeError):
        return None
    if not isinstance(doc, dict) or doc.get("v") != LEGACY_VERSION:
        return None
    try:
        return _decode_events(doc)
    except LogError as e:
        raise LogError(f"unsigned legacy (v1) record: {e}") from None


def legacy_digest(data: Iterable[bytes]) -> bytes:
    """SHA-256 over the legacy records' exact bytes, in stream order: field(domain) || field(m1) || ..."""
    h = hashlib.sha256(_field(LEGACY_DOMAIN))
    for d in data:
        h.update(_field(d))
    return h.digest()


# ---- replay --------------------------------------------------------------------------------------------
class LogReplay:
    """Reads the log message by message and says what to apply and what to quarantine.

    ``feed(stream_seq, data)`` returns the verdicts for that message in order (legacy records kept aside
    come out with the signed record that seals them). ``head`` is the end of the valid chain: the writer
    seals its next record after it, then calls :meth:`advance`.
    """

    def __init__(self, verifier: LogVerifier):
        self.verifier = verifier
        self.head = GENESIS
        self.legacy: list[LegacyRecord] = []   # unsigned v1 records before the first signed one

    def feed(self, stream_seq: int, data: bytes) -> list[Applied | Quarantined]:
        try:
            old = decode_legacy(data)
        except LogError as e:
            return [Quarantined(stream_seq, str(e))]
        if old is not None:
            if self.head.seq:
                return [Quarantined(stream_seq, "unsigned record in the legacy (v1) format after the log was "
                                                "signed")]
            self.legacy.append(LegacyRecord(stream_seq, data, *old))
            return []
        try:
            rec = open_record(data, self.head, self.verifier)
        except LogError as e:
            return [Quarantined(stream_seq, str(e))]
        out: list[Applied | Quarantined] = []
        if rec.seq == 1 and self.legacy:
            out.extend(self._settle_legacy(rec.legacy))
        self.advance(rec)
        out.append(Applied(stream_seq, rec.seq, rec.events, rec.links))
        return out

    def _settle_legacy(self, legacy_seal: LegacySeal | None) -> list[Applied | Quarantined]:
        """The legacy prefix, now that the first signed record says whether it adopted it."""
        prefix, self.legacy = self.legacy, []
        if legacy_seal is None:
            why = "unsigned record (legacy v1 format) that the signed log did not adopt"
            return [Quarantined(r.stream_seq, why) for r in prefix]
        if legacy_seal != self.seal_of(prefix):
            why = (f"unsigned record (legacy v1 format) does not match the adopted legacy log "
                   f"({legacy_seal.records} records, sha256 {legacy_seal.sha256.hex()[:16]})")
            return [Quarantined(r.stream_seq, why) for r in prefix]
        return [Applied(r.stream_seq, 0, r.events, r.links) for r in prefix]

    @staticmethod
    def seal_of(prefix: Sequence[LegacyRecord]) -> LegacySeal:
        return LegacySeal(len(prefix), legacy_digest(r.data for r in prefix))

    def adopt_legacy(self) -> tuple[list[Applied], LegacySeal]:
        """Accept the legacy prefix (the operator said so): what to apply, and the seal the next record
        (record 1) must carry. Only before the first signed record."""
        if self.head.seq:
            raise LogError("the log is signed already: nothing to adopt")
        prefix, self.legacy = self.legacy, []
        return [Applied(r.stream_seq, 0, r.events, r.links) for r in prefix], self.seal_of(prefix)

    def advance(self, record: Record) -> None:
        """``record`` is stored as the next link (replayed, or appended by this writer)."""
        if record.seq != self.head.seq + 1 or record.prev != self.head.hash:
            raise LogError(f"record {record.seq} does not follow record {self.head.seq}")
        self.head = record.head
