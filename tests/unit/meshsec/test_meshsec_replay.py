"""The anti-replay window (pure): in order, reordered, replayed, too old, counter jumps, restarts of the
sender and of the receiver, bounded state."""
from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from x0tta6bl4.mesh.replay import PacketCounter, ReplayGuard, ReplayWindow

S = 10**9
T0 = 1_000 * S          # receiver/sender clock (ns) in these tests


def offer(g: ReplayGuard, key: str, counter: int, ts: int, now: int | None = None) -> str | None:
    """What a receiver does: check, and record what passed (the signature is assumed valid here)."""
    reason = g.check(key, counter, ts)
    if reason is None:
        g.accept(key, counter, ts if now is None else now, ts)
    return reason


def test_in_order_counters_are_all_accepted_and_each_only_once():
    g = ReplayGuard(floor_ns=T0 - 1)
    assert [offer(g, "k", c, T0 + c) for c in range(1, 1001)] == [None] * 1000
    assert [offer(g, "k", c, T0 + c) for c in (1000, 999, 800)] == ["replayed"] * 3
    assert g.windows["k"].top == 1000 and len(g) == 1


def test_reordered_within_the_window_is_accepted_once():
    g = ReplayGuard(size=64, floor_ns=T0 - 1)
    assert offer(g, "k", 100, T0) is None
    late = [99, 60, 37, 98]                       # 37 = 100 - 63: the oldest slot still in the window
    assert [offer(g, "k", c, T0) for c in late] == [None] * 4
    assert [offer(g, "k", c, T0) for c in [*late, 100]] == ["replayed"] * 5
    assert offer(g, "k", 36, T0) == "stale_counter"   # just below the window: cannot tell, refused
    assert offer(g, "k", 101, T0) is None             # slides by one: 37 falls out ...
    assert offer(g, "k", 37, T0) == "stale_counter"   # ... and is now too old, not "new"
    assert offer(g, "k", 38, T0) is None              # 38 was never seen and is still inside


def test_check_alone_changes_nothing():
    g = ReplayGuard(floor_ns=T0 - 1)
    offer(g, "k", 10, T0)
    for _ in range(3):
        assert g.check("k", 11, T0) is None
        assert g.check("other", 1, T0) is None
    assert g.windows["k"].top == 10 and "other" not in g.windows


def test_a_counter_jump_slides_the_whole_window():
    g = ReplayGuard(size=128, floor_ns=T0 - 1)
    for c in range(1, 11):
        offer(g, "k", c, T0)
    jump = 10 + 10**12
    assert offer(g, "k", jump, T0) is None            # any jump is fine: only the key's holder signs
    assert offer(g, "k", jump, T0) == "replayed"
    assert offer(g, "k", 11, T0) == "stale_counter"   # everything before the jump is out of the window
    assert offer(g, "k", jump - 1, T0) is None        # reordered packets just below the new top still pass
    w = g.windows["k"]
    assert w.bits == 0b11 and w.top == jump
    # a jump of exactly the window size keeps nothing of the old bitmap
    w2 = ReplayWindow(8, 5, 0, 0)
    w2.accept(13, 0, 0)
    assert w2.bits == 1 and w2.check(5) == "stale_counter" and w2.check(6) is None


def test_a_restarted_sender_is_accepted_at_once_with_a_time_seeded_counter():
    wall = [T0]
    g = ReplayGuard(floor_ns=T0 - 1)
    before = PacketCounter(wall_ns=lambda: wall[0])
    for i in range(500):                      # 500 signed packets during 1 ms: well below 1 per microsecond
        wall[0] = T0 + i * 2_000
        assert offer(g, "k", before.next(), wall[0]) is None
    top = g.windows["k"].top
    wall[0] = T0 + 1_000_000                  # the process restarts 1 ms after its seed, no state kept
    after = PacketCounter(wall_ns=lambda: wall[0])
    first = after.next()
    assert first > top
    assert offer(g, "k", first, wall[0]) is None
    assert offer(g, "k", top, wall[0]) == "stale_counter"   # the old incarnation's packets stay refused


def test_a_sender_whose_clock_stepped_back_is_locked_out_only_until_its_window_idles():
    g = ReplayGuard(idle_s=30, floor_ns=T0 - 1)
    c = PacketCounter(seed=5_000_000)
    for i in range(10):
        assert offer(g, "k", c.next(), T0 + i * S) is None
    last_ts = T0 + 9 * S
    stepped = PacketCounter(seed=1_000)       # restart with a wall clock far in the past
    now = last_ts + S
    assert offer(g, "k", stepped.next(), now) == "stale_counter"
    g.prune(last_ts + 29 * S)
    assert "k" in g.windows                  # refused packets do not keep it alive, accepted ones did
    now = last_ts + 31 * S
    assert g.prune(now) == 1 and g.floor_ns == last_ts
    assert offer(g, "k", stepped.next(), now) is None          # fresh timestamp: a new window
    # (a copy of an old-incarnation packet now has a higher counter than the new window's top, but it is
    # older than idle_s > max_skew_s: the timestamp check refuses it -- see the NodeSecurity tests)


def test_a_receiver_without_state_vouches_only_for_packets_signed_after_it_started():
    started = T0 + 50 * S
    g = ReplayGuard(floor_ns=started)
    assert offer(g, "k", 7, started - S) == "stale_timestamp"   # a capture from before our start
    assert offer(g, "k", 7, started) == "stale_timestamp"
    assert offer(g, "k", 7, started + 1) is None
    assert offer(g, "k", 7, started + 2) == "replayed"


def test_state_is_bounded_and_an_evicted_key_cannot_be_replayed_into_a_new_window():
    g = ReplayGuard(max_keys=3, floor_ns=T0 - 1)
    for i in range(5):
        assert offer(g, f"k{i}", 100, T0 + i * S) is None
    assert list(g.windows) == ["k2", "k3", "k4"] and g.stats["evicted"] == 2
    assert g.floor_ns == T0 + 1 * S                            # the newest timestamp k1's window accepted
    assert offer(g, "k1", 100, T0 + 1 * S) == "stale_timestamp"   # replay of what k1's window had seen
    assert offer(g, "k0", 100, T0) == "stale_timestamp"
    assert offer(g, "k1", 101, T0 + 6 * S) is None              # k1's next packet starts a new window
    assert len(g) == 3


def test_recently_used_windows_survive_eviction():
    g = ReplayGuard(max_keys=2, floor_ns=T0 - 1)
    offer(g, "a", 1, T0)
    offer(g, "b", 1, T0)
    offer(g, "a", 2, T0 + 1)                 # a is used again: b is now the least recent
    offer(g, "c", 1, T0 + 2)
    assert list(g.windows) == ["a", "c"]


def test_counter_and_guard_arguments_are_checked():
    with pytest.raises(ValueError, match="outside"):
        PacketCounter(seed=-1)
    with pytest.raises(OverflowError, match="rotate the key"):
        last = PacketCounter(seed=(1 << 64) - 2)
        assert last.next() == (1 << 64) - 1
        last.next()
    with pytest.raises(ValueError, match="positive"):
        ReplayGuard(size=0)
    assert PacketCounter(wall_ns=lambda: 1_700_000_000_123_456_789).next() == 1_700_000_000_123_457


@settings(max_examples=300, deadline=None)
@given(st.integers(1, 64), st.lists(st.integers(0, 300), max_size=300))
def test_window_matches_a_reference_model(size, counters):
    """Accepted iff never accepted before and above (highest accepted - size): the IPsec rule."""
    w: ReplayWindow | None = None
    seen: set[int] = set()
    top = -1
    for c in counters:
        expect = ("replayed" if c in seen else None) if c > top - size else "stale_counter"
        got = None if w is None else w.check(c)
        assert got == expect, (c, top, sorted(seen)[-5:])
        if got is None:
            if w is None:
                w = ReplayWindow(size, c, 0, 0)
            else:
                w.accept(c, 0, 0)
            seen.add(c)
            top = max(top, c)
