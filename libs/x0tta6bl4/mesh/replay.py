"""Anti-replay for signed mesh control packets (pure, no I/O).

Every packet a node signs (HELLO, RREQ, RREP, RERR; relays re-sign what they forward) carries a
64-bit packet counter inside the signed region (wire format v2, :mod:`.packets`). A receiver keeps,
per signing key, a sliding window like IPsec ESP (RFC 4303 3.4.3) and DTLS (RFC 6347 4.1.2.6):
the highest counter accepted and a bitmap of the ``size`` counters below it. A counter

* above the highest is new (the window slides; a jump of any size is fine: only the key's holder
  can sign it),
* inside the window and not yet marked is new (reordering within ``size`` packets of the signer),
* marked is ``replayed``, below the window ``stale_counter``.

The window is checked twice: before the signature is verified (a replay costs no ML-DSA
verification, as IPsec checks the window before the ICV) and updated only after it verified (a
forgery never moves a window). State is created only for keys whose signature verified, so its size
is bounded by the keys keyvault vouches for; :class:`ReplayGuard` also caps it (``max_keys``, least
recently used first) and drops windows idle for ``idle_s``.

Freshness across restarts and forgotten state (the part RFC 8967 -- Babel MAC authentication --
solves with a random per-boot *index* and a challenge/response round trip before a new index is
believed): our packets already carry the signer's clock (``timestamp_ns``, checked within
``max_skew_s`` of the receiver's clock), so clocks stand in for the challenge.

* Sender restart: :class:`PacketCounter` seeds the counter from the wall clock in microseconds and
  adds one per signed packet. A node that signed fewer than one packet per microsecond on average
  since its last seed (every node: HELLOs are 5/s) has counters below the wall clock, so the seed
  of a restarted node is above every counter it used before: receivers accept it at once, with no
  persistent state and no round trip. (This is the TS/PC idea of RFC 7298, the predecessor of
  RFC 8967, in one 64-bit number.) If the wall clock stepped back by more than the node's lead
  across the restart, its packets are ``stale_counter`` at receivers that still hold its window
  until that window is idle for ``idle_s`` (nothing accepted), then it starts afresh: a bounded
  lock-out, never a permanent one.
* The timestamp check covers what the window forgets: a window is dropped only after ``idle_s``
  (which must exceed twice ``max_skew_s``; :class:`~.security.NodeSecurity` enforces it, default 3x)
  without an accepted packet, when every packet it accepted is already too old to pass the timestamp
  check (and the floor below refuses them too).
* Receiver without state for a key (it just started, the window was evicted or expired): the first
  packet of a key is accepted only if its timestamp is later than :attr:`ReplayGuard.floor_ns`
  which starts at the receiver's start and rises to the newest timestamp of every window dropped.
  A captured packet can therefore never be replayed into a forgotten window: everything the
  forgotten window accepted is at or below the floor, and anything older than ``max_skew_s`` is
  refused by the timestamp check anyway. The cost: a packet already in flight when the receiver
  starts (or when a window is dropped) is refused once (``stale_timestamp``), the next is accepted.

Reasons returned: ``replayed``, ``stale_counter``, ``stale_timestamp`` (see above).
"""
from __future__ import annotations

import time
from collections import Counter, OrderedDict
from collections.abc import Callable

__all__ = ["REPLAY_REASONS", "PacketCounter", "ReplayGuard", "ReplayWindow"]

REPLAY_REASONS = ("replayed", "stale_counter", "stale_timestamp")
U64_MAX = (1 << 64) - 1


class PacketCounter:
    """A node's packet counter: seeded from the wall clock (microseconds), then +1 per signed packet."""

    __slots__ = ("value",)

    def __init__(self, seed: int | None = None, *, wall_ns: Callable[[], int] = time.time_ns) -> None:
        self.value = (wall_ns() // 1000) if seed is None else seed
        if not 0 <= self.value < U64_MAX:
            raise ValueError(f"packet counter seed {self.value} outside 0..2^64-2")

    def next(self) -> int:
        if self.value >= U64_MAX:
            raise OverflowError("packet counter exhausted (2^64 packets): rotate the key")
        self.value += 1
        return self.value


class ReplayWindow:
    """One key's window: ``top`` = highest accepted counter, bit i of ``bits`` = ``top - i`` seen."""

    __slots__ = ("bits", "last_ns", "max_ts", "size", "top")

    def __init__(self, size: int, counter: int, now: int, ts: int) -> None:
        self.size = size
        self.top = counter
        self.bits = 1
        self.last_ns = now
        self.max_ts = ts

    def check(self, counter: int) -> str | None:
        if counter > self.top:
            return None
        d = self.top - counter
        if d >= self.size:
            return "stale_counter"
        return "replayed" if (self.bits >> d) & 1 else None

    def accept(self, counter: int, now: int, ts: int) -> None:
        """Mark ``counter`` (call only after :meth:`check` passed and the signature verified)."""
        if counter > self.top:
            shift = counter - self.top
            self.bits = 1 if shift >= self.size else ((self.bits << shift) | 1) & ((1 << self.size) - 1)
            self.top = counter
        else:
            self.bits |= 1 << (self.top - counter)
        self.last_ns = now
        if ts > self.max_ts:
            self.max_ts = ts


class ReplayGuard:
    """The anti-replay windows of one receiving node, keyed by signing key id."""

    def __init__(self, *, size: int = 256, max_keys: int = 4096, idle_s: float = 30.0, floor_ns: int = -1) -> None:
        if size < 1 or max_keys < 1 or idle_s <= 0:
            raise ValueError("size, max_keys and idle_s must be positive")
        self.size = size
        self.max_keys = max_keys
        self.idle_ns = int(idle_s * 1e9)
        self.floor_ns = floor_ns
        self.windows: OrderedDict[str, ReplayWindow] = OrderedDict()   # least recently accepted first
        self.stats: Counter = Counter()

    def check(self, key: str, counter: int, ts: int) -> str | None:
        """None if (``counter``, timestamp ``ts``) may be new for ``key``, else a reason. Changes nothing."""
        w = self.windows.get(key)
        if w is None:
            return "stale_timestamp" if ts <= self.floor_ns else None
        return w.check(counter)

    def accept(self, key: str, counter: int, now: int, ts: int) -> None:
        """Record a packet whose :meth:`check` passed and whose signature verified."""
        w = self.windows.get(key)
        if w is None:
            self.prune(now)
            while len(self.windows) >= self.max_keys:
                _, old = self.windows.popitem(last=False)
                self._forget(old)
                self.stats["evicted"] += 1
            self.windows[key] = ReplayWindow(self.size, counter, now, ts)
            self.stats["windows"] += 1
            return
        w.accept(counter, now, ts)
        self.windows.move_to_end(key)

    def prune(self, now: int) -> int:
        """Drop the windows with nothing accepted for ``idle_s``; their newest timestamp raises the floor."""
        n = 0
        while self.windows:
            key, w = next(iter(self.windows.items()))
            if now - w.last_ns < self.idle_ns:
                break
            del self.windows[key]
            self._forget(w)
            n += 1
        self.stats["expired"] += n
        return n

    def _forget(self, w: ReplayWindow) -> None:
        if w.max_ts > self.floor_ns:
            self.floor_ns = w.max_ts

    def __len__(self) -> int:
        return len(self.windows)
