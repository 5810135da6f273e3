"""Secure DATA channel between neighbours: AES-256-GCM with key epochs.

Frame layout (all integers big-endian)::

    version(1)=1 | epoch(4) | seq(8) | AES-256-GCM ciphertext || tag(16)

* **Nonces** are ``iv_epoch XOR (0^4 || seq)``, where ``seq`` counts up from 0
  and is never reused under one key; every epoch has its own key and IV derived
  with HKDF, so a nonce never repeats under a key.
* **Rekey**: after ``max_messages`` frames in an epoch the sender moves to the
  next epoch (``secret' = HKDF-Expand(secret, "key update")``, as TLS 1.3 key
  update) automatically, or raises :class:`RekeyRequired` if ``auto_rekey`` is
  off. The receiver follows when the first frame of a later epoch authenticates.
  A fresh handshake can install new secrets with :meth:`SecureChannel.install_epoch`.
* **Overlap**: when a newer receive epoch becomes active, the previous epoch
  keeps decrypting until ``overlap_seconds`` later (injected clock); older
  epochs are dropped at once.
* **Replay**: a per-epoch sliding window of ``replay_window`` sequence numbers
  rejects duplicates and too-old frames and accepts reordering within the window.
* **AAD** binds a label, the channel id, the frame header (version, epoch, seq)
  and optional caller data.
"""

from __future__ import annotations

import struct
import threading
import time
from collections.abc import Callable

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDFExpand

from ._encoding import to_bytes
from .errors import DecryptionError, InvalidKey, RekeyRequired, ReplayError
from .kdf import Role, SessionKeys

__all__ = ["FRAME_VERSION", "HEADER_SIZE", "MAX_EPOCH", "TAG_SIZE", "ReplayWindow", "SecureChannel"]

FRAME_VERSION = 1
_HEADER = struct.Struct(">BIQ")
HEADER_SIZE = _HEADER.size  # 13
TAG_SIZE = 16
MAX_EPOCH = 0xFFFFFFFF
MAX_CHANNEL_ID = 255
_AAD_LABEL = b"x0tta6bl4/channel/v1"
Clock = Callable[[], float]


def _expand(secret: bytes, label: bytes, length: int) -> bytes:
    return HKDFExpand(hashes.SHA256(), length, b"x0tta6bl4/channel " + label).derive(secret)


class ReplayWindow:
    """Sliding anti-replay window (RFC 4303 style) over 64-bit sequence numbers."""

    __slots__ = ("_bits", "highest", "size")

    def __init__(self, size: int = 1024) -> None:
        if size < 1:
            raise ValueError("replay window size must be >= 1")
        self.size = size
        self.highest = -1
        self._bits = 0  # bit i set <=> (highest - i) was accepted

    def check(self, seq: int) -> None:
        """Raise ReplayError if ``seq`` must be rejected (does not record it)."""
        if seq > self.highest:
            return
        offset = self.highest - seq
        if offset >= self.size:
            raise ReplayError(f"sequence number {seq} is older than the replay window (highest {self.highest})")
        if (self._bits >> offset) & 1:
            raise ReplayError(f"sequence number {seq} was already received (replay)")

    def commit(self, seq: int) -> None:
        """Record ``seq`` as received; call only after authentication succeeded."""
        if seq > self.highest:
            shift = seq - self.highest
            self._bits = ((self._bits << shift) | 1) & ((1 << self.size) - 1) if shift < self.size else 1
            self.highest = seq
        else:
            self._bits |= 1 << (self.highest - seq)


class _Epoch:
    __slots__ = ("aead", "iv", "number", "retire_at", "secret", "window")

    def __init__(self, number: int, secret: bytes, window_size: int) -> None:
        self.number = number
        self.secret = secret
        okm = _expand(secret, b"key+iv", 32 + 12)
        self.aead = AESGCM(okm[:32])
        self.iv = int.from_bytes(okm[32:], "big")
        self.window = ReplayWindow(window_size)
        self.retire_at: float | None = None

    def nonce(self, seq: int) -> bytes:
        return (self.iv ^ seq).to_bytes(12, "big")

    def next_secret(self) -> bytes:
        return _expand(self.secret, b"key update", 32)


class SecureChannel:
    """Bidirectional AEAD channel; one object per peer link and direction pair."""

    def __init__(
        self,
        channel_id: bytes,
        send_secret: bytes,
        recv_secret: bytes,
        *,
        epoch: int = 0,
        max_messages: int = 2**32,
        replay_window: int = 1024,
        overlap_seconds: float = 30.0,
        max_epoch_skip: int = 4,
        auto_rekey: bool = True,
        clock: Clock = time.monotonic,
    ) -> None:
        channel_id = to_bytes(channel_id, "channel id")
        if not 1 <= len(channel_id) <= MAX_CHANNEL_ID:
            raise ValueError(f"channel id must be 1..{MAX_CHANNEL_ID} bytes, got {len(channel_id)}")
        for name, s in (("send secret", send_secret), ("receive secret", recv_secret)):
            if len(to_bytes(s, name)) != 32:
                raise InvalidKey(f"channel {name} must be 32 bytes, got {len(s)}")
        if not 1 <= max_messages <= 2**64 - 1:
            raise ValueError("max_messages must be in 1..2^64-1")
        if not 0 <= epoch <= MAX_EPOCH:
            raise ValueError("epoch out of range")
        self.channel_id = channel_id
        self.max_messages = max_messages
        self.overlap_seconds = overlap_seconds
        self.max_epoch_skip = max_epoch_skip
        self.auto_rekey = auto_rekey
        self._window_size = replay_window
        self._clock = clock
        self._lock = threading.Lock()
        self._aad_prefix = _AAD_LABEL + bytes([len(channel_id)]) + channel_id
        self._send = _Epoch(epoch, bytes(send_secret), replay_window)
        self._send_seq = 0
        self._recv: dict[int, _Epoch] = {epoch: _Epoch(epoch, bytes(recv_secret), replay_window)}
        self._active = epoch  # newest receive epoch that has authenticated a frame

    @classmethod
    def from_session(cls, channel_id: bytes, keys: SessionKeys, role: Role | str, **kwargs: object) -> SecureChannel:
        send, recv = keys.for_role(role)
        return cls(channel_id, send, recv, **kwargs)  # type: ignore[arg-type]

    def __repr__(self) -> str:
        return (
            f"<SecureChannel id={self.channel_id!r} send_epoch={self._send.number} "
            f"send_seq={self._send_seq} recv_epochs={sorted(self._recv)}>"
        )

    # -- state -----------------------------------------------------------
    @property
    def send_epoch(self) -> int:
        return self._send.number

    @property
    def send_seq(self) -> int:
        """Sequence number the next frame will carry."""
        return self._send_seq

    @property
    def receive_epochs(self) -> list[int]:
        self._expire(self._clock())
        return sorted(self._recv)

    @property
    def needs_rekey(self) -> bool:
        """True once 3/4 of the epoch's message budget is used."""
        return self._send_seq >= self.max_messages - self.max_messages // 4

    # -- rekey -----------------------------------------------------------
    def rekey(self) -> int:
        """Move the send direction to the next epoch (derived key). Returns it."""
        with self._lock:
            return self._rekey_locked()

    def _rekey_locked(self) -> int:
        nxt = self._send.number + 1
        if nxt > MAX_EPOCH:
            raise RekeyRequired("channel exhausted all key epochs; run a fresh handshake")
        self._send = _Epoch(nxt, self._send.next_secret(), self._window_size)
        self._send_seq = 0
        return nxt

    def install_epoch(self, epoch: int, send_secret: bytes, recv_secret: bytes) -> None:
        """Install secrets from a fresh handshake as ``epoch`` (> every known epoch).

        Sending switches immediately; the old receive epochs stay usable for the
        overlap window once the peer's first frame under ``epoch`` arrives.
        """
        with self._lock:
            if epoch <= max(self._send.number, max(self._recv)) or epoch > MAX_EPOCH:
                raise ValueError(f"new epoch {epoch} must be greater than the current epochs")
            for name, s in (("send secret", send_secret), ("receive secret", recv_secret)):
                if len(to_bytes(s, name)) != 32:
                    raise InvalidKey(f"channel {name} must be 32 bytes, got {len(s)}")
            self._send = _Epoch(epoch, bytes(send_secret), self._window_size)
            self._send_seq = 0
            self._recv[epoch] = _Epoch(epoch, bytes(recv_secret), self._window_size)
            # not yet active: older epochs start their overlap when it is first used

    # -- data ------------------------------------------------------------
    def seal(self, plaintext: bytes, aad: bytes = b"") -> bytes:
        """Encrypt ``plaintext`` into a frame. Never reuses a (key, nonce) pair."""
        with self._lock:
            if self._send_seq >= self.max_messages:
                if not self.auto_rekey:
                    raise RekeyRequired(
                        f"epoch {self._send.number} reached its limit of {self.max_messages} messages"
                    )
                self._rekey_locked()
            ep, seq = self._send, self._send_seq
            self._send_seq = seq + 1
        header = _HEADER.pack(FRAME_VERSION, ep.number, seq)
        return header + ep.aead.encrypt(ep.nonce(seq), plaintext, self._aad_prefix + header + aad)

    def open(self, frame: bytes, aad: bytes = b"") -> bytes:
        """Authenticate and decrypt a frame; raise DecryptionError/ReplayError."""
        if len(frame) < HEADER_SIZE + TAG_SIZE:
            raise DecryptionError(f"frame truncated: {len(frame)} bytes, need at least {HEADER_SIZE + TAG_SIZE}")
        version, epoch, seq = _HEADER.unpack_from(frame)
        if version != FRAME_VERSION:
            raise DecryptionError(f"unsupported frame version {version}")
        header = bytes(frame[:HEADER_SIZE])
        full_aad = self._aad_prefix + header + aad
        with self._lock:
            now = self._clock()
            self._expire(now)
            ep = self._recv.get(epoch)
            fresh: list[_Epoch] = []
            if ep is None:
                newest = max(self._recv)
                if epoch < newest:
                    raise DecryptionError(f"frame epoch {epoch} is retired or unknown")
                if epoch - newest > self.max_epoch_skip:
                    raise DecryptionError(f"frame epoch {epoch} is too far ahead of {newest}")
                cur = self._recv[newest]
                for n in range(newest + 1, epoch + 1):
                    cur = _Epoch(n, cur.next_secret(), self._window_size)
                    fresh.append(cur)
                ep = cur
            ep.window.check(seq)
            try:
                plaintext = ep.aead.decrypt(ep.nonce(seq), bytes(frame[HEADER_SIZE:]), full_aad)
            except InvalidTag:
                raise DecryptionError(
                    f"frame (epoch {epoch}, seq {seq}) failed authentication: tampered, wrong key or wrong AAD"
                ) from None
            ep.window.commit(seq)
            if fresh:
                self._recv[epoch] = ep
            if epoch > self._active:
                self._activate(epoch, now)
            return plaintext

    def _activate(self, epoch: int, now: float) -> None:
        self._active = epoch
        older = sorted(n for n in self._recv if n < epoch)
        if not older:
            return
        prev = older[-1]
        for n in older[:-1]:
            del self._recv[n]
        if self._recv[prev].retire_at is None:
            self._recv[prev].retire_at = now + self.overlap_seconds

    def _expire(self, now: float) -> None:
        if len(self._recv) > 1:
            for n in [n for n, e in self._recv.items() if e.retire_at is not None and now >= e.retire_at]:
                del self._recv[n]
