"""The governance event log, signed and hash-chained (pure: no I/O).

A *record* is what the governance writer stores as one message: the events of one group commit and their
service records (links from a proposal to the plan that caused it). Records form a chain: each names its
position and the hash of the record before it, and is signed by the governance log key (role
``govlog`` of :mod:`x0tta6bl4.trust`). Replay (:class:`LogReplay`) applies a record only when it is
well-formed, unaltered, signed by a key the trust bundle trusts for ``govlog`` and the next link of the
chain; anything else is *quarantined* (reported with its reason, never applied), and the chain goes on
from the last valid record, so a forged or garbage message neither enters the state nor breaks the chain
of the genuine records written after it.

Formats. The writer writes v3; replay reads v3, v2 and the unsigned v1 (see Migration). One chain may hold
both signed formats: a log written by an earlier version goes on after an upgrade with v3 records whose
``prev`` is the hash of the last v2 record (``seq`` and ``prev`` do not depend on the format, each record's
hash is computed by the rules of its own format). A message is read as JSON (v1 or v2) when its first byte
is ``{``, as a v3 protobuf otherwise.

v3 (written): one message = a ``x0tta6bl4.v1.GovLogRecord`` (proto/x0tta6bl4/v1/govlog.proto) in the
protobuf binary encoding::

    GovLogRecord {version = 3, seq, prev, hash, key_id, sig, body}      fields 1..7
    body = a serialized GovLogBody {events: [GovEvent ...], links: [GovLogLink ...], legacy?: GovLegacySeal}

* ``seq``: the record's position in the chain (1, 2, 3 ...; counts valid records only, not stream
  sequences: foreign messages also take stream sequences, and an archived stream restored elsewhere
  is renumbered).
* ``prev``: the hash of record ``seq - 1`` (32 raw bytes; 32 zero bytes for record 1), whatever its format.
* ``hash``: the 32 raw bytes of SHA-256 of the canonical encoding::

      field(b"x0tta6bl4/gov-log/v3") || uint64_be(seq) || field(prev) || field(key_id) || field(body)

      field(x) = uint32_be(len(x)) || x;  prev = the 32 raw hash bytes;  key_id = UTF-8;
      body = the exact bytes of GovLogRecord.body (never re-encoded)

* ``sig``: the raw ML-DSA-65 (FIPS 204) signature over the 32 raw ``hash`` bytes with the ``govlog``
  context ``b"x0tta6bl4/gov-event/v1"`` (``trust.CONTEXTS``), by the key ``key_id`` (the first 16 hex digits
  of SHA-256 of its public key).
* The message must be the canonical encoding of its fields (each field once, in field-number order, no
  unknown fields, a field at its default value left out - the empty body of a record without events and
  links: what ``SerializeToString()`` gives): nothing outside the hash and the signature rides along.
  The body's events and links are :mod:`.events_pb` (each event dataclass is the message of the same name;
  the oneof member is its ``TYPE`` without ``governance.``).

v2 (read, no longer written): one message, UTF-8::

    <header JSON> "\\n" <body>

    header = {"v": 2, "seq": <int>, "prev": <hex>, "hash": <hex>, "key_id": <str>, "sig": <base64>}
    body   = {"events": [event_to_dict(e), ...], "links": [{...}, ...]}          (JSON, no newline)
             optionally with "legacy": {"records": <int>, "sha256": <hex>}       (see Migration)

  with ``seq``, ``prev`` (hex), ``key_id`` and ``sig`` (base64) as in v3, and ``hash`` (hex) the SHA-256 of
  ``field(b"x0tta6bl4/gov-log/v2") || uint64_be(seq) || field(prev) || field(key_id) || field(body)``,
  body = the exact body bytes of the message (after the first newline; never re-encoded).

Verification order (the first failure is the quarantine reason): envelope (v3: protobuf, version, canonical
encoding; v2: header), hash, signature, chain link, body. The writer keeps the chain head of the last
*valid* record and appends after it.

Migration: the log written before signing (``{"v": 1, "events": [...], "links": [...]}``, unsigned)
cannot be verified. Replay keeps such *legacy* records found before the first signed record aside
(:attr:`LogReplay.legacy`, not applied). The service refuses to start on a log that has legacy records and
no signed record unless the operator accepts them once (setting ``gov_adopt_legacy_log``): then the
legacy records are applied and the first signed record seals them, carrying ``legacy`` = the number of
records and ``legacy_digest(...)`` (v3: ``GovLogBody.legacy``; v2: ``"legacy": {"records": N, "sha256":
<hex>}``); later replays apply the legacy prefix only when it matches that seal. A legacy-format record
after a signed one, or a prefix no signed record seals, is quarantined.
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

from google.protobuf.message import DecodeError

from x0tta6bl4.v1 import govlog_pb2

from .events import GovernanceEvent, event_from_dict, event_to_dict
from .events_pb import event_from_pb, event_to_pb, link_from_pb, link_to_pb

__all__ = [
    "GENESIS",
    "HASH_DOMAIN",
    "HASH_DOMAINS",
    "JSON_VERSION",
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

LOG_VERSION = 3                  # what the writer writes: a GovLogRecord protobuf
JSON_VERSION = 2                 # the signed JSON format before it (read)
LEGACY_VERSION = 1               # the unsigned JSON format before signing (read, see Migration)
HASH_DOMAINS = {JSON_VERSION: b"x0tta6bl4/gov-log/v2", LOG_VERSION: b"x0tta6bl4/gov-log/v3"}
HASH_DOMAIN = HASH_DOMAINS[LOG_VERSION]
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
    """A verified (or just sealed) record; ``version`` its format (3, or 2 for a JSON record)."""

    seq: int
    prev: bytes
    hash: bytes
    key_id: str
    signature: bytes = field(repr=False)
    events: tuple[GovernanceEvent, ...]
    links: tuple[dict, ...]
    legacy: LegacySeal | None = None
    version: int = LOG_VERSION

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


def _version(version: int) -> bytes:
    try:
        return HASH_DOMAINS[version]
    except KeyError:
        raise LogError(f"no signed log format version {version!r} (known: 2, 3)") from None


def record_hash(seq: int, prev: bytes, key_id: str, body: bytes, version: int = LOG_VERSION) -> bytes:
    """SHA-256 of the canonical encoding of a record of format ``version`` (see the module docstring)."""
    domain = _version(version)
    if not 0 < seq < 2 ** 64:
        raise LogError(f"record position {seq} out of range")
    return hashlib.sha256(_field(domain) + struct.pack(">Q", seq) + _field(prev)
                          + _field(key_id.encode()) + _field(body)).digest()


def _json(value: Any) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False).encode()


def encode_body(events: Sequence[GovernanceEvent], links: Sequence[Mapping[str, Any]],
                legacy: LegacySeal | None = None, version: int = LOG_VERSION) -> bytes:
    """A record's body: a serialized GovLogBody (v3) or the JSON body (v2)."""
    _version(version)
    if version == JSON_VERSION:
        doc: dict[str, Any] = {"events": [event_to_dict(e) for e in events], "links": [dict(lk) for lk in links]}
        if legacy is not None:
            doc["legacy"] = {"records": legacy.records, "sha256": legacy.sha256.hex()}
        return _json(doc)
    body = govlog_pb2.GovLogBody(events=[event_to_pb(e) for e in events], links=[link_to_pb(lk) for lk in links])
    if legacy is not None:
        body.legacy.records, body.legacy.sha256 = legacy.records, legacy.sha256
    return body.SerializeToString(deterministic=True)


def seal(head: Head, events: Sequence[GovernanceEvent], links: Sequence[Mapping[str, Any]], signer: LogSigner,
         legacy: LegacySeal | None = None, *, version: int = LOG_VERSION) -> tuple[bytes, Record]:
    """The message of the record after ``head`` (and the record itself), in format ``version`` (3; 2 only to
    write what an earlier writer wrote: tests, migration tools)."""
    body = encode_body(events, links, legacy, version)
    seq = head.seq + 1
    digest = record_hash(seq, head.hash, signer.key_id, body, version)
    sig = signer.sign(ROLE, digest)
    record = Record(seq, head.hash, digest, signer.key_id, sig, tuple(events),
                    tuple(dict(lk) for lk in links), legacy, version)
    if version == JSON_VERSION:
        header = {"v": JSON_VERSION, "seq": seq, "prev": head.hash.hex(), "hash": digest.hex(),
                  "key_id": signer.key_id, "sig": base64.b64encode(sig).decode()}
        return _json(header) + b"\n" + body, record
    msg = govlog_pb2.GovLogRecord(version=LOG_VERSION, seq=seq, prev=head.hash, hash=digest, key_id=signer.key_id,
                                  sig=sig, body=body)
    return msg.SerializeToString(), record


# ---- decoding ------------------------------------------------------------------------------------------
def _short(e: Exception) -> str:
    text = str(e)
    return f"{type(e).__name__}: {text[:200]}"


def _decode_events(raw: Any) -> tuple[tuple[GovernanceEvent, ...], tuple[dict, ...]]:
    """events and links of a JSON body document (v1 or v2), or LogError."""
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
        raise LogError("not a log record: JSON without a header line (neither v1 nor v2)")
    try:
        header = json.loads(head)
    except (ValueError, UnicodeDecodeError) as e:
        raise LogError(f"not a log record: header is not JSON ({_short(e)})") from None
    if not isinstance(header, dict):
        raise LogError("not a log record: header is not a JSON object")
    if header.get("v") != JSON_VERSION:
        raise LogError(f"unsupported JSON log record version {header.get('v')!r} (JSON records are v{JSON_VERSION}; "
                       f"v{LOG_VERSION} is a GovLogRecord protobuf)")
    if set(header) != _HEADER_KEYS:
        raise LogError(f"header fields {sorted(header)}, expected {sorted(_HEADER_KEYS)}")
    if not isinstance(header["seq"], int) or isinstance(header["seq"], bool) \
            or not all(isinstance(header[k], str) for k in ("prev", "hash", "key_id", "sig")):
        raise LogError("header: seq must be an integer; prev, hash, key_id and sig strings")
    return header, body


def _check(version: int, seq: int, prev: bytes, claimed: bytes, key_id: str, sig: bytes, body: bytes, head: Head,
           verifier: LogVerifier) -> bytes:
    """Hash, signature and chain link of a record (in that order); returns its hash."""
    if len(prev) != 32 or len(claimed) != 32:
        raise LogError("header: prev and hash must be 32-byte SHA-256 digests")
    digest = record_hash(seq, prev, key_id, body, version)
    if digest != claimed:
        raise LogError(f"record {seq}: hash mismatch (the record was altered)")
    try:
        verifier.verify(ROLE, key_id, digest, sig, owners=OWNERS)
    except Exception as e:  # noqa: BLE001 - whatever the verifier raises is the reason (TrustError)
        raise LogError(f"record {seq}: signature not trusted: {e}") from None
    if seq <= head.seq:
        raise LogError(f"record {seq} replayed or out of order: the log is already at record {head.seq}")
    if seq > head.seq + 1:
        raise LogError(f"record {seq} does not follow record {head.seq}: records missing in between")
    if prev != head.hash:
        raise LogError(f"record {seq} does not link to record {head.seq} (prev {prev.hex()[:16]}, "
                       f"expected {head.hash.hex()[:16]})")
    return digest


def _open_json(data: bytes, head: Head, verifier: LogVerifier) -> Record:
    header, body = _header(data)
    seq = header["seq"]
    try:
        prev = bytes.fromhex(header["prev"])
        claimed = bytes.fromhex(header["hash"])
        sig = base64.b64decode(header["sig"], validate=True)
    except (ValueError, binascii.Error) as e:
        raise LogError(f"header: bad hex or base64 ({_short(e)})") from None
    digest = _check(JSON_VERSION, seq, prev, claimed, header["key_id"], sig, body, head, verifier)
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
    return Record(seq, prev, digest, header["key_id"], sig, events, links, legacy, JSON_VERSION)


def _envelope(data: bytes) -> govlog_pb2.GovLogRecord:
    if not data:
        raise LogError("not a log record: empty message")
    try:
        rec = govlog_pb2.GovLogRecord.FromString(data)
    except (DecodeError, ValueError) as e:
        raise LogError(f"not a log record: neither JSON (v1, v2) nor a GovLogRecord protobuf (v3): "
                       f"{_short(e)}") from None
    if rec.version != LOG_VERSION:
        raise LogError(f"not a log record: GovLogRecord version {rec.version} (expected {LOG_VERSION}); "
                       f"neither JSON (v1, v2) nor a v3 GovLogRecord")
    known = govlog_pb2.GovLogRecord(version=rec.version, seq=rec.seq, prev=rec.prev, hash=rec.hash,
                                    key_id=rec.key_id, sig=rec.sig, body=rec.body)
    if known.SerializeToString() != data:   # the known fields alone, in order: nothing else rides along
        raise LogError("GovLogRecord not in its canonical encoding (unknown, repeated or reordered fields)")
    if not rec.key_id:
        raise LogError("GovLogRecord without key_id")
    if rec.seq < 1:
        raise LogError("GovLogRecord: seq must be at least 1")
    return rec


def _open_pb(data: bytes, head: Head, verifier: LogVerifier) -> Record:
    rec = _envelope(data)
    seq = rec.seq
    digest = _check(LOG_VERSION, seq, rec.prev, rec.hash, rec.key_id, rec.sig, rec.body, head, verifier)
    try:
        body = govlog_pb2.GovLogBody.FromString(rec.body)
    except (DecodeError, ValueError) as e:
        raise LogError(f"record {seq}: body is not a GovLogBody ({_short(e)})") from None
    try:
        events = tuple(event_from_pb(e) for e in body.events)
    except Exception as e:  # noqa: BLE001 - untrusted input: any failure to decode is the reason
        raise LogError(f"record {seq}: undecodable event: {_short(e)}") from None
    try:
        links = tuple(link_from_pb(lk) for lk in body.links)
    except ValueError as e:
        raise LogError(f"record {seq}: bad link: {_short(e)}") from None
    legacy = None
    if body.HasField("legacy"):
        if len(body.legacy.sha256) != 32:
            raise LogError(f"record {seq}: bad legacy seal (sha256 of {len(body.legacy.sha256)} bytes)")
        legacy = LegacySeal(body.legacy.records, body.legacy.sha256)
    return Record(seq, rec.prev, digest, rec.key_id, rec.sig, events, links, legacy, LOG_VERSION)


def open_record(data: bytes, head: Head, verifier: LogVerifier) -> Record:
    """The record ``data`` (v3 protobuf, or v2 JSON when it starts with ``{``) if it is valid and the next link
    after ``head``; LogError names what is wrong."""
    if data[:1] == b"{":
        return _open_json(data, head, verifier)
    return _open_pb(data, head, verifier)


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
