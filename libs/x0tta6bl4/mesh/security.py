"""Mesh link security: ML-DSA-65 signed control packets, hybrid-key AES-256-GCM DATA channels.

Three parts, all I/O-free (the agent and the host do the I/O):

* :class:`MeshTrust` -- one per process. A :class:`~x0tta6bl4.keyvault.distribution.KeyDirectory`
  (keyvault root pinned, fed from the KV bucket ``keys``) plus a bounded cache of
  signature verifications. :meth:`MeshTrust.check` accepts a control packet only if
  its ``key_id`` is an accepted (active or retiring, not revoked) signing key *of the
  sender*, its timestamp is within ``max_skew_s`` of the receiver's clock and its
  ML-DSA-65 signature verifies (stateless; the per-receiver replay window is in
  :class:`NodeSecurity`). A HELLO is broadcast to every neighbour; in one host
  process they all verify the same bytes, so results are cached per
  SHA-256(signed region || signature) (the signature is part of the key: a tampered
  signature never hits the cache; revocation/retirement is checked before the cache).
* :class:`NodeSecurity` -- one per agent: the node's identity (signing + KEM keys),
  the packet signer and counter, the receiver's replay windows and the per-neighbour channels.
* :class:`LocalAuthority` -- an in-process keyvault stand-in (its own root key) for a
  host without keyvault (``--offline-keys``), unit tests and benchmarks.

Packet signatures (wire format v2, see :mod:`.packets`): trailer ``key_id`` = the
8 bytes of the signer's key id (16 hex chars = first 8 bytes of SHA-256 of the hybrid
Ed25519+ML-DSA-65 public key, as issued by keyvault), ``counter`` = the signer's packet
counter (:class:`~.replay.PacketCounter`: wall-clock seeded, +1 per signed packet);
``signature`` = pure FIPS 204 ML-DSA-65 (3309 bytes) with context ``x0tta6bl4/mesh/packet/v1``
over :func:`~.packets.signing_bytes` (which includes key id and counter). Every hop signs what
it transmits (relays re-sign). ``timestamp_ns`` is the agent clock (CLOCK_MONOTONIC by default,
shared by every process of one machine; agents on different machines need a synchronised clock,
e.g. ``clock=time.time_ns``).

Link-authenticated control packets (:meth:`NodeSecurity.protect`, in the spirit of Babel's MAC
authentication, RFC 8967, and WireGuard's keep-alives inside the session): once a node has a channel to
every receiver of a control packet (to each neighbour for a broadcast HELLO/RREQ/RERR, the next hop for a
unicast), established under its current key and the key that neighbour signs its HELLOs with, neither
revoked, the packet is authenticated with the link sessions instead of a signature: the trailer keeps
``key_id`` and ``counter`` (one counter and one replay window per key, shared with signed packets) and the
signature field holds ``0xA1 | count | count x (receiver hint 4 | session epoch u32 | tag 16)``: the hint
is the first 4 bytes of SHA-256(``MAC_LABEL || "/rx/" || receiver id``), the tag HMAC-SHA256-128 under the
session's MAC key for that direction (HKDF-Expand of the direction's traffic secret with label
``x0tta6bl4/mesh/ctl-mac/v1``) over the signed region, the hint and the epoch. Its length is never 3309,
the ML-DSA-65 signature's. A receiver checks the window, the key (accepted, owned by the sender) and the
timestamp as for a signature, then its own entry under the session of the link the packet came in on;
``bad_mac`` (forged, altered, or no entry for this receiver) and ``unknown_session`` (the sender holds a
session this receiver does not: it restarted; it then asks for a handshake, at most once a second per
link) are refusals counted against the receiver like the others, and a MAC is never evidence (the
receiver could have computed it). Signatures are used at first contact, towards a neighbour without a
channel, during a rotation (until every link re-keyed on the new keys) and once our own key is no longer
accepted (so a revoked key still in use stays provable to every neighbour). Per HELLO of a node with 4
neighbours this replaces one ML-DSA-65 signature (~0.3 ms) and 3309 bytes with four HMACs and 98 bytes.

Replay protection (:meth:`NodeSecurity.inspect`): each receiving node keeps an anti-replay window
per signing key (:class:`~.replay.ReplayGuard`); a copy of a packet it accepted is ``replayed``
(or ``stale_counter`` below the window), checked before the signature so a replay flood costs no
verification. With the ``max_skew_s`` timestamp check this bounds every replay: within the skew
the window catches it, beyond it the timestamp does (the reasoning for restarts is in
:mod:`.replay`).

Who is blamed: a refused packet says nothing about the node it claims to come from -- anyone can
put a node's id, key id or source address on a datagram, or replay what it sent. Refusals are
counted by the RECEIVING node (``rejected.<reason>``, telemetry ``rejected_packets``) and reported
as ``security.<reason>`` events about the receiver (empty ``peer``). Only a packet whose signature
verifies under a node's key, is no replay and has a fresh timestamp can prove something about that
node (:class:`Verdict`: a revoked key still in use, or a key used to claim another identity); such
evidence is reported as ``security.revoked_key_used`` / ``security.impersonation`` with ``peer`` =
the key's owner, which the monitor counts as that node's ``failed_auth`` (the analyzer's
``compromised``).

Link handshake (DATA with flag ``HS``, ttl 1, dest = the neighbour; body
``!BBI`` hs_version=1, step, session epoch, then the message):

====  ========  ==================================================================
step  name      body after the header
====  ========  ==================================================================
0     REQUEST   empty: "I have no channel to you" (responder side / after a restart)
1     HS1       :class:`~x0tta6bl4.pqc.HandshakeInitiator` message 1
2     HS2       responder message 2 (signed transcript)
3     HS3       initiator message 3 (signed transcript)
4     CONFIRM   a channel frame sealing ``b"confirm"`` under the new session
====  ========  ==================================================================

The node with the lexicographically smaller id initiates. The session epoch (u32,
growing per link) selects the channel: channel frame epoch = ``session << 8`` (the low
byte is left to the channel's own key updates). The responder switches sending to the
new session when HS3 verifies; the initiator already accepts frames of the new
session after HS2 and switches sending on CONFIRM. The previous session keeps
decrypting for ``channel_overlap_s`` (on the responder counted from the initiator's first
frame on the new session, at most 4x that) -- so a re-handshake (after a key rotation) loses
no packet in flight. A lost message is recovered by a restart after ``hs_timeout_s``.

Encrypted DATA (flag ``ENC``): body = channel frame of the application bytes; the AAD
binds type, flags, ttl, hop count, sequence numbers, packet id, timestamp and the
three node ids of the transmitted header. Without a channel to the next hop, DATA
waits in a bounded per-neighbour queue (``queue_limit``) and leaves once the channel
is up. A receiver with ``require_encryption`` drops plaintext DATA.

Rotation: the initiator re-handshakes a link once the session's keys differ
from its own current signing key or from the key the neighbour signs its HELLOs
with; it uses the KEM key of the same generation as that HELLO key, so a neighbour
that has not reloaded yet is still reachable (its retiring key is accepted). The old
session keeps carrying DATA until the new one is confirmed, so the re-key is not
urgent: with ``rekey_spread_s`` each link starts it after its own random delay in
``[0, rekey_spread_s)`` (a rotation of the whole mesh then spreads its handshakes
instead of running them all at once, beside the beacon verification).

Beacon evidence across processes: every HELLO echoes the timestamp of the last HELLO
the sender accepted from each neighbour. :meth:`NodeSecurity.peer_accepted` is true
once a neighbour's (verified) HELLO echoes a timestamp at or after our first HELLO
signed with the current key -- proof that it accepted the new key, usable when the
neighbour runs in another process. A node that accepts a changed key of a neighbour in
``remote_peers`` answers with a prompt HELLO (after ``echo_delay_s``, coalesced) so that
proof arrives without waiting a full HELLO interval.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import random
import struct
import time
from collections import Counter, OrderedDict, deque
from collections.abc import Callable, Iterable
from dataclasses import fields
from functools import lru_cache
from typing import Any, NamedTuple, cast

from x0tta6bl4.keyvault.distribution import KeyDirectory, key_key, node_key, rev_key
from x0tta6bl4.pqc import (
    DecryptionError,
    HandshakeInitiator,
    HandshakeResponder,
    InvalidRecord,
    KeyRevoked,
    KeyvaultRoot,
    MLDSA65PublicKey,
    NodeIdentity,
    PQCError,
    ReplayError,
    Role,
    SecureChannel,
    SessionKeys,
    SpiffeId,
    records_for_identity,
)
from x0tta6bl4.pqc.identity import KeyPurpose

from .packets import CONTROL_TYPES, DATA, FLAG_ENC, FLAG_HS, MLDSA65_SIG_LEN, NO_KEY, Packet, signing_bytes
from .replay import PacketCounter, ReplayGuard

__all__ = ["AUTH_REASONS", "EVIDENCE_KINDS", "HS_VERSION", "SIG_CONTEXT", "LocalAuthority", "MeshTrust",
           "NodeSecurity", "Verdict"]

log = logging.getLogger(__name__)

SIG_CONTEXT = b"x0tta6bl4/mesh/packet/v1"
HS_VERSION = 1
HS_HEAD = struct.Struct("!BBI")
REQUEST, HS1, HS2, HS3, CONFIRM = range(5)
STEP_NAMES = {REQUEST: "REQUEST", HS1: "HS1", HS2: "HS2", HS3: "HS3", CONFIRM: "CONFIRM"}
EPOCH_SHIFT = 8
MAX_SESSION = (1 << (32 - EPOCH_SHIFT)) - 1
MAX_HS_TIMEOUT_NS = 10_000_000_000   # the adaptive handshake retry timeout's ceiling (WireGuard: 5 s fixed)
_AAD = struct.Struct("!BBBBIIIQ")
_CONFIRM = b"confirm"
AUTH_REASONS = ("unsigned", "unknown_key", "revoked_key", "wrong_signer", "stale_timestamp", "bad_signature",
                "replayed", "stale_counter", "bad_mac", "unknown_session")
# link-authenticated control packets (see the module doc): the trailer's signature field carries
# MAC_MARK, a count and one (receiver hint, session epoch, HMAC-SHA256-128 tag) entry per receiver
MAC_MARK = 0xA1
MAC_LABEL = b"x0tta6bl4/mesh/ctl-mac/v1"
MAC_TAG_LEN = 16
MAC_ENTRY = struct.Struct("!4sI16s")
MAC_MAX_ENTRIES = 64            # = packets.MAX_HELLO_NEIGHBOURS: 2 + 64 * 24 bytes, never 3309 (ML-DSA-65)
_EPOCH = struct.Struct("!I")
EVIDENCE_KINDS = ("revoked_key_used", "impersonation")


class Verdict(NamedTuple):
    """What a receiver concluded about one signed control packet.

    ``reason``: None (accepted) or why it was dropped (:data:`AUTH_REASONS`) -- counted against the
    RECEIVING node, never the claimed sender. ``evidence``: set only when the packet proves something
    about a node -- its signature verified under that node's key, it is not a replay and its timestamp
    is fresh -- ``(kind, node)`` with kind from :data:`EVIDENCE_KINDS`:

    * ``revoked_key_used``: a revoked key of ``node`` signed the packet more than ``max_skew_s`` after this
      receiver first refused that key (so not a copy of a packet signed before the revocation);
    * ``impersonation``: ``node``'s key signed a packet that claims another sender (no honest node
      does: every hop signs what it transmits under its own id).
    """

    reason: str | None
    evidence: tuple[str, str] | None = None


@lru_cache(maxsize=8192)
def _ids(sender: str, origin: str, dest: str) -> bytes:
    return b"".join(bytes([len(x)]) + x.encode("ascii") for x in (sender, origin, dest))


def _aad(p: Packet) -> bytes:
    return _AAD.pack(p.type, p.flags | FLAG_ENC, p.ttl, p.hop_count, p.origin_seq, p.dest_seq,
                     p.packet_id, p.timestamp_ns) + _ids(p.sender, p.origin, p.dest)


_PACKET_FIELDS = ("type", "sender", "origin", "dest", "flags", "ttl", "hop_count", "origin_seq", "dest_seq",
                  "packet_id", "timestamp_ns", "body", "key_id", "signature", "counter")
assert tuple(f.name for f in fields(Packet)) == _PACKET_FIELDS, "packets.Packet changed: update _rebuild"


def _rebuild(p: Packet, flags: int, body: Any, key_id: bytes, signature: bytes, counter: int) -> Packet:
    """``p`` with new flags, body and trailer (``Packet.with_`` goes through ``dataclasses.replace``,
    several times slower; this runs for every DATA hop and every control packet sent)."""
    return Packet(p.type, p.sender, p.origin, p.dest, flags, p.ttl, p.hop_count, p.origin_seq, p.dest_seq,
                  p.packet_id, p.timestamp_ns, body, key_id, signature, counter)


@lru_cache(maxsize=8192)
def _hint(node: str) -> bytes:
    """4-byte receiver hint of a MAC entry: names the receiver without its variable-length id."""
    return hashlib.sha256(MAC_LABEL + b"/rx/" + node.encode("utf-8")).digest()[:4]


def _mac_key(traffic_secret: bytes) -> bytes:
    """HKDF-Expand(traffic secret, MAC_LABEL, 32): one HMAC-SHA256 block, domain-separated from the
    channel's AES-GCM key and IV (expanded from the same secret under other labels)."""
    return hmac.digest(traffic_secret, MAC_LABEL + b"\x01", "sha256")


def _mac(key: bytes, region: bytes, hint: bytes, epoch: int) -> bytes:
    return hmac.digest(key, region + hint + _EPOCH.pack(epoch), "sha256")[:MAC_TAG_LEN]


# =============================================================================== trust
class MeshTrust:
    """Key directory + bounded verification cache, shared by the agents of one process."""

    def __init__(self, directory: KeyDirectory, *, max_skew_s: float = 10.0, cache_size: int = 8192) -> None:
        self.directory = directory
        self.max_skew_ns = int(max_skew_s * 1e9)
        self.cache_size = cache_size
        self._cache: OrderedDict[bytes, None] = OrderedDict()
        self._vk: dict[str, tuple[Any, str, MLDSA65PublicKey]] = {}  # key id -> (record, node id, key)
        self.stats: Counter = Counter()
        self.listeners: list[Callable[[str, Any, bool], None]] = []
        self._applied: dict[str, bytes] = {}     # KV key -> SHA-256 of the value last applied (dedupe)
        self._by_node: dict[str, list] | None = None   # node -> accepted records, newest first (lazy index)
        self._node_of_kid: dict[str, str] = {}

    @classmethod
    def pinned(cls, root_public_key: bytes, **kw: Any) -> MeshTrust:
        return cls(KeyDirectory(MLDSA65PublicKey.from_bytes(root_public_key)), **kw)

    # -- feeding -------------------------------------------------------------------
    def apply(self, key: str, value: bytes | None, *, deleted: bool = False) -> bool:
        """Feed one KV entry (verified against the pinned root); False if rejected. An entry whose
        value was already applied under the same key (a record fetched over gRPC and then seen
        again on the KV watch) is not verified twice."""
        digest = hashlib.sha256(value).digest() if value and not deleted else None
        if digest is not None and self._applied.get(key) == digest:
            self.stats["kv.duplicate"] += 1
            return True
        self._by_node = None
        try:
            v = self.directory.apply(key, value, deleted=deleted)
        except PQCError as e:
            self.stats["kv.rejected"] += 1
            log.warning("KV entry %s rejected: %s", key, e)
            return False
        self.stats["kv.applied"] += 1
        if digest is not None:
            self._applied[key] = digest
        else:
            self._applied.pop(key, None)
        for fn in list(self.listeners):
            try:
                fn(key, v, deleted or not value)
            except Exception:
                log.exception("trust listener failed")
        return True

    def apply_many(self, entries: Iterable[tuple[str, bytes]]) -> int:
        return sum(self.apply(k, v) for k, v in entries)

    # -- verification --------------------------------------------------------------
    def check(self, pkt: Packet, raw: bytes | None, now: int) -> str | None:
        """None if ``pkt`` is acceptable, else a reason from :data:`AUTH_REASONS`. Stateless: replay
        protection is per receiving node (:meth:`NodeSecurity.inspect`)."""
        if pkt.key_id == NO_KEY or not pkt.signature:
            return "unsigned"
        reason, ent = self.key_check(pkt, pkt.key_id.hex(), now)
        if reason is not None or ent is None:
            return reason
        return None if self.signature_valid(pkt, raw, ent[2]) else "bad_signature"

    def key_check(self, pkt: Packet, kid: str, now: int) -> tuple[str | None, tuple[Any, str, MLDSA65PublicKey] |
                                                                   None]:
        """The checks before the signature or MAC: ``kid`` is an accepted signing key of the sender and the
        timestamp is fresh. (reason, None) or (None, (record, owner, public key))."""
        d = self.directory
        rec = d.lookup(kid)
        if rec is None:
            return ("revoked_key" if d.is_revoked(kid) else "unknown_key"), None
        ent = self._entry(kid, rec)
        if ent is None:
            return "unknown_key", None
        if ent[1] != pkt.sender:
            return "wrong_signer", None
        if abs(now - pkt.timestamp_ns) > self.max_skew_ns:
            return "stale_timestamp", None
        return None, ent

    def _entry(self, kid: str, rec) -> tuple[Any, str, MLDSA65PublicKey] | None:
        ent = self._vk.get(kid)
        if ent is None or ent[0] is not rec:
            if rec.purpose is not KeyPurpose.SIGNING:
                return None
            ent = (rec, SpiffeId.parse(rec.spiffe_id).node_id, rec.verify_key().mldsa)
            self._vk[kid] = ent
        return ent

    def signer(self, kid: str, claimed: str) -> tuple[str, MLDSA65PublicKey] | None:
        """(owner node, public key) of signing key ``kid`` -- accepted, or revoked but still known (seen
        before its revocation, or the current record of ``claimed``) -- else None. For evidence only:
        acceptance goes through :meth:`check`."""
        rec = self.directory.lookup(kid)
        if rec is not None:
            ent = self._entry(kid, rec)
            return (ent[1], ent[2]) if ent is not None else None
        ent = self._vk.get(kid)
        if ent is not None:
            return ent[1], ent[2]
        cur = self.directory.current(claimed, "sig")
        if cur is not None and cur.key_id == kid and cur.purpose is KeyPurpose.SIGNING:
            return SpiffeId.parse(cur.spiffe_id).node_id, cur.verify_key().mldsa
        return None

    def signature_valid(self, pkt: Packet, raw: bytes | None, key: MLDSA65PublicKey) -> bool:
        """ML-DSA-65 check of ``pkt``'s signature under ``key``, through the bounded cache of
        verified (signed region, signature) digests."""
        region = bytes(raw[:len(raw) - 2 - len(pkt.signature)]) if raw is not None else signing_bytes(pkt)
        digest = hashlib.sha256(region + pkt.signature).digest()
        if digest in self._cache:
            self._cache.move_to_end(digest)
            self.stats["verify.cache_hits"] += 1
            return True
        self.stats["verify.calls"] += 1
        try:
            key.verify(pkt.signature, region, SIG_CONTEXT)
        except PQCError:
            self.stats["verify.failed"] += 1
            return False
        self._cache[digest] = None
        if len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)
        return True

    # -- lookups for handshakes ----------------------------------------------------

    def accepted_records(self, node: str) -> list:
        """:meth:`KeyDirectory.accepted_records` from an index rebuilt only after the directory changed
        (the directory's own scan parses every record's SPIFFE id on every call)."""
        if self._by_node is None:
            d = self.directory
            idx: dict[str, list] = {}
            for kid in d.accepted_key_ids():
                rec = d.lookup(kid)
                if rec is None:
                    continue
                n = self._node_of_kid.get(kid)
                if n is None:
                    n = self._node_of_kid[kid] = SpiffeId.parse(rec.spiffe_id).node_id
                idx.setdefault(n, []).append(rec)
            for recs in idx.values():
                recs.sort(key=lambda r: -r.generation)
            self._by_node = idx
        return self._by_node.get(node, [])

    def peer_keys(self, node: str, sig_key_id: str | None):
        """(signing record, KEM record) of ``node``: the generation of ``sig_key_id`` when it is
        accepted, else the newest accepted one; None when the node has no accepted keys."""
        recs = self.accepted_records(node)
        sigs = [r for r in recs if r.purpose is KeyPurpose.SIGNING]
        sig = next((r for r in sigs if r.key_id == sig_key_id), None) or (sigs[0] if sigs else None)
        if sig is None:
            return None
        kem = next((r for r in recs if r.purpose is KeyPurpose.KEM and r.generation == sig.generation), None)
        return (sig, kem) if kem is not None else None


# =============================================================================== per node
class _Session:
    __slots__ = ("chan", "epoch", "expires_ns", "mac_rx", "mac_tx", "my_key", "peer_key")

    def __init__(self, epoch: int, chan: SecureChannel, my_key: str, peer_key: str,
                 macs: tuple[bytes, bytes] = (b"", b"")) -> None:
        self.epoch, self.chan, self.my_key, self.peer_key = epoch, chan, my_key, peer_key
        self.mac_tx, self.mac_rx = macs      # control-packet MAC keys, ours -> peer and peer -> ours
        self.expires_ns: int | None = None


class _Init:
    __slots__ = ("cand", "epoch", "hs", "my_key", "peer_key", "step", "t")

    def __init__(self, epoch, hs, t, my_key, peer_key) -> None:
        self.epoch, self.hs, self.step, self.t, self.my_key, self.peer_key = epoch, hs, HS1, t, my_key, peer_key
        self.cand: _Session | None = None


class _Link:
    __slots__ = (
        "attempts",
        "defer_since",
        "done",
        "echo_ts",
        "hello_key",
        "init",
        "last_req",
        "next_epoch",
        "queue",
        "recv",
        "rekey_at",
        "resp",
        "send",
        "superseded",
        "tighten",
    )

    def __init__(self, queue_limit: int) -> None:
        self.send: _Session | None = None
        self.recv: dict[int, _Session] = {}
        self.init: _Init | None = None
        self.resp: tuple[int, HandshakeResponder, str, str] | None = None
        self.queue: deque[Packet] = deque()
        self.next_epoch = 1
        self.last_req = -(1 << 62)
        self.hello_key: str | None = None
        self.done: tuple[int, bytes] | None = None  # (epoch, CONFIRM body) of the last completed responder run
        self.attempts = 0          # handshakes started since the last success (timeout backoff)
        self.defer_since: int | None = None
        self.echo_ts = 0           # our HELLO timestamp last echoed by the peer (it accepted that HELLO)
        self.rekey_at: int | None = None   # spread: earliest start of the pending re-key
        self.tighten = False       # old sessions kept long until the peer sends on the new one
        # epoch -> start of our handshakes given up on timeout (their late HS2 still measures the round trip)
        self.superseded: dict[int, int] = {}


class NodeSecurity:
    """One node's keys, packet signer/verifier and neighbour channels.

    Bound to an agent with :meth:`MeshAgent.attach_security`; outgoing handshake
    packets and released DATA go to :attr:`outbox` (``(packet, neighbour)``), which the
    agent drains.
    """

    def __init__(self, node_id: str, identity: NodeIdentity, trust: MeshTrust, *, require_encryption: bool = True,
                 channel_overlap_s: float = 5.0, hs_timeout_s: float = 0.5, queue_limit: int = 1024,
                 clock: Callable[[], int] = time.monotonic_ns, rekey_spread_s: float = 0.0,
                 echo_delay_s: float = 0.02, remote_peers: Iterable[str] = (), replay_window: int = 256,
                 replay_max_keys: int = 4096, replay_idle_s: float | None = None,
                 packet_counter: PacketCounter | None = None, mac_control: bool = True) -> None:
        self.node_id = node_id
        self.mac_control = mac_control     # link MACs instead of signatures where every receiver has a session
        self._hint = _hint(node_id)
        self.trust = trust
        self.require_encryption = require_encryption
        self.channel_overlap_ns = int(channel_overlap_s * 1e9)
        self.hs_timeout_ns = int(hs_timeout_s * 1e9)
        self.queue_limit = queue_limit
        self.clock = clock
        self.counters: Counter = Counter()
        self.emit: Callable[[str, str, dict], None] = lambda kind, peer, details: None
        self.links: dict[str, _Link] = {}
        self.outbox: list[tuple[Packet, str]] = []
        self.previous: NodeIdentity | None = None
        self.rekey_spread_ns = int(rekey_spread_s * 1e9)
        self.echo_delay_s = echo_delay_s
        self.remote_peers = frozenset(remote_peers)
        self.hello_wanted = False          # the agent sends a prompt HELLO and clears it
        self.key_since_ns: int | None = None   # timestamp of our first HELLO signed with the current key
        self._rng = random.Random()
        self._hs_rtt_ns = 0        # EWMA of HS1 -> HS2 round trips (adaptive handshake timeout)
        skew_s = trust.max_skew_ns / 1e9
        replay_idle_s = 3 * skew_s if replay_idle_s is None else replay_idle_s
        if replay_idle_s <= 2 * skew_s:
            # a window may only be forgotten once every packet it accepted is stale by timestamp anyway
            # (accepted up to max_skew_s ahead of our clock, refused once max_skew_s behind it)
            raise ValueError(f"replay_idle_s ({replay_idle_s:g}) must exceed twice the trust's max_skew_s "
                             f"({skew_s:g})")
        self.packet_counter = packet_counter or PacketCounter()
        # anti-replay windows of the keys whose packets this node received (see .replay); packets signed
        # before this node started are not vouched for (floor = its clock now, again at bind())
        self.replay = ReplayGuard(size=replay_window, max_keys=replay_max_keys, idle_s=replay_idle_s,
                                  floor_ns=clock())
        self._revoked_seen: dict[str, int] = {}   # revoked key id -> when this node first refused it
        self._set_identity(identity)

    def bind(self, counters: Counter, emit: Callable[[str, str, dict], None], clock: Callable[[], int]) -> None:
        self.counters, self.emit, self.clock = counters, emit, clock
        if not self.replay.windows:
            self.replay.floor_ns = clock()

    # -- keys --------------------------------------------------------------------------
    def _set_identity(self, identity: NodeIdentity) -> None:
        if identity.spiffe_id.node_id != self.node_id:
            raise ValueError(f"identity {identity.uri} does not belong to node {self.node_id}")
        self.identity = identity
        self.key_id = identity.signing.key_id
        self._kid = bytes.fromhex(self.key_id)
        self._sk = identity.signing.private.mldsa

    def reload(self, identity: NodeIdentity) -> None:
        """Switch to a new generation; the old one stays usable for handshakes in flight
        until :meth:`drop_previous` (its key is retired)."""
        if identity.signing.key_id == self.key_id:
            return
        self.previous = self.identity
        self._set_identity(identity)
        self.key_since_ns = None
        self.counters["keys.reloaded"] += 1

    def drop_previous(self) -> bool:
        had, self.previous = self.previous is not None, None
        return had

    def _find_kem(self, key_id: str) -> NodeIdentity | None:
        for ident in (self.identity, self.previous):
            if ident is not None and ident.kem.key_id == key_id:
                return ident
        return None

    def hello_sent(self, timestamp_ns: int) -> None:
        """The agent sent a HELLO signed with the current key (the first one marks the key's start)."""
        if self.key_since_ns is None:
            self.key_since_ns = timestamp_ns

    def peer_accepted(self, peer: str) -> bool:
        """True once ``peer`` echoed one of our HELLOs signed with the current key (see module doc)."""
        link = self.links.get(peer)
        return link is not None and self.key_since_ns is not None and link.echo_ts >= self.key_since_ns

    # -- signatures ----------------------------------------------------------------------
    def sign(self, pkt: Packet) -> Packet:
        """``pkt`` with our key id, the next packet counter and the signature over both."""
        p = _rebuild(pkt, pkt.flags, pkt.body, self._kid, b"", self.packet_counter.next())
        self.counters["signed"] += 1
        return _rebuild(p, p.flags, p.body, self._kid, self._sk.sign(signing_bytes(p), SIG_CONTEXT), p.counter)

    def protect(self, pkt: Packet, to: str | None, peers: Iterable[str]) -> Packet:
        """Authenticate an outgoing control packet for neighbour ``to`` (None: broadcast to ``peers``).

        With a current session to every receiver (established under our current key and the key the
        neighbour signs its HELLOs with, neither revoked), the packet carries one HMAC-SHA256-128 tag per
        receiver under that session's MAC key; otherwise (first contact, a receiver without a channel,
        a rotation in progress, our own key no longer accepted) it is signed with ML-DSA-65 (:meth:`sign`).
        Either way it carries our key id and the next packet counter (one replay window per key)."""
        entries = self._mac_entries(to, peers) if self.mac_control else None
        if entries is None:
            return self.sign(pkt)
        p = _rebuild(pkt, pkt.flags, pkt.body, self._kid, b"", self.packet_counter.next())
        region = signing_bytes(p)
        blob = bytearray((MAC_MARK, len(entries)))
        for hint, epoch, key in entries:
            blob += MAC_ENTRY.pack(hint, epoch, _mac(key, region, hint, epoch))
        self.counters["mac_authenticated"] += 1
        return _rebuild(p, p.flags, p.body, self._kid, bytes(blob), p.counter)

    def _mac_entries(self, to: str | None, peers: Iterable[str]) -> list[tuple[bytes, int, bytes]] | None:
        d = self.trust.directory
        if d.lookup(self.key_id) is None:
            return None      # our key is revoked or not (yet) known: a signature says so to everyone
        out: list[tuple[bytes, int, bytes]] = []
        for t in ((to,) if to is not None else peers):
            link = self.links.get(t)
            if link is None:
                return None
            s = link.send
            if s is None or s.my_key != self.key_id or s.peer_key != link.hello_key or not s.mac_tx \
                    or d.is_revoked(s.peer_key) or len(out) >= MAC_MAX_ENTRIES:
                return None
            out.append((_hint(t), s.epoch, s.mac_tx))
        return out or None

    def check(self, pkt: Packet, raw: bytes | None = None, now: int | None = None) -> str | None:
        """:meth:`inspect`'s reason: None when ``pkt`` is accepted (and recorded in the replay window)."""
        return self.inspect(pkt, raw, now).reason

    def verifier(self, pkt: Packet) -> bool:
        """``MeshAgent(verifier=...)`` compatible form of :meth:`check`."""
        return self.check(pkt) is None

    def inspect(self, pkt: Packet, raw: bytes | None = None, now: int | None = None) -> Verdict:
        """Accept or refuse a received control packet (``raw``: its datagram, saves re-encoding).

        Order: unsigned -> replay window (a replay costs no signature check) -> key, sender, timestamp
        and signature (:meth:`MeshTrust.check`) -> the window records the counter. A refused packet is
        only evidence about a node in the two cases of :class:`Verdict`."""
        now = self.clock() if now is None else now
        if pkt.key_id == NO_KEY or not pkt.signature:
            return Verdict("unsigned")
        kid = pkt.key_id.hex()
        replayed = self.replay.check(kid, pkt.counter, pkt.timestamp_ns)
        if replayed is not None:
            return Verdict(replayed)
        sig = pkt.signature
        if len(sig) != MLDSA65_SIG_LEN and sig[0] == MAC_MARK:
            reason = self._check_mac(pkt, raw, kid, now)
            if reason is None:
                self.replay.accept(kid, pkt.counter, now, pkt.timestamp_ns)
            return Verdict(reason)       # a MAC proves nothing to a third party: never evidence
        reason = self.trust.check(pkt, raw, now)
        if reason is None:
            self.replay.accept(kid, pkt.counter, now, pkt.timestamp_ns)
            return Verdict(None)
        if reason in ("revoked_key", "wrong_signer"):
            return Verdict(reason, self._evidence(reason, kid, pkt, raw, now))
        return Verdict(reason)

    def _check_mac(self, pkt: Packet, raw: bytes | None, kid: str, now: int) -> str | None:
        """A link-authenticated control packet: the key and timestamp checks of a signed one, then the tag
        of the entry for this node under the session (of the link the packet came in on) it names."""
        reason, _ent = self.trust.key_check(pkt, kid, now)
        if reason is not None:
            return reason
        sig = pkt.signature
        n = sig[1] if len(sig) > 1 else 0
        if not 1 <= n <= MAC_MAX_ENTRIES or len(sig) != 2 + n * MAC_ENTRY.size:
            return "bad_mac"
        peer = pkt.sender           # the agent checked that the datagram came from this neighbour's address
        link = self.links.get(peer)
        for i in range(n):
            hint, epoch, tag = MAC_ENTRY.unpack_from(sig, 2 + i * MAC_ENTRY.size)
            if hint != self._hint:
                continue
            sess = link.recv.get(epoch) if link is not None else None
            if sess is None or sess.peer_key != kid or not sess.mac_rx:
                # the sender holds a session we do not (we restarted, or dropped it): ask for a new one
                self._resync(peer, now)
                return "unknown_session"
            region = bytes(raw[:len(raw) - 2 - len(sig)]) if raw is not None else signing_bytes(pkt)
            if not hmac.compare_digest(_mac(sess.mac_rx, region, hint, epoch), tag):
                return "bad_mac"
            self.counters["verified.mac"] += 1
            return None
        return "bad_mac"            # no tag for this node: it was not sent to us

    def _resync(self, peer: str, now: int) -> None:
        """Start (initiator) or request (responder) a handshake with ``peer``, at most once per
        ``max(hs_timeout_s, 1 s)`` per link: anyone can send a packet naming an unknown session."""
        link = self._link(peer)
        if now - link.last_req < max(self.hs_timeout_ns, 1_000_000_000):
            return
        link.last_req = now
        self.counters["hs.resync"] += 1
        if self.node_id < peer:
            if link.init is None or now - link.init.t >= self._timeout(link):
                self._maybe_handshake(peer, link, now, force=True)
        else:
            self._hs(peer, REQUEST, 0)

    def _evidence(self, reason: str, kid: str, pkt: Packet, raw: bytes | None, now: int) -> tuple[str, str] | None:
        trust = self.trust
        if reason == "revoked_key":
            first = self._revoked_seen.setdefault(kid, now)
            # signed after we learnt of the revocation (clocks agree within max_skew): not an old copy
            if pkt.timestamp_ns <= first + trust.max_skew_ns:
                return None
        if abs(now - pkt.timestamp_ns) > trust.max_skew_ns:
            return None
        signer = trust.signer(kid, pkt.sender)
        if signer is None or not trust.signature_valid(pkt, raw, signer[1]):
            return None
        owner = signer[0]
        if reason == "revoked_key" and owner != pkt.sender:
            reason = "wrong_signer"
        self.replay.accept(kid, pkt.counter, now, pkt.timestamp_ns)   # a copy of it proves nothing new
        return ("revoked_key_used" if reason == "revoked_key" else "impersonation"), owner

    # -- link state ------------------------------------------------------------------------
    def _link(self, peer: str) -> _Link:
        link = self.links.get(peer)
        if link is None:
            link = self.links[peer] = _Link(self.queue_limit)
        return link

    def _hs(self, peer: str, step: int, epoch: int, msg: bytes = b"") -> None:
        p = Packet(DATA, self.node_id, self.node_id, peer, flags=FLAG_HS, ttl=1, packet_id=epoch & 0xFFFFFFFF,
                   timestamp_ns=self.clock(), body=HS_HEAD.pack(HS_VERSION, step, epoch) + msg)
        self.counters[f"hs.tx.{STEP_NAMES[step]}"] += 1
        self.outbox.append((p, peer))

    def _channel(self, peer: str, epoch: int, keys, role: Role) -> SecureChannel:
        a, b = sorted((self.node_id, peer))
        cid = f"mesh/{a}/{b}/{epoch}".encode()
        return SecureChannel.from_session(cid, keys, role, epoch=epoch << EPOCH_SHIFT,
                                          overlap_seconds=self.channel_overlap_ns / 1e9,
                                          clock=lambda: self.clock() / 1e9)

    def _session(self, peer: str, epoch: int, keys: SessionKeys, role: Role, my_key: str, peer_key: str) -> _Session:
        send, recv = keys.for_role(role)
        return _Session(epoch, self._channel(peer, epoch, keys, role), my_key, peer_key,
                        (_mac_key(send), _mac_key(recv)))

    def channel_ready(self, peer: str) -> bool:
        link = self.links.get(peer)
        return link is not None and link.send is not None

    def session_keys(self, peer: str) -> tuple[str, str] | None:
        """(my key id, peer key id) the current send session was established with."""
        link = self.links.get(peer)
        return (link.send.my_key, link.send.peer_key) if link and link.send else None

    def peer_key(self, peer: str) -> str | None:
        """Key id of the last accepted HELLO of ``peer``."""
        link = self.links.get(peer)
        return link.hello_key if link else None

    def reset(self) -> None:
        """Forget every channel (agent restart)."""
        dropped = sum(len(link.queue) for link in self.links.values())
        if dropped:
            self.counters["dropped.channel_reset"] += dropped
        self.links.clear()
        self.outbox.clear()

    def _teardown(self, peer: str, why: str) -> None:
        link = self.links.pop(peer, None)
        if link is not None:
            if link.queue:
                self.counters[f"dropped.{why}"] += len(link.queue)
            self.emit("channel.closed", peer, {"why": why})

    def _retire(self, link: _Link, old: _Session | None, now: int, keep_ns: int | None = None) -> None:
        if old is not None and old.expires_ns is None:
            old.expires_ns = now + (self.channel_overlap_ns if keep_ns is None else keep_ns)

    def _activate(self, peer: str, link: _Link, sess: _Session, now: int, *, peer_switched: bool = True) -> None:
        old, link.send = link.send, sess
        link.attempts = 0
        if peer_switched:
            self._retire(link, old, now)
        else:
            # responder: the initiator keeps sending on the old session until our CONFIRM arrives (a
            # lost CONFIRM costs it a handshake timeout and a restart); keep the old session readable
            # longer and shorten that to the overlap once a frame of the new session comes in
            self._retire(link, old, now, 4 * self.channel_overlap_ns)
            link.tighten = True
        self.counters["channels.established"] += 1
        self.emit("channel.established", peer, {"epoch": sess.epoch, "my_key": sess.my_key,
                                                "peer_key": sess.peer_key, "rekey": old is not None})
        while link.queue:
            self.outbox.append((link.queue.popleft(), peer))

    # -- handshake driving --------------------------------------------------------------------
    def _wanted(self, link: _Link) -> bool:
        s = link.send
        return s is None or s.my_key != self.key_id or (link.hello_key is not None and s.peer_key != link.hello_key)

    def _rtt_sample(self, rtt: int) -> None:
        self._hs_rtt_ns = rtt if not self._hs_rtt_ns else (3 * self._hs_rtt_ns + rtt) // 4

    def _timeout(self, link: _Link) -> int:
        """Handshake retry timeout: ``hs_timeout_s``, or 4x the recent HS1->HS2 round trip when that is
        longer (a loaded host answers slowly; restarting then only adds work), doubled per retry."""
        t = max(self.hs_timeout_ns, 4 * self._hs_rtt_ns) << min(max(link.attempts - 1, 0), 3)
        return min(t, max(self.hs_timeout_ns, MAX_HS_TIMEOUT_NS))

    def _maybe_handshake(self, peer: str, link: _Link, now: int, *, force: bool = False) -> None:
        if not (force or self._wanted(link)):
            return
        if self.node_id < peer:
            if link.init is not None and now - link.init.t < self._timeout(link):
                return
            if link.send is not None and not force and link.init is None:
                # a rekey while the old session works: if keyvault already lists a newer key for the
                # peer than the one its HELLOs carry, it is about to reload; if the peer has not yet
                # echoed a HELLO signed with our current key, it would check our handshake signature
                # against the old one -- wait (bounded) for both: the beacons are verified first
                newest = self.trust.peer_keys(peer, None)
                if (newest is not None and newest[0].key_id != link.hello_key) or not self.peer_accepted(peer):
                    if link.defer_since is None:
                        link.defer_since = now
                    if now - link.defer_since < 4 * self.hs_timeout_ns:
                        return
                if self.rekey_spread_ns:
                    if link.rekey_at is None:
                        link.rekey_at = now + int(self._rng.random() * self.rekey_spread_ns)
                    if now < link.rekey_at:
                        return
            link.defer_since = None
            link.rekey_at = None
            self._start(peer, link, now)
        elif link.send is None and now - link.last_req >= self.hs_timeout_ns:
            link.last_req = now
            self._hs(peer, REQUEST, 0)

    def _start(self, peer: str, link: _Link, now: int) -> None:
        keys = self.trust.peer_keys(peer, link.hello_key)
        if keys is None:
            self.counters["hs.no_peer_keys"] += 1
            link.init = None
            return
        sig, kem = keys
        if link.init is not None and link.init.cand is not None:   # responder may have switched: keep it readable
            self._retire(link, link.init.cand, now)
        if link.init is not None and link.init.step == HS1:
            # given up before its HS2 came: remember when it started, so a late HS2 still measures the
            # round trip (a starved host answers slower than hs_timeout_s: without the sample the
            # timeout never adapts and every retry is given up too, each costing a fresh key exchange)
            link.superseded[link.init.epoch] = link.init.t
            while len(link.superseded) > 4:
                del link.superseded[next(iter(link.superseded))]
        epoch = link.next_epoch
        link.next_epoch = epoch + 1 if epoch < MAX_SESSION else 1
        try:
            hs = HandshakeInitiator(self.identity, sig.spiffe_id, kem.kem_key(), sig.verify_key())
            msg = hs.start()
        except PQCError as e:
            self.counters["hs.failed"] += 1
            log.warning("%s: cannot start a handshake with %s: %s", self.node_id, peer, e)
            return
        link.init = _Init(epoch, hs, now, self.key_id, sig.key_id)
        link.attempts += 1
        self.counters["hs.started"] += 1
        self._hs(peer, HS1, epoch, msg)

    def _lookup_vk(self, peer: str, link: _Link):
        def lookup(uri: str):
            node = SpiffeId.parse(uri).node_id
            if node != peer:
                raise InvalidRecord(f"handshake from {peer} claims identity {uri}")
            keys = self.trust.peer_keys(node, link.hello_key)
            if keys is None:
                if any(self.trust.directory.is_revoked(r) for r in [link.hello_key or ""]):
                    raise KeyRevoked(f"node {node} is revoked")
                raise InvalidRecord(f"no accepted signing key for node {node}")
            return keys[0].verify_key()
        return lookup

    def on_hello(self, peer: str, pkt: Packet, now: int) -> None:
        link = self._link(peer)
        kid = pkt.key_id.hex()
        if link.hello_key != kid and link.hello_key is not None and peer in self.remote_peers:
            self.hello_wanted = True
        link.hello_key = kid
        for nb in getattr(pkt.body, "neighbours", ()):
            if nb.node_id == self.node_id:
                link.echo_ts = max(link.echo_ts, nb.echo_ts_ns)
                break
        self._maybe_handshake(peer, link, now)

    def on_handshake(self, peer: str, pkt: Packet, now: int) -> str | None:
        """Process a handshake packet; None or a drop reason."""
        body = cast(bytes, pkt.body)   # a handshake packet's body is raw bytes
        if len(body) < HS_HEAD.size:
            return "bad_handshake"
        ver, step, epoch = HS_HEAD.unpack_from(body, 0)
        if ver != HS_VERSION or step not in STEP_NAMES:
            return "bad_handshake"
        msg = bytes(body[HS_HEAD.size:])
        link = self._link(peer)
        self.counters[f"hs.rx.{STEP_NAMES[step]}"] += 1
        try:
            if step == REQUEST:
                if self.node_id < peer:
                    self._maybe_handshake(peer, link, now, force=link.init is None
                                          or now - link.init.t >= self._timeout(link))
                return None
            if step == HS1:
                resp = HandshakeResponder(self.identity, self._lookup_vk(peer, link), kem_keys=self._find_kem)
                hs2 = resp.respond(msg)
                link.resp = (epoch, resp, self.key_id, self.trust.peer_keys(peer, link.hello_key)[0].key_id)
                self._hs(peer, HS2, epoch, hs2)
                return None
            if step == HS2:
                init = link.init
                if init is None or init.epoch != epoch or init.step != HS1:
                    started = link.superseded.pop(epoch, None)
                    if started is not None:
                        self._rtt_sample(now - started)
                        self.counters["hs.late_reply"] += 1
                    return "stale_handshake"
                self._rtt_sample(now - init.t)
                hs3, keys = init.hs.finish(msg)
                sess = self._session(peer, epoch, keys, Role.INITIATOR, init.my_key, init.peer_key)
                link.recv[epoch] = sess
                init.step, init.t, init.cand = HS3, now, sess
                self._hs(peer, HS3, epoch, hs3)
                return None
            if step == HS3:
                if link.resp is None or link.resp[0] != epoch:
                    if link.done is not None and link.done[0] == epoch:
                        self._hs(peer, CONFIRM, epoch, link.done[1])
                        return None
                    return "stale_handshake"
                _, resp, my_key, peer_key = link.resp
                keys = resp.finish(msg)
                sess = self._session(peer, epoch, keys, Role.RESPONDER, my_key, peer_key)
                link.recv[epoch] = sess
                link.resp = None
                confirm = sess.chan.seal(_CONFIRM, HS_HEAD.pack(HS_VERSION, CONFIRM, epoch))
                link.done = (epoch, confirm)
                self._hs(peer, CONFIRM, epoch, confirm)
                self._activate(peer, link, sess, now, peer_switched=False)
                return None
            # CONFIRM
            init = link.init
            if init is None or init.epoch != epoch or init.cand is None:
                return "stale_handshake"
            if init.cand.chan.open(msg, HS_HEAD.pack(HS_VERSION, CONFIRM, epoch)) != _CONFIRM:
                return "bad_handshake"
            link.init = None
            self._activate(peer, link, init.cand, now)
            return None
        except PQCError as e:
            self.counters["hs.failed"] += 1
            # anyone can send a handshake message naming ``peer``: reported about this node, not the peer
            self.emit("security.handshake_failed", "", {"link": peer, "step": STEP_NAMES[step],
                                                        "error": str(e)[:200]})
            return "handshake_failed"

    def tick(self, now: int) -> None:
        self.replay.prune(now)
        for peer, link in list(self.links.items()):
            for ep in [e for e, s in link.recv.items() if s.expires_ns is not None and now >= s.expires_ns]:
                del link.recv[ep]
                self.counters["channels.retired"] += 1
            if link.init is not None and now - link.init.t >= self._timeout(link):
                self.counters["hs.timeouts"] += 1
                self._maybe_handshake(peer, link, now, force=True)
            elif (link.queue and link.send is None) or (
                    link.send is not None and link.hello_key is not None and self._wanted(link)):
                self._maybe_handshake(peer, link, now)

    # -- DATA ---------------------------------------------------------------------------------------
    def outbound(self, pkt: Packet, to: str, now: int) -> Packet | None:
        """The packet to transmit to neighbour ``to`` (sealed), or None (queued or dropped)."""
        if pkt.flags & FLAG_HS:
            return pkt
        link = self._link(to)
        s = link.send
        if s is not None and self.trust.directory.is_revoked(s.peer_key):
            self._teardown(to, "revoked_peer")
            self.counters["dropped.revoked_peer"] += 1
            return None
        if s is None:
            if not self.require_encryption:
                self.counters["tx.plaintext"] += 1
                return pkt
            if len(link.queue) >= self.queue_limit:
                link.queue.popleft()
                self.counters["dropped.channel_queue_full"] += 1
            link.queue.append(pkt)
            self.counters["queued.no_channel"] += 1
            self._maybe_handshake(to, link, now)
            return None
        self.counters["tx.encrypted"] += 1
        return _rebuild(pkt, pkt.flags | FLAG_ENC, s.chan.seal(cast(bytes, pkt.body), _aad(pkt)), pkt.key_id,
                        pkt.signature, pkt.counter)

    def inbound(self, peer: str, pkt: Packet, now: int) -> Packet | str:
        """Open an ``ENC`` DATA packet from ``peer``: the plaintext packet or a drop reason."""
        link = self.links.get(peer)
        body = cast(bytes, pkt.body)   # a DATA packet's body is raw bytes
        if len(body) < 5:
            return "bad_frame"
        ep = int.from_bytes(body[1:5], "big") >> EPOCH_SHIFT
        sess = link.recv.get(ep) if link is not None else None
        if link is None or sess is None:
            self._maybe_handshake(peer, self._link(peer), now, force=link is None or link.send is None)
            return "no_session"
        if self.trust.directory.is_revoked(sess.peer_key):
            self._teardown(peer, "revoked_peer")
            return "revoked_key"
        try:
            pt = sess.chan.open(body, _aad(pkt))
        except ReplayError:
            return "replayed"
        except DecryptionError:
            return "decrypt_failed"
        self.counters["rx.decrypted"] += 1
        if link.tighten and sess is link.send:
            link.tighten = False
            lim = now + self.channel_overlap_ns
            for s in link.recv.values():
                if s is not sess and s.expires_ns is not None and s.expires_ns > lim:
                    s.expires_ns = lim
        return _rebuild(pkt, pkt.flags & ~FLAG_ENC, pt, pkt.key_id, pkt.signature, pkt.counter)


# =============================================================================== offline keys
class LocalAuthority:
    """A keyvault stand-in without I/O: its own root signs records that feed a :class:`MeshTrust`.

    Produces exactly the entries keyvault puts in the ``keys`` bucket (``key.<id>``,
    ``rev.<id>``, ``node.<id>.sig|kem``), so the verification path is the same.
    """

    def __init__(self, trust_domain: str = "x0tta6bl4.local", *, validity_s: int = 90 * 86400) -> None:
        self.trust_domain = trust_domain
        self.root = KeyvaultRoot.generate()
        self.validity_s = validity_s
        self.identities: dict[str, NodeIdentity] = {}
        self.retiring: dict[str, NodeIdentity] = {}
        self.trusts: list[MeshTrust] = []

    @property
    def root_public_key(self) -> bytes:
        return self.root.public_key().public_bytes()

    def trust(self, **kw: Any) -> MeshTrust:
        t = MeshTrust.pinned(self.root_public_key, **kw)
        for ident in list(self.identities.values()) + list(self.retiring.values()):
            t.apply_many(self._entries(ident))
        for ident in self.identities.values():
            t.apply_many(self._node_entries(ident))
        self.trusts.append(t)
        return t

    def _records(self, ident: NodeIdentity):
        return [self.root.sign(r) for r in records_for_identity(ident)]

    def _entries(self, ident: NodeIdentity) -> list[tuple[str, bytes]]:
        return [(key_key(s.record().key_id), s.to_bytes()) for s in self._records(ident)]

    def _node_entries(self, ident: NodeIdentity) -> list[tuple[str, bytes]]:
        sig, kem = self._records(ident)
        n = ident.spiffe_id.node_id
        return [(node_key(n, "sig"), sig.to_bytes()), (node_key(n, "kem"), kem.to_bytes())]

    def _publish(self, entries: list[tuple[str, bytes]], deletes: Iterable[str] = ()) -> None:
        dels = list(deletes)
        for t in self.trusts:
            t.apply_many(entries)
            for k in dels:
                t.apply(k, None, deleted=True)

    def issue(self, node_id: str) -> NodeIdentity:
        ident = NodeIdentity.generate(self.trust_domain, node_id, now=time.time(), validity_seconds=self.validity_s)
        self.identities[node_id] = ident
        self._publish(self._entries(ident) + self._node_entries(ident))
        return ident

    def rotate(self, node_id: str) -> NodeIdentity:
        """New generation; the old keys stay accepted until :meth:`retire`."""
        old = self.identities[node_id]
        if node_id in self.retiring:
            self.retire(node_id)
        new = NodeIdentity.generate(self.trust_domain, node_id, now=time.time(), validity_seconds=self.validity_s,
                                    generation=old.generation + 1)
        self.identities[node_id], self.retiring[node_id] = new, old
        self._publish(self._entries(new) + self._node_entries(new))
        return new

    def retire(self, node_id: str) -> None:
        old = self.retiring.pop(node_id, None)
        if old is not None:
            self._publish([], [key_key(old.signing.key_id), key_key(old.kem.key_id)])

    def revoke(self, node_id: str, reason: str = "") -> None:
        idents = [self.identities[node_id]] + ([self.retiring.pop(node_id)] if node_id in self.retiring else [])
        entries, dels = [], []
        for ident in idents:
            for s in self._records(ident):
                rec = s.record()
                entries.append((rev_key(rec.key_id), self.root.revoke(rec, at=int(time.time()), reason=reason)
                                .to_bytes()))
                dels.append(key_key(rec.key_id))
        self._publish(entries, dels)


CONTROL = CONTROL_TYPES  # re-export for adapters
