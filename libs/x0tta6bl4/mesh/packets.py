"""Versioned binary wire format of the x0tta6bl4 mesh data plane.

Every datagram is one packet: a fixed 32-byte header, three length-prefixed
node ids (their lengths live in the header), a type-specific body and a
security trailer.  All integers are big-endian (network order).

Header (32 bytes, ``struct`` format ``!2sBBBBBBBBIIIQH``)

======  =====  ===============  ==============================================
Offset  Size   Field            Meaning
======  =====  ===============  ==============================================
0       2      magic            ``b"X6"``
2       1      version          ``2`` (anything else -> ``bad_version``; version 1
                                had no packet counter in the trailer)
3       1      type             DATA 0x01, RREQ 0x02, RREP 0x03, RERR 0x04,
                                HELLO 0x05
4       1      flags            per type, see ``FLAG_*``; unknown bits rejected
5       1      ttl              hops left, default 16; 0 is invalid on the wire
6       1      hop_count        incremented by every relay (RREQ/RREP: hops so far)
7       1      sender_len       length of sender id (the transmitting hop), 1..32
8       1      origin_len       length of origin id, 1..32
9       1      dest_len         length of destination id, 0..32 (0 = none)
10      4      origin_seq       originator sequence number (HELLO: hello seq)
14      4      dest_seq         destination sequence number (HELLO: the sender's
                                AODV sequence number)
18      4      packet_id        DATA packet id / RREQ id / HELLO: unused (0)
22      8      timestamp_ns     sender clock (monotonic ns) at origination
30      2      payload_len      length of the body in bytes
======  =====  ===============  ==============================================

Variable part

======================  ==========================================================
Field                   Meaning
======================  ==========================================================
sender id               ``sender_len`` ASCII bytes ``[A-Za-z0-9._:-]``
origin id               ``origin_len`` ASCII bytes
destination id          ``dest_len`` ASCII bytes
body                    ``payload_len`` bytes, layout per type (below)
key_id                  8 bytes: signing key id (all zero = unsigned)
counter                 u64: the signer's packet counter (0 when unsigned), see below
sig_len                 u16: signature length, 0..4096 (ML-DSA-65 = 3309)
signature               ``sig_len`` bytes; must end exactly at end of datagram
======================  ==========================================================

Bodies

* DATA: opaque application bytes.  Flags: ``ACK_REQ`` 0x01 (destination
  answers with a DATA/``ACK`` 0x02 carrying the same packet_id and timestamp,
  empty body) -> round-trip latency at the sender.  Link security (added
  without a version bump: both bits were rejected as ``bad_flags`` before, so
  an old node drops such packets instead of misreading them; see
  :mod:`x0tta6bl4.mesh.security` for the layouts):

  - ``ENC`` 0x04: the body is a hop-by-hop AES-256-GCM channel frame
    (``version(1)=1 | epoch(4) | seq(8) | ciphertext || tag(16)``) of the
    application bytes, sealed by the transmitting hop for the next hop.
  - ``HS`` 0x08: link handshake message between two neighbours (ttl 1, dest =
    the neighbour): ``!BBI`` hs_version (1), step (0 REQUEST, 1 HS1, 2 HS2,
    3 HS3, 4 CONFIRM), session epoch, then the pqc handshake message.  Never
    routed or delivered to the application.
* RREQ: with flag ``M`` 0x20 first ``!H`` metric (the route metric from the
  originator to the transmitting hop, see :mod:`.routing`), then optionally an
  avoid list ``!B`` count (1..32), count x (``!B`` id_len, id): nodes that
  must not relay this request (set by an originator told to avoid them);
  without ``M`` only the avoid list (or nothing).  origin = RREQ originator,
  dest = sought destination, dest_seq = last known seq of dest; flags ``J``
  0x01 ``R`` 0x02 ``G`` 0x04 ``D`` 0x08 (destination only) ``U`` 0x10
  (unknown seq) ``M`` 0x20 (metric present).
* RREP: ``!I`` lifetime_ms, with flag ``M`` 0x04 followed by ``!H`` metric (the
  route metric from the destination to the transmitting hop).  dest = route
  destination, dest_seq = its seq, origin = RREQ originator (the RREP travels
  towards it); flags ``R`` 0x01 ``A`` 0x02 ``M`` 0x04.  (``M`` was added
  without a version bump like ``ENC``/``HS``: an older node rejects the bit as
  ``bad_flags`` instead of misreading the body.)  Metrics are 16-bit,
  ``0xFFFF`` = infinite.
* RERR: ``!B`` count (1..), then count x (``!B`` id_len, id, ``!I`` seq) of
  unreachable destinations; flag ``N`` 0x01 (no delete).
* HELLO: ``!bBB`` tx_power_dbm (signed), noise_floor offset (unused, 0),
  neighbour count, then count x (``!B`` id_len, id, ``!H`` loss_permille the
  sender observes from that neighbour, ``!Q`` echo_ts_ns = timestamp of the
  last HELLO the sender got from that neighbour, ``!I`` echo_delay_us =
  time since then).  Receivers derive RSSI/SNR-like quality from the tx power
  and the local path loss, loss rate from HELLO sequence gaps, and latency
  from the echo (rtt = now - echo_ts - echo_delay).

The signature (when present) covers :func:`signing_bytes`: everything from the
magic up to and including ``counter`` (the datagram without sig_len/signature).
Any malformed input raises :class:`PacketError` with a ``reason`` code.

Packet counter (version 2): every packet a node signs carries a counter that
grows by one per signed packet of that signer (relays re-sign, so the counter is
the transmitting hop's, like ``sender``). It is inside the signed region;
receivers keep a sliding anti-replay window per signing key (highest counter
seen + bitmap, as IPsec/DTLS do) and drop a counter seen before or older than the
window (:mod:`.replay`). An unsigned packet carries counter 0 (a counter without a
key id is ``bad_trailer``). Version 1 datagrams (no counter) are ``bad_version``.
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass, field, replace

MAGIC = b"X6"
VERSION = 2

DATA = 0x01
RREQ = 0x02
RREP = 0x03
RERR = 0x04
HELLO = 0x05
TYPE_NAMES = {DATA: "DATA", RREQ: "RREQ", RREP: "RREP", RERR: "RERR", HELLO: "HELLO"}
CONTROL_TYPES = frozenset({RREQ, RREP, RERR, HELLO})

# flags
FLAG_ACK_REQ = 0x01  # DATA
FLAG_ACK = 0x02  # DATA
FLAG_ENC = 0x04  # DATA: body is a hop-by-hop channel frame
FLAG_HS = 0x08  # DATA: body is a link handshake message
FLAG_RREQ_J = 0x01
FLAG_RREQ_R = 0x02
FLAG_RREQ_G = 0x04
FLAG_RREQ_D = 0x08
FLAG_RREQ_U = 0x10
FLAG_RREQ_M = 0x20  # body starts with the metric
FLAG_RREP_R = 0x01
FLAG_RREP_A = 0x02
FLAG_RREP_M = 0x04  # body carries the metric after the lifetime
FLAG_RERR_N = 0x01
ALLOWED_FLAGS = {DATA: 0x0F, RREQ: 0x3F, RREP: 0x07, RERR: 0x01, HELLO: 0x00}
METRIC_INF = 0xFFFF  # 16-bit route metrics (as in Babel): 0xFFFF = unreachable

DEFAULT_TTL = 16
MAX_ID_LEN = 32
KEY_ID_LEN = 8
NO_KEY = b"\x00" * KEY_ID_LEN
MAX_SIG_LEN = 4096
MLDSA65_SIG_LEN = 3309
MAX_DATAGRAM = 8192
MAX_HELLO_NEIGHBOURS = 64

HEADER = struct.Struct("!2sBBBBBBBBIIIQH")
assert HEADER.size == 32
COUNTER_LEN = 8
TRAILER_FIXED = KEY_ID_LEN + COUNTER_LEN + 2
MIN_PACKET = HEADER.size + 1 + 1 + TRAILER_FIXED

_ID_RE = re.compile(rb"^[A-Za-z0-9._:\-]{1,32}$")
_U8 = struct.Struct("!B")
_U16 = struct.Struct("!H")
_U32 = struct.Struct("!I")
_U64 = struct.Struct("!Q")
_HELLO_HEAD = struct.Struct("!bBB")
_RREP_M = struct.Struct("!IH")
_HELLO_ENTRY = struct.Struct("!HQI")

U32_MASK = 0xFFFFFFFF
U64_MASK = 0xFFFFFFFFFFFFFFFF


class PacketError(ValueError):
    """Any malformed packet. ``reason`` is a short machine-readable code:

    short, oversized, bad_magic, bad_version, bad_type, bad_flags, bad_ttl,
    bad_id, bad_length, bad_body, bad_trailer, trailing, bad_field
    """

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True, slots=True)
class HelloNeighbour:
    node_id: str
    loss_permille: int = 0
    echo_ts_ns: int = 0
    echo_delay_us: int = 0


@dataclass(frozen=True, slots=True)
class HelloBody:
    tx_power_dbm: int = 0
    neighbours: tuple[HelloNeighbour, ...] = ()


@dataclass(frozen=True, slots=True)
class RreqBody:
    avoid: tuple[str, ...] = ()
    metric: int | None = None  # present on the wire iff flag M (0x20)


@dataclass(frozen=True, slots=True)
class RrepBody:
    lifetime_ms: int = 3000
    metric: int | None = None  # present on the wire iff flag M (0x04)


@dataclass(frozen=True, slots=True)
class RerrBody:
    unreachable: tuple[tuple[str, int], ...] = ()


Body = bytes | HelloBody | RreqBody | RrepBody | RerrBody
MAX_RREQ_AVOID = 32


@dataclass(frozen=True, slots=True)
class Packet:
    type: int
    sender: str
    origin: str
    dest: str = ""
    flags: int = 0
    ttl: int = DEFAULT_TTL
    hop_count: int = 0
    origin_seq: int = 0
    dest_seq: int = 0
    packet_id: int = 0
    timestamp_ns: int = 0
    body: Body = b""
    key_id: bytes = NO_KEY
    signature: bytes = field(default=b"", repr=False)
    counter: int = 0

    @property
    def type_name(self) -> str:
        return TYPE_NAMES.get(self.type, hex(self.type))

    def with_(self, **changes) -> Packet:
        return replace(self, **changes)

    def encode(self) -> bytes:
        return encode(self)


# --------------------------------------------------------------------------- helpers


def _check_id(value: str, *, allow_empty: bool = False) -> bytes:
    if not isinstance(value, str):
        raise PacketError("bad_id", f"id must be str, got {type(value).__name__}")
    if value == "" and allow_empty:
        return b""
    raw = value.encode("ascii", "replace")
    if not _ID_RE.match(raw):
        raise PacketError("bad_id", f"invalid node id {value!r}")
    return raw


def valid_node_id(value: str) -> bool:
    try:
        _check_id(value)
        return True
    except PacketError:
        return False


def _uint(name: str, value: int, mask: int) -> int:
    if not isinstance(value, int) or value < 0 or value > mask:
        raise PacketError("bad_field", f"{name}={value!r} out of range")
    return value


def _metric_flag(ptype: int, flags: int, body: Body) -> None:
    """The ``M`` flag of RREQ/RREP is set exactly when the body carries a metric."""
    bit = FLAG_RREQ_M if ptype == RREQ else FLAG_RREP_M
    has = getattr(body, "metric", None) is not None
    if bool(flags & bit) != has:
        raise PacketError("bad_flags", f"{TYPE_NAMES[ptype]} flag M {'without' if not has else 'missing for'} a metric")


def _encode_body(ptype: int, body: Body) -> bytes:
    if ptype == DATA:
        if not isinstance(body, (bytes, bytearray, memoryview)):
            raise PacketError("bad_body", "DATA body must be bytes")
        return bytes(body)
    if ptype == RREQ:
        if body in (b"", None):
            return b""
        if not isinstance(body, RreqBody) or len(body.avoid) > MAX_RREQ_AVOID:
            raise PacketError("bad_body", "RREQ body must be empty or RreqBody with <= 32 ids")
        out = bytearray()
        if body.metric is not None:
            out += _U16.pack(_uint("metric", body.metric, METRIC_INF))
        if not body.avoid:
            return bytes(out)
        out += _U8.pack(len(body.avoid))
        for node in body.avoid:
            raw = _check_id(node)
            out += _U8.pack(len(raw)) + raw
        return bytes(out)
    if ptype == RREP:
        if not isinstance(body, RrepBody):
            raise PacketError("bad_body", "RREP body must be RrepBody")
        life = _uint("lifetime_ms", body.lifetime_ms, U32_MASK)
        if body.metric is None:
            return _U32.pack(life)
        return _RREP_M.pack(life, _uint("metric", body.metric, METRIC_INF))
    if ptype == RERR:
        if not isinstance(body, RerrBody) or not (1 <= len(body.unreachable) <= 255):
            raise PacketError("bad_body", "RERR body must be RerrBody with 1..255 entries")
        out = bytearray(_U8.pack(len(body.unreachable)))
        for node, seq in body.unreachable:
            raw = _check_id(node)
            out += _U8.pack(len(raw)) + raw + _U32.pack(_uint("seq", seq, U32_MASK))
        return bytes(out)
    if ptype == HELLO:
        if not isinstance(body, HelloBody):
            raise PacketError("bad_body", "HELLO body must be HelloBody")
        if not -128 <= body.tx_power_dbm <= 127:
            raise PacketError("bad_field", "tx_power_dbm out of range")
        if len(body.neighbours) > MAX_HELLO_NEIGHBOURS:
            raise PacketError("bad_body", "too many HELLO neighbours")
        out = bytearray(_HELLO_HEAD.pack(body.tx_power_dbm, 0, len(body.neighbours)))
        for nb in body.neighbours:
            raw = _check_id(nb.node_id)
            out += _U8.pack(len(raw)) + raw
            out += _HELLO_ENTRY.pack(
                _uint("loss_permille", nb.loss_permille, 1000),
                _uint("echo_ts_ns", nb.echo_ts_ns, U64_MASK),
                _uint("echo_delay_us", nb.echo_delay_us, U32_MASK),
            )
        return bytes(out)
    raise PacketError("bad_type", f"unknown type {ptype!r}")


def _read_id(buf: memoryview, pos: int, end: int) -> tuple[str, int]:
    if pos >= end:
        raise PacketError("bad_body", "truncated id length")
    n = buf[pos]
    pos += 1
    if n < 1 or n > MAX_ID_LEN or pos + n > end:
        raise PacketError("bad_body", "bad id length in body")
    raw = bytes(buf[pos : pos + n])
    if not _ID_RE.match(raw):
        raise PacketError("bad_id", "invalid id in body")
    return raw.decode("ascii"), pos + n


def _decode_body(ptype: int, buf: memoryview, flags: int = 0) -> Body:
    end = len(buf)
    if ptype == DATA:
        return bytes(buf)
    if ptype == RREQ:
        metric = None
        pos = 0
        if flags & FLAG_RREQ_M:
            if end < 2:
                raise PacketError("bad_body", "RREQ flag M without a metric")
            metric = _U16.unpack_from(buf, 0)[0]
            pos = 2
        if pos == end:
            return RreqBody((), metric)
        count = buf[pos]
        if count == 0 or count > MAX_RREQ_AVOID:
            raise PacketError("bad_body", "RREQ avoid count must be 1..32")
        pos += 1
        avoid = []
        for _ in range(count):
            node, pos = _read_id(buf, pos, end)
            avoid.append(node)
        if pos != end:
            raise PacketError("bad_body", "trailing bytes in RREQ body")
        return RreqBody(tuple(avoid), metric)
    if ptype == RREP:
        if flags & FLAG_RREP_M:
            if end != _RREP_M.size:
                raise PacketError("bad_body", "RREP body with metric must be 6 bytes")
            life, metric = _RREP_M.unpack_from(buf, 0)
            return RrepBody(life, metric)
        if end != 4:
            raise PacketError("bad_body", "RREP body must be 4 bytes")
        return RrepBody(_U32.unpack_from(buf, 0)[0])
    if ptype == RERR:
        if end < 1:
            raise PacketError("bad_body", "empty RERR")
        count = buf[0]
        if count == 0:
            raise PacketError("bad_body", "RERR with no destinations")
        pos = 1
        items = []
        for _ in range(count):
            node, pos = _read_id(buf, pos, end)
            if pos + 4 > end:
                raise PacketError("bad_body", "truncated RERR entry")
            items.append((node, _U32.unpack_from(buf, pos)[0]))
            pos += 4
        if pos != end:
            raise PacketError("bad_body", "trailing bytes in RERR body")
        return RerrBody(tuple(items))
    if ptype == HELLO:
        if end < _HELLO_HEAD.size:
            raise PacketError("bad_body", "short HELLO body")
        tx, reserved, count = _HELLO_HEAD.unpack_from(buf, 0)
        if reserved != 0:
            raise PacketError("bad_body", "HELLO reserved byte not zero")
        if count > MAX_HELLO_NEIGHBOURS:
            raise PacketError("bad_body", "too many HELLO neighbours")
        pos = _HELLO_HEAD.size
        nbs = []
        for _ in range(count):
            node, pos = _read_id(buf, pos, end)
            if pos + _HELLO_ENTRY.size > end:
                raise PacketError("bad_body", "truncated HELLO entry")
            loss, ets, edl = _HELLO_ENTRY.unpack_from(buf, pos)
            if loss > 1000:
                raise PacketError("bad_body", "loss_permille > 1000")
            pos += _HELLO_ENTRY.size
            nbs.append(HelloNeighbour(node, loss, ets, edl))
        if pos != end:
            raise PacketError("bad_body", "trailing bytes in HELLO body")
        return HelloBody(tx, tuple(nbs))
    raise PacketError("bad_type", f"unknown type {ptype!r}")


# --------------------------------------------------------------------------- codec


def _encode_unsigned(p: Packet) -> tuple[bytearray, bytes]:
    if p.type not in TYPE_NAMES:
        raise PacketError("bad_type", f"unknown type {p.type!r}")
    if not isinstance(p.flags, int) or p.flags & ~ALLOWED_FLAGS[p.type]:
        raise PacketError("bad_flags", f"flags {p.flags!r} not allowed for {p.type_name}")
    if not isinstance(p.ttl, int) or not 1 <= p.ttl <= 255:
        raise PacketError("bad_ttl", f"ttl {p.ttl!r}")
    sender = _check_id(p.sender)
    origin = _check_id(p.origin)
    dest = _check_id(p.dest, allow_empty=True)
    if p.type in (DATA, RREQ, RREP) and not dest:
        raise PacketError("bad_id", f"{p.type_name} needs a destination")
    if p.type in (RREQ, RREP):
        _metric_flag(p.type, p.flags, p.body)
    body = _encode_body(p.type, p.body)
    if not isinstance(p.key_id, (bytes, bytearray)) or len(p.key_id) != KEY_ID_LEN:
        raise PacketError("bad_trailer", "key_id must be 8 bytes")
    _uint("counter", p.counter, U64_MASK)
    if p.counter and bytes(p.key_id) == NO_KEY:
        raise PacketError("bad_trailer", "packet counter without key id")
    if not isinstance(p.signature, (bytes, bytearray)) or len(p.signature) > MAX_SIG_LEN:
        raise PacketError("bad_trailer", "signature too long")
    if len(body) > 0xFFFF:
        raise PacketError("oversized", "body too large")
    out = bytearray(
        HEADER.pack(
            MAGIC,
            VERSION,
            p.type,
            p.flags,
            p.ttl,
            _uint("hop_count", p.hop_count, 255),
            len(sender),
            len(origin),
            len(dest),
            _uint("origin_seq", p.origin_seq, U32_MASK),
            _uint("dest_seq", p.dest_seq, U32_MASK),
            _uint("packet_id", p.packet_id, U32_MASK),
            _uint("timestamp_ns", p.timestamp_ns, U64_MASK),
            len(body),
        )
    )
    out += sender + origin + dest + body + bytes(p.key_id) + _U64.pack(p.counter)
    return out, body


def signing_bytes(p: Packet) -> bytes:
    """Bytes covered by the signature: the datagram minus sig_len and signature (so up to and
    including ``key_id`` and ``counter``)."""
    out, _ = _encode_unsigned(p)
    return bytes(out)


def encode(p: Packet) -> bytes:
    out, _ = _encode_unsigned(p)
    out += _U16.pack(len(p.signature)) + bytes(p.signature)
    if len(out) > MAX_DATAGRAM:
        raise PacketError("oversized", f"{len(out)} > {MAX_DATAGRAM}")
    return bytes(out)


def decode(data: bytes) -> Packet:
    """Strictly parse one datagram; raise PacketError on anything malformed."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise PacketError("bad_field", "datagram must be bytes")
    n = len(data)
    if n > MAX_DATAGRAM:
        raise PacketError("oversized", f"{n} > {MAX_DATAGRAM}")
    if n < MIN_PACKET:
        raise PacketError("short", f"{n} bytes")
    buf = memoryview(bytes(data))
    (magic, ver, ptype, flags, ttl, hops, slen, olen, dlen, oseq, dseq, pid, ts, plen) = HEADER.unpack_from(buf, 0)
    if magic != MAGIC:
        raise PacketError("bad_magic")
    if ver != VERSION:
        raise PacketError("bad_version", f"version {ver}, this node speaks {VERSION}")
    if ptype not in TYPE_NAMES:
        raise PacketError("bad_type", hex(ptype))
    if flags & ~ALLOWED_FLAGS[ptype]:
        raise PacketError("bad_flags", hex(flags))
    if ttl == 0:
        raise PacketError("bad_ttl", "ttl 0")
    if not (1 <= slen <= MAX_ID_LEN and 1 <= olen <= MAX_ID_LEN and dlen <= MAX_ID_LEN):
        raise PacketError("bad_length", "id length")
    if ptype in (DATA, RREQ, RREP) and dlen == 0:
        raise PacketError("bad_id", "missing destination")
    pos = HEADER.size
    body_start = pos + slen + olen + dlen
    body_end = body_start + plen
    if body_end + TRAILER_FIXED > n:
        raise PacketError("bad_length", "payload_len exceeds datagram")
    ids = []
    for ln in (slen, olen, dlen):
        raw = bytes(buf[pos : pos + ln])
        if ln and not _ID_RE.match(raw):
            raise PacketError("bad_id", "invalid node id")
        ids.append(raw.decode("ascii"))
        pos += ln
    body = _decode_body(ptype, buf[body_start:body_end], flags)
    key_id = bytes(buf[body_end : body_end + KEY_ID_LEN])
    (counter,) = _U64.unpack_from(buf, body_end + KEY_ID_LEN)
    (sig_len,) = _U16.unpack_from(buf, body_end + KEY_ID_LEN + COUNTER_LEN)
    if sig_len > MAX_SIG_LEN:
        raise PacketError("bad_trailer", f"sig_len {sig_len} > {MAX_SIG_LEN}")
    sig_start = body_end + TRAILER_FIXED
    if sig_start + sig_len > n:
        raise PacketError("bad_trailer", "signature truncated")
    if sig_start + sig_len < n:
        raise PacketError("trailing", f"{n - sig_start - sig_len} bytes after signature")
    if key_id == NO_KEY and sig_len:
        raise PacketError("bad_trailer", "signature without key id")
    if key_id == NO_KEY and counter:
        raise PacketError("bad_trailer", "packet counter without key id")
    return Packet(
        type=ptype,
        sender=ids[0],
        origin=ids[1],
        dest=ids[2],
        flags=flags,
        ttl=ttl,
        hop_count=hops,
        origin_seq=oseq,
        dest_seq=dseq,
        packet_id=pid,
        timestamp_ns=ts,
        body=body,
        key_id=key_id,
        signature=bytes(buf[sig_start : sig_start + sig_len]),
        counter=counter,
    )


def seq_newer(a: int, b: int) -> bool:
    """RFC 3561 6.1 sequence-number comparison with 32-bit wrap-around: a > b."""
    return ((a - b) & U32_MASK) not in (0,) and ((a - b) & U32_MASK) < 0x80000000


def seq_ge(a: int, b: int) -> bool:
    return a == b or seq_newer(a, b)
